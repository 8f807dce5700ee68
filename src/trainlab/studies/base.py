"""The study abstraction: a question, its budgets, the runs it measures, and claims turned into verdicts.

A study subclasses ``Study[ItsBudget]`` (generic over its budget type, so ``ctx.budget`` has the study's own fields)
and implements two methods:

- ``measure(ctx) -> results``: trains its arms through ``ctx.train_arms`` (every run cached in the store by the hash
  of its resolved config) and computes whatever else it needs through ``ctx.cached`` (forward-only experiments,
  2-D optimizer paths), so a second run of the study trains and computes nothing;
- ``present(results, ctx) -> (figures, tables)``.

Its ``claims`` are sentences from the notes, each with a test ``results -> ClaimResult`` built on ``trainlab.stats``,
so every verdict (supported, refuted, inconclusive) comes from the measured numbers. ``Study.run`` joins the three
into a ``StudyOutcome``, which ``report.py`` renders and stores as JSON. The measures several studies share (train-set
evaluation, step losses, steps to a target, the generalization gap, ...) live in ``measures.py``, one definition each.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import torch

from trainlab.callbacks import Callback
from trainlab.checkpoints import atomic_write, atomic_write_text
from trainlab.config import RunConfig, load_config
from trainlab.report import ClaimOutcome, FigureRef, StudyOutcome, Table, check_figure_path
from trainlab.runs import RunResult, Store
from trainlab.stats import Evidence, Verdict

VERDICTS: tuple[Verdict, ...] = ("supported", "refuted", "inconclusive")
Mode = Literal["smoke", "quick", "full"]
MODES: tuple[str, ...] = ("smoke", "quick", "full")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run on one thread: ops this small run fastest there (and many times slower when threads compete for busy
    cores); the thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Budget:
    """How much a study spends: default number of seeds, epochs and training-set size of its trained runs.

    Studies that need more knobs subclass it (a frozen dataclass with extra fields).
    """

    seeds: int
    epochs: int
    train_size: int | None = None


B = TypeVar("B", bound=Budget)


@dataclass(frozen=True)
class ClaimResult:
    """What a claim's test found: the verdict, one sentence of evidence, and the numbers behind it; a claim made of
    several parts (``joint``) keeps each part's result in ``parts``."""

    verdict: Verdict
    evidence: str
    numbers: dict[str, float] = field(default_factory=dict)
    parts: dict[str, ClaimResult] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A sentence from the notes and the test that decides it from a study's results."""

    key: str
    text: str
    test: Callable[[Any], ClaimResult]

    def evaluate(self, results: Any) -> ClaimOutcome:
        found = self.test(results)
        if not isinstance(found, ClaimResult):
            raise TypeError(f"The test of claim {self.key!r} must return a ClaimResult. "
                            f"Got {type(found).__name__} instead.")
        if found.verdict not in VERDICTS:
            raise ValueError(f"The verdict of claim {self.key!r} must be one of {', '.join(VERDICTS)}. "
                             f"Got {found.verdict!r} instead.")
        numbers = {k: float(v) for k, v in found.numbers.items()}
        return ClaimOutcome(self.key, self.text, found.verdict, found.evidence, numbers)


