"""Run directories and the store of runs keyed by the hash of their resolved config.

A run directory holds ``config.yaml`` (the resolved config), ``meta.json`` (seed, versions, threads, the
deterministic-algorithms flag, device, and the model's input shape and output count, so ``load_model`` rebuilds it
without loading data), ``history.csv`` (per-epoch metrics), ``checkpoint.pt`` (full training state, for resume; the
weights alone for a run trained in a batch of seeds, which is written whole once finished) with its SHA-256 in
``checkpoint.pt.sha256`` and the checkpoint before it in ``checkpoint.prev.pt`` (``trainlab.checkpoints``) and, once
finished, ``summary.json`` (``status``: finished or failed, ``reason``, final metrics, extras and the history). A run
without ``summary.json`` is unfinished."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from trainlab.callbacks import Callback, Checkpoint, History, Progress, write_history_csv
from trainlab.checkpoints import (ResumeWarning, atomic_write_text, error_line, load_checkpoint, load_latest_checkpoint,
                                  remove_temporaries, save_checkpoint)
from trainlab.config import RunConfig, load_config, require_config
from trainlab.registry import ConfigError

if TYPE_CHECKING:
    from trainlab.batched import ReplicaResult
    from trainlab.data import ArraysLike, Data
    from trainlab.distributed import DataParallel


@dataclass
class RunResult:
    """What a run produced: its resolved config, per-epoch history, final metrics and extras."""

    config: dict[str, Any]
    history: list[dict[str, Any]]
    final: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    model: nn.Module | None = None

    def metric(self, key: str) -> list[float]:
        """One metric's per-epoch values."""
        return [row[key] for row in self.history if key in row]

    def load_model(self) -> nn.Module:
        """The trained model rebuilt from the config and the run's checkpoint."""
        if self.model is not None:
            return self.model
        if self.run_dir is None:
            raise ValueError("This run was not stored (no run directory), so its model cannot be reloaded.")
        return load_model(self.run_dir)


def config_hash(config: RunConfig) -> str:
    """A short, stable hash of the resolved config: the key of a run in a store."""
    return _resolved_hash(config.model_dump(mode="json"))


# Top-level fields added after stores existed, with the value every earlier run had: hashed only when set otherwise,
# so the runs stored before a field existed keep their keys (and stores their cached runs).
HASH_NEUTRAL_DEFAULTS = {"precision": "fp32"}


def _resolved_hash(resolved: dict[str, Any]) -> str:
    resolved = {k: v for k, v in resolved.items()
                if k not in HASH_NEUTRAL_DEFAULTS or v != HASH_NEUTRAL_DEFAULTS[k]}
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# What a run records of the process it ran in that can change its numbers: a resume under other values warns.
ENVIRONMENT = ("torch", "threads", "deterministic_algorithms", "processes")


def run_metadata(config: RunConfig, data: Data, processes: int = 1) -> dict[str, Any]:
    """What ``meta.json`` records; ``processes``: how many data-parallel processes train the run."""
    import numpy

    import trainlab

    return {"seed": config.seed, "config_hash": config_hash(config), "trainlab": trainlab.__version__,
            "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(), "device": config.device,
            "processes": processes, "input_shape": list(data.input_shape), "num_outputs": data.num_outputs}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=float)


