from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainlab.callbacks import Callback, EarlyStopping, EarlyStoppingConfig, NonFiniteGuard, early_stopping_decision
from trainlab.config import load_config
from trainlab.registry import ConfigError
from trainlab.runs import Store, load_result, train
from trainlab.trainer import build_trainer, flushes_subnormals, weighted_sum_in_order


@pytest.mark.parametrize("values,mode,patience,stop,best", [
    ([1.0, 0.9, 0.8], "min", 2, False, 2),
    ([1.0, 0.9, 0.95, 0.97], "min", 2, True, 1),
    ([1.0, 0.9, 0.95], "min", 2, False, 1),
    ([0.5, 0.6, 0.55, 0.58], "max", 2, True, 1),
    ([1.0, 1.0], "min", 0, True, 0),
    ([1.0, 0.99999], "min", 1, False, 1),
])
def test_early_stopping_decision(values, mode, patience, stop, best):
    got_stop, got_best, reason = early_stopping_decision(values, mode, patience)
    assert (got_stop, got_best) == (stop, best)
    assert bool(reason) == stop


def test_early_stopping_min_delta_and_non_finite():
    # 0.995 improves on 1.0 by less than min_delta, so it does not count as better.
    assert early_stopping_decision([1.0, 0.995, 0.99], "min", 2, min_delta=0.02)[:2] == (True, 0)
    stop, _, reason = early_stopping_decision([1.0, math.nan], "min", 5)
    assert stop and "nan" in reason


def test_callback_arguments_are_validated():
    with pytest.raises(ValueError, match=r"mode: The 'mode' parameter of early_stopping must be 'auto', 'min' or 'max'"
                                         r"\. Got 'mx' instead\."):
        EarlyStopping(mode="mx")
    with pytest.raises(ValueError, match="'patience' parameter of early_stopping must be greater than or equal to 0"):
        EarlyStopping(patience=-1)
    with pytest.raises(TypeError, match="not both"):
        EarlyStopping(EarlyStoppingConfig(), patience=3)
    with pytest.raises(ValueError, match="'every_steps' parameter of NonFiniteGuard must be >= 1. Got 0"):
        NonFiniteGuard(every_steps=0)


def test_training_learns_moons(tiny):
    tiny["epochs"] = 15
    result = train(load_config(tiny))
    assert result.final["test_acc"] > 0.85
    assert [row["epoch"] for row in result.history] == list(range(1, 16))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_numbers_and_other_seed_differs(tiny):
    a, b, c = train(load_config(tiny)), train(load_config(tiny)), train(load_config({**tiny, "seed": 1}))
    assert a.metric("train_loss") == b.metric("train_loss") and a.final["test_acc"] == b.final["test_acc"]
    assert a.metric("train_loss") != c.metric("train_loss")


class Interrupt(Callback):
    def __init__(self, at_epoch: int):
        self.at_epoch = at_epoch

    def on_epoch_end(self, trainer):
        if trainer.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_resume_is_bit_identical(tiny, tmp_path):
    cfg = {**tiny, "epochs": 6,
           "model": {"name": "mlp", "depth": 2, "width": 16, "dropout": 0.2, "norm": "batch"},
           "data": {**tiny["data"], "augment": [{"name": "gaussian_noise", "std": 0.05}]},
           "schedule": {"name": "cosine", "warmup_steps": 5},
           "early_stopping": {"patience": 50}, "gradient_noise": 0.01}
    whole = train(load_config(cfg), tmp_path / "whole", keep_model=True)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(cfg), tmp_path / "cut", callbacks=[Interrupt(at_epoch=4)])
    resumed = train(load_config(cfg), tmp_path / "cut", resume=True, keep_model=True)
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(whole.history) == strip(resumed.history)
    assert load_result(tmp_path / "cut").final["test_acc"] == whole.final["test_acc"]


