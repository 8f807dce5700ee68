"""Optimizer specs: validated hyperparameters that build ``torch.optim`` optimizers, sorted simple to complex.

``spec.build(model)`` puts the model's trainable parameters in at most two groups: weights (ndim >= 2) take the
spec's ``weight_decay``; biases and norm scales (ndim <= 1) take none unless ``decay_all`` is set, as timm does.
The group ``lr`` is the spec's ``lr``: a schedule (``trainlab.schedules``) multiplies it step by step.

In the update rules below, g is the gradient, θ the parameters, η the learning rate and λ the weight decay.
"Coupled" decay adds λθ to g before the update (L2 regularization); "decoupled" decay shrinks θ by ηλθ apart
from the gradient step.

The full-batch specs at the end (``cg``, ``bfgs``, ``newton_cg``, ``newton``, ``lbfgs``; ``full_batch = True``)
build the optimizers of ``trainlab.second_order``, which the trainer steps once per epoch with a closure.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn

from trainlab import second_order
from trainlab.registry import Component, Registry

# Devices on which torch has a fused (one kernel for all parameters) implementation, by optimizer class; checked
# on torch 2.11 CUDA and 2.13 CPU (fused Adagrad raises on CUDA).
_FUSED_DEVICES: dict[type[torch.optim.Optimizer], frozenset[str]] = {
    torch.optim.SGD: frozenset({"cpu", "cuda"}),
    torch.optim.Adagrad: frozenset({"cpu"}),
    torch.optim.Adam: frozenset({"cpu", "cuda"}),
    torch.optim.AdamW: frozenset({"cpu", "cuda"}),
}
_FOREACH_DEVICES = frozenset({"cpu", "cuda"})


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as torch param groups.

    One group when ``weight_decay`` is 0 or ``decay_all`` is set; otherwise a group of the parameters with
    ndim >= 2 (weights, decayed) and a group of those with ndim <= 1 (biases, norm scales) with weight_decay 0.
    Empty groups are left out. Frozen parameters (``requires_grad=False``) are not optimized.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"The model has no trainable parameters (none with requires_grad=True): "
                         f"{type(model).__name__} with {sum(1 for _ in model.parameters())} parameters.")
    if weight_decay == 0 or decay_all:
        return [{"params": params}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def implementation(optimizer_class: type[torch.optim.Optimizer], params: list[torch.Tensor]) -> dict[str, bool]:
    """The fastest implementation torch offers for these parameters: ``fused``, else ``foreach``, else torch's.

    Fused kernels need floating point parameters on a device that has one (CPU and CUDA for SGD, Adam and AdamW;
    CPU only for Adagrad); foreach kernels run on CPU and CUDA (on CPU they save Python overhead too).
    """
    devices = {p.device.type for p in params}
    if devices <= _FUSED_DEVICES.get(optimizer_class, frozenset()) and all(p.is_floating_point() for p in params):
        return {"fused": True}
    if devices <= _FOREACH_DEVICES:
        return {"foreach": True}
    return {}


class OptimizerSpec(Component):
    """Base of optimizer specs: ``build(model)`` returns a torch.optim optimizer over the model's parameters."""

    # Full-batch optimizers take one ``step(closure)`` per epoch on the whole training split (see the end).
    full_batch: ClassVar[bool] = False
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    decay_all: bool = False

    @abc.abstractmethod
    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        """The torch optimizer class and its keyword arguments (all but the parameters and implementation)."""

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}.build expects a torch.nn.Module. "
                            f"Got {type(model).__name__} instead.")
        cls, kwargs = self.torch_optimizer()
        groups = param_groups(model, self.weight_decay, self.decay_all)
        params = [p for g in groups for p in g["params"]]
        return cls(groups, **kwargs, **implementation(cls, params))


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", OptimizerSpec)


@OPTIMIZERS.register("sgd")
class SGD(OptimizerSpec):
    """Plain stochastic gradient descent.

    θ ← θ − η(g + λθ).

    Robbins & Monro, "A stochastic approximation method", 1951.
    """

    lr: float = Field(0.01, gt=0)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return torch.optim.SGD, {"lr": self.lr, "weight_decay": self.weight_decay}


@OPTIMIZERS.register("momentum")
class Momentum(OptimizerSpec):
    """SGD with heavy-ball momentum.

    v ← μv + (1 − τ)(g + λθ); θ ← θ − ηv, with μ = ``momentum``, τ = ``dampening``. Polyak, "Some methods of
    speeding up the convergence of iteration methods", 1964; Sutskever et al., "On the importance of initialization
    and momentum in deep learning", 2013.
    """

    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    dampening: float = Field(0.0, ge=0, le=1)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return torch.optim.SGD, {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                                 "weight_decay": self.weight_decay}


