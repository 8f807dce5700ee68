"""Study 8: model size. A depth x width grid of MLPs on small and on full data, against parameter count.

Every MLP of the grid (``depths`` x ``widths`` hidden layers of equal width, ReLU, He init, Adam at a constant
learning rate, no regularization: capacity is the only thing that changes) is trained per seed twice: on a small
training set (``small_size`` samples, stratified) and on the whole training split. Small-data runs get more epochs
(``small_epochs``) so that both see a comparable number of optimizer steps; each run checkpoints only at its end.
Callbacks record the parameter count and the accuracy on the whole training set in eval mode after the last
epoch (``measures.TrainEval``; the loop's own train accuracy is a running mean over an epoch of changing weights) in
the run's extras.

Definitions the claims use, fixed before measuring:

- *fit*: final train accuracy (eval mode, whole training set); *gap*: ``measures.generalization_gap``, final train
  accuracy minus final test accuracy, the usual measure of overfitting;
- *rises with size*: Spearman's rank correlation between parameter count and the quantity over the grid, one per
  seed, whose mean must be > 0 (95% t interval), so depth and width count only through the parameters they add;
- *largest vs smallest*: the grid's models with the most and the fewest parameters, paired by seed; a difference
  matters from 0.05 (5 points of accuracy);
- *big models*: the upper half of the grid by parameter count; their mean gap per seed is compared between small
  and full data (paired by seed, a difference matters from 0.05).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from trainlab.callbacks import Callback
from trainlab.data import split_sizes
from trainlab.models import count_parameters
from trainlab.figures import mean_band, stack_ragged
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   joint, series, threshold_result)
from trainlab.studies.measures import TrainEval, generalization_gap, mean_finite, rank_correlation, train_metric

SIZES = ("small", "full")
SIZE_LABELS = {"small": "small data", "full": "full data"}
MIN_EFFECT = 0.05  # accuracy points below which a difference does not matter
BASE_CONFIG: dict[str, Any] = {
    "model": {"name": "mlp", "activation": "relu", "init": "he_normal"},
    "optimizer": {"name": "adam", "lr": 3e-3},
    "threads": 1,
}


@dataclass(frozen=True)
class SizeBudget(Budget):
    """``epochs`` is the full-data run's; small-data runs train ``small_size`` samples for ``small_epochs``."""

    depths: tuple[int, ...] = (1, 2, 4)
    widths: tuple[int, ...] = (16, 64, 256)
    small_size: int = 400
    small_epochs: int = 100


class ParameterCount(Callback):
    """Puts the model's parameter count in ``extras["parameters"]`` at fit end."""

    per_replica = True

    def on_fit_end(self, trainer: Any) -> None:
        trainer.extras["parameters"] = count_parameters(trainer.model)


