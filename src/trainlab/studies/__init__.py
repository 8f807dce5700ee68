"""Studies: every claim of the notes put to the test, and the runner that writes the report.

Each module of this package (besides ``base``) defines one ``Study`` subclass and registers it with
``@register_study``; importing the package imports them all, so a new study needs only its own module.
``run_studies`` runs some or all of them and writes the HTML report; ``ablate`` is a study built from a user's config.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainlab.registry import ConfigError, suggest
from trainlab.studies.base import (MODES, Budget, Claim, ClaimOutcome, ClaimResult, FigureRef, Mode, Study,
                                   StudyContext, StudyOutcome, Table, finals, params_hash, series)
from trainlab.store import Store

__all__ = ["STUDIES", "Budget", "Claim", "ClaimOutcome", "ClaimResult", "FigureRef", "Study", "StudyContext",
           "StudyOutcome", "Table", "finals", "make_context", "params_hash", "register_study", "run_study",
           "run_studies", "series"]

STUDIES: dict[str, Study] = {}


def register_study(cls: type[Study]) -> type[Study]:
    """Class decorator: add one instance of the study to ``STUDIES`` under ``cls.name``."""
    if cls.name in STUDIES:
        raise ValueError(f"The study name {cls.name!r} is already registered to {type(STUDIES[cls.name]).__name__}.")
    for mode, least in (("quick", 3), ("full", 5)):
        if getattr(cls, mode).seeds < least:
            raise ValueError(f"The {mode} budget of study {cls.name!r} must have at least {least} seeds. "
                             f"Got {getattr(cls, mode).seeds} instead.")
    STUDIES[cls.name] = cls()
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    ordered = sorted(STUDIES.values(), key=lambda s: (s.order, s.name))
    STUDIES.clear()
    STUDIES.update((s.name, s) for s in ordered)


def select(names: str | Sequence[str]) -> list[Study]:
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


def make_context(study: Study, *, mode: Mode = "quick", seeds: int | Sequence[int] | None = None,
                 data: str | Mapping[str, Any] | None = None, out: str | Path = "studies",
                 progress: Any = None) -> StudyContext:
    """The context ``study`` runs in: the budget of ``mode``; ``seeds`` a count (0..n-1), a list, or the budget's."""
    budget = study.budget(mode)
    if seeds is None:
        seed_list = list(range(budget.seeds))
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"The 'seeds' parameter must be a positive number of seeds. Got {seeds} instead.")
        seed_list = list(range(seeds))
    else:
        seed_list = [int(s) for s in seeds]
    out = Path(out)
    return StudyContext(study.name, mode, budget, seed_list, out, Store(out), data, progress)


def run_study(study: Study, ctx: StudyContext) -> StudyOutcome:
    """Run one study and store its outcome (JSON) in ``ctx.out``; the pages are written by ``run_studies``."""
    from trainlab.report import save_outcome

    outcome = study.run(ctx)
    save_outcome(outcome, ctx.out)
    return outcome


def run_studies(names: str | Sequence[str] = "all", *, mode: Mode = "quick",
                seeds: int | Sequence[int] | None = None, data: str | Mapping[str, Any] | None = None,
                out: str | Path = "studies", progress: bool = True,
                on_outcome: Callable[[StudyOutcome], None] | None = None) -> list[StudyOutcome]:
    """Run studies (``"all"`` or names) and write the report in ``out`` (``out/index.html``).

    ``mode`` picks each study's budget (``"quick"``: >= 3 seeds; ``"full"``: >= 5; ``"smoke"``: the tests' tiny
    one); ``seeds`` replaces its seed count; ``data`` replaces the dataset of trained runs. Runs are cached in
    ``out/runs`` by config hash, so a second call trains nothing new. The index lists every outcome stored in
    ``out``, including those of earlier calls. ``on_outcome`` is called after each study (the CLI prints a line).
    """
    from trainlab.report import render_report

    if mode not in MODES:
        raise ValueError(f"The 'mode' parameter must be one of {', '.join(MODES)}. Got {mode!r} instead.")
    studies = select(names)
    outcomes = []
    with _progress(progress) as bars:
        overall = bars.add_task("studies", total=len(studies)) if bars is not None else None
        for study in studies:
            ctx = make_context(study, mode=mode, seeds=seeds, data=data, out=out, progress=bars)
            outcome = run_study(study, ctx)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            if bars is not None:
                bars.advance(overall)
    render_report(out)
    return outcomes


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
