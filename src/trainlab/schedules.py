"""Learning-rate schedules: a schedule multiplies the optimizer's lr, which is the peak (base) lr.

So a sweep changes ``optimizer.lr`` alone. Every schedule takes an optional linear warmup: for step s < W
(``warmup_steps``) the factor is ``start + (1 - start)(s + 1)/W``, which reaches 1 at s = W - 1 and is never 0 at
step 0 (nanoGPT's first warmup gave lr 0 there); from step W on the schedule proper runs on t = s - W over the
horizon T = total_steps - W. Past ``total_steps`` every factor stays at its value at ``total_steps``.

``factor(step, total_steps, steps_per_epoch)`` is the pure rule; ``build(optimizer, ...)`` returns the
``LRController`` the trainer drives (``step()`` after each optimizer step, ``epoch_end(metrics)`` after each epoch).
"""

from __future__ import annotations

import abc
import functools
import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from trainlab.registry import Component, ConfigError, Registry


class Schedule(Component):
    """Base of lr schedules: a multiplier of the optimizer's lr per step, with an optional linear warmup."""

    warmup_steps: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.0, ge=0, lt=1)

    @abc.abstractmethod
    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        """The factor t steps after warmup, for 0 <= t <= horizon."""

    def check(self, total_steps: int, steps_per_epoch: int) -> None:
        """Raise if this schedule cannot run ``total_steps`` steps of ``steps_per_epoch`` per epoch."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= self.warmup_steps:
            raise ValueError(f"The {self.name} schedule needs total_steps to be an int greater than warmup_steps "
                             f"({self.warmup_steps}). Got {total_steps!r} instead.")
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"The {self.name} schedule needs steps_per_epoch to be an int >= 1. "
                             f"Got {steps_per_epoch!r} instead.")

    def factor(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        """The lr multiplier at optimizer step ``step`` (0-based) of a run of ``total_steps`` steps."""
        self.check(total_steps, steps_per_epoch)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"The step of a schedule must be an int >= 0. Got {step!r} instead.")
        w = self.warmup_steps
        if step < w:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * (step + 1) / w
        return self._after_warmup(min(step, total_steps) - w, total_steps - w, steps_per_epoch)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> LRController:
        """The controller that applies this schedule to ``optimizer`` (freshly built: its lrs are the base lrs)."""
        return LRController(self, optimizer, total_steps, steps_per_epoch)


SCHEDULES: Registry[Schedule] = Registry("schedule", Schedule)


@SCHEDULES.register("constant")
class Constant(Schedule):
    """Constant lr after the optional warmup: f = 1."""

    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        return 1.0


@SCHEDULES.register("step")
class StepDecay(Schedule):
    """Step decay: multiply the lr by gamma every ``every_epochs`` epochs.

    f = γ^⌊t / (k·E)⌋ with k = ``every_epochs`` and E steps per epoch; as torch's StepLR stepped per epoch.
    He et al., "Deep residual learning for image recognition", 2016 (γ = 0.1 every 30 epochs).
    """

    gamma: float = Field(0.1, gt=0, lt=1)
    every_epochs: int = Field(30, ge=1)

    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        return self.gamma ** (t // (self.every_epochs * steps_per_epoch))


@SCHEDULES.register("exponential")
class Exponential(Schedule):
    """Exponential decay by ``gamma_per_epoch`` per epoch, smooth within epochs.

    f = γ^(t / E) with E steps per epoch; equals torch's ExponentialLR at every epoch boundary.
    """

    gamma_per_epoch: float = Field(0.95, gt=0, le=1)

    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        return self.gamma_per_epoch ** (t / steps_per_epoch)


def _cosine(final: float, t: float, period: float) -> float:
    return final + (1 - final) * (1 + math.cos(math.pi * t / period)) / 2


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Cosine annealing from 1 to ``final_factor`` over the run.

    f = f_min + (1 − f_min)(1 + cos(πt/T))/2 with f_min = ``final_factor``; as torch's CosineAnnealingLR with
    T_max = T. Loshchilov & Hutter, "SGDR: stochastic gradient descent with warm restarts", ICLR 2017.
    """

    final_factor: float = Field(0.0, ge=0, le=1)

    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        return _cosine(self.final_factor, t, horizon)


