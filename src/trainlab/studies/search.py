"""Study 10: hyperparameter search — grid, random, coarse-to-fine and TPE at an equal budget of trials.

The problem: an MLP (2 x 64, AdamW) on MNIST-1D with a small training budget, so one trial takes a fraction of a
second. The space has one parameter that matters a lot, ``optimizer.lr`` (log range ``LR_RANGE``), and one that
barely matters at this budget, ``optimizer.weight_decay`` (``WD_RANGE``; decoupled decay over a few epochs hardly
moves the weights): Bergstra & Bengio's (2012) setting, where a grid spends its trials on repeating the few lr
values it has across the unimportant dimension, while random search tries a new lr in every trial.

Each repetition ``r`` (one per seed) runs the four samplers of ``trainlab.search.run_search`` with the same number of
trials, the size of the grid (``grid_points`` values per range, ``grid_points``² trials), sampler seed ``r`` and
training seed ``r`` (grid's points are fixed; its trials still differ by their training noise). coarse_to_fine
spends half its trials on a random stage, then half on a random stage in ``narrow_space`` of it. TPE starts with
``TPE_OPTIONS["n_startup_trials"]`` random trials (Optuna's random sampler of the same seed), so below that many
trials it *is* random search; the study's budgets give it a few model-guided trials more.

Definitions fixed before measuring:

- *best validation accuracy* of a search: the highest final validation accuracy among its trials (the search's
  objective); the test accuracy reported is the one of that best trial.
- *best so far* after trial ``k``: the best validation accuracy among the first ``k`` trials, in the order they ran
  (coarse stage first).
- *narrower*: the fine stage's lr range spans fewer decades than the full range: the ratio of the two spans is below
  ``NARROWER``.
- *at least as good*: best validation accuracy of the fine stage minus the coarse stage's is above
  ``-NONINFERIORITY`` (a non-inferiority margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainlab.config import RunConfig
from trainlab.figures import curves_figure, mean_band, panel_grid
from trainlab.runs import Store, load_result
from trainlab.search import TPE_OPTIONS, Range, SearchSpec, Space, grid_points, run_search
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   joint, params_hash, threshold_result)

SAMPLER_ORDER = ("grid", "random", "coarse_to_fine", "tpe")
LR_RANGE = (1e-4, 1.0)  # four decades around AdamW's usual 1e-3 .. 1e-2
WD_RANGE = (0.0, 0.1)
# The fine stage's lr span must be smaller than the full one: "narrower" in its plain sense.
NARROWER = 1.0
# One point of validation accuracy (4 of MNIST-1D's 400 validation samples here): differences below it are noise
# of a single trial, so a fine stage that loses less than this is "as good".
NONINFERIORITY = 0.01
SEARCH_VERSION = 1  # bump when the search changes, so cached searches are run again


@dataclass(frozen=True)
class SearchBudget(Budget):
    grid_points: int = 4  # values per range; the grid's size (grid_points²) is every sampler's number of trials


def space() -> Space:
    return {"optimizer.lr": Range(*LR_RANGE, log=True), "optimizer.weight_decay": Range(*WD_RANGE)}


def decades(dim: Range) -> float:
    return math.log10(dim.high) - math.log10(dim.low)


def search_once(base: RunConfig, sampler: str, seed: int, points: int, out: Path) -> dict[str, Any]:
    """One search of ``base`` over ``space()``: every trial's value, lr, weight decay and stage (in the order they
    ran), the best trial's validation and test accuracy, and (coarse_to_fine) each stage's best and lr span."""
    full = space()
    trials = len(grid_points(full, points))
    spec = SearchSpec(base.model_dump(mode="json"), full, sampler, trials, str(out), seed=seed, grid_points=points)
    result = run_search(spec)
    ran = [(i, t) for i, s in enumerate(result.studies) for t in s.trials]
    values = np.array([t.value for _, t in ran], dtype=float)
    stage = np.array([i for i, _ in ran])
    best = load_result(Store(out / "runs").run_dir(result.best_config))
    found: dict[str, Any] = {
        "values": values, "stage": stage, "lr": np.array([t.params["optimizer.lr"] for _, t in ran]),
        "weight_decay": np.array([t.params["optimizer.weight_decay"] for _, t in ran]),
        "best_val": result.best_value, "best_test": float(best.final["test_acc"])}
    if sampler == "coarse_to_fine":
        found.update(best_coarse=float(values[stage == 0].max()), best_fine=float(values[stage == 1].max()),
                     span_ratio=decades(result.spaces[1]["optimizer.lr"]) / decades(full["optimizer.lr"]))
    return found


def claim_random_beats_grid(r: dict[str, Any]) -> ClaimResult:
    best = {s: [x["best_val"] for x in r["searches"][s]] for s in ("random", "grid")}
    return compare_result(best["random"], best["grid"], "greater",
                          f"best validation accuracy found in {r['trials']} trials", ("random", "grid"))


def claim_coarse_to_fine(r: dict[str, Any]) -> ClaimResult:
    runs = r["searches"]["coarse_to_fine"]
    return joint({
        "narrower": threshold_result([x["span_ratio"] for x in runs], "<", NARROWER,
                                     "decades of the fine stage's lr range / of the full range"),
        "at least as good": threshold_result([x["best_fine"] - x["best_coarse"] for x in runs], ">",
                                             -NONINFERIORITY,
                                             "best validation accuracy of the fine stage minus the coarse stage's"),
    })


CLAIMS = (
    Claim("random_beats_grid", "Random search beats grid search at an equal budget of trials.",
          claim_random_beats_grid),
    Claim("coarse_to_fine", "Coarse-to-fine refines: its second stage searches a narrower space around the best "
                            "first-stage trials and finds at least as good a point as its first stage.",
          claim_coarse_to_fine),
)


@register_study
class HyperparameterSearch(Study[SearchBudget]):
    name = "search"
    title = "Hyperparameter search"
    question = ("At an equal budget of trials, does random search find better hyperparameters than grid search, "
                "does coarse-to-fine refine, and how does TPE compare?")
    order = 10
    smoke = SearchBudget(seeds=2, epochs=2, train_size=300, grid_points=2)
    quick = SearchBudget(seeds=10, epochs=6, train_size=800)
    full = SearchBudget(seeds=20, epochs=10, train_size=1000, grid_points=5)
    claims = CLAIMS

    def base_config(self) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": 2, "width": 64}, "optimizer": {"name": "adamw", "lr": 1e-3},
                "threads": 1}

    def measure(self, ctx: StudyContext[SearchBudget]) -> dict[str, Any]:
        points = ctx.budget.grid_points
        trials = len(grid_points(space(), points))
        searches: dict[str, list[dict[str, Any]]] = {s: [] for s in SAMPLER_ORDER}
        for sampler in SAMPLER_ORDER:
            with ctx.task(f"{self.name} · {sampler}", len(ctx.seeds)) as advance:
                for seed in ctx.seeds:
                    base = ctx.run_config(self.base_config(), {}, seed)
                    params = {"sampler": sampler, "repetition": seed, "budget": trials,
                              "config": base.model_dump(mode="json"), "space": repr(space()),
                              "version": SEARCH_VERSION}
                    folder = ctx.out / "cache" / self.name / "searches" / f"{sampler}-{seed}-{params_hash(params)}"
                    searches[sampler].append(ctx.cached(
                        "search", params, lambda b=base, s=sampler, r=seed, f=folder: search_once(b, s, r, points, f)))
                    advance()
        return {"searches": searches, "trials": trials}

    def present(self, results: dict[str, Any], ctx: StudyContext[SearchBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        searches, trials = results["searches"], results["trials"]
        curves = {s: [np.maximum.accumulate(np.asarray(x["values"], dtype=float)) for x in runs]
                  for s, runs in searches.items()}
        fig = curves_figure(curves, title=f"best validation accuracy so far ({trials} trials per search)",
                            xlabel="trial", ylabel="best validation accuracy so far")
        fig.axes[0].axvline(trials // 2 + 0.5, color="gray", lw=0.8, ls="--")
        figures = [ctx.figure(fig, "best_so_far", "Best validation accuracy among the first k trials, per sampler: "
                                                  "mean over repetitions with 95% CI. The dashed line is where "
                                                  "coarse_to_fine's fine stage starts; TPE's first "
                                                  f"{TPE_OPTIONS['n_startup_trials']} trials are random search's.")]
        figures.append(ctx.figure(_lr_figure(searches), "sampled_lr",
                                  "The learning rate of every trial against its number, all repetitions, coloured "
                                  "by its validation accuracy: the grid repeats a few lr values, random search "
                                  "tries a new one each trial, coarse_to_fine's second half and TPE's model-guided "
                                  "trials gather where the accuracy is high."))
        rows = []
        for sampler, runs in searches.items():
            mean, low, high = (float(v[0]) for v in mean_band(np.array([[x["best_val"]] for x in runs])))
            distinct = np.mean([len(np.unique(np.round(np.log10(x["lr"]), 6))) for x in runs])
            rows.append([sampler, mean, low, high, float(np.mean([x["best_test"] for x in runs])), float(distinct)])
        table = Table(f"Best trial per search ({trials} trials, {len(ctx.seeds)} repetitions; means with 95% CI)",
                      ["sampler", "best val acc", "CI low", "CI high", "test acc of the best trial",
                       "distinct lr values tried"], rows)
        return figures, [table]


def _lr_figure(searches: dict[str, list[dict[str, Any]]]) -> Any:
    fig, axes = panel_grid(len(searches), width=3.6, height=3.0)
    values = np.concatenate([np.asarray(x["values"], dtype=float) for runs in searches.values() for x in runs])
    for ax, (sampler, runs) in zip(axes, searches.items()):
        for x in runs:
            shown = ax.scatter(np.arange(1, len(x["lr"]) + 1), x["lr"], c=x["values"], cmap="viridis", s=18,
                               vmin=values.min(), vmax=values.max())
        ax.set_yscale("log")
        ax.set_ylim(*LR_RANGE)
        ax.set(title=sampler, xlabel="trial", ylabel="lr")
        ax.grid(alpha=0.3)
    fig.colorbar(shown, ax=list(axes), label="validation accuracy")
    return fig
