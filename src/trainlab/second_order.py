"""Full-batch second-order and quasi-Newton optimizers as ``torch.optim.Optimizer`` subclasses.

Each takes one ``step(closure)`` per epoch on the whole training split; ``closure()`` zeroes the gradients,
computes the loss (with penalties) on all the training data, backpropagates and returns it, and
``closure(backward=False)`` returns that loss still attached to its graph, for Hessian products. The first
evaluation of every step is a plain ``closure()`` at the current parameters, so a trainer can read the loss before
the step from it. The specs that build these (``newton``, ``newton_cg``, ``cg``, ``bfgs``, ``lbfgs``) are in
``trainlab.optimizers``.

The objective is f(θ) = L(θ) + Σ_g (λ_g / 2)‖θ_g‖², L being the closure's loss and λ_g the weight decay of
parameter group g: coupled decay, the gradient gaining λθ as torch's SGD adds it, made part of f so that the line
searches see the function whose gradient they use.

- ``ScipyMinimize`` runs ``scipy.optimize.minimize`` ("CG", "BFGS", "Newton-CG" with exact Hessian-vector
  products by double backward) on the flattened parameters in float64, for ``max_iter`` iterations per step. It
  keeps no state between steps (BFGS restarts from H₀ = I each step, CG from the steepest descent direction), so
  its ``state_dict`` holds the parameter groups only and a resume is exact.
- ``DampedNewton`` forms the exact Hessian (``torch.func.hessian`` through ``functional_call``), solves (H + τI)p = −g by Cholesky with τ ≥ ``damping`` raised until
  H + τI is positive definite (Nocedal & Wright, Algorithm 3.3), and backtracks on p (Armijo, Algorithm 3.1).
  Its Hessian costs O(m²) memory and O(m³) time in the parameter count m, hence ``max_params``. Stateless too.
- ``FullBatchLBFGS`` is ``torch.optim.LBFGS`` with the strong Wolfe line search and the weight decay term; its
  curvature pairs persist across steps in its ``state_dict``.

Reference: Nocedal & Wright, "Numerical Optimization", 2nd ed., Springer 2006 (ch. 3 line searches and Newton
with Hessian modification, ch. 5 conjugate gradients, ch. 6 BFGS, ch. 7 Newton-CG and L-BFGS).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

Closure = Callable[..., Tensor]

# Armijo's sufficient-decrease constant and the smallest step tried (Nocedal & Wright §3.1 suggest c1 = 1e-4).
_ARMIJO_C1 = 1e-4
_MIN_STEP = 2.0 ** -30
# Algorithm 3.3's β: the first shift tried when the Hessian's diagonal is not all positive.
_SHIFT_BETA = 1e-3


def check_deterministic(model: nn.Module, optimizer: str) -> None:
    """Raise unless ``model`` computes the same function of its parameters on every call in train mode.

    Dropout (p > 0) makes a full-batch objective random, and batch norm makes it depend on the batch and on
    running statistics that each evaluation moves; line searches and curvature pairs then compare different
    functions. So both are errors for a full-batch optimizer, never a silently wrong answer.
    """
    for name, module in model.named_modules():
        dropout = "Dropout" in type(module).__name__ and getattr(module, "p", 0) > 0
        if dropout or isinstance(module, nn.modules.batchnorm._BatchNorm):
            kind = f"{type(module).__name__} (p={module.p})" if dropout else type(module).__name__
            raise ValueError(f"The {optimizer} optimizer minimizes one deterministic full-batch objective, but the "
                             f"model has a {kind} module at {name!r}, which makes the objective random or "
                             f"batch-dependent. Set model.dropout=0 and model.norm=none or layer, or use a "
                             f"minibatch optimizer (adamw, sgd, ...).")


class FullBatchOptimizer(torch.optim.Optimizer):
    """Base of the closure-driven optimizers: the objective f = loss + Σ (λ/2)‖θ‖² and its flat gradient."""

    full_batch = True

    def __init__(self, params: Any, weight_decay: float):
        super().__init__(params, {"lr": 1.0, "weight_decay": weight_decay})

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _decay(self) -> list[float]:
        return [g["weight_decay"] for g in self.param_groups for _ in g["params"]]

    def _decay_term(self) -> float:
        return sum(lam / 2 * float(p.detach().square().sum()) for p, lam in zip(self._params(), self._decay()) if lam)

    def _value_and_grad(self, closure: Closure) -> tuple[float, Tensor]:
        """f and ∇f (flat) at the current parameters, from one plain ``closure()``."""
        with torch.enable_grad():
            loss = closure()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in self._params()]
        flat = torch.cat([(g + lam * p.detach()).reshape(-1) for g, p, lam in
                          zip(grads, self._params(), self._decay())])
        return float(loss) + self._decay_term(), flat

    def _graph_grad(self, closure: Closure) -> Tensor:
        """∇f (flat) still attached to its graph, for products with the Hessian."""
        with torch.enable_grad():
            grads = torch.autograd.grad(closure(backward=False), self._params(), create_graph=True,
                                        materialize_grads=True)
            return torch.cat([(g + lam * p).reshape(-1) for g, p, lam in zip(grads, self._params(), self._decay())])

    def _set(self, vector: Tensor) -> None:
        ref = self._params()[0]
        vector_to_parameters(vector.to(dtype=ref.dtype, device=ref.device), self._params())

    def _finish(self) -> None:
        self.zero_grad(set_to_none=True)


class ScipyMinimize(FullBatchOptimizer):
    """``scipy.optimize.minimize(method)`` from the current parameters, ``max_iter`` iterations per step.

    ``method`` is "CG" (Polak-Ribière+, Nocedal & Wright §5.2), "BFGS" (§6.1), both with ``gtol = tolerance``, or
    "Newton-CG" (§7.1) with ``xtol = tolerance`` and exact Hessian-vector products Hv = ∇(∇f·v) by double
    backward, the gradient's graph built once per point and reused by the inner CG iterations.
    """

    def __init__(self, params: Any, *, method: str, max_iter: int, tolerance: float, weight_decay: float = 0.0):
        if method not in ("CG", "BFGS", "Newton-CG"):
            raise ValueError(f"The 'method' parameter of ScipyMinimize must be one of 'CG', 'BFGS', 'Newton-CG'. "
                             f"Got {method!r} instead.")
        super().__init__(params, weight_decay)
        self.method, self.max_iter, self.tolerance = method, max_iter, tolerance

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """Minimize from the current parameters; the objective's value before the step."""
        import scipy.optimize

        closure = _require_closure(self, closure)
        first: list[float] = []

        def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
            self._set(torch.from_numpy(v))
            f, g = self._value_and_grad(closure)
            first.append(f)
            return f, g.double().cpu().numpy()

        tol = "xtol" if self.method == "Newton-CG" else "gtol"
        extra = {"hessp": self._hessp(closure)} if self.method == "Newton-CG" else {}
        start = parameters_to_vector(self._params()).detach().double().cpu().numpy()
        result = scipy.optimize.minimize(fun, start, method=self.method, jac=True,
                                         options={"maxiter": self.max_iter, tol: self.tolerance}, **extra)
        self._set(torch.from_numpy(result.x))
        self._finish()
        return torch.tensor(first[0])

    def _hessp(self, closure: Closure) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        at: dict[str, Any] = {}

        def hessp(v: np.ndarray, direction: np.ndarray) -> np.ndarray:
            if at.get("v") is None or not np.array_equal(at["v"], v):
                self._set(torch.from_numpy(v))
                at.update(v=v.copy(), grad=self._graph_grad(closure))
            d = torch.from_numpy(direction).to(at["grad"])
            return self._hvp(at["grad"], d).double().cpu().numpy()

        return hessp

    def _hvp(self, grad: Tensor, direction: Tensor) -> Tensor:
        with torch.enable_grad():
            hv = torch.autograd.grad(grad, self._params(), direction, retain_graph=True, allow_unused=True)
        return torch.cat([torch.zeros_like(p).reshape(-1) if h is None else h.reshape(-1)
                          for h, p in zip(hv, self._params())])


