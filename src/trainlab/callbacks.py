"""Callbacks: a closed set of events in the training loop, and the standard callbacks.

Events, in the order the loop fires them (see ``Trainer.fit``)::

    on_fit_start
      on_epoch_start
        on_step_start       (``trainer.step`` is the index of the step about to run; before the forward pass)
        after_backward      (gradients are in .grad; the optimizer has not stepped)
        on_step_end         (after optimizer and schedule step; ``trainer.loss`` is the step's loss tensor)
      on_epoch_end          (``trainer.metrics`` holds this epoch's train/val metrics as floats)
    on_fit_end

A callback ends training by raising ``StopTraining(reason)``. Callbacks with state implement ``state_dict`` and
``load_state_dict`` so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from trainlab.registry import Section, validate_section

if TYPE_CHECKING:
    from trainlab.trainer import Trainer


class StopTraining(Exception):
    """Raised by a callback to end ``fit`` cleanly after the current step or epoch; the message is the reason."""


class Callback:
    """Base class: override the events you need.

    ``trainer.loss`` is a tensor on the device; reading it as a number (``.item()``) costs a host sync, so a callback
    that does it every step makes every step wait for the device.

    ``per_replica`` says that the callback works on one replica of a batch (``trainlab.batched``): it reads only the
    trainer's loss, metrics, gradients, model and data, never its optimizer, schedule or forward hooks.
    """

    per_replica: ClassVar[bool] = False

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_start(self, trainer: Trainer) -> None: ...
    def after_backward(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def fire(callbacks: Sequence[Callback], trainer: Trainer, event: str) -> StopTraining | None:
    """Run ``event`` on every callback, in order, and return the first ``StopTraining`` raised (None if none).

    Every callback sees the event before a stop takes effect, so the epoch that ends training is still logged,
    shown and checkpointed; the first callback's reason wins.
    """
    stop: StopTraining | None = None
    for cb in callbacks:
        try:
            getattr(cb, event)(trainer)
        except StopTraining as e:
            stop = stop or e
    return stop


def improved(current: float, best: float, mode: str, min_delta: float) -> bool:
    """Whether ``current`` beats ``best`` by more than ``min_delta`` in direction ``mode`` (min or max)."""
    return current < best - min_delta if mode == "min" else current > best + min_delta


def early_stopping_decision(values: Sequence[float], mode: str, patience: int,
                            min_delta: float = 0.0) -> tuple[bool, int, str]:
    """Pure decision over a metric's values so far: ``(stop, best_index, reason)``.

    Stop when the last ``patience`` values have not improved on the best by more than ``min_delta``, or the
    last value is not finite.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"The 'mode' parameter of early stopping must be 'min' or 'max'. Got {mode!r} instead.")
    best_i = -1
    for i, v in enumerate(values):
        if math.isfinite(v) and (best_i < 0 or improved(v, values[best_i], mode, min_delta)):
            best_i = i
    if values and not math.isfinite(values[-1]):
        return True, best_i, f"the monitored value is {values[-1]} at epoch {len(values)}"
    waited = len(values) - 1 - best_i
    if best_i >= 0 and waited >= max(patience, 1):
        return True, best_i, (f"no improvement for {waited} epochs (best {values[best_i]:.6g} at epoch {best_i + 1},"
                              f" patience {patience})")
    return False, best_i, ""


def metric_mode(monitor: str, mode: str) -> str:
    """``auto`` resolves to ``max`` for accuracy-like metrics and ``min`` otherwise."""
    if mode != "auto":
        return mode
    return "max" if monitor.endswith("acc") else "min"


def require_metric(metrics: dict[str, float], monitor: str, who: str) -> float:
    if monitor not in metrics:
        raise ValueError(f"The 'monitor' parameter of {who} names {monitor!r}, which was not logged. "
                         f"Logged metrics: {', '.join(sorted(metrics))}.")
    return float(metrics[monitor])


class EarlyStoppingConfig(Section):
    """Stop when the monitored metric has not improved by ``min_delta`` for ``patience`` epochs (Prechelt 1998)."""

    @classmethod
    def owner_name(cls) -> str:
        return "early_stopping"

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(10, ge=0)
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True