def train(config: RunConfig, out_dir: str | Path | None = None, *,
          callbacks: Sequence[Callback] = (), progress: bool = False, resume: bool = False,
          keep_model: bool = False, model: nn.Module | None = None, data: Data | ArraysLike | None = None,
          description: str = "train", parallel: DataParallel | None = None) -> RunResult:
    """Train one run of a validated config (``load_config``); with ``out_dir``, write its run directory as it goes
    (checkpoint every epoch).

    ``resume`` continues from ``out_dir/checkpoint.pt`` exactly where it stopped (same config required), from the
    checkpoint before it when that one is damaged, or from the start when the run stopped before its first
    checkpoint (each said in a ``ResumeWarning``, as is a resume under another torch version or thread count).
    ``data`` (arrays ``(x, y)`` or ``(x, y, x_test, y_test)``, split and preprocessed by ``config.data``, or a
    ``Data``) replaces loading ``config.data.dataset``; ``meta.json`` then says ``"data": "arrays"``, since the
    config's dataset does not describe what was trained on.

    ``parallel`` (``distributed.start``, under torchrun) trains this process's rank of a data-parallel run: rank 0
    alone writes the run directory and shows progress, and a resume sends rank 0's checkpoint to every rank.
    """
    from trainlab.trainer import build_trainer

    require_config(config, "train")
    if resume and out_dir is None:
        raise ValueError("The 'resume' argument needs 'out_dir', the run directory holding the checkpoint. "
                         "Got out_dir=None instead.")
    resolved = config.model_dump(mode="json")
    main = parallel is None or parallel.is_main
    run_callbacks = list(callbacks)
    if progress and main:
        run_callbacks.append(Progress(description))
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None and main
    checkpoint_state, recorded = None, {}
    if writes:
        checkpoint_state, recorded = _open_run_dir(out, config, resume)
        run_callbacks += [History(out / "history.csv"),
                          Checkpoint(out / "checkpoint.pt", config.checkpoint_every_epochs,
                                     extra={"config": resolved, "config_hash": config_hash(config)})]
    trainer = build_trainer(config, run_callbacks, model=model, data=data, parallel=parallel)
    meta = {**run_metadata(config, trainer.data, 1 if parallel is None else parallel.world_size),
            **({"data": "arrays"} if data is not None else {})}
    if writes:
        meta = _environment_changes(out, recorded, meta)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_text(out / "meta.json", _json(meta))
    if parallel is not None and resume:
        checkpoint_state = parallel.broadcast_state(checkpoint_state)
    if checkpoint_state is not None:
        trainer.load_state_dict(checkpoint_state["trainer"])
    final = trainer.fit()
    result = RunResult(resolved, trainer.history, final, trainer.extras, out, trainer.model if keep_model else None)
    if writes:
        atomic_write_text(out / "summary.json", _json({"final": final, "extras": trainer.extras,
                                                       "history": trainer.history, **run_status(final, trainer.extras),
                                                       **meta}))
    return result


def run_status(final: dict[str, Any], extras: dict[str, Any]) -> dict[str, str]:
    """``status``: ``failed`` (the loss became non-finite) or ``finished``; ``reason``: why training stopped
    (``""`` when it ran every epoch)."""
    return {"status": "failed" if extras.get("diverged") else "finished", "reason": final.get("stopped_reason", "")}


def _open_run_dir(out: Path, config: RunConfig, resume: bool) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The checkpoint state to resume from (None: start) and the run's recorded ``meta.json`` (``{}``: none)."""
    if not resume:
        refuse_existing_run(out)
        return None, {}
    meta_path = out / "meta.json"
    try:
        recorded = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except ValueError as e:
        raise ConfigError(f"The run record {str(meta_path)!r} is not valid JSON ({e}); it is written by trainlab "
                          f"and should not be edited. Restore it, or train the run again in a new directory.") from None
    return _resumable(out, config), recorded


def refuse_existing_run(out: Path) -> None:
    """Refuse to start a new run in ``out`` when it holds one already (a checkpoint or a summary)."""
    if (out / "checkpoint.pt").exists() or (out / "summary.json").exists():
        raise ConfigError(f"{str(out)!r} already holds a run. Use --resume to continue it, or another --out.")