@OPTIMIZERS.register("nesterov")
class Nesterov(OptimizerSpec):
    """SGD with Nesterov momentum: the step uses the gradient at the look-ahead point.

    v ← μv + (g + λθ); θ ← θ − η(g + λθ + μv) (Sutskever's reformulation, as torch computes it).

    Nesterov, "A method for solving the convex programming problem with convergence rate O(1/k²)", 1983;
    Sutskever et al., "On the importance of initialization and momentum in deep learning", 2013.
    """

    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, gt=0, lt=1)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return torch.optim.SGD, {"lr": self.lr, "momentum": self.momentum, "nesterov": True,
                                 "weight_decay": self.weight_decay}


@OPTIMIZERS.register("adagrad")
class Adagrad(OptimizerSpec):
    """AdaGrad: per-parameter rates from the sum of all past squared gradients, so they only shrink.

    G ← G + g²; θ ← θ − ηg / (√G + ε), g including λθ. Duchi, Hazan & Singer, "Adaptive subgradient methods for
    online learning and stochastic optimization", JMLR 2011.
    """

    lr: float = Field(0.01, gt=0)
    eps: float = Field(1e-10, gt=0)
    initial_accumulator_value: float = Field(0.0, ge=0)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return torch.optim.Adagrad, {"lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay,
                                     "initial_accumulator_value": self.initial_accumulator_value}


@OPTIMIZERS.register("rmsprop")
class RMSprop(OptimizerSpec):
    """RMSProp: per-parameter rates from a moving average of squared gradients.

    v ← αv + (1 − α)g²; θ ← θ − ηg / (√v + ε), g including λθ; with ``momentum`` μ > 0: b ← μb + g / (√v + ε);
    θ ← θ − ηb. Hinton, Srivastava & Swersky,
    "Neural networks for machine learning", lecture 6e, 2012.
    """

    lr: float = Field(1e-3, gt=0)
    alpha: float = Field(0.99, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return torch.optim.RMSprop, {"lr": self.lr, "alpha": self.alpha, "eps": self.eps,
                                     "momentum": self.momentum, "weight_decay": self.weight_decay}


class _AdamBase(OptimizerSpec):
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"The 'betas' parameter of {cls.name} must be two floats in [0, 1). "
                             f"Got {betas!r} instead.")
        return betas


@OPTIMIZERS.register("adam")
class Adam(_AdamBase):
    """Adam: RMSProp with momentum and bias correction.

    θ ← θ − η m̂ / (√v̂ + ε), m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ).
    Weight decay is coupled: g includes λθ, which Adam's per-coordinate scaling then shrinks (``adamw`` decouples
    it). Kingma & Ba, "Adam: a method for stochastic optimization", ICLR 2015.
    """

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return torch.optim.Adam, {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                                  "weight_decay": self.weight_decay}


@OPTIMIZERS.register("adamw")
class AdamW(_AdamBase):
    """AdamW: Adam with weight decay decoupled from the gradient step.

    θ ← θ(1 − ηλ) − η m̂ / (√v̂ + ε), with m̂ and v̂ as in Adam and g without λθ.

    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
    """

    weight_decay: float = Field(0.01, ge=0)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return torch.optim.AdamW, {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                                   "weight_decay": self.weight_decay}


class _FullBatchSpec(OptimizerSpec):
    """Base of the full-batch specs (``trainlab.second_order``): one ``step(closure)`` per epoch on all the data.

    Weight decay is the term (λ/2)‖θ‖² of the objective, on the decayed group as for the other optimizers.
    """

    full_batch: ClassVar[bool] = True
    max_iter: int = Field(20, ge=1, description="iterations per training step (one step per epoch)")
    tolerance: float = Field(1e-7, gt=0)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}.build expects a torch.nn.Module. "
                            f"Got {type(model).__name__} instead.")
        second_order.check_deterministic(model, self.name)
        cls, kwargs = self.torch_optimizer()
        return cls(param_groups(model, self.weight_decay, self.decay_all), weight_decay=self.weight_decay, **kwargs,
                   **self.bound_to(model))

    def bound_to(self, model: nn.Module) -> dict[str, Any]:
        """Arguments of the optimizer class that come from the model, not from the spec's fields."""
        return {}


