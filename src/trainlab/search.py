"""Hyperparameter search on Optuna (Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter Optimization
Framework"): spaces, samplers, pruners, storage, worker processes and the search page.

A *space* maps dotted config paths (the paths ``--set`` takes) to a ``Range`` or a ``Choice``. Every trial is the
base config with the trial's values as overrides, through ``load_config`` — the same path as ``--set`` — and trains
through ``runs.Store`` (cached in ``OUT/runs`` by config hash). The objective is the final validation accuracy
(maximized) for classification, the final validation loss (minimized) for regression; with several seeds, the mean.

Samplers: ``grid`` (every point of the grid exactly once, also across worker processes), ``random`` (Bergstra &
Bengio 2012, "Random Search for Hyper-Parameter Optimization"), ``tpe`` (Bergstra et al. 2011) and
``coarse_to_fine`` (a random stage, then a random stage in the space narrowed around the best trials, see
``narrow_space``). Pruners: ``median``, ``hyperband`` (Li et al. 2018) on the per-epoch validation metric, and
``wilcoxon`` across seeds.

Storage: an Optuna journal file (``OUT/journal.log`` by default; safe for several processes on one machine) or any
Optuna storage URL (``postgresql://...`` goes to ``RDBStorage`` with heartbeats).
"""

from __future__ import annotations

import csv
import itertools
import math
import multiprocessing
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import yaml

from trainlab.callbacks import Callback, StopTraining
from trainlab.checkpoints import error_line
from trainlab.config import RunConfig, apply_overrides, load_config, read_yaml
from trainlab.registry import ConfigError, suggest

if TYPE_CHECKING:
    import optuna

    from trainlab.data import ArraysLike
    from trainlab.trainer import Trainer

SAMPLERS = ("grid", "random", "tpe", "coarse_to_fine")
PRUNERS = ("none", "median", "hyperband", "wilcoxon")
# coarse_to_fine keeps the best quarter of the coarse stage's trials and widens their span by a tenth on each side,
# so the fine stage still explores a little around the best points rather than only between them.
TOP_FRACTION = 0.25
WIDEN = 0.10
# The median pruner compares a trial with the others only once two have finished and after the first epoch, whose
# validation metric is mostly noise.
MEDIAN_STARTUP_TRIALS = 2
MEDIAN_WARMUP_EPOCHS = 1
# TPE's options, set here so that a change of Optuna's defaults never changes a search.
TPE_OPTIONS = {"n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": False}
WILCOXON_P = 0.1
# A worker that stops beating for GRACE_S seconds is dead: its trial is failed and retried (RDB storage only).
HEARTBEAT_S, GRACE_S = 30, 90
STUDY = "search"


