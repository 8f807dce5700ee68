"""Full-batch second-order and quasi-Newton optimizers: closed-form optima, scipy agreement, errors, the trainer.

Nocedal & Wright, "Numerical Optimization", 2006: on a strictly convex problem every method converges to the one
minimizer, so the closed form (ridge) and an independent scipy run (logistic regression) are the references.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from trainlab.callbacks import Callback
from trainlab.config import load_config
from trainlab.optimizers import OPTIMIZERS
from trainlab.registry import ConfigError
from trainlab.runs import train
from trainlab.data import Data
from trainlab.trainer import Trainer, build_trainer

FULL_BATCH = ["newton", "newton_cg", "cg", "bfgs", "lbfgs"]
# Enough iterations per step that one or a few steps converge on these small convex problems.
FIELDS = {"newton": {"max_iter": 20}, "newton_cg": {"max_iter": 200}, "cg": {"max_iter": 500, "tolerance": 1e-10},
          "bfgs": {"max_iter": 500, "tolerance": 1e-10}, "lbfgs": {"max_iter": 500, "tolerance": 1e-12, "tolerance_change": 1e-15}}


def test_every_full_batch_optimizer_is_tested_here():
    assert set(FULL_BATCH) == {n for n in OPTIMIZERS.names() if getattr(OPTIMIZERS.get(n), "full_batch", False)}


def closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn):
    """The trainer's closure contract: zero grads, full-batch loss, backward, return it; or the attached loss."""

    def closure(backward: bool = True) -> torch.Tensor:
        loss = loss_fn(model(x), y)
        if not backward:
            return loss
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    return closure


def minimize(name: str, model: nn.Module, closure, steps: int = 5, **fields) -> torch.Tensor:
    optimizer = OPTIMIZERS.create({"name": name, **FIELDS[name], **fields}).build(model)
    assert optimizer.full_batch and OPTIMIZERS.get(name).full_batch
    for _ in range(steps):
        optimizer.step(closure)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def ridge_problem(n: int = 40, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, 1, generator=g,
                                                                                    dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("name", FULL_BATCH)
def test_the_trainer_reaches_the_ridge_closed_form(name):
    # The trainer minimizes f(w) = (1/n)‖Xw − y‖² (MSELoss, mean) + (λ/2)‖w‖² (coupled weight decay) on the whole
    # training split; ∇f = 0 gives (2/n)Xᵀ(Xw − y) + λw = 0: ridge regression w* = (XᵀX + αI)⁻¹Xᵀy, α = nλ/2.
    x, y = ridge_problem()
    n, d = x.shape
    decay = 0.1
    torch.manual_seed(0)
    model = nn.Linear(d, 1, bias=False).double()
    none = x[:0]
    data = Data(x, y, none, y[:0], none, y[:0], task="regression", num_classes=None)
    optimizer = OPTIMIZERS.create({"name": name, **FIELDS[name], "weight_decay": decay}).build(model)
    Trainer(model, data, optimizer, epochs=5).fit()
    want = torch.linalg.solve(x.T @ x + n * decay / 2 * torch.eye(d, dtype=torch.float64), x.T @ y).reshape(-1)
    torch.testing.assert_close(model.weight.detach().reshape(-1), want, rtol=0, atol=1e-5)


def logistic_problem(n: int = 60, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d))
    y = (x @ np.array([1.5, -2.0, 0.5]) + rng.normal(size=n) > 0).astype(np.int64)
    return x, y


def scipy_logistic(x: np.ndarray, y: np.ndarray, decay: float, start: np.ndarray) -> np.ndarray:
    """BFGS on f(W, b) = mean cross-entropy of softmax(xWᵀ + b) + (λ/2)(‖W‖² + ‖b‖²), gradient by hand."""
    n, d = x.shape
    onehot = np.eye(2)[y]

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:2 * d].reshape(2, d), theta[2 * d:]
        logits = x @ w.T + b
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        residual = (np.exp(logp) - onehot) / n
        grad = np.concatenate([(residual.T @ x).reshape(-1), residual.sum(0)]) + decay * theta
        return -(onehot * logp).sum() / n + decay / 2 * theta @ theta, grad

    return scipy.optimize.minimize(fun, start, jac=True, method="BFGS", options={"gtol": 1e-10}).x


@pytest.mark.parametrize("name", FULL_BATCH)
def test_logistic_regression_agrees_with_scipy_bfgs(name):
    x, y = logistic_problem()
    decay = 0.05
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 2).double()
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    closure = closure_for(model, torch.from_numpy(x), torch.from_numpy(y), nn.CrossEntropyLoss())
    got = minimize(name, model, closure, weight_decay=decay, decay_all=True)
    np.testing.assert_allclose(got.numpy(), scipy_logistic(x, y, decay, start), rtol=0, atol=1e-4)


def test_newton_refuses_a_model_above_max_params():
    model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 2))  # 220 + 42 = 262 parameters
    with pytest.raises(ValueError, match=r"The 'max_params' parameter of newton must be at least the model's "
                                         r"trainable parameter count, 262, .* Got 100 instead"):
        OPTIMIZERS.create({"name": "newton", "max_params": 100}).build(model)
    assert OPTIMIZERS.create({"name": "newton", "max_params": 262}).build(model).full_batch


@pytest.mark.parametrize("name", FULL_BATCH)
@pytest.mark.parametrize(("module", "kind"), [(nn.Dropout(0.1), r"Dropout \(p=0.1\)"), (nn.BatchNorm1d(4), "BatchNorm1d")])
def test_dropout_and_batch_norm_are_refused(name, module, kind):
    model = nn.Sequential(nn.Linear(3, 4), module, nn.Linear(4, 2))
    with pytest.raises(ValueError, match=rf"The {name} optimizer .* a {kind} module at '1'.*"
                                         r"Set model.dropout=0 and model.norm=none or layer"):
        OPTIMIZERS.create(name).build(model)
    OPTIMIZERS.create(name).build(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.Linear(4, 2)))


