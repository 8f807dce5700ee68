"""The learning-rate range test: one short run whose lr grows exponentially, read off the loss curve.

Smith ("Cyclical Learning Rates for Training Neural Networks", 2017) trains once while the lr rises from
``min_lr`` to ``max_lr``: at step i of n, ``lr_i = min_lr * (max_lr / min_lr) ** (i / (n - 1))``. The loss stays
flat while the lr is too small, falls once it is large enough, and explodes when it is too large. The per-step loss
is noisy, so it is smoothed by a debiased exponential moving average
``a_t = beta * a_{t-1} + (1 - beta) * loss_t``, ``smoothed_t = a_t / (1 - beta^t)``, and the run stops as soon as
the smoothed loss exceeds ``diverge_factor`` times its lowest value so far, or a loss is not finite.

Two readings of the curve suggest an lr (both are computed; ``rule`` picks ``suggested_lr``):

- ``"min_tenth"``: a tenth of the lr at which the smoothed loss is lowest (fastai's ``lr_min``): the minimum sits
  at the edge of instability, an order of magnitude below it is safely on the descending side;
- ``"steepest"``: the lr at which the smoothed loss falls fastest per decade of lr, searched up to the minimum
  (fastai's ``lr_steep``).

The run uses everything the config builds (data, model, optimizer, penalties, gradient clipping and noise); the
config's schedule, epochs and early stopping are replaced: the test sets the lr of every parameter group before
each step and runs as many epochs as its steps need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from trainlab.callbacks import Callback, StopTraining

if TYPE_CHECKING:
    from trainlab.config import RunConfig

Rule = Literal["min_tenth", "steepest"]
RULES: tuple[str, ...] = ("min_tenth", "steepest")


@dataclass
class LRRangeResult:
    """The lr of every step taken, its training loss (raw and smoothed) and the suggested learning rates.

    Arrays hold only the steps whose loss was finite; ``stopped_reason`` says why the test ended.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    min_loss_lr: float
    steepest_lr: float
    suggested_lr: float
    rule: str
    stopped_reason: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        """Whether the loss exploded (or stopped being finite) before ``max_lr`` was reached."""
        return not self.stopped_reason.startswith("reached")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for the arrays)."""
        return {"lrs": self.lrs.tolist(), "losses": self.losses.tolist(), "smoothed": self.smoothed.tolist(),
                "min_loss_lr": self.min_loss_lr, "steepest_lr": self.steepest_lr, "suggested_lr": self.suggested_lr,
                "rule": self.rule, "stopped_reason": self.stopped_reason, "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LRRangeResult:
        raw = dict(raw)
        for key in ("lrs", "losses", "smoothed"):
            raw[key] = np.asarray(raw[key], dtype=float)
        return cls(**raw)


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The ``steps`` learning rates of the test: geometric from ``min_lr`` to ``max_lr``, both included."""
    _check_range(min_lr, max_lr, steps)
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))


class DebiasedEMA:
    """``a_t = beta a_{t-1} + (1 - beta) x_t`` from ``a_0 = 0``, read as ``a_t / (1 - beta^t)``.

    Dividing by ``1 - beta^t`` removes the pull towards the zero start, so the first value is the first sample
    (the bias correction of Kingma & Ba, "Adam", 2015).
    """

    def __init__(self, beta: float):
        _check_beta(beta)
        self.beta, self.avg, self.t = beta, 0.0, 0

    def update(self, value: float) -> float:
        """Add one sample; the debiased average so far."""
        self.t += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * float(value)
        return self.avg / (1 - self.beta ** self.t)


def smooth(losses: np.ndarray | list[float], beta: float) -> np.ndarray:
    """The debiased exponential moving average (``DebiasedEMA``) after each loss."""
    ema = DebiasedEMA(beta)
    return np.array([ema.update(loss) for loss in losses], dtype=float)


