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
from trainlab.checkpoints import (ResumeWarning, atomic_write_text, load_checkpoint, load_latest_checkpoint,
                                  remove_temporaries, save_checkpoint)
from trainlab.config import RunConfig, load_config, require_config
from trainlab.registry import ConfigError

if TYPE_CHECKING:
    from trainlab.batched import ReplicaResult
    from trainlab.data import ArraysLike, Data


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


def _resolved_hash(resolved: dict[str, Any]) -> str:
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# What a run records of the process it ran in that can change its numbers: a resume under other values warns.
ENVIRONMENT = ("torch", "threads", "deterministic_algorithms")


def run_metadata(config: RunConfig, data: Data) -> dict[str, Any]:
    import numpy

    import trainlab

    return {"seed": config.seed, "config_hash": config_hash(config), "trainlab": trainlab.__version__,
            "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(), "device": config.device,
            "input_shape": list(data.input_shape), "num_outputs": data.num_outputs}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=float)


def train(config: RunConfig, out_dir: str | Path | None = None, *,
          callbacks: Sequence[Callback] = (), progress: bool = False, resume: bool = False,
          keep_model: bool = False, model: nn.Module | None = None, data: Data | ArraysLike | None = None,
          description: str = "train") -> RunResult:
    """Train one run of a validated config (``load_config``); with ``out_dir``, write its run directory as it goes
    (checkpoint every epoch).

    ``resume`` continues from ``out_dir/checkpoint.pt`` exactly where it stopped (same config required), from the
    checkpoint before it when that one is damaged, or from the start when the run stopped before its first
    checkpoint (each said in a ``ResumeWarning``, as is a resume under another torch version or thread count).
    ``data`` (arrays ``(x, y)`` or ``(x, y, x_test, y_test)``, split and preprocessed by ``config.data``, or a
    ``Data``) replaces loading ``config.data.dataset``; ``meta.json`` then says ``"data": "arrays"``, since the
    config's dataset does not describe what was trained on.
    """
    from trainlab.trainer import build_trainer

    require_config(config, "train")
    if resume and out_dir is None:
        raise ValueError("The 'resume' argument needs 'out_dir', the run directory holding the checkpoint. "
                         "Got out_dir=None instead.")
    resolved = config.model_dump(mode="json")
    run_callbacks = list(callbacks)
    if progress:
        run_callbacks.append(Progress(description))
    out = Path(out_dir) if out_dir is not None else None
    checkpoint_state, recorded = None, {}
    if out is not None:
        checkpoint_state, recorded = _open_run_dir(out, config, resume)
        run_callbacks += [History(out / "history.csv"),
                          Checkpoint(out / "checkpoint.pt", config.checkpoint_every_epochs,
                                     extra={"config": resolved, "config_hash": config_hash(config)})]
    trainer = build_trainer(config, run_callbacks, model=model, data=data)
    meta = {**run_metadata(config, trainer.data), **({"data": "arrays"} if data is not None else {})}
    if out is not None:
        meta = _environment_changes(out, recorded, meta)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_text(out / "meta.json", _json(meta))
    if checkpoint_state is not None:
        trainer.load_state_dict(checkpoint_state["trainer"])
    final = trainer.fit()
    result = RunResult(resolved, trainer.history, final, trainer.extras, out, trainer.model if keep_model else None)
    if out is not None:
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
        if (out / "checkpoint.pt").exists() or (out / "summary.json").exists():
            raise ConfigError(f"{str(out)!r} already holds a run. Use --resume to continue it, or another --out.")
        return None, {}
    meta_path = out / "meta.json"
    try:
        recorded = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except ValueError as e:
        raise ConfigError(f"The run record {str(meta_path)!r} is not valid JSON ({e}); it is written by trainlab "
                          f"and should not be edited. Restore it, or train the run again in a new directory.") from None
    return _resumable(out, config), recorded


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
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def run_dir(self, config: RunConfig) -> Path:
        return self.root / config_hash(config)

    def has(self, config: RunConfig) -> bool:
        return (self.run_dir(require_config(config, "Store.has")) / "summary.json").is_file()

    def run(self, config: RunConfig, *, callbacks: Sequence[Callback] = (), progress: bool = False,
            keep_model: bool = False, description: str = "train") -> RunResult:
        """The stored result of ``config``, training it first if needed (resuming an interrupted run)."""
        out = self.run_dir(require_config(config, "Store.run"))
        if (out / "summary.json").is_file():
            result = load_result(out)
            if keep_model:
                result.model = load_model(out)
            return result
        return train(config, out, callbacks=callbacks, progress=progress, keep_model=keep_model,
                     resume=(out / "checkpoint.pt").is_file(), description=description)

    def run_many(self, configs: Sequence[RunConfig],
                 callbacks_for: Callable[[RunConfig], Sequence[Callback]] | None = None,
                 on_done: Callable[[RunResult, bool], None] | None = None) -> tuple[list[RunResult], str]:
        """The stored results of ``configs``, in order, training those not stored yet; and why the new ones were not
        trained as one batch (``""`` when they were, or when at most one was new).

        New configs that differ only in their seed train as one batch of replicas (``batched.train_replicas``,
        equal to training them one by one) when ``batched.can_batch`` allows; the others as ``run`` trains them
        (an interrupted run resumes). ``callbacks_for(config)`` gives a run's callbacks; ``on_done(result, cached)``
        is called as each result is ready.
        """
        callbacks_for = callbacks_for or (lambda config: [])
        done = on_done or (lambda result, cached: None)
        fresh = [i for i, c in enumerate(configs) if not self.run_dir(require_config(c, "Store.run_many")).exists()]
        why = _why_not_batched([configs[i] for i in fresh], callbacks_for) if len(fresh) > 1 else ""
        batch = fresh if len(fresh) > 1 and not why else []
        results: dict[int, RunResult] = {}
        for i, config in enumerate(configs):
            if i not in batch:
                cached = self.has(config)
                results[i] = self.run(config, callbacks=callbacks_for(config))
                done(results[i], cached)
        for i, result in zip(batch, self._train_batch([configs[i] for i in batch], callbacks_for)):
            results[i] = result
            done(result, False)
        return [results[i] for i in range(len(configs))], why

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
        temporary sibling folder that is then renamed, so a crash never leaves a half-written run."""
        out = self.run_dir(config)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
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