@dataclass(frozen=True)
class Range:
    """A numeric range ``[low, high]``: integers when both ends are ints; ``log`` samples ``log(x)`` uniformly."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.is_int:
            return IntDistribution(self.low, self.high, log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid(self, points: int) -> list[float]:
        """``points`` values from low to high (log-spaced when ``log``), snapped to ints or ``step``, no repeats."""
        values = (np.geomspace if self.log else np.linspace)(self.low, self.high, points)
        if self.step is not None:
            values = self.low + np.round((values - self.low) / self.step) * self.step
        cast = (lambda v: int(round(v))) if self.is_int else float
        return sorted({cast(v) for v in values})


@dataclass(frozen=True)
class Choice:
    """One of a list of values (numbers, strings, booleans)."""

    options: tuple[Any, ...]

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.options)

    def grid(self, points: int) -> list[Any]:
        return list(self.options)


Space = dict[str, Union[Range, Choice]]


def _dimension(path: str, value: Any) -> Range | Choice:
    """One entry of a space file, validated."""
    if isinstance(value, list):
        if len(value) < 2:
            raise ConfigError(f"The choice list of {path!r} in the space must have at least 2 values. Got {value!r}.")
        bad = [v for v in value if v is not None and not isinstance(v, (str, int, float, bool))]
        if bad:
            raise ConfigError(f"The choices of {path!r} must be numbers, strings or booleans. Got {bad[0]!r}.")
        return Choice(tuple(value))
    if not isinstance(value, Mapping) or not {"low", "high"} <= set(value) or set(value) - {"low", "high", "log", "step"}:
        raise ConfigError(f"The space entry {path!r} must be a list of choices or a mapping with 'low', 'high' and "
                          f"optionally 'log', 'step'. Got {value!r} instead.")
    low, high, log, step = value["low"], value["high"], bool(value.get("log", False)), value.get("step")
    for key, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConfigError(f"The '{key}' of {path!r} in the space must be a number. Got {v!r} instead.")
    if low >= high:
        raise ConfigError(f"The range of {path!r} is empty: low must be < high. Got low={low!r}, high={high!r}.")
    if log and low <= 0:
        raise ConfigError(f"The range of {path!r} is log-scaled, so low must be > 0. Got low={low!r}.")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"The 'step' of {path!r} must be > 0 and cannot go with log=true. Got step={step!r}.")
    return Range(low, high, log, step)


def parse_space(raw: Mapping[str, Any], base: RunConfig) -> Space:
    """A validated space: each path must exist in the resolved base config (checked with ``apply_overrides``), and
    both ends of a range, or each choice, must make a valid config (checked with ``load_config``)."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"A space must map config paths to ranges or choices. Got {raw!r} instead.")
    space = {str(path): _dimension(str(path), value) for path, value in raw.items()}
    resolved = base.model_dump()
    for path, dim in space.items():
        try:
            apply_overrides(resolved, {path: dim.grid(2)[0]})
            for value in dim.grid(2):
                load_config(base, {path: value})
        except ConfigError as e:
            raise ConfigError(f"space: {e}") from None
    return space


def load_space(path: str | Path, base: RunConfig) -> Space:
    return parse_space(read_yaml(path), base)


def check_choice(kind: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"The '{kind}' option must be one of {', '.join(options)}. Got {value!r} instead. "
                          f"{suggest(value, list(options))}".strip())
    return value


def grid_points(space: Space, points: int) -> list[dict[str, Any]]:
    """Every point of the grid (``points`` values per range), in a fixed order."""
    paths = list(space)
    return [dict(zip(paths, combo)) for combo in itertools.product(*(space[p].grid(points) for p in paths))]


def narrow_space(space: Space, trials: list[Any], maximize: bool) -> Space:
    """The coarse_to_fine rule: take the best ``TOP_FRACTION`` of the completed trials (at least one); each range
    becomes the span of their values (in log space when ``log``) widened by ``WIDEN`` of that span on each side (of
    the original span when they all agree), clipped to the original range; each choice keeps the values they used."""
    done = sorted((t for t in trials if t.value is not None), key=lambda t: t.value, reverse=maximize)
    if not done:
        raise ValueError("coarse_to_fine: the coarse stage completed no trial, so there is nothing to narrow around.")
    top = done[:max(1, math.ceil(TOP_FRACTION * len(done)))]
    out: Space = {}
    for path, dim in space.items():
        used = [t.params[path] for t in top]
        if isinstance(dim, Choice):
            out[path] = Choice(tuple(o for o in dim.options if o in used))
            continue
        f, inv = (math.log, math.exp) if dim.log else (float, float)
        lo, hi, span = f(min(used)), f(max(used)), f(dim.high) - f(dim.low)
        pad = WIDEN * ((hi - lo) or span)
        low, high = max(dim.low, inv(lo - pad)), min(dim.high, inv(hi + pad))
        if dim.step is not None:
            low = dim.low + math.floor((low - dim.low) / dim.step + 1e-9) * dim.step
            high = dim.low + math.ceil((high - dim.low) / dim.step - 1e-9) * dim.step
        if dim.is_int:
            low, high = max(dim.low, math.floor(low)), min(dim.high, math.ceil(high))
        out[path] = Range(low, high, dim.log, dim.step)
    return out