class EarlyStopping(Callback):
    """Stop when the monitored metric stops improving; restore the best weights at the end (Prechelt 1998).

    Takes the fields of ``EarlyStoppingConfig`` (its defaults and checks are the only ones), or one such config.
    """

    per_replica = True

    def __init__(self, config: EarlyStoppingConfig | None = None, **fields: Any):
        if config is not None and fields:
            raise TypeError(f"EarlyStopping takes an EarlyStoppingConfig or its fields, not both. "
                            f"Got a config and {sorted(fields)} instead.")
        spec = config if config is not None else validate_section(EarlyStoppingConfig, fields)
        self.monitor, self.mode = spec.monitor, metric_mode(spec.monitor, spec.mode)
        self.patience, self.min_delta, self.restore_best = spec.patience, spec.min_delta, spec.restore_best
        self.values: list[float] = []
        self.best_state: dict[str, Tensor] | None = None
        self.best_epoch = 0

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.values.append(require_metric(trainer.metrics, self.monitor, "EarlyStopping"))
        stop, best_i, reason = early_stopping_decision(self.values, self.mode, self.patience, self.min_delta)
        if best_i == len(self.values) - 1:
            self.best_epoch = best_i + 1
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        trainer.extras["best_epoch"] = self.best_epoch
        if stop:
            raise StopTraining(f"early stopping: {reason}")

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_state is not None and self.best_epoch != trainer.epoch:
            trainer.model.load_state_dict(self.best_state)
            trainer.extras["restored_epoch"] = self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values, self.best_epoch, self.best_state = list(state["values"]), state["best_epoch"], state["best_state"]


class NonFiniteGuard(Callback):
    """Stop on a NaN or infinite loss and record why (``extras["diverged"]``); checks after every step on the CPU,
    every ``every_steps`` steps on an accelerator, and at each epoch end.

    Reading a CPU tensor costs nothing, so there a run stops at the step whose loss is non-finite. On an accelerator
    each check is a host sync, so a diverged run is caught within ``every_steps`` steps.
    """

    per_replica = True

    def __init__(self, every_steps: int = 25):
        if every_steps < 1:
            raise ValueError(f"The 'every_steps' parameter of NonFiniteGuard must be >= 1. Got {every_steps} instead.")
        self.every_steps = every_steps

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.loss.device.type == "cpu":
            loss = trainer.loss.item()  # cheaper than torch.isfinite, an op of its own
            if not math.isfinite(loss):
                self._stop(trainer, f"non-finite loss ({loss}) at step {trainer.step}")
        elif trainer.step % self.every_steps == 0 and not bool(torch.isfinite(trainer.loss)):
            self._stop(trainer, f"non-finite loss ({trainer.loss.item()}) at step {trainer.step}")

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not math.isfinite(trainer.metrics["train_loss"]):
            self._stop(trainer, f"non-finite training loss in epoch {trainer.epoch}")

    @staticmethod
    def _stop(trainer: Trainer, reason: str) -> None:
        trainer.extras["diverged"] = True
        raise StopTraining(reason)


class GradClip(Callback):
    """Rescale gradients so their global L2 norm is at most ``max_norm`` (Pascanu et al. 2013)."""

    per_replica = True

    def __init__(self, max_norm: float):
        if not max_norm > 0:
            raise ValueError(f"The 'max_norm' parameter of GradClip must be > 0. Got {max_norm} instead.")
        self.max_norm = max_norm

    def after_backward(self, trainer: Trainer) -> None:
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), self.max_norm, foreach=True)


class _SeededNoise(Callback):
    """A callback drawing from its own generator, whose state a checkpoint keeps (so a resumed run draws on)."""

    generator: torch.Generator

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class GradientNoise(_SeededNoise):
    """Add N(0, eta / (1 + t)^0.55) to every gradient (annealed gradient noise, Neelakantan et al. 2015)."""

    per_replica = True

    def __init__(self, eta: float, generator: torch.Generator):
        self.eta, self.generator = eta, generator

    def after_backward(self, trainer: Trainer) -> None:
        std = math.sqrt(self.eta / (1 + trainer.step) ** 0.55)
        for p in trainer.model.parameters():
            if p.grad is not None:
                noise = torch.randn(p.grad.shape, generator=self.generator, dtype=p.grad.dtype)
                p.grad.add_(noise.to(p.grad.device), alpha=std)