class DampedNewton(FullBatchOptimizer):
    """Newton's method with Hessian modification and backtracking, ``max_iter`` iterations per step.

    p = −(H + τI)⁻¹g with τ = ``damping`` if H + τI is positive definite, else raised (τ ← max(2τ, β), starting
    from −min Hᵢᵢ + β, β = 1e-3) until Cholesky succeeds (Nocedal & Wright, Algorithm 3.3); then θ ← θ + αp with
    α the first of 1, ½, ¼, ... with f(θ + αp) ≤ f(θ) + c₁α gᵀp (Algorithm 3.1). Stops early when ‖g‖∞ ≤
    ``tolerance``. H comes from ``torch.func.hessian`` of f over the model's parameters (``model``: the module
    that owns ``params``), forward-mode over reverse-mode, O(m²) memory.
    """

    def __init__(self, params: Any, *, model: nn.Module, max_iter: int, tolerance: float, damping: float,
                 weight_decay: float = 0.0):
        super().__init__(params, weight_decay)
        self.max_iter, self.tolerance, self.damping = max_iter, tolerance, damping
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        missing = [tuple(p.shape) for p in self._params() if id(p) not in names]
        if missing:
            raise ValueError(f"The 'params' of DampedNewton must be parameters of its 'model'. Got {len(missing)} "
                             f"that are not (shapes {missing}).")
        self.model, self._names = model, [names[id(p)] for p in self._params()]

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """Up to ``max_iter`` Newton iterations; the objective's value before the step."""
        closure = _require_closure(self, closure)
        theta = parameters_to_vector(self._params()).detach()
        f, g = self._value_and_grad(closure)
        before = f
        for _ in range(self.max_iter):
            if float(g.abs().max()) <= self.tolerance:
                break
            direction = -_modified_cholesky_solve(self._hessian(closure), g, self.damping)
            accepted = self._backtrack(closure, theta, f, g, direction)
            if accepted is None:  # no step decreases f enough: θ is a minimum to working precision
                break
            theta, f, g = accepted
        self._set(theta)
        self._finish()
        return torch.tensor(before)

    def _hessian(self, closure: Closure) -> Tensor:
        """∇²f by ``torch.func.hessian`` (forward-over-reverse) of f as a pure function of the flat parameters:
        ``functional_call`` puts them into the model while ``closure(backward=False)`` runs (kernel penalties read
        their weights through the modules, so they see them too)."""
        params = self._params()
        shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
        objective = _ClosureModule(self.model, closure)

        def f(flat: Tensor) -> Tensor:
            tensors = [t.view(shape) for t, shape in zip(flat.split(sizes), shapes)]
            loss = torch.func.functional_call(objective, {f"model.{n}": t for n, t in zip(self._names, tensors)}, ())
            return loss + sum(lam / 2 * t.square().sum() for t, lam in zip(tensors, self._decay()) if lam)

        with torch.enable_grad(), warnings.catch_warnings():
            # torch.func's forward-mode import scripts a helper with torch.jit, which warns on torch >= 2.10.
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
            hessian = torch.func.hessian(f)(parameters_to_vector(params).detach())
        return (hessian + hessian.T) / 2

    def _backtrack(self, closure: Closure, theta: Tensor, f: float, g: Tensor,
                   direction: Tensor) -> tuple[Tensor, float, Tensor] | None:
        slope = float(g @ direction)
        alpha = 1.0
        while alpha >= _MIN_STEP:
            trial = theta + alpha * direction
            self._set(trial)
            f_trial, g_trial = self._value_and_grad(closure)
            if f_trial <= f + _ARMIJO_C1 * alpha * slope:
                return trial, f_trial, g_trial
            alpha /= 2
        return None