def test_resume_with_another_config_is_refused(tiny, tmp_path):
    train(load_config(tiny), tmp_path / "run")
    with pytest.raises(ValueError, match="different config"):
        train(load_config({**tiny, "seed": 3}), tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        train(load_config(tiny), tmp_path / "run")


def test_an_epochs_loss_sum_is_the_running_sum_of_its_steps_bitwise():
    values = list(torch.rand(500, generator=torch.Generator().manual_seed(0)) * 3)
    counts = [128] * 499 + [17]
    running = torch.zeros(())
    for value, count in zip(values, counts):
        running += value * count
    ours = weighted_sum_in_order(values, counts, torch.device("cpu"))
    assert ours.dtype == torch.float32 and ours.item() == running.item()
    # torch's sum accumulates float32 in double, and so differs in the last bits: this test tells the two apart.
    assert (torch.stack(values) * torch.tensor(counts)).sum().item() != running.item()
    assert weighted_sum_in_order([], [], torch.device("cpu")).item() == 0


def test_non_finite_loss_stops_the_run(tiny):
    tiny["optimizer"] = {"name": "sgd", "lr": 1e6}
    tiny["model"]["activation"] = "relu"
    result = train(load_config({**tiny, "epochs": 30}))
    assert "non-finite" in result.final["stopped_reason"]
    assert result.extras["diverged"] is True
    assert result.final["epochs_run"] < 30


def test_early_stopping_stops_and_restores_best(tiny):
    tiny.update(epochs=60, early_stopping={"monitor": "val_loss", "patience": 2, "min_delta": 0.5})
    result = train(load_config(tiny))
    assert result.final["stopped_reason"].startswith("early stopping")
    assert result.extras["best_epoch"] == 1 and result.final["epochs_run"] == 3
    # The restored weights are epoch 1's: the final validation loss is the one logged then.
    assert result.extras["restored_epoch"] == 1
    assert result.final["val_loss"] == pytest.approx(result.history[0]["val_loss"], rel=1e-6)


def test_the_epoch_that_stops_training_is_still_logged(tiny, tmp_path):
    tiny.update(epochs=60, early_stopping={"patience": 2, "min_delta": 0.5})
    result = train(load_config(tiny), tmp_path / "run")
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    assert len(rows) == result.final["epochs_run"] == 3


def test_resuming_a_stopped_run_does_not_train_on(tiny, tmp_path):
    tiny.update(epochs=60, early_stopping={"patience": 2, "min_delta": 0.5})
    first = train(load_config(tiny), tmp_path / "run")
    again = train(load_config(tiny), tmp_path / "run", resume=True)
    assert again.final["epochs_run"] == first.final["epochs_run"] == 3
    assert again.final["stopped_reason"] == first.final["stopped_reason"]
    assert again.final["test_acc"] == first.final["test_acc"]


def test_resume_needs_a_run_directory(tiny):
    with pytest.raises(ValueError, match="'resume' argument needs 'out_dir'"):
        train(load_config(tiny), resume=True)


@pytest.mark.parametrize("patch,val_fraction,message", [
    ({"early_stopping": {"monitor": "val_loss"}}, 0,
     "'early_stopping.monitor' parameter names 'val_loss'.*no validation split"),
    ({"early_stopping": {"monitor": "val_los"}}, 0.1, "Did you mean 'val_loss'"),
    ({"schedule": {"name": "plateau", "monitor": "val_acc"}}, 0, "'schedule.monitor' parameter names 'val_acc'"),
])
def test_a_monitor_that_is_never_logged_fails_before_training(tiny, patch, val_fraction, message):
    tiny["data"]["val_fraction"] = val_fraction
    with pytest.raises(ConfigError, match=message):
        build_trainer(load_config({**tiny, **patch}))


def test_regression_rejects_accuracy_monitors_and_label_smoothing(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    np.savez(tmp_path / "reg.npz", x=x, y=x @ np.array([2.0, -1.0, 0.5]))
    cfg = {"data": {"dataset": {"name": "npz", "path": str(tmp_path / "reg.npz")}},
           "model": {"name": "mlp", "depth": 1, "width": 8}, "epochs": 2}
    final = build_trainer(load_config(cfg)).fit()
    assert "val_loss" in final and "val_acc" not in final
    with pytest.raises(ConfigError, match="accuracy is logged for classification only"):
        build_trainer(load_config({**cfg, "early_stopping": {"monitor": "val_acc"}}))
    with pytest.raises(ConfigError, match="'label_smoothing' parameter of RunConfig applies to classification"):
        build_trainer(load_config({**cfg, "label_smoothing": 0.1}))


def test_l2_penalty_shrinks_weights(tiny):
    def weight_norm(cfg):
        t = build_trainer(load_config(cfg))
        t.fit()
        return sum(p.norm() ** 2 for n, p in t.model.named_parameters() if p.ndim > 1).item()

    assert weight_norm({**tiny, "regularizers": [{"name": "l2", "strength": 0.1}]}) < weight_norm(tiny)


def test_any_user_module_trains(tiny):
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    trainer = build_trainer(load_config(tiny), model=model)
    final = trainer.fit()
    assert trainer.model is model and final["test_acc"] > 0.7


class CountFits(Callback):
    fits = 0

    def on_fit_start(self, trainer):
        CountFits.fits += 1


def test_store_trains_a_config_once(tiny, tmp_path):
    store = Store(tmp_path)
    first = store.run(load_config(tiny), callbacks=[CountFits()])
    second = store.run(load_config(tiny), callbacks=[CountFits()])
    assert CountFits.fits == 1
    assert second.final == first.final and store.has(load_config(tiny))
    # The model comes back from the run directory alone (config, meta.json shapes, weights): same test accuracy.
    from trainlab.data import load_data

    model, data = second.load_model(), load_data(load_config(tiny).data)
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(first.final["test_acc"], abs=1e-6)


def test_the_layers_below_load_config_take_only_a_run_config(tiny, tmp_path):
    for call in (lambda: train(tiny), lambda: build_trainer(tiny), lambda: Store(tmp_path).run(tiny)):
        with pytest.raises(TypeError, match="must be a RunConfig. Got dict instead; make one with "
                                            "trainlab.load_config"):
            call()


def test_load_config_returns_a_run_config_as_is_and_applies_overrides(tiny):
    config = load_config(tiny)
    assert load_config(config) is config
    assert load_config(config, {"epochs": 3}).epochs == 3 and config.epochs != 3


class SeesSubnormals(Callback):
    def on_step_end(self, trainer):
        self.flushed = flushes_subnormals()
        self.tiny = float(torch.tensor([1e-39]) * 2)


@pytest.mark.parametrize("caller_flushes", [False, True])
def test_training_flushes_subnormals_and_restores_the_callers_setting(tiny, caller_flushes):
    torch.set_flush_denormal(caller_flushes)
    try:
        assert flushes_subnormals() is caller_flushes
        seen = SeesSubnormals()
        build_trainer(load_config({**tiny, "epochs": 1}), [seen]).fit()
        assert seen.flushed and seen.tiny == 0.0  # 2e-39 is subnormal: zero while training
        assert flushes_subnormals() is caller_flushes
        assert (float(torch.tensor([1e-39]) * 2) == 0.0) is caller_flushes
    finally:
        torch.set_flush_denormal(False)


def test_weighted_data_trains_on_the_weighted_mean_loss(tiny):
    from trainlab.data import load_data, with_sample_weights
    from trainlab.trainer import WeightedLoss

    data = load_data(load_config(tiny).data)
    n = len(data.y_train)
    weighted = with_sample_weights(data, torch.arange(n, dtype=torch.float32) % 3)
    assert weighted.weights.mean().item() == pytest.approx(1.0)
    trainer = build_trainer(load_config(tiny), data=weighted)
    assert isinstance(trainer.loss_fn, WeightedLoss)
    out, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    trainer.data.batch_weights = torch.tensor([0.0, 1.0, 2.0, 1.0])  # as train_batches sets them
    per_sample = torch.nn.functional.cross_entropy(out, y, reduction="none")
    assert trainer.loss_fn(out, y).item() == pytest.approx((per_sample * trainer.data.batch_weights).mean().item())
    trainer.data.batch_weights = None  # evaluation: the plain mean
    assert trainer.loss_fn(out, y).item() == pytest.approx(per_sample.mean().item())
    with pytest.raises(ValueError, match=f"must be {n} non-negative numbers"):
        with_sample_weights(data, -torch.ones(n))