def suggestions(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """``(min_loss_lr, steepest_lr)`` of a range test's curve.

    ``steepest_lr`` is where d smoothed / d log10(lr) is most negative, looking only up to the minimum (past it the
    loss is already blowing up); with fewer than 3 points before the minimum it is the minimum's lr.
    """
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    if lrs.ndim != 1 or lrs.shape != smoothed.shape or lrs.size == 0:
        raise ValueError(f"lrs and smoothed must be 1-D arrays of the same non-zero length. "
                         f"Got shapes {lrs.shape} and {smoothed.shape} instead.")
    best = int(np.argmin(smoothed))
    if best < 2:
        return float(lrs[best]), float(lrs[best])
    slope = np.gradient(smoothed[: best + 1], np.log10(lrs[: best + 1]))
    return float(lrs[best]), float(lrs[int(np.argmin(slope))])


class RangeTestCallback(Callback):
    """Sets the lr of step i to ``lrs[i]``, records each step's loss and stops at the end or on explosion."""

    def __init__(self, lrs: np.ndarray, beta: float, diverge_factor: float):
        self.lrs, self.beta, self.diverge_factor = lrs, beta, diverge_factor
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self._ema = DebiasedEMA(beta)
        self.stopped_reason = ""

    def on_step_start(self, trainer: Any) -> None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = float(self.lrs[trainer.step])

    def on_step_end(self, trainer: Any) -> None:
        loss = float(trainer.loss)
        lr = float(self.lrs[len(self.losses)])
        if not math.isfinite(loss):
            self._stop(f"non-finite loss ({loss}) at lr {lr:.3g}")
        smoothed = self._ema.update(loss)
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        best = min(self.smoothed)
        if smoothed > self.diverge_factor * best:
            self._stop(f"exploded: smoothed loss {smoothed:.4g} > {self.diverge_factor:g} x its minimum "
                       f"{best:.4g}, at lr {lr:.3g}")
        if len(self.losses) == len(self.lrs):
            self._stop(f"reached max_lr {lr:.3g} after {len(self.losses)} steps")

    def _stop(self, reason: str) -> None:
        self.stopped_reason = reason
        raise StopTraining(f"lr range test: {reason}")


def lr_range_test(config: RunConfig, min_lr: float = 1e-6, max_lr: float = 10.0, steps: int = 100, *,
                  beta: float = 0.9, diverge_factor: float = 4.0, rule: Rule = "min_tenth") -> LRRangeResult:
    """Run the LR range test on ``config`` (a validated ``RunConfig``) and suggest a learning rate.

    ``steps`` optimizer steps (over as many epochs of the config's data as needed) with the lr rising
    geometrically from ``min_lr`` to ``max_lr``; ``beta`` smooths the loss, ``diverge_factor`` ends the test when
    the smoothed loss exceeds that multiple of its minimum; ``rule`` (``"min_tenth"`` or ``"steepest"``) picks
    ``suggested_lr``. See the module docstring.
    """
    from trainlab.config import load_config, require_config
    from trainlab.data import steps_per_epoch
    from trainlab.trainer import build_trainer

    lrs = lr_schedule(min_lr, max_lr, steps)
    _check_beta(beta)
    if not (isinstance(diverge_factor, (int, float)) and not isinstance(diverge_factor, bool)
            and 1 < diverge_factor < math.inf):
        raise ValueError(f"The 'diverge_factor' parameter of lr_range_test must be a float in (1, inf). "
                         f"Got {diverge_factor!r} instead.")
    if rule not in RULES:
        raise ValueError(f"The 'rule' parameter of lr_range_test must be one of {', '.join(RULES)}. "
                         f"Got {rule!r} instead.")
    require_config(config, "lr_range_test")
    epochs = math.ceil(steps / steps_per_epoch(config.data))
    config = load_config(config, {"epochs": epochs, "schedule": "constant", "early_stopping": None})
    recorder = RangeTestCallback(lrs, beta, diverge_factor)
    trainer = build_trainer(config, [recorder])
    trainer.fit()
    # The trainer's own NonFiniteGuard may stop the run first; its reason then stands.
    stopped_reason = recorder.stopped_reason or trainer.stopped_reason
    if not recorder.losses:
        raise ValueError(f"The lr range test took no step with a finite loss ({stopped_reason}); "
                         f"start from a smaller min_lr than {min_lr:g}.")
    taken = lrs[: len(recorder.losses)]
    smoothed = np.array(recorder.smoothed)
    min_loss_lr, steepest_lr = suggestions(taken, smoothed)
    suggested = min_loss_lr / 10 if rule == "min_tenth" else steepest_lr
    return LRRangeResult(taken, np.array(recorder.losses), smoothed, min_loss_lr, steepest_lr, suggested, rule,
                         stopped_reason,
                         {"min_lr": min_lr, "max_lr": max_lr, "steps": steps, "beta": beta,
                          "diverge_factor": diverge_factor})


def _check_range(min_lr: float, max_lr: float, steps: int) -> None:
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"The '{name}' parameter of lr_range_test must be a float in (0, inf). "
                             f"Got {value!r} instead.")
    if not max_lr > min_lr:
        raise ValueError(f"The 'max_lr' parameter of lr_range_test must be greater than min_lr ({min_lr!r}). "
                         f"Got {max_lr!r} instead.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"The 'steps' parameter of lr_range_test must be an int >= 2. Got {steps!r} instead.")


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"The 'beta' parameter of lr_range_test must be a float in [0, 1). Got {beta!r} instead.")
