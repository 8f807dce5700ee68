"""Study 4: the learning rate — an LR range test, and a sweep from far too low to far too high.

Sweep: one MLP on MNIST-1D trained with plain SGD at each learning rate of a log grid (``lrs``, 1e-4 to 10, half a
decade apart) for the same budget, recording every step's loss. Final loss against lr is the U-curve: too low barely
moves, too high blows up. Range test (``trainlab.lr_range.lr_range_test``, Smith 2017): one short run per seed with
the lr rising geometrically from 1e-6 to 10; its suggestion (a tenth of the lr at the lowest smoothed loss) is then
trained with the sweep's budget and compared with the sweep's best lr.

Definitions fixed before measuring:

- *diverged*: the run's loss became non-finite (the NonFiniteGuard stopped it), or some step's loss exceeded
  ``EXPLODE`` times the first step's loss. (A loss that explodes can afterwards settle at the chance level, when the
  blow-up killed every ReLU; such a run still diverged.) The statistics take finite numbers only, so divergence
  enters the claims as a 0/1 indicator and diverged runs leave the loss curves where they stop.
- *best lr*: the sweep lr with the highest mean final validation accuracy among lrs where no seed diverged.
- *much higher loss*: the lowest lr's final training loss over the best lr's (same seed) is above ``SLOW_RATIO``.
- *trains well*: the suggested lr's final validation accuracy is within ``ACC_TOLERANCE`` of the best lr's (same
  seed): it lands in the flat bottom of the U-curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from trainlab.lr_range import LRRangeResult, lr_range_test
from trainlab.figures import mean_band, plot_lr_range
from trainlab.runs import RunResult
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, finals,
                                   threshold_result)
from trainlab.studies.measures import StepLoss, mean_finite, smoothed_loss

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
RANGE = (1e-6, 10.0)
EXPLODE = 2.0
SLOW_RATIO = 2.0
ACC_TOLERANCE = 0.05
RANGE_VERSION = 1  # bump when the range test changes, so cached results are recomputed


@dataclass(frozen=True)
class LRBudget(Budget):
    lrs: tuple[float, ...] = LRS
    range_steps: int = 100


def diverged(run: RunResult) -> bool:
    """Whether a run's loss became non-finite or exploded past ``EXPLODE`` x its first step's (see the docstring)."""
    losses = np.asarray(run.extras.get("step_loss", []), dtype=float)
    if run.extras.get("diverged") or not run.history or not math.isfinite(run.history[-1]["train_loss"]):
        return True
    if losses.size == 0:
        return False
    return bool(not np.all(np.isfinite(losses)) or losses.max() > EXPLODE * losses[0])


def best_lr(sweep: dict[float, list[RunResult]]) -> float:
    """The lr with the highest mean final validation accuracy among lrs where no run diverged."""
    stable = {lr: runs for lr, runs in sweep.items() if not any(diverged(r) for r in runs)}
    if not stable:
        raise ValueError("Every learning rate of the sweep diverged on some seed; there is no best one.")
    return max(stable, key=lambda lr: float(np.mean(finals(stable[lr], "val_acc"))))


def arm(lr: float) -> str:
    return f"lr={lr:g}"


def claim_too_low(r: dict[str, Any]) -> ClaimResult:
    low = min(r["sweep"])
    ratios = [a / b for a, b in zip(finals(r["sweep"][low], "train_loss"),
                                    finals(r["sweep"][r["best_lr"]], "train_loss"))]
    return threshold_result(ratios, ">", SLOW_RATIO,
                            f"final train loss at lr {low:g} / at the best lr {r['best_lr']:g}")


def claim_too_high(r: dict[str, Any]) -> ClaimResult:
    high = max(r["sweep"])
    return threshold_result([float(diverged(run)) for run in r["sweep"][high]], ">", 0.5,
                            f"share of runs at lr {high:g} that diverged")


def claim_range_test(r: dict[str, Any]) -> ClaimResult:
    gaps = [best - mine for best, mine in zip(finals(r["sweep"][r["best_lr"]], "val_acc"),
                                              finals(r["suggested"], "val_acc"))]
    found = threshold_result(gaps, "<", ACC_TOLERANCE,
                             f"val accuracy at the best sweep lr {r['best_lr']:g} minus at the suggested lr")
    lrs = [t.suggested_lr for t in r["range"]]
    return ClaimResult(found.verdict, found.evidence + f" Suggested lrs: {', '.join(f'{x:.3g}' for x in lrs)}.",
                       {**found.numbers, "suggested lr (geometric mean)": float(np.exp(np.mean(np.log(lrs))))})


CLAIMS = (
    Claim("too_low", "A learning rate that is too low is slow: after the same budget its loss is much higher "
                     "(over 2x) than at the best learning rate.", claim_too_low),
    Claim("too_high", "A learning rate that is too high diverges: the loss explodes or becomes non-finite.",
          claim_too_high),
    Claim("range_test", "The LR range test (a tenth of the lr at its loss minimum) suggests a learning rate that "
                        "trains well: within 5 points of validation accuracy of the sweep's best.",
          claim_range_test),
)


@register_study
class LearningRate(Study[LRBudget]):
    name = "learning_rate"
    title = "Learning rate"
    question = ("What happens when the learning rate is too low or too high, and does the LR range test find a "
                "good one in a single short run?")
    order = 4
    smoke = LRBudget(seeds=2, epochs=1, train_size=300, lrs=(1e-3, 0.1, 10.0), range_steps=20)
    quick = LRBudget(seeds=10, epochs=10)
    full = LRBudget(seeds=20, epochs=30, range_steps=200)
    claims = CLAIMS

    def base_config(self) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": 2, "width": 64}, "optimizer": {"name": "sgd", "lr": 0.1},
                "threads": 1}

    def measure(self, ctx: StudyContext[LRBudget]) -> dict[str, Any]:
        b = ctx.budget
        base = self.base_config()
        recorder = lambda arm, seed: [StepLoss()]  # noqa: E731
        runs = ctx.train_arms(base, {arm(lr): {"optimizer.lr": lr} for lr in b.lrs}, callbacks_factory=recorder)
        sweep = {lr: runs[arm(lr)] for lr in b.lrs}
        tests = []
        with ctx.task(f"{self.name} · range test", len(ctx.seeds)) as advance:
            for seed in ctx.seeds:
                config = ctx.run_config(base, {}, seed)  # the sweep's config of this seed
                params = {"config": config.model_dump(mode="json"), "range": RANGE, "steps": b.range_steps,
                          "version": RANGE_VERSION}
                raw = ctx.cached("range_test", params,
                                 lambda c=config: lr_range_test(c, *RANGE, b.range_steps).to_dict())
                tests.append(LRRangeResult.from_dict(raw))
                advance()
        # Each seed trains its own suggestion, rounded so that the run's config (and cache key) reads cleanly.
        suggested = [ctx.train_arms(base, {"suggested": {"optimizer.lr": float(f"{t.suggested_lr:.3g}")}},
                                    seeds=[seed], callbacks_factory=recorder)["suggested"][0]
                     for seed, t in zip(ctx.seeds, tests)]
        return {"sweep": sweep, "range": tests, "suggested": suggested, "best_lr": best_lr(sweep)}

    def present(self, results: dict[str, Any], ctx: StudyContext[LRBudget]) -> tuple[list[FigureRef], list[Table]]:
        sweep, tests, suggested = results["sweep"], results["range"], results["suggested"]
        figures = []
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for seed, test in zip(ctx.seeds, tests):
            plot_lr_range(test, ax=ax, label=f"seed {seed}", raw=False)
        ax.set_title("LR range test: smoothed loss while the lr grows (dashed: min-loss lr / 10, dotted: steepest)")
        ax.title.set_fontsize(9)
        figures.append(ctx.figure(fig, "range_test", "One short run per seed with the lr rising from 1e-6 to 10; the "
                                                     "loss falls once the lr is large enough and explodes when it is "
                                                     "too large."))
        figures.append(ctx.figure(_u_curve(sweep, suggested, results["best_lr"]), "u_curve",
                                  "Final training loss and validation accuracy against the learning rate: mean over "
                                  "seeds with 95% CI; red crosses mark runs that diverged; the green diamond is "
                                  "the range test's suggestion."))
        figures.append(ctx.figure(_curves(sweep), "training", "Training loss per step (moving average) for every "
                                                              "learning rate: mean over seeds; curves of diverged "
                                                              "runs end where the loss stops being finite."))
        rows = []
        for lr, runs in sweep.items():
            ok = [r for r in runs if not diverged(r)]
            rows.append([lr, f"{len(runs) - len(ok)}/{len(runs)}", mean_finite(finals(ok, "train_loss")) if ok else "-",
                         mean_finite(finals(runs, "val_acc")), mean_finite([_explosion(r) for r in runs])])
        table = Table("Sweep: plain SGD, means over seeds", ["lr", "diverged", "final train loss (not diverged)",
                                                             "val acc", "max / first step loss"], rows)
        best = finals(sweep[results["best_lr"]], "val_acc")
        range_rows = [[seed, t.min_loss_lr, t.steepest_lr, t.suggested_lr, t.stopped_reason,
                       finals([run], "val_acc")[0], acc]
                      for seed, t, run, acc in zip(ctx.seeds, tests, suggested, best)]
        range_table = Table(f"Range test per seed (best sweep lr: {results['best_lr']:g})",
                            ["seed", "min-loss lr", "steepest lr", "suggested lr", "ended", "val acc at suggested",
                             "val acc at best sweep lr"], range_rows)
        return figures, [table, range_table]


def _explosion(run: RunResult) -> float:
    losses = np.asarray(run.extras.get("step_loss", []), dtype=float)
    finite = losses[np.isfinite(losses)]
    return float(finite.max() / losses[0]) if finite.size and np.isfinite(losses[0]) else float("nan")


def _u_curve(sweep: dict[float, list[RunResult]], suggested: list[RunResult], best: float) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    lrs = np.array(list(sweep))
    for ax, key, label in ((axes[0], "train_loss", "final training loss"), (axes[1], "val_acc",
                                                                          "final validation accuracy")):
        values = np.array([[_final(r, key) if not diverged(r) else np.nan for r in runs] for runs in sweep.values()])
        # mean_band reads an lr where every seed diverged as a mean of 0: it has no mean.
        seen = np.isfinite(values).any(axis=1)
        mean, low, high = (np.where(seen, v, np.nan) for v in mean_band(values.T))
        ax.plot(lrs, mean, "o-", color="#4c72b0", label="sweep (runs that did not diverge)")
        ax.fill_between(lrs, low, high, color="#4c72b0", alpha=0.2, lw=0)
        bad = [(lr, r) for lr, runs in sweep.items() for r in runs if diverged(r)]
        if bad:
            # A diverged run's loss is off the scale (drawn at the top); its accuracy is real (near chance).
            finite = values[np.isfinite(values)]
            top = 1.05 * float(finite.max()) if finite.size else 1.0
            ys = [top if key == "train_loss" else np.nan_to_num(_final(r, key)) for _, r in bad]
            ax.plot([lr for lr, _ in bad], ys, "x", color="#cf222e", ms=8, mew=2,
                    label="diverged" + (" (off the scale)" if key == "train_loss" else ""))
        ax.plot([r.config["optimizer"]["lr"] for r in suggested], [_final(r, key) for r in suggested], "D",
                color="#1a7f37", ms=7, label="range test suggestion")
        ax.axvline(best, color="black", lw=0.8, ls="--", label=f"best sweep lr {best:g}")
        ax.set_xscale("log")
        ax.set(title=f"{label} against learning rate", xlabel="learning rate", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _final(run: RunResult, key: str) -> float:
    return finals([run], key)[0] if run.history else float("nan")


def _curves(sweep: dict[float, list[RunResult]]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.95, len(sweep)))
    first = []
    for color, (lr, runs) in zip(colors, sweep.items()):
        curves = [smoothed_loss([x if np.isfinite(x) else np.nan for x in r.extras["step_loss"]]) for r in runs]
        width = max(len(c) for c in curves)
        stacked = np.full((len(curves), width), np.nan)
        for i, c in enumerate(curves):
            stacked[i, : len(c)] = c
        mean, _, _ = mean_band(stacked)
        first.append(np.nanmean(stacked[:, 0]))
        ax.plot(np.arange(1, width + 1), mean, color=color, lw=1.4, label=f"lr {lr:g}")
    # Exploding runs reach losses of 1e3 and more; the interesting range is below the start.
    ax.set_ylim(0, 1.5 * float(np.nanmax(first)))
    ax.set(title="training loss per step (moving average)", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