def test_step_without_closure_is_an_error():
    for name in FULL_BATCH:
        with pytest.raises(ValueError, match="needs a closure"):
            OPTIMIZERS.create(name).build(nn.Linear(2, 1)).step()


MOONS = {"seed": 0, "data": {"dataset": {"name": "moons", "n_samples": 200}},
         "model": {"name": "mlp", "depth": 1, "width": 8, "activation": "tanh", "norm": "none", "dropout": 0.0},
         "optimizer": {"name": "bfgs", "max_iter": 10}, "epochs": 4}


class Events(Callback):
    def __init__(self):
        self.seen: list[str] = []

    def on_step_start(self, trainer): self.seen.append("step_start")  # noqa: E704
    def after_backward(self, trainer): self.seen.append("backward")  # noqa: E704
    def on_step_end(self, trainer): self.seen.append("step_end")  # noqa: E704


def test_bfgs_config_trains_moons_end_to_end():
    events = Events()
    trainer = build_trainer(load_config(MOONS), callbacks=[events])
    first_loss = trainer.evaluate("train")["loss"]
    trainer.fit()
    history = trainer.history
    assert [r["step"] for r in history] == [1, 2, 3, 4]  # one step per epoch
    assert events.seen == ["step_start", "backward", "step_end"] * 4
    # train_loss is the full-batch loss before each step: the first is the initial model's, and each later one is
    # the loss the previous step ended at, so it falls.
    assert history[0]["train_loss"] == pytest.approx(first_loss, rel=1e-6)
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert trainer.evaluate("train")["loss"] < history[1]["train_loss"]
    assert history[-1]["lr"] == 1.0


class Interrupt(Callback):
    def on_epoch_end(self, trainer):
        if trainer.epoch == 2:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", ["lbfgs", "newton"])
def test_resume_matches_an_uninterrupted_run(name, tmp_path):
    cfg = {**MOONS, "optimizer": {"name": name, "max_iter": 3}}
    whole = train(load_config(cfg), tmp_path / "whole", keep_model=True)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(cfg), tmp_path / "cut", callbacks=[Interrupt()])
    resumed = train(load_config(cfg), tmp_path / "cut", resume=True, keep_model=True)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


@pytest.mark.parametrize(("override", "path"), [
    ({"grad_clip": 1.0}, "grad_clip"), ({"gradient_noise": 0.1}, "gradient_noise"),
    ({"schedule": {"name": "cosine"}}, "schedule"),
    ({"data": {**MOONS["data"], "augment": [{"name": "gaussian_noise", "std": 0.1}]}}, "data.augment"),
])
def test_what_a_full_batch_step_cannot_honour_is_refused(override, path):
    with pytest.raises(ConfigError, match=rf"The '{path}' parameter cannot apply with the full-batch optimizer bfgs"):
        build_trainer(load_config({**MOONS, **override}))
    build_trainer(load_config({**MOONS, **override, "optimizer": "adamw"}))


def test_lbfgs_takes_a_schedule_on_its_lr_one_step_per_epoch():
    cfg = {**MOONS, "optimizer": {"name": "lbfgs", "lr": 0.5, "max_iter": 2}, "schedule": {"name": "cosine"}}
    trainer = build_trainer(load_config(cfg))
    trainer.fit()
    lrs = [r["lr"] for r in trainer.history]
    assert lrs[0] < 0.5 and lrs == sorted(lrs, reverse=True)


def test_lbfgs_one_iteration_per_step_does_not_stall():
    # torch's LBFGS, stepped with max_iter=1, can stop on a non-descent direction and repeat it forever; a step
    # that did not move restarts from steepest descent.
    from trainlab.config import load_config
    from trainlab.trainer import build_trainer

    cfg = {"data": {"dataset": {"name": "moons", "n_samples": 320}},
           "model": {"name": "mlp", "depth": 1, "width": 16, "activation": "tanh", "norm": "none", "dropout": 0.0},
           "optimizer": {"name": "lbfgs", "max_iter": 1}, "epochs": 30, "threads": 1}
    trainer = build_trainer(load_config(cfg))
    trainer.fit()
    losses = [row["train_loss"] for row in trainer.history]
    assert losses[-1] < 0.25 and len(set(losses[-10:])) == 10  # still moving at the end (it froze at 0.3146)


def test_newton_hessian_is_the_exact_hessian_of_loss_penalties_and_decay():
    """torch.func.hessian through functional_call sees the swapped weights in the loss, in an L2 kernel penalty
    and in the weight decay: it equals torch.autograd.functional.hessian of the same objective written out."""
    from trainlab.regularizers import REGULARIZERS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.arange(16) % 2
    penalty = REGULARIZERS.create({"name": "l2", "strength": 0.3}).attach(model)  # the two weight matrices

    def closure(backward: bool = True) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y) + penalty.value()
        if not backward:
            return loss
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    optimizer = OPTIMIZERS.create({"name": "newton", "weight_decay": 0.05, "decay_all": True}).build(model)
    shapes = [p.shape for p in model.parameters()]

    def written_out(flat: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (t.view(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes))
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return (nn.functional.cross_entropy(out, y) + 0.15 * (w1.square().sum() + w2.square().sum())
                + 0.025 * flat.square().sum())

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    expected = torch.autograd.functional.hessian(written_out, flat)
    torch.testing.assert_close(optimizer._hessian(closure), expected, rtol=1e-10, atol=1e-12)