class WeightNoise(_SeededNoise):
    """Perturb weights with N(0, std^2) for each step's forward and backward, then restore them (Graves 2011)."""

    per_replica = True

    def __init__(self, std: float, generator: torch.Generator):
        self.std, self.generator = std, generator
        self._noise: list[Tensor] = []

    def on_step_start(self, trainer: Trainer) -> None:
        self._noise = []
        with torch.no_grad():
            for p in trainer.model.parameters():
                noise = torch.randn(p.shape, generator=self.generator, dtype=p.dtype).to(p.device) * self.std
                p.add_(noise)
                self._noise.append(noise)

    def after_backward(self, trainer: Trainer) -> None:
        with torch.no_grad():
            for p, noise in zip(trainer.model.parameters(), self._noise):
                p.sub_(noise)
        self._noise = []


class History(Callback):
    """Write the per-epoch metrics to ``path`` (CSV) after every epoch, atomically."""

    per_replica = True

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer) -> None:
        write_history_csv(self.path, trainer.history)


def write_history_csv(path: str | Path, history: Sequence[dict[str, float]]) -> None:
    from trainlab.checkpoints import atomic_write_text

    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    lines = [",".join(columns)]
    lines += [",".join("" if row.get(c) is None else f"{row[c]:.10g}" if isinstance(row[c], float) else str(row[c])
                       for c in columns) for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


class Checkpoint(Callback):
    """Save the full training state to ``path`` every ``every_epochs`` epochs and at the end, with its checksum,
    keeping the checkpoint before it (``trainlab.checkpoints``).

    An epoch's state is encoded at its end and written when the next epoch starts (the same state: nothing runs in
    between). So the epoch at which a callback stops training (early stopping, divergence) is never on disk as a
    state to train on from: a run killed while stopping resumes from the epoch before and stops where it did. A
    diverged run's final state (non-finite weights) is not saved: its last good checkpoint stays.
    """

    def __init__(self, path: str | Path, every_epochs: int = 1, extra: dict[str, Any] | None = None):
        if isinstance(every_epochs, bool) or not isinstance(every_epochs, int) or every_epochs < 1:
            raise ValueError(f"The 'every_epochs' parameter of Checkpoint must be an int >= 1. "
                             f"Got {every_epochs!r} instead.")
        self.path, self.every_epochs, self.extra = Path(path), every_epochs, extra or {}
        self._pending: bytes | None = None

    def on_epoch_end(self, trainer: Trainer) -> None:
        from trainlab.checkpoints import encode_checkpoint

        if trainer.epoch % self.every_epochs == 0:
            self._pending = encode_checkpoint(self._state(trainer, finished=False))

    def on_epoch_start(self, trainer: Trainer) -> None:
        from trainlab.checkpoints import write_checkpoint

        if self._pending is not None:
            write_checkpoint(self.path, self._pending, keep_previous=True)
            self._pending = None

    def on_fit_end(self, trainer: Trainer) -> None:
        self._pending = None
        if not trainer.extras.get("diverged"):
            self.save(trainer, finished=True)

    def save(self, trainer: Trainer, finished: bool = False) -> None:
        from trainlab.checkpoints import save_checkpoint

        save_checkpoint(self.path, self._state(trainer, finished), keep_previous=True)

    def _state(self, trainer: Trainer, finished: bool) -> dict[str, Any]:
        return {**self.extra, "trainer": trainer.state_dict(), "finished": finished,
                "stopped_reason": trainer.stopped_reason}


class Progress(Callback):
    """A rich progress bar over steps with the last epoch's metrics; plain lines when not on a terminal."""

    def __init__(self, description: str = "train", console: Any = None):
        self.description = description
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

        self.console = self.console or Console(stderr=True)
        if not self.console.is_terminal:
            return
        total = trainer.epochs * trainer.data.steps_per_epoch(trainer.batch_size)
        self._progress = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"), console=self.console,
                             transient=False)
        self._task = self._progress.add_task(self.description, total=total, completed=trainer.step, metrics="")
        self._progress.start()

    def on_step_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def on_epoch_end(self, trainer: Trainer) -> None:
        text = format_metrics(trainer.metrics)
        if self._progress is not None:
            self._progress.update(self._task, metrics=text)
        else:
            self.console.print(f"{self.description} epoch {trainer.epoch}/{trainer.epochs} {text}", highlight=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.stop()
        if trainer.stopped_reason:
            self.console.print(f"{self.description}: stopped: {trainer.stopped_reason}", highlight=False)


def format_metrics(metrics: dict[str, Any]) -> str:
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