def _resumable(out: Path, config: RunConfig) -> dict[str, Any] | None:
    """The checkpoint state that ``out``'s run resumes from; None (said in a ResumeWarning) when it stopped before
    its first checkpoint, so that it starts over."""
    remove_temporaries(out)  # what a killed save left behind
    found = load_latest_checkpoint(out / "checkpoint.pt")
    if found is None:
        config_path = out / "config.yaml"
        if config_path.is_file() and _resolved_hash(yaml.safe_load(config_path.read_text())) != config_hash(config):
            raise ConfigError(f"The run in {str(out)!r} was started with a different config ({config_path}); "
                              f"resume needs the same.")
        warnings.warn(f"{str(out)!r} holds no checkpoint: the run stopped before its first one (or never started "
                      f"there). Starting it over.", ResumeWarning, stacklevel=4)
        return None
    state, _ = found
    if state.get("config_hash") != config_hash(config):
        raise ConfigError(f"The checkpoint in {str(out)!r} was written by a different config "
                          f"(hash {state.get('config_hash')}, this one {config_hash(config)}); resume needs the same.")
    if "optimizer" not in state["trainer"]:
        raise ConfigError(f"The run in {str(out)!r} was trained in a batch of replicas and is finished; its "
                          f"checkpoint holds the weights only, so there is nothing to resume.")
    return state