def params_hash(params: Any) -> str:
    """A short stable hash of JSON-able parameters (dict keys sorted)."""
    text = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StudyContext(Generic[B]):
    """What a study runs with: budget (of the study's own budget type ``B``), seeds, data override, output folder,
    run store and progress display.

    ``data`` replaces the base config's dataset in ``train_arms``: a dataset name (``"digits"``) or a mapping of
    ``data`` fields (``{"dataset": {"name": "mnist1d", "num_samples": 2000}, "train_size": 500}``).
    ``progress`` is a ``rich.progress.Progress`` (or ``None`` for silence). ``cluster``, a Ray cluster's address
    (``executors.run_jobs``), sends each arm of a ``train_arms`` call there as one task (its seeds one batch), all
    arms of the call at once; the store's folder must then be one every node sees.
    """

    study: str
    mode: Mode
    budget: B
    seeds: list[int]
    out: Path
    store: Store
    data: str | Mapping[str, Any] | None = None
    progress: Any = None
    cluster: str | None = None
    runs_trained: int = 0
    runs_cached: int = 0
    notes: set[str] = field(default_factory=set)

    def figure(self, fig: Any, name: str, caption: str) -> FigureRef:
        """Save a matplotlib figure as ``figures/<study>/<name>.png`` (closing it) and reference it."""
        from trainlab.figures import save_figure

        relative = Path("figures") / self.study / f"{name}.png"
        check_figure_path(relative.as_posix())  # before writing: a name with '..' must not escape the report
        save_figure(fig, self.out / relative)
        return FigureRef(relative.as_posix(), caption)

    def data_overrides(self) -> dict[str, Any]:
        """The dotted overrides that put ``self.data`` into a run config."""
        if self.data is None:
            return {}
        if isinstance(self.data, str):
            return {"data.dataset": self.data}
        if isinstance(self.data, Mapping):
            return {f"data.{k}": v for k, v in self.data.items()}
        raise TypeError(f"The 'data' override must be a dataset name or a mapping of data fields. "
                        f"Got {type(self.data).__name__} {self.data!r} instead.")

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        """A progress bar for ``total`` units of work; yields ``advance()``. The bar goes when the work is done."""
        from trainlab.executors import progress_task

        with progress_task(self.progress, description, total) as advance:
            yield advance

    def run_config(self, base: Mapping[str, Any], overrides: Mapping[str, Any], seed: int,
                   use_data_override: bool = True) -> RunConfig:
        """The validated config of one run: ``base`` with the budget's epochs and train size, the data override
        (unless ``use_data_override`` is false), then ``overrides`` (which win over both) and ``seed``."""
        budget = {"epochs": self.budget.epochs, "data.train_size": self.budget.train_size}
        data = self.data_overrides() if use_data_override else {}
        return load_config(dict(base), {**budget, **data, **dict(overrides), "seed": seed})

    def train_arms(self, base: Mapping[str, Any], arms: Mapping[str, Mapping[str, Any]],
                   seeds: Sequence[int] | None = None,
                   callbacks_factory: Callable[[str, int], Sequence[Callback]] | None = None,
                   use_data_override: bool = True) -> dict[str, list[RunResult]]:
        """Train every arm (dotted overrides on ``base``) once per seed; ``{arm: [RunResult per seed]}``.

        Each run's config is ``run_config(base, overrides, seed)``, validated once and handed to the store as it is.
        A run whose resolved config is already in the store is loaded, not trained, so what callbacks record must go
        to ``trainer.extras`` (stored with the run) to survive the cache. Each arm is one job
        (``executors.train_in_store``): here, one after the other, or all at once on ``self.cluster``.
        """
        from trainlab.executors import Job, check_shared, run_jobs, train_in_store

        seeds, root = list(self.seeds if seeds is None else seeds), str(self.store.root.resolve())
        jobs = []
        for arm, overrides in arms.items():
            configs = [self.run_config(base, overrides, seed, use_data_override) for seed in seeds]
            callbacks_for = (lambda c, a=arm: list(callbacks_factory(a, c.seed))) if callbacks_factory else None
            name = f"{self.study} · {arm}"
            jobs.append(Job(name, train_in_store, (root, configs, callbacks_for, name)))
        done = run_jobs(jobs, cluster=self.cluster, progress=self.progress)
        if self.cluster is not None:
            check_shared(done, root, self.cluster)
        results: dict[str, list[RunResult]] = {}
        for arm, (runs, why, trained) in zip(arms, done):
            results[arm] = runs
            self.runs_trained += trained
            self.runs_cached += len(runs) - trained
            self.note(f"{self.study}: its runs train one by one, not as a batch of seeds: {why}." if why else "")
        return results

    def note(self, message: str) -> None:
        """Say ``message`` once per study (on the progress display; silent without one)."""
        if message and message not in self.notes:
            self.notes.add(message)
            if self.progress is not None:
                self.progress.console.print(message, highlight=False)

    def cached(self, name: str, params: Mapping[str, Any], compute: Callable[[], Mapping[str, Any]]
               ) -> dict[str, Any]:
        """``compute()`` once per (study, name, params); later calls load the stored result.

        ``compute`` returns a mapping of names to numpy arrays (stored in an ``.npz``) or JSON values (stored in a
        ``.json``); the files live in ``out/cache/<study>/<name>-<hash of params>``.
        """
        stem = self.out / "cache" / self.study / f"{name}-{params_hash(dict(params))}"
        arrays_path, json_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
        if json_path.exists():
            values: dict[str, Any] = json.loads(json_path.read_text())
            if arrays_path.exists():
                with np.load(arrays_path) as npz:
                    values.update({k: npz[k] for k in npz.files})
            return values
        values = dict(compute())
        arrays = {k: np.asarray(v) for k, v in values.items() if isinstance(v, np.ndarray)}
        plain = {k: v for k, v in values.items() if k not in arrays}
        stem.parent.mkdir(parents=True, exist_ok=True)
        if arrays:
            atomic_write(arrays_path, lambda f: np.savez_compressed(f, **arrays))
        # The JSON is written last: its presence marks a complete entry.
        atomic_write_text(json_path, json.dumps(plain, default=_plain))
        return values


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"A cached study result must hold numpy arrays or JSON values. Got {type(value).__name__}.")