class _ScipySpec(_FullBatchSpec):
    #: scipy chooses its own step lengths: there is no learning rate, and the param groups report 1.
    lr: ClassVar[float] = 1.0
    method: ClassVar[str] = ""

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return second_order.ScipyMinimize, {"method": self.method, "max_iter": self.max_iter,
                                            "tolerance": self.tolerance}


@OPTIMIZERS.register("cg")
class CG(_ScipySpec):
    """Nonlinear conjugate gradient (Polak-Ribière+), full batch, via scipy.optimize.minimize(method="CG").

    p₀ = −g₀, θ ← θ + αp (Wolfe line search), p ← −g + βp with β = max(0, gᵀ(g − g_prev) / ‖g_prev‖²); stops when
    ‖g‖∞ ≤ ``tolerance``. Nocedal & Wright, "Numerical Optimization", 2006, §5.2.
    """

    method: ClassVar[str] = "CG"


@OPTIMIZERS.register("bfgs")
class BFGS(_ScipySpec):
    """BFGS quasi-Newton, full batch, via scipy.optimize.minimize(method="BFGS"); O(m²) memory.

    p = −Hg, H ← (I − ρsyᵀ)H(I − ρysᵀ) + ρssᵀ with s = Δθ, y = Δg, ρ = 1/(yᵀs), H₀ = I at every training step;
    stops when ‖g‖∞ ≤ ``tolerance``. Nocedal & Wright, "Numerical Optimization", 2006, §6.1.
    """

    method: ClassVar[str] = "BFGS"


@OPTIMIZERS.register("newton_cg")
class NewtonCG(_ScipySpec):
    """Truncated Newton: CG on Hp = −g with exact Hessian-vector products, via scipy "Newton-CG".

    Hv = ∇(∇f·v) by double backward, never forming H; stops when the mean step |Δθ| ≤ ``tolerance`` (scipy's
    xtol). Nocedal & Wright, "Numerical Optimization", 2006, §7.1 (Algorithm 7.1).
    """

    method: ClassVar[str] = "Newton-CG"
    tolerance: float = Field(1e-9, gt=0)


@OPTIMIZERS.register("newton")
class Newton(_FullBatchSpec):
    """Newton's method with the exact Hessian: θ ← θ − α(H + τI)⁻¹g, O(m³) per iteration, m ≤ ``max_params``.

    τ ≥ ``damping`` raised until H + τI is positive definite (Algorithm 3.3), α by Armijo backtracking from 1
    (Algorithm 3.1); stops when ‖g‖∞ ≤ ``tolerance``. Nocedal & Wright, "Numerical Optimization", 2006, §3.4.
    """

    lr: ClassVar[float] = 1.0
    max_iter: int = Field(10, ge=1, description="iterations per training step (one step per epoch)")
    max_params: int = Field(2000, ge=1, description="the largest parameter count m whose m × m Hessian is formed")
    damping: float = Field(0.0, ge=0)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        if isinstance(model, nn.Module) and (count := second_order.count_params(model)) > self.max_params:
            raise ValueError(f"The 'max_params' parameter of newton must be at least the model's trainable "
                             f"parameter count, {count}, to form its {count} × {count} Hessian. Got "
                             f"{self.max_params} instead; raise it, or use newton_cg, lbfgs or bfgs.")
        return super().build(model)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return second_order.DampedNewton, {"max_iter": self.max_iter, "tolerance": self.tolerance,
                                           "damping": self.damping}

    def bound_to(self, model: nn.Module) -> dict[str, Any]:
        return {"model": model}  # the Hessian is taken through the model (torch.func.functional_call)


@OPTIMIZERS.register("lbfgs")
class LBFGS(_FullBatchSpec):
    """L-BFGS with a strong Wolfe line search, full batch, via torch.optim.LBFGS; O(m · history_size) memory.

    p = −H g by the two-loop recursion on the last ``history_size`` pairs (s, y), H₀ = (sᵀy / yᵀy) I, first trial
    step ``lr``; stops when ‖g‖∞ ≤ ``tolerance``, or when the loss or the step changes by at most
    ``tolerance_change``. Nocedal & Wright, "Numerical Optimization", 2006, §7.2.
    """

    lr: float = Field(1.0, gt=0)
    tolerance_change: float = Field(1e-9, gt=0)
    history_size: int = Field(100, ge=1)

    def torch_optimizer(self) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
        return second_order.FullBatchLBFGS, {"lr": self.lr, "max_iter": self.max_iter, "tolerance": self.tolerance,
                                             "tolerance_change": self.tolerance_change, "history_size": self.history_size}
