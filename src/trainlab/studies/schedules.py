"""Study 5: learning-rate schedules, with and without linear warmup.

Main grid: an MLP trained with SGD + momentum under every registered schedule (constant, step, exponential, cosine,
cosine_restarts, one_cycle, plateau). A schedule multiplies the peak learning rate, and each schedule has its own
best peak (decaying schedules tolerate a higher one), so each is run at every peak of a small grid and compared at
the peak with the best mean *validation* accuracy; the claims then use the *test* accuracy of those runs, so picking
the peak does not bias the comparison. The schedules' shapes are fixed before measuring, from the run length E:
step divides the lr by 10 every E/3 epochs and exponential decays it by the same total (to 1%); cosine anneals to 0;
cosine_restarts runs cycles of E/3 and 2E/3 epochs (SGDR's T0 = E/3, m = 2, ending with the run); one_cycle uses
torch's defaults; plateau cuts by 10 after ``plateau_patience`` epochs without a lower validation loss. Each schedule
is then rerun at its chosen peak with a linear warmup of ``warmup_epochs`` epochs, the schedule proper running over
the steps after it, as the two compose in ``trainlab.schedules`` (so one_cycle's warmup rises to the peak and the cycle
then starts again from peak/25, and cosine_restarts' second cycle ends unfinished).

Stability part: warmup exists for a start that is unstable at the full learning rate, so the claim is tested where
that happens: a deeper MLP with Adam at 30x its default learning rate, with and without the same warmup, recording
the loss of every step. Over the *start* (the warmup and as many steps again at the full learning rate, so an
instability that warmup only postpones is still seen) the *peak* of each run is its largest step loss / its first
step loss (a spike); the claim also asks whether the calmer start lasts, as the final test accuracy of the same runs.
The *roughness* (mean absolute change of the loss between consecutive steps / first loss) is reported alongside; it
is no part of the claim, since over the start it mostly measures minibatch noise.

Speed and the end (fixed before measuring, read from the stored per-epoch histories of the runs at their best peak):
the *target training loss* is the highest mean final training loss (the loop's, in train mode) among constant, the
monotone decays and one_cycle, so that on average every one of them gets there; a schedule is *faster* when it
brings its training loss to the target more than ``FASTER_EPOCHS`` epochs sooner than the other (paired by seed; a
run that never gets there counts as one epoch more than the budget, ``measures.steps_to_target``). A run *ends
stable* by the mean absolute change of its validation loss between consecutive epochs over the last
``end_epochs(E)`` epochs (a quarter of the run, at least 2); one schedule ends stabler when that is smaller by more
than ``STABLER`` (in nats).

Runs are paired by seed (same initial weights and batch order in every arm). Trainlab registers no linear decay, so
"cosine beats step/linear decay" is tested against step and exponential decay, the other monotone decays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from trainlab.data import steps_per_epoch
from trainlab.figures import bars_figure, curves_figure
from trainlab.schedules import SCHEDULES, preview
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, series)
from trainlab.studies.measures import StepLoss, epochs_to_accuracy, epochs_to_loss, mean_finite, reached

DECAYS = ("step", "exponential", "cosine")  # the monotone decays the "decaying beats constant" claim compares
STABILITY_OPTIMIZER = {"name": "adam", "lr": 0.03}  # 30x Adam's default: a start that spikes without warmup
STABILITY_DEPTH = 4
SPIKE_CAP = 1e3  # a non-finite loss (divergence) counts as a spike of this many times the first loss
NO_WARMUP, WARMUP = "no warmup", "warmup"
SPEED_SCHEDULES = ("constant", *DECAYS, "one_cycle")  # the schedules whose final losses set the target loss
FASTER_EPOCHS = 1  # epochs sooner to the target loss by which one schedule must beat another to be "faster"
STABLER = 0.005  # nats of mean |change| of the validation loss over the end by which one run must be "stabler"


@dataclass(frozen=True)
class ScheduleBudget(Budget):
    lrs: tuple[float, ...] = (0.1, 0.3)  # peak learning rates of the grid
    warmup_epochs: int = 2
    plateau_patience: int = 2
    stability_epochs: int = 6
    target_fraction: float = 0.9  # "time to target": first epoch at this share of the best final val accuracy


def schedule_specs(epochs: int, plateau_patience: int) -> dict[str, dict[str, Any]]:
    """The schedules of the study for runs of ``epochs`` epochs (see the module docstring for the choices)."""
    third = max(1, epochs // 3)
    return {
        "constant": {"name": "constant"},
        "step": {"name": "step", "gamma": 0.1, "every_epochs": third},
        "exponential": {"name": "exponential", "gamma_per_epoch": float(f"{0.01 ** (1 / epochs):.6g}")},
        "cosine": {"name": "cosine"},
        "cosine_restarts": {"name": "cosine_restarts", "first_cycle_epochs": third, "cycle_mult": 2},
        "one_cycle": {"name": "one_cycle"},
        "plateau": {"name": "plateau", "patience_epochs": plateau_patience},
    }


def start_instability(losses: list[float], window: int) -> tuple[float, float]:
    """(peak, roughness) of the first ``window`` step losses, both relative to the first loss.

    peak = max loss / first loss; roughness = mean |loss_t - loss_{t-1}| / first loss. Non-finite losses (a run that
    diverged) count as ``SPIKE_CAP`` times the first loss, so a divergence is the largest spike, not a missing value.
    """
    if window < 2 or len(losses) < 2:
        raise ValueError(f"start_instability needs a window of at least 2 steps and 2 losses. Got window={window} "
                         f"and {len(losses)} losses instead.")
    first = float(losses[0])
    if not np.isfinite(first) or first <= 0:
        raise ValueError(f"The first step loss must be a positive finite number. Got {first} instead.")
    x = np.asarray(losses[:window], dtype=float)
    x = np.where(np.isfinite(x), x, SPIKE_CAP * first) / first
    return float(x.max()), float(np.abs(np.diff(x)).mean())


def best_lr(val_acc: dict[float, list[float]]) -> float:
    """The peak learning rate with the highest mean validation accuracy (the smaller one on a tie)."""
    return max(sorted(val_acc), key=lambda lr: (float(np.mean(val_acc[lr])), -lr))


def end_epochs(epochs: int) -> int:
    """The epochs at the end over which a run's stability is read: a quarter of the run, at least 2."""
    return max(2, epochs // 4)


def end_roughness(values: list[float], window: int) -> float:
    """Mean |change| between consecutive ones of the last ``window`` values (nan when fewer than 2 are finite)."""
    x = np.asarray(values[-window:], dtype=float)
    return float(np.abs(np.diff(x)).mean()) if len(x) >= 2 and np.isfinite(x).all() else float("nan")


def target_loss(runs: dict[str, list[Any]]) -> float:
    """The highest mean final training loss among ``SPEED_SCHEDULES``: a loss every one of them reaches on average."""
    return max(float(np.mean(finals(runs[name], "train_loss"))) for name in SPEED_SCHEDULES)


def claim_faster(r: dict[str, Any]) -> ClaimResult:
    what = f"epochs until the training loss is <= {r['target_loss']:.3g}"
    return joint({decay: compare_result(r["to_loss"][decay], r["to_loss"]["constant"], "less", what,
                                        (decay, "constant"), min_effect=FASTER_EPOCHS) for decay in DECAYS})


def claim_one_cycle(r: dict[str, Any]) -> ClaimResult:
    what = f"epochs until the training loss is <= {r['target_loss']:.3g}"
    parts = {f"faster than {other}": compare_result(r["to_loss"]["one_cycle"], r["to_loss"][other], "less", what,
                                                    ("one_cycle", other), min_effect=FASTER_EPOCHS)
             for other in ("constant", "cosine")}
    parts.update({f"stabler end than {other}": compare_result(
        r["end_roughness"]["one_cycle"], r["end_roughness"][other], "less",
        "mean |change| of the validation loss over the last epochs", ("one_cycle", other), min_effect=STABLER)
        for other in ("constant", "cosine")})
    return joint(parts)


def claim_cosine(r: dict[str, Any]) -> ClaimResult:
    acc = r["test_acc"]
    return joint({other: compare_result(acc["cosine"], acc[other], "greater", "final test accuracy",
                                        ("cosine", other)) for other in ("step", "exponential")})


def claim_warmup(r: dict[str, Any]) -> ClaimResult:
    return joint({
        "no spike": compare_result(r["peak"][WARMUP], r["peak"][NO_WARMUP], "less",
                                   "peak step loss over the start / first loss", (WARMUP, NO_WARMUP)),
        "it lasts": compare_result(r["stability_acc"][WARMUP], r["stability_acc"][NO_WARMUP], "greater",
                                   "final test accuracy", (WARMUP, NO_WARMUP)),
    })


def claim_decay(r: dict[str, Any]) -> ClaimResult:
    acc = r["test_acc"]
    return joint({decay: compare_result(acc[decay], acc["constant"], "greater", "final test accuracy",
                                        (decay, "constant")) for decay in DECAYS})


CLAIMS = (
    Claim("cosine_beats_step", "Cosine annealing beats step decay and linear decay: a higher final test accuracy, "
                               "each at its best peak learning rate (trainlab has no linear decay: exponential decay "
                               "stands in for it).", claim_cosine),
    Claim("warmup_stabilizes", "A linear warmup stabilizes the start of training: at a learning rate that makes the "
                               "first steps spike, warmup removes the spike (a lower peak loss over the start), and "
                               "the run ends better for it (a higher final test accuracy).",
          claim_warmup),
    Claim("decay_beats_constant", "Decaying the learning rate (step, exponential or cosine) beats keeping it "
                                  "constant: a higher final test accuracy, each at its best peak learning rate.",
          claim_decay),
    Claim("schedule_faster", "A decaying schedule (step, exponential or cosine) speeds up training: it brings the "
                             "training loss to a target in fewer epochs than a constant rate, each at its best peak "
                             "learning rate.", claim_faster),
    Claim("one_cycle_fast_stable", "One-cycle makes training converge fast and stay stable at the end: it brings "
                                   "the training loss to the target in fewer epochs than constant and cosine, and "
                                   "its validation loss changes less over the last epochs.", claim_one_cycle),
)


@register_study
class Schedules(Study[ScheduleBudget]):
    name = "schedules"
    title = "Learning-rate schedules and warmup"
    question = ("Which learning-rate schedule trains best (constant, step, exponential, cosine, cosine with "
                "restarts, one-cycle, reduce-on-plateau), and what does a linear warmup change?")
    order = 5
    smoke = ScheduleBudget(seeds=2, epochs=3, train_size=300, lrs=(0.1,), warmup_epochs=1, plateau_patience=1,
                           stability_epochs=2)
    quick = ScheduleBudget(seeds=10, epochs=18)
    full = ScheduleBudget(seeds=20, epochs=30, lrs=(0.03, 0.1, 0.3), plateau_patience=3, stability_epochs=8)
    claims = CLAIMS

    def base_config(self) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": 2, "width": 100},
                "optimizer": {"name": "momentum", "lr": 0.1, "momentum": 0.9}, "threads": 1}

    def measure(self, ctx: StudyContext[ScheduleBudget]) -> dict[str, Any]:
        b = ctx.budget
        base = self.base_config()
        per_epoch = steps_per_epoch(ctx.run_config(base, {}, ctx.seeds[0]).data)
        warmup = b.warmup_epochs * per_epoch
        specs = schedule_specs(b.epochs, b.plateau_patience)
        grid_arms = {f"{name}@{lr:g}": {"schedule": spec, "optimizer.lr": lr}
                     for name, spec in specs.items() for lr in b.lrs}
        grid = ctx.train_arms(base, grid_arms)
        lrs = {name: best_lr({lr: finals(grid[f"{name}@{lr:g}"], "val_acc") for lr in b.lrs}) for name in specs}
        runs = {name: grid[f"{name}@{lrs[name]:g}"] for name in specs}
        warm_runs = ctx.train_arms(base, {f"{name}@{lrs[name]:g}+warmup": {
            "schedule": {**spec, "warmup_steps": warmup}, "optimizer.lr": lrs[name]} for name, spec in specs.items()})
        warm = dict(zip(specs, warm_runs.values()))
        stability_base = {**base, "model": {**base["model"], "depth": STABILITY_DEPTH},
                          "optimizer": STABILITY_OPTIMIZER}
        # The run length is an arm override: train_arms puts the budget's epochs over the base's.
        short = {"epochs": b.stability_epochs}
        stability = ctx.train_arms(stability_base,
                                   {NO_WARMUP: short, WARMUP: {**short, "schedule.warmup_steps": warmup}},
                                   callbacks_factory=lambda arm, seed: [StepLoss()])
        starts = {arm: [start_instability(run.extras["step_loss"], 2 * warmup) for run in rs]
                  for arm, rs in stability.items()}
        target = b.target_fraction * max(float(np.mean(finals(rs, "val_acc"))) for rs in [*runs.values(),
                                                                                          *warm.values()])
        return {"specs": specs, "lr": lrs, "steps_per_epoch": per_epoch, "warmup_steps": warmup,
                "grid": {name: {lr: float(np.mean(finals(grid[f"{name}@{lr:g}"], "val_acc"))) for lr in b.lrs}
                         for name in specs},
                "runs": runs, "warm_runs": warm,
                "test_acc": {name: finals(rs, "test_acc") for name, rs in runs.items()},
                "test_acc_warmup": {name: finals(rs, "test_acc") for name, rs in warm.items()},
                "target": target, "target_loss": (loss := target_loss(runs)),
                "to_loss": {name: [epochs_to_loss(r, loss, b.epochs) for r in rs]
                            for name, rs in runs.items()},
                "end_roughness": {name: [end_roughness(r.metric("val_loss"), end_epochs(b.epochs)) for r in rs]
                                  for name, rs in runs.items()},
                "to_target": {name: [epochs_to_accuracy(r, target, b.epochs) for r in rs] for name, rs in runs.items()},
                "stability": stability,
                "peak": {arm: [p for p, _ in v] for arm, v in starts.items()},
                "roughness": {arm: [q for _, q in v] for arm, v in starts.items()},
                "stability_acc": {arm: finals(rs, "test_acc") for arm, rs in stability.items()}}

    def present(self, results: dict[str, Any], ctx: StudyContext[ScheduleBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        b = ctx.budget
        runs, lrs = results["runs"], results["lr"]
        per_epoch, warmup = results["steps_per_epoch"], results["warmup_steps"]
        figures = [ctx.figure(_lr_figure(results, b.epochs), "lr_curves",
                              "Learning rate per step as a fraction of each schedule's peak (trainlab.schedules."
                              "preview), without and with warmup; plateau depends on the validation loss, so its "
                              "curves are the ones measured in the runs (one line per seed).")]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        label = {name: f"{name} (lr {lrs[name]:g})" for name in runs}
        curves_figure({label[n]: series(rs, "train_loss") for n, rs in runs.items()}, title="training loss",
                      xlabel="epoch", ylabel="loss", logy=True, ax=axes[0])
        curves_figure({label[n]: series(rs, "val_acc") for n, rs in runs.items()}, title="validation accuracy",
                      xlabel="epoch", ylabel="accuracy", ax=axes[1])
        figures.append(ctx.figure(fig, "training", "Each schedule without warmup at its best peak learning rate: "
                                                   "mean over seeds with 95% band."))
        bars = {}
        for name in runs:
            bars[name] = results["test_acc"][name]
            bars[f"{name} + warmup"] = results["test_acc_warmup"][name]
        fig = bars_figure(bars, title="final test accuracy", ylabel="accuracy")
        fig.axes[0].set_ylim(bottom=max(0.0, min(np.min(v) for v in bars.values()) - 0.05))
        figures.append(ctx.figure(fig, "final_accuracy", "Final test accuracy of every schedule, without and with "
                                                         "warmup: mean and 95% CI over seeds."))
        window = 2 * warmup
        fig, ax = plt.subplots(figsize=(7, 4))
        curves_figure({arm: [r.extras["step_loss"][:window] for r in rs] for arm, rs in results["stability"].items()},
                      title=f"the start: Adam lr {STABILITY_OPTIMIZER['lr']:g}, {STABILITY_DEPTH}-layer MLP",
                      xlabel="step", ylabel="step loss", logy=True, ax=ax)
        ax.axvline(warmup, color="#57606a", ls=":", lw=1)
        figures.append(ctx.figure(fig, "warmup_start", f"Loss of every step over the start ({window} steps; warmup "
                                                       f"ends at the dotted line): mean over seeds with 95% band."))
        n = len(ctx.seeds)
        rows = []
        for name in runs:
            hits = [per_epoch * e for e in results["to_target"][name] if reached(e, b.epochs)]
            rows.append([name, lrs[name], mean_finite(results["test_acc"][name]),
                         mean_finite(finals(runs[name], "test_loss")), mean_finite(finals(runs[name], "train_loss")),
                         mean_finite(results["test_acc_warmup"][name]), mean_finite(hits) if hits else "never",
                         f"{len(hits)}/{n}", mean_finite(results["to_loss"][name]),
                         mean_finite(results["end_roughness"][name])])
        main = Table(f"Schedules at their best peak lr, {b.epochs} epochs of {per_epoch} steps; warmup "
                     f"{warmup} steps (means over seeds)",
                     ["schedule", "peak lr", "test acc", "test loss", "train loss", "test acc + warmup",
                      f"steps to val acc {results['target']:.3f}", "runs reaching it",
                      f"epochs to train loss {results['target_loss']:.3g}", "end: mean |change| of val loss"], rows)
        grid = Table("Peak learning-rate grid: mean final validation accuracy (the best peak is used)",
                     ["schedule"] + [f"lr {lr:g}" for lr in b.lrs],
                     [[name, *cells.values()] for name, cells in results["grid"].items()])
        stability = Table(f"The start with Adam at lr {STABILITY_OPTIMIZER['lr']:g} (means over seeds)",
                          ["arm", "peak loss / first", "roughness", "final test acc", "diverged"],
                          [[arm, mean_finite(results["peak"][arm]), mean_finite(results["roughness"][arm]),
                            mean_finite(results["stability_acc"][arm]), sum(bool(r.extras.get("diverged")) for r in rs)]
                           for arm, rs in results["stability"].items()])
        return figures, [main, grid, stability]


def _lr_figure(results: dict[str, Any], epochs: int) -> Any:
    per_epoch, warmup = results["steps_per_epoch"], results["warmup_steps"]
    total = epochs * per_epoch
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, (title, runs, warm) in zip(axes, [("without warmup", results["runs"], 0),
                                              (f"with {warmup} warmup steps", results["warm_runs"], warmup)]):
        for name, spec in results["specs"].items():
            schedule = SCHEDULES.create({**spec, "warmup_steps": warm})
            if name == "plateau":
                # Plateau's cuts depend on the validation loss: its lr after warmup is the one the runs recorded
                # (at each epoch end, which held for the whole epoch, since cuts happen only between epochs).
                ramp = preview(schedule, total, per_epoch)[:warm]
                for k, run in enumerate(runs[name]):
                    peak = results["lr"][name]
                    held = np.array([run.history[s // per_epoch]["lr"] / peak for s in range(warm, total)])
                    ax.plot(np.arange(total), np.r_[ramp, held], color="#7f7f7f", lw=1, ls="--",
                            label=f"{name} (measured, each seed)" if k == 0 else None)
                continue
            ax.plot(np.arange(total), preview(schedule, total, per_epoch), label=name, lw=1.4)
        ax.set(title=title, xlabel="step", ylabel="lr / peak lr", ylim=(0, 1.05))
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    return fig
