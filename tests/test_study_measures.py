"""The measures the studies share, against values computed by hand from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainlab.config import load_config
from trainlab.data import split_sizes
from trainlab.runs import RunResult
from trainlab.studies.measures import (SMOOTHING, StepLoss, TrainEval, backpropagated_gradients, epochs_to_accuracy,
                                       epochs_to_loss, generalization_gap, mean_finite, reached, smoothed_loss, steps_to_target, train_metric)
from trainlab.trainer import build_trainer

nan, inf = float("nan"), float("inf")


def test_the_smoothed_loss_is_the_debiased_moving_average_with_beta_0_9():
    assert SMOOTHING == 0.9
    # a_t = sum_i 0.9^(t-i) 0.1 x_i, divided by 1 - 0.9^t.
    expected = [2.0, (0.9 * 0.1 * 2 + 0.1 * 1) / (1 - 0.9 ** 2),
                (0.81 * 0.1 * 2 + 0.9 * 0.1 * 1 + 0.1 * 4) / (1 - 0.9 ** 3)]
    np.testing.assert_allclose(smoothed_loss([2.0, 1.0, 4.0]), expected, rtol=1e-12)
    assert expected[1] == pytest.approx(0.28 / 0.19) and expected[2] == pytest.approx(0.652 / 0.271)
    np.testing.assert_allclose(smoothed_loss([3.0] * 4), [3.0] * 4, rtol=1e-12)  # no pull towards the zero start
    smoothed = smoothed_loss([1.0, nan, 1.0])
    assert smoothed[0] == 1.0 and np.isnan(smoothed[1:]).all()
    assert smoothed_loss([]).shape == (0,)


def test_steps_to_target_is_the_first_position_at_the_target():
    assert steps_to_target([5.0, 4.0, 3.0, 2.0], 3.0, 10) == 3  # at the target counts
    assert steps_to_target([5.0, 2.9, 3.0], 3.0, 10) == 2
    assert steps_to_target([0.1, 0.5, 0.9], 0.5, 3, reach="above") == 2
    assert steps_to_target([nan, 1.0], 2.0, 2) == 2  # a non-finite value never reaches it
    assert steps_to_target([-inf, 1.0], 2.0, 2) == 2
    assert steps_to_target([inf, 0.5], 0.1, 2, reach="above") == 2


def test_a_miss_counts_as_one_more_than_a_complete_run():
    assert steps_to_target([5.0, 4.0], 1.0, 10) == 11  # a run stopped after 2 of 10 steps that never got there
    assert steps_to_target([5.0, 4.0], 1.0, 2) == 3
    assert steps_to_target([], 1.0, 0) == 1
    assert reached(10, 10) and not reached(11, 10)
    with pytest.raises(ValueError, match="'total'"):
        steps_to_target([5.0, 4.0, 3.0], 1.0, 2)
    with pytest.raises(ValueError, match="'reach'"):
        steps_to_target([5.0], 1.0, 1, reach="over")  # type: ignore[arg-type]


def _run(val_acc=(0.5,), final=None, train_eval=None) -> RunResult:
    history = [{"epoch": i + 1, "val_acc": v} for i, v in enumerate(val_acc)]
    return RunResult({}, history, dict(final or {}), {"train_eval": dict(train_eval or {})})


def test_epochs_to_accuracy_counts_epochs_and_a_miss_as_epochs_plus_one():
    run = _run(val_acc=[0.5, 0.92, 0.88, 0.95])
    assert epochs_to_accuracy(run, 0.9, epochs=4) == 2
    assert epochs_to_accuracy(run, 0.95, epochs=4) == 4
    assert epochs_to_accuracy(run, 0.99, epochs=4) == 5
    assert epochs_to_accuracy(_run(val_acc=[0.5, nan]), 0.9, epochs=6) == 7  # diverged and stopped after 2


def test_epochs_to_loss_counts_epochs_down_to_the_target_and_a_miss_as_epochs_plus_one():
    history = [{"epoch": i + 1, "train_loss": t, "val_loss": v}
               for i, (t, v) in enumerate(zip([2.0, 1.2, 1.4, 0.9], [2.1, 1.0, 1.5, 1.1]))]
    run = RunResult({}, history, {}, {})
    assert epochs_to_loss(run, 1.2, epochs=4) == 2
    assert epochs_to_loss(run, 1.0, epochs=4) == 4
    assert epochs_to_loss(run, 0.5, epochs=6) == 7
    assert epochs_to_loss(run, 1.0, epochs=4, key="val_loss") == 2


def test_the_generalization_gap_is_train_minus_test_at_fit_end():
    run = _run(final={"test_acc": 0.7, "test_loss": 0.9, "val_acc": 0.99, "val_loss": 0.01},
               train_eval={"acc": 0.95, "loss": 0.2})
    assert generalization_gap(run) == pytest.approx(0.25)  # 0.95 - 0.7; the validation split plays no part
    assert generalization_gap(run, "loss") == pytest.approx(0.7)  # 0.9 - 0.2: positive when overfitting too
    assert train_metric(run) == 0.95 and train_metric(run, "loss") == 0.2


def test_mean_finite_skips_nan_and_inf():
    assert mean_finite([1.0, nan, 3.0, inf]) == 2.0
    assert mean_finite(np.array([[1.0, 2.0], [3.0, 4.0]])) == 2.5
    assert math.isnan(mean_finite([nan, -inf]))
    assert math.isnan(mean_finite([]))


def test_train_eval_and_step_loss_record_what_the_run_did():
    raw = {"data": {"dataset": {"name": "moons", "n_samples": 120}}, "model": {"name": "mlp", "depth": 1, "width": 4},
           "epochs": 2, "threads": 1}
    n_train = split_sizes(load_config(raw).data)["train"]
    assert n_train % 2 == 0
    # Two equal batches an epoch: the epoch's train loss is the plain mean of its two step losses.
    config = load_config(raw, {"data.batch_size": n_train // 2, "model.dropout": 0.5})
    trainer = build_trainer(config, [TrainEval(), StepLoss()])
    trainer.fit()
    losses = trainer.extras["step_loss"]
    assert len(losses) == 4 and all(isinstance(x, float) for x in losses)
    for epoch, row in enumerate(trainer.history):
        assert np.mean(losses[2 * epoch:2 * epoch + 2]) == pytest.approx(row["train_loss"], rel=1e-5)
    # The whole training set in eval mode (no dropout), with the final weights.
    x, y = trainer.data.x_train, trainer.data.y_train
    with torch.no_grad():
        out = trainer.model.eval()(x)
    recorded = trainer.extras["train_eval"]
    assert recorded["acc"] == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert recorded["loss"] == pytest.approx(torch.nn.functional.cross_entropy(out, y).item(), rel=1e-5)


def test_backpropagated_gradients_are_the_loss_gradients_at_each_hidden_linear_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    loss, rms, (w1_grad,) = backpropagated_gradients(model, x, y, [model[0].weight])
    # By hand: g = (softmax - onehot) / N at the logits, then back through each linear map and ReLU mask.
    z1 = model[0](x)
    z2 = model[2](z1.relu())
    logits = model[4](z2.relu())
    g = (logits.softmax(1) - nn.functional.one_hot(y, 2)) / len(y)
    delta2 = (g @ model[4].weight) * (z2 > 0)
    delta1 = (delta2 @ model[2].weight) * (z1 > 0)
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, y).item())
    assert rms == pytest.approx([delta1.square().mean().sqrt().item(), delta2.square().mean().sqrt().item()])
    torch.testing.assert_close(w1_grad, delta1.T @ x)