def make_sampler(name: str, space: Space, seed: int, points: int) -> Any:
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler({p: d.grid(points) for p, d in space.items()}, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **TPE_OPTIONS)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, epochs: int) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_EPOCHS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "wilcoxon":
        with warnings.catch_warnings():  # "experimental" in Optuna 4: a warning on every search
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=WILCOXON_P, n_startup_steps=2)
    return optuna.pruners.NopPruner()


def open_storage(url: str | None, out: Path, workers: int, grace_s: int = GRACE_S) -> Any:
    """The study storage: a journal file (a path, ``OUT/journal.log`` by default) or an Optuna storage URL (a
    database: its workers beat every ``min(HEARTBEAT_S, grace_s / 3)`` s; one silent ``grace_s`` s is dead)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is None or "://" not in url:
        path = Path(url) if url else out / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:") and workers > 1:
        raise ConfigError(f"The storage {url!r} is SQLite, which locks the whole database on every write, so "
                          f"{workers} workers would fail with 'database is locked'. Use --workers 1, the default "
                          f"journal file, or a PostgreSQL URL.")
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4: a warning on every open
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=max(1, min(HEARTBEAT_S, grace_s // 3)), grace_period=grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as e:  # any driver error (unreachable host, bad credentials, missing driver) means the same
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except Exception:
            shown = url.split("@")[-1]
        raise ConfigError(f"The search storage {shown!r} cannot be opened ({error_line(e)}). Check that "
                          f"the server runs and is reachable, the database exists, the credentials are right and its "
                          f"driver (psycopg for PostgreSQL: pip install 'psycopg[binary]') is installed; or leave "
                          f"--storage out to use a journal file in --out.") from None


@dataclass(frozen=True)
class SearchSpec:
    """Everything a search (and each of its worker processes) needs; plain data, so it pickles for ``spawn``."""

    base: dict[str, Any]
    space: Space
    sampler: str
    trials: int
    out: str
    seeds: int = 1
    prune: str = "none"
    seed: int = 0
    grid_points: int = 3
    storage: str | None = None
    metric: str = "val_acc"
    workers: int = 1
    name: str = STUDY  # the study's name in the storage: searches sharing one database need their own
    grace_s: int = GRACE_S  # database storage: a worker silent this long is dead, its trial failed and retried

    @property
    def maximize(self) -> bool:
        return self.metric != "val_loss"


class PruneCallback(Callback):
    """Reports the per-epoch validation metric to an Optuna trial and stops the run when the pruner says so."""

    per_replica = True

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric, self.pruned = trial, metric, False

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.trial.report(trainer.metrics[self.metric], trainer.epoch)
        if self.trial.should_prune():
            self.pruned = True
            raise StopTraining(f"pruned at epoch {trainer.epoch}")


def _suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, dim in space.items():
        if isinstance(dim, Choice):
            out[path] = trial.suggest_categorical(path, list(dim.options))
        elif dim.is_int:
            out[path] = trial.suggest_int(path, dim.low, dim.high, step=int(dim.step or 1), log=dim.log)
        else:
            out[path] = trial.suggest_float(path, dim.low, dim.high, step=dim.step, log=dim.log)
    return out


def _final(result: Any, metric: str) -> float:
    if metric not in result.final:
        raise ConfigError(f"The search objective needs the final '{metric}', which needs a validation split. Got "
                          f"only {sorted(k for k in result.final if k.startswith(('val_', 'test_')))}.")
    return float(result.final[metric])


def objective(spec: SearchSpec, space: Space, trial: optuna.Trial) -> float:
    """Train the trial's config over the seeds; the (mean) final validation metric, or ``TrialPruned``."""
    import optuna

    from trainlab.runs import Store

    params = _suggest(trial, space)
    base = load_config(spec.base)
    configs = [load_config(base, {**params, "seed": base.seed + i}) for i in range(spec.seeds)]
    store = Store(Path(spec.out) / "runs")
    if spec.prune == "wilcoxon":
        values = []
        for step, config in enumerate(configs):
            values.append(_final(store.run(config), spec.metric))
            trial.report(values[-1], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {step + 1} seeds")
        return float(np.mean(values))
    watch = PruneCallback(trial, spec.metric) if spec.prune != "none" else None
    results, _ = store.run_many(configs, lambda c: [watch] if watch and c.seed == base.seed else [])
    if watch is not None and watch.pruned:
        shutil.rmtree(store.run_dir(configs[0]), ignore_errors=True)  # a pruned run is no result to cache
        raise optuna.TrialPruned(f"pruned at epoch {len(results[0].history)}")
    return float(np.mean([_final(r, spec.metric) for r in results]))


def _study(spec: SearchSpec, name: str, space: Space, seed: int) -> optuna.Study:
    import optuna

    # trainlab reports the trials itself; Optuna's INFO lines ("A new study created ...") would interleave.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name, storage=open_storage(spec.storage, Path(spec.out), spec.workers, spec.grace_s),
        load_if_exists=True,
        direction="maximize" if spec.maximize else "minimize",
        sampler=make_sampler("grid" if spec.sampler == "grid" else "tpe" if spec.sampler == "tpe" else "random",
                             space, seed, spec.grid_points),
        pruner=make_pruner(spec.prune, int(spec.base["epochs"])))


