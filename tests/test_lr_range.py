from __future__ import annotations

import math

import numpy as np
import pytest

from trainlab.callbacks import Callback
from trainlab.config import load_config
from trainlab.figures import plot_lr_range, save_lr_range_plot
from trainlab.lr_range import LRRangeResult, RangeTestCallback, lr_range_test, lr_schedule, smooth, suggestions
from trainlab.trainer import build_trainer

TINY = {"data": {"dataset": {"name": "moons", "n_samples": 300}, "batch_size": 32},
        "model": {"name": "mlp", "depth": 1, "width": 16}, "optimizer": {"name": "sgd", "lr": 0.1}, "threads": 1}


def test_the_schedule_is_geometric_from_min_to_max():
    lrs = lr_schedule(1e-6, 10.0, 8)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(10.0)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, (10.0 / 1e-6) ** (1 / 7))


def test_smoothing_is_a_debiased_moving_average():
    losses = [3.0, 1.0, 2.0]
    a1 = 0.1 * 3.0
    a2 = 0.9 * a1 + 0.1 * 1.0
    a3 = 0.9 * a2 + 0.1 * 2.0
    expected = [a1 / (1 - 0.9), a2 / (1 - 0.9 ** 2), a3 / (1 - 0.9 ** 3)]
    assert np.allclose(smooth(losses, 0.9), expected)
    assert smooth(losses, 0.9)[0] == pytest.approx(3.0)  # debiased: the first value is the first loss
    assert np.allclose(smooth(losses, 0.0), losses)


def test_suggestions_read_the_minimum_and_the_steepest_descent_before_it():
    lrs = np.logspace(-6, 1, 71)
    x = np.log10(lrs)
    # Flat, then a descent steepest at lr 1e-2 (x = -2), a minimum at lr 1 (x = 0), then a rise.
    curve = 2.0 - np.tanh(x + 2) + np.where(x > 0, 5 * x ** 2, 0.0) + 0.1 * np.maximum(x + 2, 0) ** 2 / 4
    min_lr, steepest = suggestions(lrs, curve)
    assert min_lr == pytest.approx(lrs[np.argmin(curve)])
    assert 0.5 < min_lr <= 1.3
    assert steepest == pytest.approx(1e-2, rel=0.3)
    # With no descent (minimum at the start) both are the first lr.
    assert suggestions(lrs[:5], np.arange(5.0)) == (pytest.approx(lrs[0]), pytest.approx(lrs[0]))


class LRLog(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def after_backward(self, trainer) -> None:
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def test_the_callback_sets_each_steps_lr_records_the_loss_and_stops_at_the_end():
    lrs = lr_schedule(1e-4, 1e-2, 12)
    recorder, log = RangeTestCallback(lrs, beta=0.9, diverge_factor=4.0), LRLog()
    trainer = build_trainer(load_config({**TINY, "epochs": 10}), [recorder, log])
    trainer.fit()
    assert np.allclose(log.lrs, lrs)
    assert len(recorder.losses) == 12 == len(log.lrs)
    assert np.allclose(recorder.smoothed, smooth(recorder.losses, 0.9))
    assert recorder.stopped_reason.startswith("reached max_lr")


def test_range_test_ends_when_the_loss_explodes_and_suggests_a_tenth_of_the_minimum():
    result = lr_range_test(load_config({**TINY, "seed": 1}), min_lr=1e-4, max_lr=1e4, steps=60)
    assert result.diverged and ("exploded" in result.stopped_reason or "non-finite" in result.stopped_reason)
    assert 1 < len(result.lrs) < 60
    assert np.allclose(result.lrs, lr_schedule(1e-4, 1e4, 60)[: len(result.lrs)])
    assert np.all(np.isfinite(result.losses)) and len(result.losses) == len(result.smoothed) == len(result.lrs)
    assert result.min_loss_lr == pytest.approx(result.lrs[np.argmin(result.smoothed)])
    assert result.suggested_lr == pytest.approx(result.min_loss_lr / 10)
    assert result.rule == "min_tenth"
    assert LRRangeResult.from_dict(result.to_dict()).to_dict() == result.to_dict()


def test_range_test_that_stays_stable_reaches_max_lr_and_can_suggest_the_steepest_point():
    result = lr_range_test(load_config(TINY), min_lr=1e-5, max_lr=1e-3, steps=10, rule="steepest")
    assert not result.diverged and len(result.lrs) == 10
    assert result.suggested_lr == result.steepest_lr


def test_range_test_runs_with_a_schedule_whose_warmup_is_longer_than_the_test():
    config = {**TINY, "schedule": {"name": "cosine", "warmup_steps": 500}}
    assert len(lr_range_test(load_config(config), min_lr=1e-5, max_lr=1e-3, steps=10).lrs) == 10


@pytest.mark.parametrize("kwargs, field", [
    ({"min_lr": 0.0}, "min_lr"), ({"max_lr": -1.0}, "max_lr"), ({"min_lr": 1.0, "max_lr": 0.5}, "max_lr"),
    ({"steps": 1}, "steps"), ({"steps": 2.5}, "steps"), ({"beta": 1.0}, "beta"), ({"diverge_factor": 1.0},
                                                                                  "diverge_factor"),
    ({"rule": "valley"}, "rule"), ({"max_lr": math.inf}, "max_lr"),
])
def test_invalid_arguments_name_the_parameter(kwargs, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        lr_range_test(load_config(TINY), **kwargs)


def test_the_plot_marks_both_suggestions(tmp_path):
    lrs = lr_schedule(1e-4, 1.0, 30)
    losses = 2 - np.tanh(np.log10(lrs) + 2)
    result = LRRangeResult(lrs, losses, smooth(losses, 0.5), 0.5, 0.01, 0.05, "min_tenth", "reached max_lr 1")
    fig = plot_lr_range(result)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len(ax.lines) == 4  # smoothed, raw, and the two suggestions
    assert save_lr_range_plot(result, tmp_path / "range.png").is_file()
