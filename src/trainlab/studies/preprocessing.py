"""Study 9: input preprocessing (raw, standardize, min-max) and the leak of a scaler fitted on all the data.

Two small tabular sets whose features live on very different scales (breast_cancer: 30 features with standard
deviations from about 0.003 to 570; wine: 13 features from about 0.1 to 310) are learned by the same MLP (2 x 64,
Adam at 1e-3, batch 32) from raw inputs, standardized inputs and inputs min-max scaled to [0, 1], the scaler fitted
on the training split. Each seed draws its own train/validation/test split (``data.split_seed`` = seed) and its own
initial weights, shared by every arm of that seed, so the arms are compared paired by seed.

Convergence is measured by the training loss after ``k_epochs`` epochs (lower = faster) and by the epochs until
the validation accuracy first reaches ``TARGET_ACC``; the final validation and test accuracy are reported too.

The leak: the same scalers fitted on all the data (``data.fit_on: all``: train, validation and test together), as
happens when a whole table is scaled before it is split. The honest pipeline's validation accuracy is an unbiased
estimate of its accuracy on new data, and a scaler fitted on a few more samples of the same distribution would not
change the accuracy on new data measurably; so the validation accuracy of the leaky pipeline minus the honest one's
(paired by seed and split) is the optimism the leak adds to the validation estimate. The claim asks for more than
``LEAK_EFFECT`` (1 point of accuracy); a 95% interval of the difference inside +-1 point refutes it. The test split is
inside the leaky scaler's fit as well, so it is no clean reference here; its change is reported alongside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from trainlab.data import DATASETS
from trainlab.figures import curves_figure, grouped_bars_figure
from trainlab.runs import RunResult
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, series)
from trainlab.studies.measures import epochs_to_accuracy, mean_finite, reached

DATASET_NAMES = ("breast_cancer", "wine")
SCALERS = ("standardize", "minmax")
ARMS: dict[str, dict[str, Any]] = {
    "raw": {"data.preprocess": "none"},
    "standardize": {"data.preprocess": "standardize"},
    "minmax": {"data.preprocess": "minmax"},
    "standardize_leak": {"data.preprocess": "standardize", "data.fit_on": "all"},
    "minmax_leak": {"data.preprocess": "minmax", "data.fit_on": "all"},
}
CURVE_ARMS = ("raw", "standardize", "minmax")
TARGET_ACC = 0.9
LEAK_EFFECT = 0.01  # the smallest optimism, in validation accuracy, that counts as an effect


@dataclass(frozen=True)
class PreprocessingBudget(Budget):
    k_epochs: int = 5  # the training loss is compared after this many epochs


def loss_after(run: RunResult, k: int) -> float:
    """The training loss of epoch ``k`` (1-based), or of the last epoch of a run that stopped before it."""
    history = run.metric("train_loss")
    return float(history[min(k, len(history)) - 1])


def feature_stds(dataset: str) -> np.ndarray:
    """The standard deviation of every raw input feature of a dataset (all its samples)."""
    return DATASETS.create(dataset).load().x_train.std(axis=0)


def claim_faster(r: dict[str, Any]) -> ClaimResult:
    k = r["k_epochs"]
    parts = {}
    for ds, runs in r["runs"].items():
        raw = [loss_after(run, k) for run in runs["raw"]]
        for scaler in SCALERS:
            parts[f"{ds}: {scaler}"] = compare_result([loss_after(run, k) for run in runs[scaler]], raw, "less",
                                                      f"{ds} training loss after {k} epochs", (scaler, "raw"))
    return joint(parts)


def claim_leak(r: dict[str, Any]) -> ClaimResult:
    return joint({ds: compare_result(finals(runs["standardize_leak"], "val_acc"),
                                     finals(runs["standardize"], "val_acc"), "greater",
                                     f"{ds} validation accuracy with standardization",
                                     ("fitted on all", "fitted on train"), min_effect=LEAK_EFFECT)
                  for ds, runs in r["runs"].items()})


CLAIMS = (
    Claim("scaled_faster", "Scaled inputs converge faster: standardized or min-max scaled features reach a lower "
                           "training loss in the same number of epochs than raw features on very different scales.",
          claim_faster),
    Claim("scaler_leak", f"A scaler fitted on all the data (a leak) makes the validation estimate optimistic: with "
                         f"standardization, the validation accuracy rises by more than {LEAK_EFFECT:g} over a scaler "
                         f"fitted on the training split only.", claim_leak),
)


@register_study
class Preprocessing(Study[PreprocessingBudget]):
    name = "preprocessing"
    title = "Input preprocessing and the scaler leak"
    question = ("On tabular data whose features have very different scales, how much faster does a network learn "
                "from standardized or min-max scaled inputs than from raw ones, and what does fitting the scaler on "
                "all the data (a leak) do to the validation estimate?")
    order = 9
    smoke = PreprocessingBudget(seeds=2, epochs=3, k_epochs=2)
    quick = PreprocessingBudget(seeds=10, epochs=30)
    full = PreprocessingBudget(seeds=20, epochs=60)
    claims = CLAIMS

    def base_config(self, dataset: str, budget: PreprocessingBudget) -> dict[str, Any]:
        return {"data": {"dataset": dataset, "val_fraction": 0.25, "batch_size": 32},
                "model": {"name": "mlp", "depth": 2, "width": 64}, "optimizer": {"name": "adam", "lr": 1e-3},
                "threads": 1, "checkpoint_every_epochs": budget.epochs}

    def measure(self, ctx: StudyContext[PreprocessingBudget]) -> dict[str, Any]:
        b = ctx.budget
        runs: dict[str, dict[str, list[RunResult]]] = {}
        for ds in DATASET_NAMES:
            runs[ds] = {arm: [] for arm in ARMS}
            # The study is about these datasets, so a --data override does not apply; each seed draws its own split.
            for seed in ctx.seeds:
                arms = {f"{ds} · {arm}": {**overrides, "data.split_seed": seed} for arm, overrides in ARMS.items()}
                trained = ctx.train_arms(self.base_config(ds, b), arms, seeds=[seed], use_data_override=False)
                for arm in ARMS:
                    runs[ds][arm] += trained[f"{ds} · {arm}"]
        return {"runs": runs, "k_epochs": b.k_epochs,
                "feature_std": {ds: feature_stds(ds).tolist() for ds in DATASET_NAMES}}

    def present(self, results: dict[str, Any], ctx: StudyContext[PreprocessingBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        runs, k = results["runs"], results["k_epochs"]
        spans = ", ".join(f"{np.log10(max(s) / min(s)):.1f} on {ds}" for ds, s in results["feature_std"].items())
        figures = [ctx.figure(_scales_figure(results["feature_std"]), "feature_scales",
                              f"Standard deviation of every raw input feature (log scale); orders of magnitude "
                              f"between the smallest and the largest: {spans}.")]
        for key, label, logy in (("train_loss", "training loss", True), ("val_acc", "validation accuracy", False)):
            fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4))
            for ax, (ds, arms) in zip(np.atleast_1d(axes), runs.items()):
                curves_figure({a: series(arms[a], key) for a in CURVE_ARMS}, title=f"{ds}: {label}",
                              xlabel="epoch", ylabel=label, logy=logy, ax=ax)
            figures.append(ctx.figure(fig, key, f"{label.capitalize()} per epoch from raw, standardized and min-max "
                                                 "scaled inputs: mean over seeds (each its own split) with 95% band."))
        figures.append(ctx.figure(_leak_figure(runs), "leak",
                                  "What fitting the scaler on all the data changes, paired by seed and split: "
                                  "validation and test accuracy of the leaky pipeline minus the honest one "
                                  "(mean and 95% CI). The test split is inside the leaky fit too."))
        rows = []
        for ds, arms in runs.items():
            for arm, rs in arms.items():
                hits = [e for e in (epochs_to_accuracy(r, TARGET_ACC, ctx.budget.epochs) for r in rs)
                        if reached(e, ctx.budget.epochs)]
                rows.append([ds, arm, mean_finite([loss_after(r, k) for r in rs]),
                             mean_finite(finals(rs, "train_loss")), mean_finite(hits) if hits else "never",
                             len(rs) - len(hits), mean_finite(finals(rs, "val_acc")),
                             mean_finite(finals(rs, "test_acc"))])
        leak_rows = []
        for ds, arms in runs.items():
            for scaler in SCALERS:
                honest, leaky = arms[scaler], arms[f"{scaler}_leak"]
                leak_rows.append([ds, scaler, *(mean_finite(np.subtract(finals(leaky, key), finals(honest, key)))
                                                for key in ("val_acc", "test_acc", "val_loss", "test_loss"))])
        return figures, [
            Table("Per dataset and arm (means over seeds)",
                  ["dataset", "arm", f"train loss after {k} epochs", "final train loss",
                   f"epochs to val acc {TARGET_ACC:g} (runs reaching it)", "runs never reaching it", "val acc",
                   "test acc"], rows),
            Table("The leak: scaler fitted on all the data minus fitted on train (means of paired differences)",
                  ["dataset", "scaler", "Δ val acc", "Δ test acc", "Δ val loss", "Δ test loss"], leak_rows),
        ]


def _scales_figure(stds: dict[str, list[float]]) -> Any:
    fig, axes = plt.subplots(1, len(stds), figsize=(6 * len(stds), 3.6))
    for ax, (ds, values) in zip(np.atleast_1d(axes), stds.items()):
        ax.bar(np.arange(len(values)), values, color="#4c72b0", alpha=0.85)
        ax.set_yscale("log")
        ax.set(title=f"{ds}: raw feature std", xlabel="feature", ylabel="std")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _leak_figure(runs: dict[str, dict[str, list[RunResult]]]) -> Any:
    series = {"validation" if key == "val_acc" else "test":
              {f"{ds}\n{scaler}": np.subtract(finals(arms[f"{scaler}_leak"], key), finals(arms[scaler], key))
               for ds, arms in runs.items() for scaler in SCALERS}
              for key in ("val_acc", "test_acc")}
    fig, ax = grouped_bars_figure(series, title="the leak's effect on accuracy estimates",
                                  ylabel="accuracy, leaky - honest")
    for bound in (-LEAK_EFFECT, LEAK_EFFECT):
        ax.axhline(bound, color="#888888", ls=":", lw=1)
    ax.axhline(0, color="black", lw=0.8)
    return fig
