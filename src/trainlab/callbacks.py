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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainlab.trainer import Trainer


class StopTraining(Exception):
    """Raised by a callback to end ``fit`` cleanly after the current step or epoch; the message is the reason."""


class Callback:
    """Base class: override the events you need. ``needs_step_loss`` asks the loop for a host sync per step."""

    needs_step_loss: bool = False

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
