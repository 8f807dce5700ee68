"""The measures several studies share, one definition each.

- ``TrainEval`` (callback) and ``train_metric``: loss and accuracy on the whole training set at fit end, eval mode;
- ``StepLoss`` (callback): the training loss of every step;
- ``smoothed_loss``: the debiased moving average of step losses (``trainlab.lr_range.smooth``, beta ``SMOOTHING``);
- ``steps_to_target`` (and ``epochs_to_accuracy``, ``epochs_to_loss``): the first step (or epoch) at which a curve
  reaches a target, with one rule for a miss;
- ``generalization_gap``: train accuracy minus test accuracy at fit end;
- ``mean_finite``: the mean of the finite values, for tables that must survive a diverged run;
- ``rank_correlation``: Spearman's rank correlation, 0 when either side is constant;
- ``backpropagated_gradients``: at given weights, the RMS of the loss gradient at each hidden layer's linear output.

What a callback records goes into ``trainer.extras`` (stored with the run), so a run loaded from the store carries
it too; ``TRAIN_EVAL`` and ``STEP_LOSS`` are the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.callbacks import Callback
from trainlab.diagnostics.probes import forward_hooks
from trainlab.lr_range import smooth
from trainlab.runs import RunResult

TRAIN_EVAL = "train_eval"
STEP_LOSS = "step_loss"
SMOOTHING = 0.9  # beta of the moving average of step losses: about the last 10 steps


class TrainEval(Callback):
    """Stores ``trainer.evaluate("train")`` at fit end in ``extras["train_eval"]``: the mean loss and (for
    classification) accuracy over the whole training set in eval mode (no dropout, no augmentation, batch norm's
    running statistics), with the final weights (the best ones where early stopping restored them, since the
    standard callbacks come first)."""

    per_replica = True

    def on_fit_end(self, trainer: Any) -> None:
        trainer.extras[TRAIN_EVAL] = trainer.evaluate("train")


def train_metric(run: RunResult, metric: Literal["acc", "loss"] = "acc") -> float:
    """The ``TrainEval`` value of ``metric`` of a run (recorded at fit end)."""
    return float(run.extras[TRAIN_EVAL][metric])


class StepLoss(Callback):
    """Stores the training loss of every step, in order, in ``extras["step_loss"]`` (a run stopped early, e.g. by
    the non-finite guard, has fewer; its last loss may be ``nan`` or ``inf``). The loss is the one backpropagated:
    the data loss plus any penalties. The losses stay on the device until fit end: no host sync per step."""

    per_replica = True

    def on_fit_start(self, trainer: Any) -> None:
        self.losses: list[torch.Tensor] = []

    def on_step_end(self, trainer: Any) -> None:
        self.losses.append(trainer.loss.detach().reshape(()))

    def on_fit_end(self, trainer: Any) -> None:
        trainer.extras[STEP_LOSS] = torch.stack(self.losses).tolist() if self.losses else []


def smoothed_loss(losses: Sequence[float] | np.ndarray) -> np.ndarray:
    """The debiased exponential moving average of step losses: ``a_t = b a_{t-1} + (1 - b) x_t`` from ``a_0 = 0``,
    read as ``a_t / (1 - b^t)`` with ``b = SMOOTHING`` (``trainlab.lr_range.smooth``), so the first value is the
    first loss. A non-finite loss makes every later value non-finite."""
    return smooth(list(losses), SMOOTHING)


def steps_to_target(values: Sequence[float] | np.ndarray, target: float, total: int,
                    reach: Literal["below", "above"] = "below") -> int:
    """The 1-based position of the first of ``values`` (one per step or per epoch) at or below ``target``
    (``reach="below"``, a loss) or at or above it (``"above"``, an accuracy); a non-finite value never reaches it.

    A miss (no value reaches the target: the run is too slow, or it diverged and stopped) counts as ``total + 1``,
    ``total`` being the positions of a complete run: one more than any hit, so a miss ranks behind every run that
    got there, and the number stays finite for the statistics (it is a lower bound of the true count).
    ``reached(steps, total)`` tells hits from misses.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < len(values):
        raise ValueError(f"The 'total' argument of steps_to_target must be an int at least the number of values "
                         f"({len(values)}). Got {total!r} instead.")
    if reach not in ("below", "above"):
        raise ValueError(f"The 'reach' argument of steps_to_target must be 'below' or 'above'. Got {reach!r} instead.")
    x = np.asarray(values, dtype=float)
    hit = np.isfinite(x) & ((x <= target) if reach == "below" else (x >= target))
    first = np.flatnonzero(hit)
    return int(first[0]) + 1 if first.size else total + 1