def worker_seed(seed: int, start: int, worker: int) -> int:
    """The sampler seed of worker ``worker`` of a search invocation that found ``start`` trials in its study.

    ``seed`` itself for the first worker of a new search (so a seeded search reproduces), else a seed drawn from
    (seed, start, worker): workers of one invocation, and invocations that resume a study, never share a stream
    (workers with one seed would propose the same points)."""
    if start == 0 and worker == 0:
        return seed
    return int(np.random.SeedSequence([seed, start, worker]).generate_state(1)[0])


def run_worker(spec: SearchSpec, name: str, space: Space, n_trials: int, worker: int, start: int) -> None:
    """One worker: ``n_trials`` trials of study ``name``; waiting (enqueued) trials are taken first, atomically."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(spec, name, space, worker_seed(spec.seed, start, worker))
    study.optimize(lambda t: objective(spec, space, t), n_trials=n_trials)


def _load(spec: SearchSpec, name: str) -> optuna.Study:
    import optuna

    return optuna.load_study(study_name=name,
                             storage=open_storage(spec.storage, Path(spec.out), spec.workers, spec.grace_s))


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a dead search (journal storage has no heartbeat): failed, and their points queued
    again (a grid point is queued again by ``_queue_grid``). Only safe while no other worker runs on the study."""
    from optuna.trial import TrialState

    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                       TrialState.FAIL)
        params = t.system_attrs.get("fixed_params", t.params)
        if params and "grid" not in study.user_attrs:
            study.enqueue_trial(params, user_attrs={"retry_of": t.number})
    return [t.number for t in stale]


