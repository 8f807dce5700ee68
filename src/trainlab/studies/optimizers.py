"""Study 3: optimizers on a 2-D bowl and on MNIST-1D.

2-D part: the paths of sgd, momentum, nesterov, adagrad, rmsprop, adam and adamw (the torch.optim-backed specs of
``trainlab.optimizers``, on one 2-element parameter) on f(x, y) = x²/20 + y² from (-7, 2), drawn on its contour plot
as in the textbook figure. Training part: an MLP on MNIST-1D per optimizer, each at its best of a small grid around
its conventional default learning rate (1/3x, 1x, 3x, 10x; best = fewest steps to the target loss, averaged over seeds),
recording the loss of every step and each optimizer's per-parameter effective learning rate at every epoch end:

- AdaGrad: lr / (sqrt(G) + eps), G the sum of squared gradients;
- RMSProp: lr / (sqrt(v) + eps), v the moving average of squared gradients;
- Adam/AdamW: lr / (sqrt(v / (1 - beta2^t)) + eps), v bias-corrected.

The median over all parameter entries summarizes one epoch; "shrinking" compares the last epoch with the middle
one, after RMSProp's uncorrected moving average has warmed up (~1 / (1 - alpha) = 100 steps). "Steps to target" is
``measures.steps_to_target`` of the smoothed step loss (``measures.smoothed_loss``) with the target
``target_fraction`` x the first step's loss: a run that never gets there (or diverged and was stopped) counts as one
step more than a full run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from trainlab.callbacks import Callback
from trainlab.optimizers import OPTIMIZERS
from trainlab.figures import bars_figure, curves_figure
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, series, threshold_result)
from trainlab.studies.measures import StepLoss, mean_finite, reached, smoothed_loss, steps_to_target

START = (-7.0, 2.0)
# Learning rates of the 2-D paths: the textbook's (Saito, "Deep Learning from Scratch", fig. 6-8) for sgd,
# momentum, adagrad and adam; nesterov as momentum, rmsprop and adamw as their relatives.
PATH_SPECS: dict[str, dict[str, Any]] = {
    "sgd": {"name": "sgd", "lr": 0.95},
    "momentum": {"name": "momentum", "lr": 0.1, "momentum": 0.9},
    "nesterov": {"name": "nesterov", "lr": 0.1, "momentum": 0.9},
    "adagrad": {"name": "adagrad", "lr": 1.5},
    "rmsprop": {"name": "rmsprop", "lr": 0.1},
    "adam": {"name": "adam", "lr": 0.3},
    "adamw": {"name": "adamw", "lr": 0.3},
}
# Conventional defaults for training: torch's for adagrad, rmsprop and the Adams; 0.1 for sgd and 0.01 with
# momentum 0.9 (the same step size at steady state).
TRAIN_SPECS: dict[str, dict[str, Any]] = {
    "sgd": {"name": "sgd", "lr": 0.1},
    "momentum": {"name": "momentum", "lr": 0.01, "momentum": 0.9},
    "nesterov": {"name": "nesterov", "lr": 0.01, "momentum": 0.9},
    "adagrad": {"name": "adagrad", "lr": 0.01},
    "rmsprop": {"name": "rmsprop", "lr": 0.001},
    "adam": {"name": "adam", "lr": 0.001},
    "adamw": {"name": "adamw", "lr": 0.001, "weight_decay": 0.01},
}
PATH_TARGET = 0.01  # f value a 2-D path must reach
PATH_VERSION = 1


@dataclass(frozen=True)
class OptimizerBudget(Budget):
    path_steps: int = 30
    target_fraction: float = 0.5
    lr_factors: tuple[float, ...] = (1 / 3, 1.0, 3.0, 10.0)  # the grid around each default learning rate


def bowl(xy: torch.Tensor) -> torch.Tensor:
    """f(x, y) = x²/20 + y²: a bowl 20 times flatter along x than along y, minimum 0 at the origin."""
    return xy[..., 0] ** 2 / 20 + xy[..., 1] ** 2


class _Point(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.xy = nn.Parameter(torch.tensor(START, dtype=torch.float64))


def effective_lr(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """Per-entry effective learning rate of an AdaGrad, RMSProp or Adam(W) optimizer (flattened); else None."""
    parts = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "sum" in state:
                denom = state["sum"].sqrt() + group["eps"]
            elif "square_avg" in state:
                denom = state["square_avg"].sqrt() + group["eps"]
            elif "exp_avg_sq" in state:
                step = float(state["step"])
                denom = (state["exp_avg_sq"] / (1 - group["betas"][1] ** step)).sqrt() + group["eps"]
            else:
                return None
            parts.append((group["lr"] / denom).flatten())
    return torch.cat(parts) if parts else None


def path_2d(spec: dict[str, Any], steps: int) -> dict[str, np.ndarray]:
    """The iterates of one optimizer on ``bowl`` from START (``steps`` + 1 points) and f along the way."""
    point = _Point()
    optimizer = OPTIMIZERS.create(spec).build(point)
    xy = [point.xy.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        bowl(point.xy).backward()
        optimizer.step()
        xy.append(point.xy.detach().clone())
    path = torch.stack(xy)
    return {"xy": path.numpy(), "f": bowl(path).numpy()}


class EffectiveLR(Callback):
    """Stores in ``extras["effective_lr"]`` the median effective learning rate (``effective_lr``) at every epoch
    end; empty for optimizers without one."""

    def on_fit_start(self, trainer: Any) -> None:
        self.rates: list[float] = []

    def on_epoch_end(self, trainer: Any) -> None:
        rates = effective_lr(trainer.optimizer)
        if rates is not None:
            self.rates.append(float(rates.median()))

    def on_fit_end(self, trainer: Any) -> None:
        trainer.extras["effective_lr"] = self.rates


def steps_to_fraction(losses: list[float], fraction: float, total: int) -> int:
    """Steps until the smoothed loss falls to ``fraction`` of the first step's loss (``measures.steps_to_target``:
    a miss counts as ``total + 1``, ``total`` the steps of a full run)."""
    return steps_to_target(smoothed_loss(losses), fraction * losses[0], total)


def _rate_ratio(run: Any) -> float:
    """Effective learning rate at the last epoch end over the middle epoch's."""
    rates = run.extras["effective_lr"]
    return rates[-1] / rates[(len(rates) - 1) // 2]


def claim_adagrad(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]["adagrad"]
    decreasing = [float(np.mean(np.diff(run.extras["effective_lr"]) < 0)) if len(run.extras["effective_lr"]) > 1
                  else 0.0 for run in runs]
    return joint({
        "shrinks": threshold_result([_rate_ratio(run) for run in runs], "<", 1.0,
                                    "AdaGrad's effective learning rate, last epoch / middle"),
        "every epoch": threshold_result(decreasing, ">", 0.99, "share of epochs in which it fell"),
    })


def claim_rmsprop(r: dict[str, Any]) -> ClaimResult:
    rms = [_rate_ratio(run) for run in r["runs"]["rmsprop"]]
    ada = [_rate_ratio(run) for run in r["runs"]["adagrad"]]
    return compare_result(rms, ada, "greater", "effective learning rate, last epoch / middle", ("RMSProp", "AdaGrad"))


def claim_adam(r: dict[str, Any]) -> ClaimResult:
    steps = r["steps"]
    return joint({other: compare_result(steps["adam"], steps[other], "less", "steps to the target loss",
                                        ("Adam", other))
                  for other in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop")})


CLAIMS = (
    Claim("adagrad_shrinks", "AdaGrad's learning rate keeps shrinking: it divides by the sum of all past squared "
                             "gradients, which only grows.", claim_adagrad),
    Claim("rmsprop_fixes", "RMSProp fixes this: weighting recent gradients more than old ones, its effective "
                           "learning rate does not keep shrinking as AdaGrad's does.", claim_rmsprop),
    Claim("adam_fastest", "Adam (RMSProp plus momentum) converges fastest: it reaches a target loss in fewer steps "
                          "than SGD, momentum, Nesterov, AdaGrad and RMSProp.", claim_adam),
)


@register_study
class Optimizers(Study[OptimizerBudget]):
    name = "optimizers"
    title = "Optimizers"
    question = ("How do SGD, momentum, Nesterov, AdaGrad, RMSProp, Adam and AdamW move on an elongated bowl, and "
                "how fast does each train a network?")
    order = 3
    smoke = OptimizerBudget(seeds=2, epochs=2, train_size=300, path_steps=10, lr_factors=(1.0,))
    quick = OptimizerBudget(seeds=10, epochs=8)
    full = OptimizerBudget(seeds=20, epochs=30)
    claims = CLAIMS

    def base_config(self) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": 2, "width": 100}, "threads": 1}

    def measure(self, ctx: StudyContext[OptimizerBudget]) -> dict[str, Any]:
        b = ctx.budget
        paths = {name: ctx.cached("path", {"spec": spec, "steps": b.path_steps, "version": PATH_VERSION},
                                  lambda spec=spec: path_2d(spec, b.path_steps))
                 for name, spec in PATH_SPECS.items()}
        grid = {name: {f"{name}@{spec['lr'] * f:.3g}": {**spec, "lr": float(f"{spec['lr'] * f:.3g}")}
                       for f in b.lr_factors} for name, spec in TRAIN_SPECS.items()}
        arms = {arm: {"optimizer": spec} for specs in grid.values() for arm, spec in specs.items()}
        all_runs = ctx.train_arms(self.base_config(), arms,
                                  callbacks_factory=lambda arm, seed: [StepLoss(), EffectiveLR()])
        # A stopped (diverged) run is shorter than a full one; the longest run has the full length.
        total = max(len(run.extras["step_loss"]) for runs in all_runs.values() for run in runs)
        all_steps = {arm: [steps_to_fraction(run.extras["step_loss"], b.target_fraction, total) for run in runs]
                     for arm, runs in all_runs.items()}
        best = {name: min(specs, key=lambda arm: (np.mean(all_steps[arm]),
                                                  np.mean(finals(all_runs[arm], "train_loss"))))
                for name, specs in grid.items()}
        return {"paths": paths, "runs": {n: all_runs[a] for n, a in best.items()},
                "steps": {n: all_steps[a] for n, a in best.items()}, "total_steps": total,
                "lr": {n: arms[a]["optimizer"]["lr"] for n, a in best.items()},
                "grid": {n: {arms[a]["optimizer"]["lr"]: float(np.mean(all_steps[a])) for a in specs}
                         for n, specs in grid.items()}}

    def present(self, results: dict[str, Any], ctx: StudyContext[OptimizerBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        b = ctx.budget
        paths, runs, steps = results["paths"], results["runs"], results["steps"]
        figures = [ctx.figure(_paths_figure(paths), "paths",
                              f"{b.path_steps} steps of each optimizer on f(x, y) = x²/20 + y² from (-7, 2).")]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        curves_figure({n: [smoothed_loss(r.extras["step_loss"]) for r in rs] for n, rs in runs.items()},
                      title="training loss per step (moving average)", xlabel="step", ylabel="loss", logy=True,
                      ax=axes[0])
        curves_figure({n: series(rs, "val_acc") for n, rs in runs.items()}, title="validation accuracy",
                      xlabel="epoch", ylabel="accuracy", ax=axes[1])
        figures.append(ctx.figure(fig, "training", "Training on the study's dataset: mean over seeds with 95% band."))
        rates = {n: [r.extras["effective_lr"] for r in rs] for n, rs in runs.items() if rs[0].extras["effective_lr"]}
        fig = curves_figure(rates, title="median effective learning rate", xlabel="epoch", ylabel="lr", logy=True)
        figures.append(ctx.figure(fig, "effective_lr", "Median per-parameter effective learning rate at each epoch "
                                                       "end: AdaGrad's falls, RMSProp's and Adam's follow the "
                                                       "recent gradients."))
        figures.append(ctx.figure(bars_figure(steps, title=f"steps to {b.target_fraction:g} x the first loss",
                                              ylabel="steps"), "steps_to_target",
                                  "Steps until the smoothed training loss reaches the target: mean and 95% CI."))
        path_rows = [[n, PATH_SPECS[n]["lr"], float(p["f"][-1]), _first_below(p["f"], PATH_TARGET)]
                     for n, p in paths.items()]
        train_rows = [[n, results["lr"][n], mean_finite(steps[n]),
                       sum(not reached(s, results["total_steps"]) for s in steps[n]),
                       *(mean_finite(finals(rs, key)) for key in ("train_loss", "val_acc", "test_acc"))]
                      for n, rs in runs.items()]
        return figures, [
            Table("2-D bowl", ["optimizer", "lr", "final f", f"first step with f < {PATH_TARGET:g}"], path_rows),
            Table("Training at each optimizer's best learning rate (means over seeds)",
                  ["optimizer", "lr", "steps to target", "runs not reaching it", "final train loss", "val acc",
                   "test acc"], train_rows),
            Table("Learning-rate grid: mean steps to the target loss",
                  ["optimizer"] + [f"lr x {f:.3g}" for f in b.lr_factors],
                  [[n, *cells.values()] for n, cells in results["grid"].items()]),
        ]


def _first_below(f: np.ndarray, target: float) -> str:
    hit = np.flatnonzero(f < target)
    return str(int(hit[0])) if hit.size else "never"


def _paths_figure(paths: dict[str, dict[str, np.ndarray]]) -> Any:
    xs, ys = np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-5, 5, 200))
    zs = xs ** 2 / 20 + ys ** 2
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6))
    for ax, (name, path) in zip(axes.flat, paths.items()):
        ax.contour(xs, ys, zs, levels=np.geomspace(0.05, 25, 12), colors="#999999", linewidths=0.6)
        ax.plot(path["xy"][:, 0], path["xy"][:, 1], "o-", color="#cf222e", ms=2.5, lw=1)
        ax.plot(0, 0, "+", color="black")
        ax.set(title=f"{name} (lr {PATH_SPECS[name]['lr']:g})", xlim=(-10, 10), ylim=(-5, 5))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(paths):]:
        ax.axis("off")
    fig.tight_layout()
    return fig