def epochs_to_accuracy(run: RunResult, target: float, epochs: int, key: str = "val_acc") -> int:
    """``steps_to_target`` of the accuracy ``key`` after each epoch (``reach="above"``): the first epoch at
    ``target`` or above; a miss (never there, or stopped before) counts as ``epochs + 1``."""
    return steps_to_target(run.metric(key), target, epochs, reach="above")


def epochs_to_loss(run: RunResult, target: float, epochs: int, key: str = "train_loss") -> int:
    """``steps_to_target`` of the loss ``key`` after each epoch: the first epoch at ``target`` or below; a miss
    counts as ``epochs + 1``."""
    return steps_to_target(run.metric(key), target, epochs)


def reached(steps: int, total: int) -> bool:
    """Whether a ``steps_to_target`` count of a run with ``total`` positions is a hit (not a miss)."""
    return steps <= total


def generalization_gap(run: RunResult, metric: Literal["acc", "loss"] = "acc") -> float:
    """How much better a run does on its training data than on held-out data, at fit end, with the final weights:
    train accuracy minus test accuracy (``metric="acc"``), or test loss minus train loss (``"loss"``), so a positive
    gap means overfitting either way. Train: ``TrainEval`` (the whole training set, eval mode); held out: the run's
    final test metrics. The test split, never the validation split: early stopping and learning-rate choices look at
    the validation split, which makes its accuracy an optimistic estimate for exactly the runs they pick."""
    train, test = train_metric(run, metric), float(run.final[f"test_{metric}"])
    return train - test if metric == "acc" else test - train


def mean_finite(values: Any) -> float:
    """The mean of the finite entries of ``values``; ``nan`` when there are none (every run diverged)."""
    finite = [float(v) for v in np.asarray(values, dtype=float).ravel() if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y``; 0 when either is constant (no ranking to agree with)."""
    from scipy.stats import spearmanr  # scipy.stats takes about 0.5 s to import

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    return float(spearmanr(x, y).statistic)


def backpropagated_gradients(model: nn.Module, x: Tensor, y: Tensor, wrt: Sequence[Tensor] = ()
                             ) -> tuple[float, list[float], list[Tensor]]:
    """The cross-entropy of ``model`` on (x, y); the RMS of its gradient with respect to the output of every linear
    layer but the last (each hidden layer's backpropagated gradient, before any norm or activation: the signal that
    vanishes or explodes through depth, which Glorot and Bengio (2010) keep constant across layers); and its
    gradients with respect to the tensors ``wrt`` (one backward pass for all).

    The weight gradients' RMS is no substitute: a layer's weight gradient is its backpropagated gradient times its
    input, and scaling every weight of a ReLU stack by c scales the first by c^(L - l) and the second by c^(l - 1),
    so (for a given gradient at the output) every layer's weight gradient by c^(L - 1) alike.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    outputs: dict[nn.Module, Tensor] = {}
    with forward_hooks({m: lambda module, _, out: outputs.__setitem__(module, out) for m in linears[:-1]}):
        loss = nn.functional.cross_entropy(model(x), y)
    hidden = [outputs[m] for m in linears[:-1]]
    grads = torch.autograd.grad(loss, [*hidden, *wrt])
    rms = [float(g.double().square().mean().sqrt()) for g in grads[:len(hidden)]]
    return float(loss.detach()), rms, list(grads[len(hidden):])