@SCHEDULES.register("cosine_restarts")
class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts, each cycle ``cycle_mult`` times longer than the last.

    Cycle i lasts T₀·mⁱ steps and anneals from 1 to ``final_factor``, T₀ = ``first_cycle_epochs`` × steps per epoch,
    m = ``cycle_mult``; as torch's CosineAnnealingWarmRestarts stepped every step. Past total_steps the factor stays
    put (no restart after the run). Loshchilov & Hutter, "SGDR: stochastic gradient descent with warm restarts",
    ICLR 2017 (T₀ = 10 epochs, m = 2).
    """

    first_cycle_epochs: int = Field(10, ge=1)
    cycle_mult: int = Field(2, ge=1)
    final_factor: float = Field(0.0, ge=0, le=1)

    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        period = self.first_cycle_epochs * steps_per_epoch
        if self.cycle_mult == 1:
            t_cur = t % period
        else:
            t_cur = t
            while t_cur >= period:
                t_cur -= period
                period *= self.cycle_mult
        if t == horizon and t_cur == 0:
            # The run ends exactly at a cycle end: hold the annealed value instead of restarting.
            return self.final_factor
        return _cosine(self.final_factor, t_cur, period)


@SCHEDULES.register("one_cycle")
class OneCycle(Schedule):
    """One-cycle: the lr rises to the peak, then anneals far below its start.

    Cosine up from 1/``div_factor`` to 1 over ``pct_start`` of the run, then down to 1/(div_factor·
    final_div_factor) at the last step; as torch's OneCycleLR with anneal_strategy='cos', cycle_momentum=False and
    max_lr = the optimizer's lr. Smith & Topin, "Super-convergence: very fast training of neural networks using
    large learning rates", 2018.
    """

    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, ge=1)
    final_div_factor: float = Field(1e4, ge=1)

    def check(self, total_steps: int, steps_per_epoch: int) -> None:
        super().check(total_steps, steps_per_epoch)
        if self.pct_start * (total_steps - self.warmup_steps) <= 1:
            raise ValueError(f"The one_cycle schedule needs pct_start * (total_steps - warmup_steps) > 1 so that "
                             f"its rising phase has a step. Got pct_start={self.pct_start}, "
                             f"total_steps={total_steps}, warmup_steps={self.warmup_steps} instead.")

    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        initial = 1 / self.div_factor
        minimum = initial / self.final_div_factor
        peak_step = self.pct_start * horizon - 1  # torch's float phase boundary
        last_step = horizon - 1
        t = min(t, last_step)
        if t <= peak_step:
            return _anneal(initial, 1.0, t / peak_step)
        return _anneal(1.0, minimum, (t - peak_step) / (last_step - peak_step))


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


@SCHEDULES.register("plateau")
class Plateau(Schedule):
    """Reduce on plateau: cut the lr by ``gamma`` when the monitored metric stops improving.

    The cut comes after ``patience_epochs`` epochs without improvement of ``monitor``; improvement is relative:
    below best·(1 − threshold) in mode 'min', above best·(1 + threshold) in mode 'max'. The lr never goes below
    ``min_factor`` × the base lr. Runs torch's ReduceLROnPlateau once per epoch, after warmup. ``factor`` and
    ``preview`` know no metric, so they show the warmup and then a constant.
    """

    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    gamma: float = Field(0.1, gt=0, lt=1)
    patience_epochs: int = Field(5, ge=0)
    threshold: float = Field(1e-4, ge=0)
    min_factor: float = Field(0.0, ge=0, le=1)

    def _after_warmup(self, t: int, horizon: int, steps_per_epoch: int) -> float:
        return 1.0


class LRController:
    """Drives one schedule on one optimizer: ``step()`` after each optimizer step, ``epoch_end`` after each epoch.

    Per-step factors go through torch's LambdaLR with a picklable lambda (a partial of the frozen schedule's
    ``factor``). Plateau uses LambdaLR for its warmup only and then torch's ReduceLROnPlateau, fed by
    ``epoch_end``. Build the controller on a freshly built optimizer, then load states to resume.
    """

    def __init__(self, schedule: Schedule, optimizer: torch.optim.Optimizer, total_steps: int,
                 steps_per_epoch: int):
        schedule.check(total_steps, steps_per_epoch)
        self.schedule = schedule
        self.optimizer = optimizer
        self.steps = 0
        multiplier = functools.partial(schedule.factor, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        self._per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        self._plateau = None
        if isinstance(schedule, Plateau):
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=schedule.mode, factor=schedule.gamma, patience=schedule.patience_epochs,
                threshold=schedule.threshold, threshold_mode="rel",
                min_lr=[schedule.min_factor * lr for lr in self._per_step.base_lrs])

    @property
    def lr(self) -> float:
        """The current lr of parameter group 0."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self) -> None:
        """Advance one optimizer step."""
        self.steps += 1
        # After warmup, plateau's lr belongs to ReduceLROnPlateau; LambdaLR would reset it to the base lr.
        if self._plateau is None or self.steps <= self.schedule.warmup_steps:
            self._per_step.step()

    def epoch_end(self, metrics: dict[str, float]) -> None:
        """End of an epoch: plateau reads its monitored metric here (a missing one is an error); others ignore it."""
        if self._plateau is None:
            return
        monitor = self.schedule.monitor
        if monitor not in metrics:
            raise ConfigError(f"The plateau schedule monitors {monitor!r}, which this epoch's metrics lack. "
                              f"Available: {', '.join(sorted(metrics)) or '(none)'}. "
                              f"Set the schedule's 'monitor' to one of them.")
        if self.steps >= self.schedule.warmup_steps:
            self._plateau.step(float(metrics[monitor]))

    def state_dict(self) -> dict[str, Any]:
        """Plain data (ints, floats, lists, dicts) for a checkpoint."""
        per_step = {k: v for k, v in self._per_step.state_dict().items() if k != "lr_lambdas"}
        return {"steps": self.steps, "lrs": [float(g["lr"]) for g in self.optimizer.param_groups],
                "per_step": per_step, "plateau": None if self._plateau is None else self._plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["plateau"] is None) != (self._plateau is None):
            raise ValueError(f"This state is from a {'plateau' if state['plateau'] is not None else 'per-step'} "
                             f"schedule; this controller runs {self.schedule.name}.")
        if len(state["lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"This state has {len(state['lrs'])} parameter groups; the optimizer has "
                             f"{len(self.optimizer.param_groups)}.")
        self.steps = state["steps"]
        self._per_step.load_state_dict({**state["per_step"], "lr_lambdas": [None]})
        if self._plateau is not None:
            self._plateau.load_state_dict(state["plateau"])
        for group, lr in zip(self.optimizer.param_groups, state["lrs"]):
            group["lr"] = lr


def preview(schedule: Schedule, total_steps: int, steps_per_epoch: int = 1, base_lr: float = 1.0) -> np.ndarray:
    """The lr at each of ``total_steps`` steps for base lr ``base_lr``, from ``schedule.factor``.

    Plateau has no metric here: it shows its warmup, then a constant.
    """
    schedule.check(total_steps, steps_per_epoch)
    return base_lr * np.array([schedule.factor(s, total_steps, steps_per_epoch) for s in range(total_steps)])