@dataclass
class SizeResults:
    """The grid's measurements: ``models`` is the list of (depth, width); arrays are seeds x models per data size."""

    models: list[tuple[int, int]]
    params: np.ndarray  # parameters per model
    train: dict[str, np.ndarray]  # final train accuracy (eval mode)
    val: dict[str, np.ndarray]  # final validation accuracy
    test: dict[str, np.ndarray]
    gap: dict[str, np.ndarray]  # generalization gap: train accuracy - test accuracy
    small_size: int
    full_size: int
    runs: dict[str, dict[tuple[int, int], list[Any]]]  # data size -> model -> RunResult per seed

    @property
    def smallest(self) -> int:
        return int(np.argmin(self.params))

    @property
    def largest(self) -> int:
        return int(np.argmax(self.params))

    @property
    def big(self) -> np.ndarray:
        """Indices of the upper half of the grid by parameter count (the middle model included when odd)."""
        order = np.argsort(self.params, kind="stable")
        return order[len(order) // 2:]

    def label(self, index: int) -> str:
        depth, width = self.models[index]
        return f"{depth}x{width} ({int(self.params[index]):,} params)"


def small_train_size(requested: int, full: int) -> int:
    """The small training set's size: ``requested``, but at most a quarter of the ``full`` training split, so that
    "small" stays well below "full" whatever dataset the user picks."""
    return min(requested, full // 4)


def per_seed_correlation(params: np.ndarray, values: np.ndarray) -> list[float]:
    """One rank correlation between parameter count and ``values`` (seeds x models) per seed."""
    return [rank_correlation(params, row) for row in np.asarray(values, dtype=float)]


def claim_fit_more(r: SizeResults) -> ClaimResult:
    parts = {}
    for size in SIZES:
        parts[f"{size}: rank"] = threshold_result(per_seed_correlation(r.params, r.train[size]), ">", 0.0,
                                                  f"Spearman rho(parameters, train accuracy) on {SIZE_LABELS[size]}")
        parts[f"{size}: extremes"] = compare_result(r.train[size][:, r.largest], r.train[size][:, r.smallest],
                                                    "greater", f"train accuracy on {SIZE_LABELS[size]}",
                                                    (r.label(r.largest), r.label(r.smallest)),
                                                    min_effect=MIN_EFFECT)
    return joint(parts)


def claim_overfit_small(r: SizeResults) -> ClaimResult:
    big = r.big
    return joint({
        "gap rises with size": threshold_result(per_seed_correlation(r.params, r.gap["small"]), ">", 0.0,
                                                "Spearman rho(parameters, train-test gap) on small data"),
        "small vs full": compare_result(r.gap["small"][:, big].mean(axis=1), r.gap["full"][:, big].mean(axis=1),
                                        "greater", f"mean train-test gap of the {len(big)} biggest models",
                                        ("small data", "full data"), min_effect=MIN_EFFECT),
    })


CLAIMS = (
    Claim("bigger_fit_more", "Bigger nets fit more: the more parameters, the higher the training accuracy.",
          claim_fit_more),
    Claim("bigger_overfit_small", "Bigger nets overfit small data: on a small training set the gap between "
                                  "training and test accuracy grows with the parameter count, and it is larger "
                                  "than on the full training set.", claim_overfit_small),
)


@register_study
class ModelSize(Study[SizeBudget]):
    name = "model_size"
    title = "Model size"
    question = ("How do training and validation accuracy change with the depth and width of an MLP, on a small and "
                "on the full training set?")
    order = 8
    smoke = SizeBudget(seeds=2, epochs=2, depths=(1, 2), widths=(8, 32), small_size=100, small_epochs=6)
    quick = SizeBudget(seeds=10, epochs=20)
    full = SizeBudget(seeds=20, epochs=40, depths=(1, 2, 4, 6), widths=(8, 16, 32, 64, 128, 256, 512),
                      small_epochs=150)
    claims = CLAIMS

    def measure(self, ctx: StudyContext[SizeBudget]) -> SizeResults:
        b = ctx.budget
        full_size = split_sizes(ctx.run_config(BASE_CONFIG, {"data.train_size": None}, ctx.seeds[0]).data)["train"]
        small_size = small_train_size(b.small_size, full_size)
        models = [(d, w) for d in b.depths for w in b.widths]
        setting = {"small": {"data.train_size": small_size, "epochs": b.small_epochs,
                             "checkpoint_every_epochs": b.small_epochs},
                   "full": {"data.train_size": None, "epochs": b.epochs, "checkpoint_every_epochs": b.epochs}}
        arms = {f"{size} {d}x{w}": {**setting[size], "model.depth": d, "model.width": w}
                for size in SIZES for d, w in models}
        runs = ctx.train_arms(BASE_CONFIG, arms, callbacks_factory=lambda arm, seed: [ParameterCount(), TrainEval()])
        by_size = {size: {m: runs[f"{size} {m[0]}x{m[1]}"] for m in models} for size in SIZES}

        def matrix(size: str, value: Any) -> np.ndarray:
            return np.array([[value(run) for run in by_size[size][m]] for m in models]).T

        params = np.array([by_size["full"][m][0].extras["parameters"] for m in models], dtype=float)
        return SizeResults(
            models, params,
            train={s: matrix(s, train_metric) for s in SIZES},
            val={s: matrix(s, lambda run: run.final["val_acc"]) for s in SIZES},
            test={s: matrix(s, lambda run: run.final["test_acc"]) for s in SIZES},
            gap={s: matrix(s, generalization_gap) for s in SIZES},
            small_size=small_size, full_size=full_size, runs=by_size)

    def present(self, results: SizeResults, ctx: StudyContext[SizeBudget]) -> tuple[list[FigureRef], list[Table]]:
        r = results
        sizes = f"{r.small_size} vs {r.full_size} training samples"
        figures = [
            ctx.figure(_accuracy_figure(r), "accuracy_vs_parameters",
                       f"Final train (solid) and test (dashed) accuracy against parameter count, one line per "
                       f"depth (width grows along it), and the train-test gap ({sizes}); mean over seeds with "
                       f"95% band."),
            ctx.figure(_heatmaps(r), "heatmaps", "Test accuracy and train-test gap over depth x width, mean over "
                                                 "seeds."),
            ctx.figure(_curves_figure(r), "learning_curves",
                       "Accuracy per epoch of the smallest, a middle and the largest model: train accuracy (running "
                       "mean over each epoch, solid) and validation accuracy (dashed); mean over seeds, 95% band."),
        ]
        rows = []
        for size in SIZES:
            for i, (depth, width) in enumerate(r.models):
                rows.append([SIZE_LABELS[size], depth, width, int(r.params[i]),
                             *(mean_finite(m[size][:, i]) for m in (r.train, r.val, r.gap, r.test))])
        rhos = {f"{what} {size}": per_seed_correlation(r.params, values[size])
                for what, values in (("train acc", r.train), ("gap", r.gap)) for size in SIZES}
        seeds = list(ctx.seeds)
        return figures, [
            Table(f"Final accuracy per model (means over {len(seeds)} seeds; {sizes})",
                  ["data", "depth", "width", "parameters", "train acc", "val acc", "train - test", "test acc"], rows),
            Table("Spearman rank correlation with the parameter count, per seed",
                  ["seed", *(f"rho(params, {k})" for k in rhos)],
                  [[seed, *(rhos[k][j] for k in rhos)] for j, seed in enumerate(seeds)]),
        ]


def _by_depth(r: SizeResults) -> dict[int, list[int]]:
    """Model indices per depth, sorted by parameter count."""
    out: dict[int, list[int]] = {}
    for i, (depth, _) in enumerate(r.models):
        out.setdefault(depth, []).append(i)
    return {d: sorted(idx, key=lambda i: r.params[i]) for d, idx in sorted(out.items())}


def _band(ax: Any, x: np.ndarray, values: np.ndarray, color: Any, style: str, label: str | None) -> None:
    mean, low, high = mean_band(values)
    ax.plot(x, mean, style, color=color, lw=1.6, ms=4, label=label)
    ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)


def _legend(ax: Any, styles: tuple[str, str]) -> None:
    """The colour legend plus two black proxies naming what the solid and the dashed lines are."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="black", ls="-"), Line2D([], [], color="black", ls="--")]
    ax.legend(handles, labels + list(styles), fontsize=8)


def _accuracy_figure(r: SizeResults) -> Any:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = _by_depth(r)
    for ax, size in zip(axes[:2], SIZES):
        for k, (depth, idx) in enumerate(groups.items()):
            color = colors[k % len(colors)]
            _band(ax, r.params[idx], r.train[size][:, idx], color, "o-", f"depth {depth}")
            _band(ax, r.params[idx], r.test[size][:, idx], color, "s--", None)
        n = r.small_size if size == "small" else r.full_size
        ax.set(title=f"{SIZE_LABELS[size]} ({n} training samples)", ylabel="accuracy", ylim=(0, 1.05))
        _legend(ax, ("train", "test"))
    for k, (depth, idx) in enumerate(groups.items()):
        color = colors[k % len(colors)]
        _band(axes[2], r.params[idx], r.gap["small"][:, idx], color, "o-", f"depth {depth}")
        _band(axes[2], r.params[idx], r.gap["full"][:, idx], color, "s--", None)
    axes[2].set(title="train - test accuracy", ylabel="gap")
    _legend(axes[2], ("small data", "full data"))
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _heatmaps(r: SizeResults) -> Any:
    depths = sorted({d for d, _ in r.models})
    widths = sorted({w for _, w in r.models})
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for row, (what, values, cmap) in enumerate((("test accuracy", r.test, "viridis"),
                                                 ("train - test accuracy", r.gap, "magma"))):
        for col, size in enumerate(SIZES):
            grid = np.full((len(depths), len(widths)), np.nan)
            for i, (d, w) in enumerate(r.models):
                grid[depths.index(d), widths.index(w)] = values[size][:, i].mean()
            ax = axes[row, col]
            image = ax.imshow(grid, cmap=cmap, origin="lower", aspect="auto")
            fig.colorbar(image, ax=ax, shrink=0.85)
            for (i, j), value in np.ndenumerate(grid):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value < np.nanmean(grid) else "black")
            ax.set_xticks(range(len(widths)), [str(w) for w in widths])
            ax.set_yticks(range(len(depths)), [str(d) for d in depths])
            ax.set(title=f"{what}, {SIZE_LABELS[size]}", xlabel="width", ylabel="depth")
    fig.tight_layout()
    return fig


def _curves_figure(r: SizeResults) -> Any:
    order = np.argsort(r.params, kind="stable")
    picks = list(dict.fromkeys([int(order[0]), int(order[len(order) // 2]), int(order[-1])]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, size in zip(axes, SIZES):
        for k, i in enumerate(picks):
            runs = r.runs[size][r.models[i]]
            train, val = stack_ragged(series(runs, "train_acc")), stack_ragged(series(runs, "val_acc"))
            epochs = np.arange(1, train.shape[1] + 1)
            _band(ax, epochs, train, colors[k], "-", r.label(i))
            _band(ax, epochs, val, colors[k], "--", None)
        ax.set(title=SIZE_LABELS[size], xlabel="epoch", ylabel="accuracy", ylim=(0, 1.05))
        ax.grid(alpha=0.3)
        _legend(ax, ("train (running)", "validation"))
    fig.tight_layout()
    return fig
