"""Studies: every claim of the notes put to the test, and the runner that writes the report.

Each module of this package (besides ``base`` and ``measures``, the measures studies share) defines one ``Study``
subclass and registers it with ``@register_study``; importing the package imports them all, so a new study needs
only its own module.
``run_studies`` runs some or all of them and writes the HTML report; ``ablate`` toggles each technique of a user's
config in turn and reports what each does.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from trainlab.config import RunConfig, load_config
from trainlab.registry import ConfigError, suggest
from trainlab.studies.base import (MODES, B, Budget, Claim, ClaimOutcome, ClaimResult, FigureRef, Mode, Study,
                                   StudyContext, StudyOutcome, Table, compare_result, finals, params_hash,
                                   series)
from trainlab.runs import Store

__all__ = ["STUDIES", "Budget", "Claim", "ClaimOutcome", "ClaimResult", "FigureRef", "Study", "StudyContext",
           "StudyOutcome", "Table", "ablate", "finals", "make_context", "params_hash", "register_study", "run_study",
           "run_studies", "series", "toggles"]

STUDIES: dict[str, Study[Any]] = {}
# Seeds per trained arm at least: 10 per arm as DeepOBS's protocol, 20 reruns as AlgoPerf's target setting.
QUICK_SEEDS, FULL_SEEDS = 10, 20
S = TypeVar("S", bound=type[Study[Any]])


def register_study(cls: S) -> S:
    """Class decorator: add one instance of the study to ``STUDIES`` under ``cls.name``."""
    if cls.name in STUDIES:
        raise ValueError(f"The study name {cls.name!r} is already registered to {type(STUDIES[cls.name]).__name__}.")
    for mode, least in (("quick", QUICK_SEEDS), ("full", FULL_SEEDS)):
        if getattr(cls, mode).seeds < least:
            raise ValueError(f"The {mode} budget of study {cls.name!r} must have at least {least} seeds. "
                             f"Got {getattr(cls, mode).seeds} instead.")
    STUDIES[cls.name] = cls()
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "measures"):
            importlib.import_module(f"{__name__}.{info.name}")
    ordered = sorted(STUDIES.values(), key=lambda s: (s.order, s.name))
    STUDIES.clear()
    STUDIES.update((s.name, s) for s in ordered)


def select(names: str | Sequence[str]) -> list[Study[Any]]:
    """Studies by name, or every study for ``"all"``; an unknown name raises ``ConfigError``."""
    if isinstance(names, str):
        names = list(STUDIES) if names == "all" else [names]
    out = []
    for name in names:
        if name not in STUDIES:
            raise ConfigError(f"Unknown study {name!r}. {suggest(name, list(STUDIES))}"
                              f"Available: all, {', '.join(STUDIES)}.")
        out.append(STUDIES[name])
    return out


def make_context(study: Study[B], *, mode: Mode = "quick", seeds: int | Sequence[int] | None = None,
                 data: str | Mapping[str, Any] | None = None, out: str | Path = "studies",
                 progress: Any = None, budget: B | None = None, cluster: str | None = None) -> StudyContext[B]:
    """The context ``study`` runs in: the budget of ``mode`` (or ``budget``, one of the study's budget type, e.g. a
    ``dataclasses.replace`` of it); ``seeds`` a count (0..n-1), a list, or the budget's; ``cluster`` the Ray
    cluster its arms train on (``None``: this process)."""
    if budget is None:
        budget = study.budget(mode)
    elif not isinstance(budget, type(study.budget(mode))):
        raise TypeError(f"The 'budget' of study {study.name!r} must be a {type(study.budget(mode)).__name__}. "
                        f"Got {type(budget).__name__} instead.")
    if seeds is None:
        seed_list = list(range(budget.seeds))
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"The 'seeds' parameter must be a positive number of seeds. Got {seeds} instead.")
        seed_list = list(range(seeds))
    else:
        seed_list = [int(s) for s in seeds]
        if not seed_list:
            raise ValueError("The 'seeds' parameter must hold at least one seed. Got an empty list instead.")
    out = Path(out)
    # One store per study: a run's extras come from its study's callbacks, which the config hash does not cover.
    return StudyContext(study.name, mode, budget, seed_list, out, Store(out / "runs" / study.name), data, progress,
                        cluster)


def run_study(study: Study[B], ctx: StudyContext[B]) -> StudyOutcome:
    """Run one study and store its outcome (JSON) in ``ctx.out``; the pages are written by ``run_studies``."""
    from trainlab.report import save_outcome

    outcome = study.run(ctx)
    save_outcome(outcome, ctx.out)
    return outcome


def run_studies(names: str | Sequence[str] = "all", *, mode: Mode = "quick",
                seeds: int | Sequence[int] | None = None, data: str | Mapping[str, Any] | None = None,
                out: str | Path = "studies", progress: bool = True, workers: int = 1, cluster: str | None = None,
                on_outcome: Callable[[StudyOutcome], None] | None = None) -> list[StudyOutcome]:
    """Run studies (``"all"`` or names) and write the report in ``out`` (``out/index.html``).

    ``mode`` picks each study's budget (``"quick"``: >= 10 seeds; ``"full"``: >= 20; ``"smoke"``: the tests' tiny
    one); ``seeds`` replaces its seed count; ``data`` replaces the dataset of trained runs. ``workers`` > 1 runs
    that many studies at once in worker processes (``executors.run_in_pool``; the slowest known first), each with
    its own run store. ``cluster``, a Ray cluster's address (``"auto"``: the one running on this machine; see
    ``executors``), runs the studies one after the other here and sends their arms there, each arm one task (its
    seeds one batch) and all arms of one ``train_arms`` call at once; ``out`` must then be a folder every node sees.
    Runs are cached in ``out/runs/<study>`` by config hash, so a second call trains nothing new.
    The index lists every outcome stored in ``out``, including those of earlier calls. ``on_outcome`` is called
    after each study (the CLI prints a line).
    """
    from trainlab.executors import Job, check_cluster, check_workers, connect, run_jobs
    from trainlab.report import render_report

    if mode not in MODES:
        raise ValueError(f"The 'mode' parameter must be one of {', '.join(MODES)}. Got {mode!r} instead.")
    check_workers(workers)
    check_cluster(cluster, workers)
    order = [s.name for s in select(names)]
    studies = _slowest_first(select(names), Path(out)) if workers > 1 else select(names)
    jobs = [Job(f"study {s.name!r}", _run_named, (s.name, mode, seeds, data, str(out), cluster)) for s in studies]
    with connect(cluster) if cluster is not None else nullcontext(), _progress(progress) as bars:
        overall = bars.add_task("studies", total=len(studies)) if bars is not None else None

        def finished(job: Job, outcome: StudyOutcome) -> None:
            if on_outcome is not None:
                on_outcome(outcome)
            if bars is not None:
                bars.advance(overall)

        outcomes = run_jobs(jobs, workers, progress=bars, on_result=finished)
    render_report(out)
    return sorted(outcomes, key=lambda o: order.index(o.name))


def _run_named(name: str, mode: Mode, seeds: int | Sequence[int] | None, data: str | Mapping[str, Any] | None,
               out: str, cluster: str | None = None, progress: Any = None) -> StudyOutcome:
    """One study by name (a worker process's job: the study objects themselves stay in the parent)."""
    if name not in STUDIES:
        raise ValueError(f"The study {name!r} is not registered in this worker process: a study run with workers > 1 "
                         f"must be registered in an importable module (trainlab.studies or one it imports); or use "
                         f"workers=1.")
    study = STUDIES[name]
    return run_study(study, make_context(study, mode=mode, seeds=seeds, data=data, out=out, progress=progress,
                                         cluster=cluster))


def _slowest_first(studies: list[Study[Any]], out: Path) -> list[Study[Any]]:
    """Studies by the runtime of their stored outcome in ``out``, longest first; those never run keep their order
    ahead of the rest (their time is unknown)."""
    import json

    def runtime(study: Study[Any]) -> float:
        path = out / "outcomes" / f"{study.name}.json"
        try:
            return float(json.loads(path.read_text()).get("runtime_s", math.inf))
        except (OSError, ValueError):
            return math.inf

    return sorted(studies, key=lambda s: -runtime(s))


def toggles(config: RunConfig) -> dict[str, dict[str, Any]]:
    """One variant per technique of ``config``, toggled: ``{"norm: none -> batch": {"model.norm": "batch"}, ...}``.

    A technique in use is switched off (or to the plain choice); one not in use is switched on with a standard
    setting: init auto <-> N(0, 0.01²), activation relu <-> tanh (anything else -> relu), norm none <-> batch,
    dropout 0 <-> 0.2, regularizers none <-> l2, schedule constant <-> cosine, optimizer Adam family <-> momentum.
    """
    model = config.model
    out: dict[str, dict[str, Any]] = {}
    init = model.init.name
    out[f"init: {init} -> {'normal' if init == 'auto' else 'auto'}"] = {
        "model.init": {"name": "normal", "std": 0.01} if init == "auto" else "auto"}
    act = model.activation.name
    new_act = "tanh" if act == "relu" else "relu"
    out[f"activation: {act} -> {new_act}"] = {"model.activation": new_act}
    new_norm = "batch" if model.norm == "none" else "none"
    out[f"norm: {model.norm} -> {new_norm}"] = {"model.norm": new_norm}
    new_dropout = 0.2 if model.dropout == 0 else 0.0
    out[f"dropout: {model.dropout:g} -> {new_dropout:g}"] = {"model.dropout": new_dropout}
    regs = [r.name for r in config.regularizers]
    if regs:
        out[f"regularizers: {'+'.join(regs)} -> none"] = {"regularizers": []}
    else:
        out["regularizers: none -> l2"] = {"regularizers": [{"name": "l2"}]}
    sched = config.schedule.name
    new_sched = "cosine" if sched == "constant" else "constant"
    out[f"schedule: {sched} -> {new_sched}"] = {"schedule": new_sched}
    opt = config.optimizer.name
    new_opt = {"name": "momentum", "lr": 0.01} if opt in ("adam", "adamw") else {"name": "adamw", "lr": 1e-3}
    out[f"optimizer: {opt} -> {new_opt['name']}"] = {"optimizer": new_opt}
    return out


#: A baseline validation accuracy at or above this leaves no room to show an improvement: rank on validation loss.
ACCURACY_CEILING = 0.98


def ablate(config: str | Path | Mapping[str, Any] | RunConfig, *, seeds: int = 10, out: str | Path = "ablation",
           progress: bool = True) -> StudyOutcome:
    """The user's config with each technique toggled in turn (``toggles``), ranked by the change of the validation
    metric against the unchanged config, paired over ``seeds`` seeds.

    The metric is validation accuracy, or validation loss for regression and when the baseline's mean validation
    accuracy is at the ceiling (>= ``ACCURACY_CEILING``), where accuracy cannot show a gain. Each toggle reads
    "helps" or "hurts" (a paired t-test significant at 5%) or "no detectable effect (|change| < x)", x being the
    change the test would have found 80% of the time at this n. Writes ``out/ablation.html`` (and an index) like a
    study; runs are cached in ``out/runs``.
    """
    import time

    from trainlab.figures import bars_figure
    from trainlab.report import save_outcome, write_report

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"The 'seeds' parameter of ablate must be an int >= 1. Got {seeds!r} instead.")
    start = time.perf_counter()
    resolved = load_config(config)
    # The ranking is by a validation metric; without a validation split there is none to rank by.
    if resolved.data.val_fraction == 0:
        raise ConfigError("ablate ranks techniques by their validation metric, so the config needs a validation "
                          "split: the 'val_fraction' parameter of data must be in (0, 1). Got 0 instead.")
    base = resolved.model_dump(mode="json")
    variants = toggles(resolved)
    budget = Budget(seeds=seeds, epochs=resolved.epochs, train_size=resolved.data.train_size)
    ctx = StudyContext("ablation", "quick", budget, list(range(seeds)), Path(out), Store(Path(out) / "runs"))
    with _progress(progress) as bars:
        ctx.progress = bars
        runs = ctx.train_arms(base, {"baseline": {}, **variants})
    metric = "val_acc" if "val_acc" in runs["baseline"][0].final else "val_loss"
    if metric == "val_acc" and np.mean(finals(runs["baseline"], metric)) >= ACCURACY_CEILING:
        metric = "val_loss"
    baseline = finals(runs.pop("baseline"), metric)
    claims, deltas, rows = _ranked(runs, baseline, metric)
    fig = bars_figure({label: deltas[label] for label, *_ in rows}, title=f"change of {metric} against the baseline",
                      ylabel=f"{metric} (variant - baseline)")
    figures = [ctx.figure(fig, "deltas", f"Paired change of {metric} per toggled technique: mean and 95% CI over "
                                         f"{seeds} seeds.")]
    table = Table(f"Baseline {metric}: {np.mean(baseline):.4g} ({seeds} seeds)",
                  ["variant", metric, "change", "95% CI of change", "effect"], rows)
    outcome = StudyOutcome("ablation", "Ablation: which technique helps this model",
                           "What does toggling each technique of this config do to its validation metric?",
                           "quick", ctx.seeds, claims, figures, [table], runtime_s=time.perf_counter() - start,
                           runs_trained=ctx.runs_trained, runs_cached=ctx.runs_cached)
    save_outcome(outcome, ctx.out)
    write_report([outcome], ctx.out)
    return outcome


