"""Study 13: learning curves. Test accuracy against the training-set size, for a shallow and a deep MLP.

The notes say that with enough data a deeper model does better, that a bigger network and more data are the two
fundamental ways to improve, and that a large training set is the surest way to prevent overfitting. A shallow and
a deep MLP (``depths`` hidden layers of ``width`` units; ReLU, He init, Adam at a constant learning rate, no
regularization, as in the model_size study) are trained on stratified training sets of ``fractions`` of the whole
training split. Every run takes the same number of optimizer steps, those of ``epochs`` epochs on the whole split
(a smaller set trains proportionally more epochs), so two sizes differ in the data they see, not in how long they
train. The deep net is also trained on the smallest set with dropout (``dropout``, the regularization study's
rate), the usual cure for overfitting, to set against more data. ``measures.TrainEval`` records the accuracy on the
whole training set (eval mode) at the end; runs of one seed start from the same weights.

Definitions fixed before measuring (paired by seed; accuracies are final, with the last weights):

- *more data improves*: for each depth, the test accuracy on the whole split is above the smallest set's by more
  than ``MIN_EFFECT`` (5 points);
- *deeper with enough data*: on the whole split the deep net's test accuracy is above the shallow one's by more than
  ``DEEPER`` (1 point), and its advantage (deep - shallow) is larger on the whole split than on the smallest set by
  more than ``DEEPER``;
- *the surest cure for overfitting*: the deep net's gap (``measures.generalization_gap``: train accuracy - test
  accuracy) on the whole split is below its gap on the smallest set, and below the gap on the smallest set with
  dropout, each by more than ``MIN_EFFECT``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from trainlab.data import batches_per_epoch, split_sizes
from trainlab.figures import curves_figure
from trainlab.runs import RunResult
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint)
from trainlab.studies.measures import TrainEval, generalization_gap, mean_finite, train_metric

MIN_EFFECT = 0.05  # accuracy points from which more data, or a smaller gap, counts
DEEPER = 0.01  # accuracy points from which the deep net counts as better
BASE_CONFIG: dict[str, Any] = {
    "model": {"name": "mlp", "activation": "relu", "init": "he_normal"},
    "optimizer": {"name": "adam", "lr": 3e-3},
    "threads": 1,
}


@dataclass(frozen=True)
class CurveBudget(Budget):
    """``epochs`` is the whole training split's; a set of fraction f of it trains about ``epochs / f`` epochs."""

    fractions: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    depths: tuple[int, int] = (1, 4)  # (shallow, deep)
    width: int = 128
    dropout: float = 0.3