def _queue_grid(study: optuna.Study, points: list[dict[str, Any]]) -> None:
    """Queue every grid point not yet completed, pruned or queued: workers take queued trials atomically, so no
    point runs twice (Optuna's GridSampler alone may repeat a point when workers race)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
    taken = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False, states=states)]
    study.set_user_attr("grid", True)
    for point in points:
        if point not in taken:
            study.enqueue_trial(point)


def _run_stage(spec: SearchSpec, name: str, space: Space, n_trials: int, on_trial: Callable | None) -> Any:
    """Create or resume study ``name`` and run it up to ``n_trials`` finished (completed or pruned) trials."""
    from optuna.storages import JournalStorage
    from optuna.trial import TrialState

    start = len(_study(spec, name, space, spec.seed).trials)
    study = _study(spec, name, space, worker_seed(spec.seed, start, 0))
    if isinstance(study._storage, JournalStorage):
        fail_stale_trials(study)
    if spec.sampler == "grid":
        _queue_grid(study, grid_points(space, spec.grid_points))
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    todo = max(0, n_trials - finished)
    quotas = [todo // spec.workers + (i < todo % spec.workers) for i in range(spec.workers)]
    if spec.workers == 1:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(lambda t: objective(spec, space, t), n_trials=todo,
                       callbacks=[on_trial] if on_trial else None)
    else:
        _spawn(spec, name, space, quotas, start)
    return _load(spec, name)


def _spawn(spec: SearchSpec, name: str, space: Space, quotas: list[int], start: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=run_worker, args=(spec, name, space, q, i, start)) for i, q in enumerate(quotas) if q]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(procs)} search workers failed (exit codes {bad}); run the same "
                           f"command again to resume: finished trials are kept, the interrupted ones retried.")


@dataclass
class SearchResult:
    """The studies of a search (one; two for coarse_to_fine), the spaces they searched and the best trial."""

    studies: list[Any]
    spaces: list[Space]
    best_params: dict[str, Any]
    best_value: float
    best_config: RunConfig
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def trials(self) -> list[Any]:
        return [t for s in self.studies for t in s.trials]


def run_search(spec: SearchSpec, on_trial: Callable | None = None) -> SearchResult:
    """Run (or resume) the search and write ``trials.csv``, ``best_config.yaml`` and ``search.html`` into OUT."""
    from optuna.trial import TrialState

    if spec.sampler == "coarse_to_fine":
        coarse_n = max(1, spec.trials // 2)
        coarse = _run_stage(spec, f"{spec.name}-coarse", spec.space, coarse_n, on_trial)
        fine_space = narrow_space(spec.space, coarse.get_trials(states=(TrialState.COMPLETE,)), spec.maximize)
        fine = _run_stage(spec, f"{spec.name}-fine", fine_space, spec.trials - coarse_n, on_trial)
        studies, spaces = [coarse, fine], [spec.space, fine_space]
    else:
        studies, spaces = [_run_stage(spec, spec.name, spec.space, spec.trials, on_trial)], [spec.space]
    done = [t for s in studies for t in s.get_trials(states=(TrialState.COMPLETE,))]
    if not done:
        raise ValueError("The search completed no trial (all were pruned or failed); see trials.csv.")
    best = (max if spec.maximize else min)(done, key=lambda t: t.value)
    config = load_config(spec.base, best.params)
    result = SearchResult(studies, spaces, dict(best.params), float(best.value), config)
    result.files = write_outputs(spec, result)
    return result


def write_outputs(spec: SearchSpec, result: SearchResult) -> dict[str, Path]:
    from trainlab.checkpoints import atomic_write_text

    out = Path(spec.out)
    paths = list(spec.space)
    rows = [[t.number, s.study_name, t.state.name, "" if t.value is None else t.value,
             *(t.params.get(p, "") for p in paths), t.user_attrs.get("retry_of", "")]
            for s in result.studies for t in s.trials]
    with open(out / "trials.csv", "w", newline="") as f:
        csv.writer(f).writerows([["number", "study", "state", "value", *paths, "retry_of"], *rows])
    atomic_write_text(out / "best_config.yaml", yaml.safe_dump(result.best_config.model_dump(mode="json"),
                                                               sort_keys=False))
    atomic_write_text(out / "search.html", search_page(spec, result))
    return {"trials": out / "trials.csv", "best_config": out / "best_config.yaml", "page": out / "search.html"}


def _figures(study: optuna.Study) -> list[tuple[str, str]]:
    """Optuna's plots of one study as ``(caption, base64 PNG)``; importances need 2 completed trials with different
    values and 2 parameters that vary (fANOVA has nothing to split otherwise)."""
    import optuna.visualization.matplotlib as vis
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.trial import TrialState

    from trainlab.figures import png_base64

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = [("optimization history", lambda: vis.plot_optimization_history(study))]
    varying = [p for p in (done[0].params if done else {}) if len({str(t.params[p]) for t in done}) > 1]
    if len(done) >= 2 and len(varying) >= 2 and len({t.value for t in done}) > 1:
        plots.append(("parameter importances (fANOVA)",
                      lambda: vis.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))))
    if len(done) >= 2:
        plots.append(("parallel coordinates", lambda: vis.plot_parallel_coordinate(study)))
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for caption, draw in plots:
            ax = draw()
            ax = ax.flat[0] if hasattr(ax, "flat") else ax
            out.append((caption, png_base64(ax.figure)))
    return out


def search_page(spec: SearchSpec, result: SearchResult) -> str:
    from trainlab.html import esc, image, page, table

    paths = list(spec.space)
    parts = [f'<p class="muted">sampler {esc(spec.sampler)}, pruner {esc(spec.prune)}, {spec.seeds} seed(s), '
             f"objective {esc(spec.metric)} ({'max' if spec.maximize else 'min'}imized); best {result.best_value:.4g} "
             f"at {esc(result.best_params)}</p>"]
    for study, space in zip(result.studies, result.spaces):
        parts.append(f"<h2>{esc(study.study_name)}</h2>")
        parts.append(table(["path", "searched"], [[p, str(d)] for p, d in space.items()], cls="text"))
        parts.append(table(["trial", "state", "value", *paths],
                           [[t.number, t.state.name, "" if t.value is None else t.value,
                             *(t.params.get(p, "") for p in paths)] for t in study.trials]))
        for caption, png in _figures(study):
            parts.append(f"<figure>{image(png, caption)}<figcaption>{esc(caption)}</figcaption></figure>")
    return page("trainlab search", "".join(parts))


def check_study_name(name: str) -> str:
    """A study name: letters, digits, '-', '_' and '.', 1 to 100 characters (it names rows in a shared database)."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
        raise ConfigError(f"The --name option must be 1 to 100 letters, digits, '-', '_' or '.'. Got {name!r} instead.")
    return name