def _ranked(runs: Mapping[str, Sequence[Any]], baseline: list[float], metric: str
            ) -> tuple[list[ClaimOutcome], dict[str, list[float]], list[list[Any]]]:
    """Per variant: the claim that it improves ``metric`` over the baseline (paired by seed), its paired changes and
    its table row; the most helpful variant first."""
    better: Literal["greater", "less"] = "greater" if metric == "val_acc" else "less"
    claims, deltas, rows = [], {}, []
    for label, arm_runs in runs.items():
        values = finals(arm_runs, metric)
        result = compare_result(values, baseline, better, metric, (label, "baseline"))
        key = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        effect = effect_word(result)
        claims.append(ClaimOutcome(key, f"{label}: {effect} ({metric}).", result.verdict, result.evidence,
                                   {k: float(v) for k, v in result.numbers.items()}))
        deltas[label] = [v - b for v, b in zip(values, baseline)]
        rows.append([label, float(np.mean(values)), float(np.mean(deltas[label])),
                     f"[{result.numbers['diff ci_low']:+.4f}, {result.numbers['diff ci_high']:+.4f}]", effect])
    sign = 1 if better == "greater" else -1
    order = sorted(range(len(rows)), key=lambda i: -sign * rows[i][2])
    return [claims[i] for i in order], deltas, [rows[i] for i in order]


def effect_word(result: ClaimResult) -> str:
    """What a toggle does, from the paired test of "it improves the metric": ``helps`` (supported), ``hurts``
    (significant the other way), else ``no detectable effect (|change| < x)`` with x the change the test would have
    detected 80% of the time (or ``no effect`` when every seed gave the same value)."""
    if result.verdict == "supported":
        return "helps"
    if result.numbers["p"] < 0.05 and result.verdict == "refuted":
        return "hurts"
    detectable = result.numbers["detectable diff"]
    return "no effect" if detectable == 0 else f"no detectable effect (|change| < {detectable:.3g})"


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich progress display (bars per study and per arm), or ``None`` when silent."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bars:
        yield bars


_discover()