def train_sizes(fractions: tuple[float, ...], full: int) -> list[int]:
    """The training-set sizes: each fraction of the ``full`` split, rounded, at least one sample."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"The 'fractions' of a learning curve must be floats in (0, 1]. Got {fractions!r} instead.")
    return [max(1, round(f * full)) for f in fractions]


def equal_step_epochs(size: int, full: int, epochs: int, batch_size: int) -> int:
    """Epochs on ``size`` samples that take at least the optimizer steps of ``epochs`` epochs on ``full``."""
    return math.ceil(epochs * batches_per_epoch(full, batch_size) / batches_per_epoch(size, batch_size))


def arm_name(depth: int, size: int, dropout: float = 0.0) -> str:
    return f"depth {depth}, n={size}" + (f", dropout {dropout:g}" if dropout else "")


def _per_seed(runs: dict[str, list[RunResult]], depth: int, sizes: list[int], value: Any) -> np.ndarray:
    """seeds x sizes of ``value(run)`` for the runs of ``depth``."""
    return np.array([[value(run) for run in runs[arm_name(depth, size)]] for size in sizes]).T


def claim_more_data(r: dict[str, Any]) -> ClaimResult:
    sizes = r["sizes"]
    return joint({f"depth {d}": compare_result(r["test"][d][:, -1], r["test"][d][:, 0], "greater",
                                               f"test accuracy, {d} hidden layer(s)",
                                               (f"n={sizes[-1]}", f"n={sizes[0]}"), min_effect=MIN_EFFECT)
                  for d in r["depths"]})


def claim_deeper(r: dict[str, Any]) -> ClaimResult:
    (shallow, deep), sizes = r["depths"], r["sizes"]
    advantage = r["test"][deep] - r["test"][shallow]
    return joint({
        "deeper wins on the whole split": compare_result(
            r["test"][deep][:, -1], r["test"][shallow][:, -1], "greater", f"test accuracy on n={sizes[-1]}",
            (f"depth {deep}", f"depth {shallow}"), min_effect=DEEPER),
        "its advantage grows with data": compare_result(
            advantage[:, -1], advantage[:, 0], "greater", f"test accuracy, depth {deep} - depth {shallow}",
            (f"n={sizes[-1]}", f"n={sizes[0]}"), min_effect=DEEPER),
    })


def claim_surest_cure(r: dict[str, Any]) -> ClaimResult:
    deep, sizes = r["depths"][1], r["sizes"]
    gap = r["gap"][deep]
    what = f"train accuracy - test accuracy, depth {deep}"
    return joint({
        "smaller gap than the small set": compare_result(gap[:, -1], gap[:, 0], "less", what,
                                                         (f"n={sizes[-1]}", f"n={sizes[0]}"),
                                                         min_effect=MIN_EFFECT),
        "smaller gap than dropout on the small set": compare_result(
            gap[:, -1], r["dropout_gap"], "less", what, (f"n={sizes[-1]}", f"n={sizes[0]} with dropout"),
            min_effect=MIN_EFFECT),
    })


CLAIMS = (
    Claim("more_data", "More data is a fundamental way to improve: the same network reaches a higher test accuracy "
                       "on the whole training set than on a small part of it.", claim_more_data),
    Claim("deeper_with_data", "With enough data a deeper (bigger) network does better: on the whole training set "
                              "the deep net beats the shallow one, by more than on a small set.", claim_deeper),
    Claim("data_surest_cure", "A large training set is the surest way to prevent overfitting: it shrinks the "
                              "train-test gap more than dropout does on the small set.", claim_surest_cure),
)


@register_study
class LearningCurve(Study[CurveBudget]):
    name = "learning_curve"
    title = "Learning curves: more data against depth"
    question = ("How does the test accuracy of a shallow and a deep MLP grow with the size of the training set; "
                "does depth pay only with enough data, and does more data cure overfitting better than dropout?")
    order = 13
    smoke = CurveBudget(seeds=2, epochs=2, fractions=(0.25, 1.0), depths=(1, 2), width=16)
    quick = CurveBudget(seeds=10, epochs=20)
    full = CurveBudget(seeds=20, epochs=30)
    claims = CLAIMS

    def measure(self, ctx: StudyContext[CurveBudget]) -> dict[str, Any]:
        b = ctx.budget
        base = {**BASE_CONFIG, "model": {**BASE_CONFIG["model"], "width": b.width}}
        data = ctx.run_config(base, {"data.train_size": None}, ctx.seeds[0]).data
        full = split_sizes(data)["train"]
        sizes = train_sizes(b.fractions, full)

        def arm(depth: int, size: int, dropout: float = 0.0) -> dict[str, Any]:
            epochs = equal_step_epochs(size, full, b.epochs, data.batch_size)
            return {"model.depth": depth, "model.dropout": dropout, "data.train_size": size, "epochs": epochs,
                    "checkpoint_every_epochs": epochs}

        arms = {arm_name(d, n): arm(d, n) for d in b.depths for n in sizes}
        deep = b.depths[1]
        arms[arm_name(deep, sizes[0], b.dropout)] = arm(deep, sizes[0], b.dropout)
        runs = ctx.train_arms(base, arms, callbacks_factory=lambda a, seed: [TrainEval()])
        return {"sizes": sizes, "depths": b.depths, "dropout": b.dropout, "runs": runs,
                "test": {d: _per_seed(runs, d, sizes, lambda run: run.final["test_acc"]) for d in b.depths},
                "train": {d: _per_seed(runs, d, sizes, train_metric) for d in b.depths},
                "gap": {d: _per_seed(runs, d, sizes, generalization_gap) for d in b.depths},
                "dropout_gap": [generalization_gap(run) for run in runs[arm_name(deep, sizes[0], b.dropout)]]}

    def present(self, results: dict[str, Any], ctx: StudyContext[CurveBudget]) -> tuple[list[FigureRef], list[Table]]:
        sizes, depths, runs = results["sizes"], results["depths"], results["runs"]
        dropout_arm = arm_name(depths[1], sizes[0], results["dropout"])
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        curves = {f"depth {d}: {part}": results[part][d] for d in depths for part in ("train", "test")}
        curves_figure(curves, x=sizes, title="accuracy against the training-set size", xlabel="training samples",
                      ylabel="accuracy", ax=axes[0])
        curves_figure({f"depth {d}": results["gap"][d] for d in depths}, x=sizes, title="train - test accuracy",
                      xlabel="training samples", ylabel="gap", ax=axes[1])
        gap = results["dropout_gap"]
        axes[1].errorbar([sizes[0]], [np.mean(gap)], yerr=[[np.mean(gap) - min(gap)], [max(gap) - np.mean(gap)]],
                         fmt="s", color="black", label=f"depth {depths[1]} + dropout {results['dropout']:g}")
        axes[1].legend(fontsize=8)
        for line in axes[0].get_lines():
            line.set_linestyle("--" if line.get_label().endswith("train") else "-")
        axes[0].legend(fontsize=8)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.minorticks_off()
        figures = [ctx.figure(fig, "learning_curves",
                              "Final train (eval mode) and test accuracy, and their gap, against the number of "
                              "training samples, every run taking the same number of optimizer steps: mean over "
                              "seeds with 95% band (the square: dropout on the smallest set, mean and range).")]
        rows = [[d, n, runs[arm_name(d, n)][0].config["epochs"], mean_finite(results["train"][d][:, i]),
                 mean_finite(results["test"][d][:, i]), mean_finite(results["gap"][d][:, i])]
                for d in depths for i, n in enumerate(sizes)]
        rows.append([f"{depths[1]} + dropout {results['dropout']:g}", sizes[0], runs[dropout_arm][0].config["epochs"],
                     mean_finite([train_metric(r) for r in runs[dropout_arm]]),
                     mean_finite(finals(runs[dropout_arm], "test_acc")), mean_finite(gap)])
        return figures, [Table("Per depth and training-set size (means over seeds)",
                               ["hidden layers", "training samples", "epochs", "train acc", "test acc", "gap"],
                               rows)]