def _environment_changes(out: Path, recorded: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` for a run resumed in this process: a ResumeWarning when torch, the thread count or the
    deterministic-algorithms flag differ from what ``meta.json`` recorded, whose values are kept in ``started_with``
    (the first recorded value of each key that changed)."""
    changed = {k: recorded[k] for k in ENVIRONMENT if k in recorded and recorded[k] != meta.get(k)}
    if changed:
        was = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        now = ", ".join(f"{k}={meta.get(k)!r}" for k in changed)
        warnings.warn(f"The run in {str(out)!r} was recorded with {was} (meta.json) and resumes with {now}; what it "
                      f"computes from here on may differ in the last bits from an uninterrupted run.", ResumeWarning,
                      stacklevel=3)
    started_with = {**changed, **recorded.get("started_with", {})}
    return {**meta, "started_with": started_with} if started_with else meta


def load_result(run_dir: str | Path) -> RunResult:
    """A finished run's result from its directory."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} holds no finished run (no summary.json).")
    summary = json.loads(summary_path.read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return RunResult(config, summary["history"], summary["final"], summary.get("extras", {}), run_dir)


def load_model(run_dir: str | Path) -> nn.Module:
    """Rebuild a run's model from its config and the shapes in ``meta.json``; load the checkpoint's weights only."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    meta = json.loads((run_dir / "meta.json").read_text())
    if "input_shape" not in meta:
        raise ConfigError(f"The run in {str(run_dir)!r} was stored before runs recorded their model's input shape "
                          f"(meta.json has no 'input_shape'); train it again to reload its model.")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    model = config.model.build(tuple(meta["input_shape"]), meta["num_outputs"])
    model.load_state_dict(state["trainer"]["model"])
    return model.eval()


def _why_not_batched(configs: Sequence[RunConfig], callbacks_for: Callable[[RunConfig], Sequence[Callback]]) -> str:
    """Why these configs cannot train as one batch of replicas, or ``""`` when they can."""
    from trainlab.batched import can_batch

    # A frozen config's copy with another seed needs no validation: compare the configs with the seed left out.
    if len({config_hash(c.model_copy(update={"seed": 0})) for c in configs}) > 1:
        return "the configs differ in more than their seed"
    for config in configs:
        ok, why = can_batch(config, callbacks_for(config))
        if not ok:
            return why
    return ""


class Store:
    """Runs under ``root/<config hash>/``: a config that already ran is loaded, not trained again.

    What callbacks record goes into a run's extras, and the key is the config alone: keep runs whose callbacks
    differ (one study's from another's) in different stores.

    Several processes may share a store. A run is written only by the process that holds its lock
    (``root/.<hash>.lock``, an ``flock`` the system drops when its process dies, removed on release): the others wait
    for it and load what it stored, so a config trains once. A run is stored once ``summary.json`` is in its
    directory; what a killed process leaves behind is never read as a result: a run directory without
    ``summary.json`` is resumed by the next ``run`` (or trained over, before its first checkpoint), and the
    ``.<hash>.*.tmp`` folder of a batch write cut short, or a lock nobody holds, is removed by ``remove_leftovers``
    (which ``run_many`` calls). ``verify`` lists incomplete, damaged and leftover entries.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def run_dir(self, config: RunConfig) -> Path:
        return self.root / config_hash(config)

    def has(self, config: RunConfig) -> bool:
        return (self.run_dir(require_config(config, "Store.has")) / "summary.json").is_file()

    def run(self, config: RunConfig, *, callbacks: Sequence[Callback] = (), progress: bool = False,
            keep_model: bool = False, description: str = "train") -> RunResult:
        """The stored result of ``config``, training it first if needed (resuming an interrupted run); while
        another process trains it, wait for that one and load its result."""
        return self._run(require_config(config, "Store.run"), callbacks, progress, keep_model, description)[0]

    def _run(self, config: RunConfig, callbacks: Sequence[Callback], progress: bool = False, keep_model: bool = False,
             description: str = "train") -> tuple[RunResult, bool]:
        """``run``'s result, and whether this call trained it."""
        out = self.run_dir(config)
        if not (out / "summary.json").is_file():
            lock = _RunLock(self.root, out.name)
            lock.acquire(blocking=True)
            try:
                if not (out / "summary.json").is_file():  # else another process stored it while this one waited
                    remove_temporaries(out)
                    resume = (out / "checkpoint.pt").is_file() and _callbacks_resumable(callbacks)
                    if not resume and out.exists():
                        shutil.rmtree(out)  # a partial run whose callbacks' records no checkpoint holds starts over
                    return train(config, out, callbacks=callbacks, progress=progress, keep_model=keep_model,
                                 resume=resume, description=description), True
            finally:
                lock.release()
        return _load_stored(out, keep_model), False

    def run_many(self, configs: Sequence[RunConfig],
                 callbacks_for: Callable[[RunConfig], Sequence[Callback]] | None = None,
                 on_done: Callable[[RunResult, bool], None] | None = None) -> tuple[list[RunResult], str]:
        """The stored results of ``configs``, in order, training those not stored yet; and why the new ones were not
        trained as one batch (``""`` when they were, or when at most one was new).

        New configs that differ only in their seed train as one batch of replicas (``batched.train_replicas``,
        equal to training them one by one) when ``batched.can_batch`` allows; the others as ``run`` trains them
        (an interrupted run resumes). A batch takes the new configs no other process is training; those it could not
        take follow one by one (waiting for the other process). ``callbacks_for(config)`` gives a run's callbacks;
        ``on_done(result, cached)`` is called as each result is ready (``cached``: this call did not train it).
        """
        callbacks_for = callbacks_for or (lambda config: [])
        done = on_done or (lambda result, cached: None)
        outs = [self.run_dir(require_config(c, "Store.run_many")) for c in configs]
        self.remove_leftovers()
        fresh = [i for i, out in enumerate(outs) if not out.exists()]
        why = _why_not_batched([configs[i] for i in fresh], callbacks_for) if len(fresh) > 1 else ""
        results = self._claim_and_train_batch(configs, fresh, callbacks_for) if len(fresh) > 1 and not why else {}
        for result in results.values():
            done(result, False)
        for i, config in enumerate(configs):
            if i not in results:
                results[i], trained = self._run(config, callbacks_for(config))
                done(results[i], not trained)
        return [results[i] for i in range(len(configs))], why

    def _claim_and_train_batch(self, configs: Sequence[RunConfig], fresh: list[int],
                               callbacks_for: Callable[[RunConfig], Sequence[Callback]]) -> dict[int, RunResult]:
        """Train the configs ``fresh`` indexes whose locks this process gets at once (without waiting, so that no
        two processes wait on each other's batch) and that are still not stored, as one batch; ``{index: result}``,
        empty when fewer than two could be taken."""
        from contextlib import ExitStack

        with ExitStack() as held:
            claimed: list[int] = []
            for i in fresh:
                lock = _RunLock(self.root, self.run_dir(configs[i]).name)
                if not lock.acquire(blocking=False):
                    continue  # another process is training it: it follows one by one, waiting for that one
                if self.run_dir(configs[i]).exists():  # another process stored it since
                    lock.release()
                else:
                    held.callback(lock.release)
                    claimed.append(i)
            if len(claimed) < 2:
                return {}
            return dict(zip(claimed, self._train_batch([configs[i] for i in claimed], callbacks_for)))

    def _train_batch(self, configs: list[RunConfig], callbacks_for: Callable[[RunConfig], Sequence[Callback]]
                     ) -> list[RunResult]:
        if not configs:
            return []
        from trainlab.batched import train_replicas
        from trainlab.data import load_data

        by_seed = {c.seed: c for c in configs}
        data = load_data(configs[0].data)
        replicas = train_replicas(configs[0], list(by_seed), lambda seed: callbacks_for(by_seed[seed]), data=data)
        return [self._store_finished(by_seed[r.seed], data, r) for r in replicas]

    def _store_finished(self, config: RunConfig, data: Data, replica: ReplicaResult) -> RunResult:
        """Write a run trained as a batch replica as a finished run directory, all at once: the files go to a
        temporary sibling folder (``.<hash>.*.tmp``) that is then renamed, so a crash never leaves a half-written
        run. The caller holds the run's lock."""
        out = self.run_dir(config)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        resolved, meta = config.model_dump(mode="json"), run_metadata(config, data)
        try:
            atomic_write_text(tmp / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
            atomic_write_text(tmp / "meta.json", _json(meta))
            write_history_csv(tmp / "history.csv", replica.history)
            save_checkpoint(tmp / "checkpoint.pt", {
                "config": resolved, "config_hash": config_hash(config), "finished": True,
                "trainer": {"model": replica.model.state_dict()}, "stopped_reason": replica.final["stopped_reason"]})
            atomic_write_text(tmp / "summary.json", _json({"final": replica.final, "extras": replica.extras,
                                                           "history": replica.history, **meta,
                                                           **run_status(replica.final, replica.extras)}))
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return RunResult(resolved, replica.history, replica.final, replica.extras, out)

    def remove_leftovers(self) -> list[Path]:
        """Delete what killed processes left in the store: the temporary folders of batch writes cut short
        (``.<hash>.*.tmp``), locks nobody holds (``.<hash>.lock``) and the temporary files of writes cut short in
        those runs' directories. What belongs to a run another process holds is left alone. Returns what was
        deleted."""
        if not self.root.is_dir():
            return []
        removed = []
        for name in sorted({_entry_run_name(p) for p in self.root.iterdir() if p.name.startswith(".")} - {""}):
            lock = _RunLock(self.root, name)
            if lock.acquire(blocking=False):
                try:
                    removed += _remove_leftovers_of(self.root, name)
                finally:
                    lock.release()
        return removed

    def verify(self) -> list[StoreProblem]:
        """Every problem in the store, each naming its entry: a run directory without ``summary.json`` (an
        interrupted run: ``run`` resumes it), a run's file missing or not parsing (``summary.json``, ``config.yaml``,
        ``meta.json``, ``history.csv``), a ``config.yaml`` whose hash is not its directory's name, a checkpoint that
        does not match its checksum, and the leftovers ``remove_leftovers`` deletes. ``[]``: all is well. What
        belongs to a run a live process holds (being trained or written) is skipped."""
        if not self.root.is_dir():
            return []
        problems = []
        for path in sorted(self.root.iterdir()):
            name = _entry_run_name(path)
            if name and _RunLock.held(self.root, name):
                continue
            if name and path.name.startswith("."):
                what = LEFTOVERS[path.suffix]
                problems.append(StoreProblem(path, f"leftover of a killed process: {what}"))
            elif name and path.is_dir():
                problems += [StoreProblem(path, p) for p in _run_problems(path)]
        return problems


# The leftovers of killed processes in a store's folder, by suffix.
LEFTOVERS = {".lock": "a lock nobody holds", ".tmp": "the temporary folder of a batch write cut short"}


@dataclass(frozen=True)
class StoreProblem:
    """One thing wrong in a store (``Store.verify``): the entry and what is wrong with it."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _callbacks_resumable(callbacks: Sequence[Callback]) -> bool:
    """Whether a checkpoint holds all that ``callbacks`` recorded: each keeps its records in ``state_dict`` (a
    callback that does not override it, such as a study's per-step loss recorder, would lose what it recorded
    before the kill, so its run is trained over instead)."""
    return all(type(cb).state_dict is not Callback.state_dict for cb in callbacks)


def _load_stored(out: Path, keep_model: bool) -> RunResult:
    """A stored run's result (with its model when ``keep_model``); a damaged one raises naming its directory."""
    try:
        result = load_result(out)
        if keep_model:
            result.model = load_model(out)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ConfigError(f"The stored run {str(out)!r} is damaged ({type(e).__name__}: {e}). Store.verify() lists "
                          f"the damaged runs of a store; delete this directory to train the run again.") from None
    return result


def _entry_run_name(path: Path) -> str:
    """The config hash a store entry belongs to (``HASH``, ``.HASH.lock``, ``.HASH.XXXX.tmp``), ``""`` for others."""
    name = path.name
    if name.startswith(".") and name.endswith((".lock", ".tmp")):
        name = name[1:].partition(".")[0]
    return name if len(name) == 16 and set(name) <= set("0123456789abcdef") else ""


def _remove_leftovers_of(root: Path, name: str) -> list[Path]:
    """Delete run ``name``'s batch-write temporary folders and the temporary files inside its run directory (the
    caller holds its lock)."""
    removed = sorted(root.glob(f".{name}.*.tmp"))
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed + remove_temporaries(root / name)


# What a finished run directory holds, and how each file is read back.
RUN_FILES: dict[str, Callable[[str], Any]] = {"summary.json": json.loads, "config.yaml": yaml.safe_load,
                                              "meta.json": json.loads, "history.csv": lambda text: text.splitlines()}
SUMMARY_KEYS = ("final", "history", "status")


def _run_problems(run_dir: Path) -> list[str]:
    """What is wrong with the run directory ``run_dir`` that no process holds (``Store.verify``)."""
    from trainlab.checkpoints import checksum_problem

    if not (run_dir / "summary.json").is_file():
        return ["incomplete: no summary.json (an interrupted run: Store.run resumes it, or trains it again when it "
                "stopped before its first checkpoint)"]
    problems, parsed = [], {}
    for file, parse in RUN_FILES.items():
        try:
            parsed[file] = parse((run_dir / file).read_text())
        except FileNotFoundError:
            problems.append(f"{file} is missing")
        except (OSError, ValueError, yaml.YAMLError) as e:
            problems.append(f"{file} does not parse ({error_line(e)})")
    summary, config = parsed.get("summary.json"), parsed.get("config.yaml")
    if "summary.json" in parsed and not (isinstance(summary, dict) and all(k in summary for k in SUMMARY_KEYS)):
        problems.append(f"summary.json does not hold a run's summary (keys {', '.join(SUMMARY_KEYS)})")
    if isinstance(config, dict) and _resolved_hash(config) != run_dir.name:
        problems.append(f"config.yaml hashes to {_resolved_hash(config)}, not to its directory's name")
    elif "config.yaml" in parsed and not isinstance(config, dict):
        problems.append("config.yaml does not hold a config (a mapping)")
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        problems.append("checkpoint.pt is missing")
    elif why := checksum_problem(checkpoint):
        problems.append(f"checkpoint.pt is damaged: {why}")
    return problems


class _RunLock:
    """The exclusive lock on one run of a store: ``flock`` on ``root/.<name>.lock``.

    The system releases an ``flock`` when its process dies, so a killed process holds nothing. The file is removed on
    release; a process that locked a file removed meanwhile (its inode no longer at the path) tries again."""

    def __init__(self, root: Path, name: str):
        self.path, self.fd = root / f".{name}.lock", -1

    def acquire(self, blocking: bool) -> bool:
        """Take the lock, waiting for it when ``blocking``; False when it is held (only without ``blocking``)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                if _same_file(fd, self.path):
                    self.fd = fd
                    return True
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # while still held: whoever opens the path next makes a new file
        os.close(self.fd)
        self.fd = -1

    @staticmethod
    def held(root: Path, name: str) -> bool:
        """Whether a live process holds run ``name``'s lock (a look that neither creates nor removes the file)."""
        import fcntl

        try:
            fd = os.open(root / f".{name}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