class Study(ABC, Generic[B]):
    """A question from the notes, answered by runs; subclasses set the class attributes and two methods.

    ``B`` is the study's budget type: ``class BatchNorm(Study[BatchNormBudget])`` has budgets of that type, and its
    ``measure(ctx: StudyContext[BatchNormBudget])`` reads the extra fields from ``ctx.budget`` as they are.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    question: ClassVar[str]
    order: ClassVar[int] = 100  # position in the report (the study number)
    # The three budgets are set on the class (a ClassVar cannot hold the type variable B).
    smoke: B  # the tests' end-to-end budget: seconds, seeds may be < 3
    quick: B  # >= 10 seeds (studies.QUICK_SEEDS)
    full: B  # >= 20 seeds (studies.FULL_SEEDS)
    claims: ClassVar[tuple[Claim, ...]] = ()

    def budget(self, mode: Mode) -> B:
        if mode not in MODES:
            raise ValueError(f"The 'mode' of a study must be one of {', '.join(MODES)}. Got {mode!r} instead.")
        return {"smoke": self.smoke, "quick": self.quick, "full": self.full}[mode]

    @abstractmethod
    def measure(self, ctx: StudyContext[B]) -> Any:
        """Train and compute what the claims and figures need; everything expensive goes through ``ctx``."""

    @abstractmethod
    def present(self, results: Any, ctx: StudyContext[B]) -> tuple[list[FigureRef], list[Table]]:
        """The figures (saved with ``ctx.figure``) and result tables of the study page."""

    def run(self, ctx: StudyContext[B]) -> StudyOutcome:
        start = time.perf_counter()
        results = self.measure(ctx)
        claims = [c.evaluate(results) for c in self.claims]
        figures, tables = self.present(results, ctx)
        return StudyOutcome(self.name, self.title, self.question, ctx.mode, list(ctx.seeds), claims, figures, tables,
                            runtime_s=time.perf_counter() - start, runs_trained=ctx.runs_trained,
                            runs_cached=ctx.runs_cached, order=self.order)


def series(runs: Sequence[RunResult], key: str) -> list[list[float]]:
    """Per-epoch values of ``key`` for each run (seeds x epochs, ragged when runs stopped early)."""
    return [[float(row[key]) for row in r.history] for r in runs]


def finals(runs: Sequence[RunResult], key: str) -> list[float]:
    """One final value per run: from the summary if present, else the last epoch's value; NaN for a run that has
    neither (one that diverged inside its first epoch records no epoch)."""
    return [float(r.final[key]) if key in r.final else float(r.history[-1][key]) if r.history else math.nan
            for r in runs]


def threshold_result(values: Sequence[float], op: Literal[">", "<"], threshold: float, what: str,
                     min_n: int = 3) -> ClaimResult:
    """The claim "mean of ``what`` is ``op`` ``threshold``" decided by ``stats.verdict_threshold`` (95% t interval)."""
    ev = Evidence.threshold(what, values, op, threshold, min_n=min_n)
    s = ev.summary
    d = threshold_effect(s.mean, s.std, threshold)
    effect = "" if math.isnan(d) else f", d = {d:.2g}"
    return ClaimResult(ev.verdict, f"{what}: {s.describe()}{effect}; {ev.reason}.",
                       {"mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n, "d": d})


def threshold_effect(mean: float, std: float, threshold: float) -> float:
    """A one-sample effect size: how many standard deviations the mean lies from the threshold (Cohen's d);
    nan for one value (no std), +-inf or 0 for identical values."""
    if math.isnan(std):
        return math.nan
    if std == 0:
        return 0.0 if mean == threshold else math.copysign(math.inf, mean - threshold)
    return (mean - threshold) / std


def compare_result(a: Sequence[float], b: Sequence[float], direction: Literal["greater", "less"], what: str,
                   names: tuple[str, str], paired: bool = True, min_effect: float = 0.0,
                   min_n: int = 3) -> ClaimResult:
    """The claim "``what`` of ``names[0]`` is ``direction`` than of ``names[1]``" by ``stats.verdict_compare``."""
    ev = Evidence.compare(what, a, b, direction, paired, min_effect=min_effect, min_n=min_n)
    c = ev.comparison
    return ClaimResult(ev.verdict, f"{what}, {names[0]} vs {names[1]}: {c.describe()}; {ev.reason}.",
                       {f"{names[0]} mean": c.a.mean, f"{names[1]} mean": c.b.mean, "diff": c.diff,
                        "diff ci_low": c.ci_low, "diff ci_high": c.ci_high, "p": c.p, c.effect_name: c.effect,
                        "n": c.a.n, "detectable diff": c.detectable})


def joint(parts: Mapping[str, ClaimResult]) -> ClaimResult:
    """A claim made of several parts: refuted if any part is, supported if all are, else inconclusive."""
    verdicts = [p.verdict for p in parts.values()]
    verdict: Verdict = ("refuted" if "refuted" in verdicts else
                        "supported" if all(v == "supported" for v in verdicts) else "inconclusive")
    evidence = "\n".join(f"{name} ({p.verdict}): {p.evidence}" for name, p in parts.items())
    numbers = {f"{name}: {k}": v for name, p in parts.items() for k, v in p.numbers.items()}
    return ClaimResult(verdict, evidence, numbers, dict(parts))