class _ClosureModule(nn.Module):
    """The closure's objective as a module holding the model, so ``torch.func.functional_call`` can swap the
    model's parameters for the duration of one evaluation."""

    def __init__(self, model: nn.Module, closure: Closure):
        super().__init__()
        self.model, self.closure = model, closure

    def forward(self) -> Tensor:
        return self.closure(backward=False)


def _modified_cholesky_solve(hessian: Tensor, g: Tensor, damping: float) -> Tensor:
    """(H + τI)⁻¹g for the smallest τ ≥ ``damping`` of Algorithm 3.3's sequence that makes H + τI definite."""
    eye = torch.eye(len(g), dtype=hessian.dtype, device=hessian.device)
    min_diag = float(hessian.diagonal().min())
    tau = damping if min_diag > 0 else max(damping, _SHIFT_BETA - min_diag)
    while True:
        factor, info = torch.linalg.cholesky_ex(hessian + tau * eye)
        if int(info) == 0:
            return torch.cholesky_solve(g.reshape(-1, 1), factor).reshape(-1)
        tau = max(2 * tau, _SHIFT_BETA)


class FullBatchLBFGS(torch.optim.LBFGS):
    """``torch.optim.LBFGS`` with the strong Wolfe line search and weight decay as (λ/2)‖θ‖² in the objective.

    Two-loop recursion on the last ``history_size`` curvature pairs (Nocedal & Wright, Algorithm 7.4), which persist
    across steps in ``state_dict``. torch's LBFGS takes one parameter group, so the groups' weight decays are
    kept per parameter.
    """

    full_batch = True

    def __init__(self, groups: list[dict[str, Any]], *, lr: float, max_iter: int, tolerance: float,
                 tolerance_change: float, history_size: int, weight_decay: float = 0.0):
        params = [p for g in groups for p in g["params"]]
        super().__init__(params, lr=lr, max_iter=max_iter, tolerance_grad=tolerance,
                         tolerance_change=tolerance_change, history_size=history_size, line_search_fn="strong_wolfe")
        self._decays = [g.get("weight_decay", weight_decay) for g in groups for _ in g["params"]]

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """Up to ``max_iter`` L-BFGS iterations; the objective's value before the step."""
        closure = _require_closure(self, closure)

        def with_decay() -> Tensor:
            loss = closure()
            for p, lam in zip(self.param_groups[0]["params"], self._decays):
                if lam:
                    loss = loss + lam / 2 * p.detach().square().sum()
                    p.grad = (torch.zeros_like(p) if p.grad is None else p.grad).add_(p.detach(), alpha=lam)
            return loss

        params = self.param_groups[0]["params"]
        before = [p.detach().clone() for p in params]
        loss = super().step(with_decay)
        if all(torch.equal(a, p) for a, p in zip(before, params)):
            # torch's LBFGS stops without moving when the direction from its curvature pairs is not a descent
            # direction, and then proposes that same direction at every later step (its history cannot change):
            # forget the pairs and restart from steepest descent (Nocedal & Wright, section 7.2).
            self.state.clear()
            super().step(with_decay)
        self.zero_grad(set_to_none=True)
        return loss


def _require_closure(optimizer: torch.optim.Optimizer, closure: Closure | None) -> Closure:
    if closure is None:
        raise ValueError(f"{type(optimizer).__name__}.step needs a closure that evaluates the full-batch loss; "
                         f"it is a full-batch optimizer (full_batch = True).")
    return closure


def count_params(model: nn.Module) -> int:
    """The number of trainable parameter entries of ``model``: m, the Hessian being m × m."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