def make_spec(config: RunConfig, space: str | Path | Mapping[str, Any], *, sampler: str, trials: int | None,
              out: str | Path, data: ArraysLike | None = None, **options: Any) -> SearchSpec:
    """A validated SearchSpec from the CLI's arguments (``space`` a YAML file or its mapping); raises before
    anything is written. ``data``, arrays ``(x, y)`` or ``(x, y, x_test, y_test)``, replaces the config's dataset:
    they are saved once as ``OUT/arrays-<sha>.npz`` (named by content, so cached trials never mix two datasets),
    which every worker process reads."""
    from trainlab.data import load_data, save_arrays

    check_choice("sampler", sampler, SAMPLERS)
    check_choice("prune", options.get("prune", "none"), PRUNERS)
    space = parse_space(space, config) if isinstance(space, Mapping) else load_space(space, config)
    seeds, workers, points = options.get("seeds", 1), options.get("workers", 1), options.get("grid_points", 3)
    if options.get("prune") == "wilcoxon" and seeds < 2:
        raise ConfigError(f"The wilcoxon pruner compares trials seed by seed, so it needs --seeds >= 2. Got {seeds}.")
    if sampler == "grid":
        size = len(grid_points(space, points))
        if size < 2 or (trials is not None and trials < size):
            raise ConfigError(f"The grid has {size} points; --trials must cover all of them (and a grid needs 2). "
                              f"Got --trials {trials}; raise it, or change --grid-points or the space.")
        trials = size
    if trials is None or trials < 2:
        raise ConfigError(f"The --trials option must be an integer >= 2 for sampler {sampler!r}. Got {trials}.")
    if data is not None and not isinstance(data, (tuple, list)):
        raise TypeError(f"The 'data' argument of make_spec must be an (x, y) or (x, y, x_test, y_test) tuple of "
                        f"arrays (search trials run in worker processes that read them from a file). Got "
                        f"{type(data).__name__} instead.")
    if "://" in (options.get("storage") or ""):
        open_storage(options["storage"], Path(out), workers)  # fail on a bad URL before any training
    if data is not None:
        npz = save_arrays(data, out, "make_spec")
        config = load_config(config, {"data.dataset": {"name": "npz", "path": str(npz.resolve())}})
    metric = "val_acc" if load_data(config.data).task == "classification" else "val_loss"
    return SearchSpec(config.model_dump(mode="json"), space, sampler, trials, str(out), seeds=seeds,
                      prune=options.get("prune", "none"), seed=options.get("seed", 0), grid_points=points,
                      storage=options.get("storage"), metric=metric, workers=workers,
                      name=check_study_name(options.get("name", STUDY)), grace_s=options.get("grace_s", GRACE_S))
