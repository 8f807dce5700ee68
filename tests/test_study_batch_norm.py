from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import torch
from torch import nn

import trainlab.runs
from trainlab.runs import RunResult
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.models import MLP
from trainlab.studies.base import finals
from trainlab.studies.batch_norm import (BASE_LR, BETTER, GRADIENT_DECADES, MIN_DRIFT, acc_at, claim_drift,
                                         claim_gradient_flow, claim_high_lr, claim_init_scale, claim_less_dropout,
                                         claim_placement, claim_regularizes, claim_speed, drift, dropout_gain,
                                         gradient_decades, init_scales, layer_input_stats, run_drift, shortfall,
                                         value_at_epoch)
from trainlab.studies.measures import backpropagated_gradients


def _run(train_acc: list[float], final_train_acc: float = 0.9, test_acc: float = 0.4) -> RunResult:
    history = [{"epoch": i + 1, "train_acc": a, "train_loss": 1.0} for i, a in enumerate(train_acc)]
    return RunResult({}, history, {"test_acc": test_acc}, {"train_eval": {"acc": final_train_acc, "loss": 0.3}})


def test_init_scales_are_the_textbooks_log_spaced_stds():
    np.testing.assert_allclose(init_scales(16), np.logspace(0, -4, 16), rtol=1e-3)
    assert init_scales(6)[0] == 1.0 and init_scales(6)[-1] == 1e-4
    with pytest.raises(ValueError, match="positive int"):
        init_scales(0)


def test_values_at_an_epoch_fall_back_to_the_final_accuracy_when_the_run_stopped_before():
    run = _run([0.2, 0.5, float("nan")], final_train_acc=0.1)
    assert value_at_epoch(run, "train_acc", 2, -1.0) == 0.5
    assert value_at_epoch(run, "train_acc", 3, -1.0) == -1.0  # not finite
    assert acc_at(run, 1) == 0.2
    assert acc_at(run, 5) == 0.1  # stopped (diverged) after 3 epochs


def test_shortfall_is_the_mean_distance_to_the_best_scale_per_seed():
    acc = np.array([[0.1, 0.3, 0.1, 0.1], [0.4, 0.45, 0.45, 0.42]])
    np.testing.assert_allclose(shortfall(acc), [0.15, 0.02])


def _scales(none: list[float], bn: list[float], seeds: int = 4) -> dict[str, np.ndarray]:
    noise = np.random.default_rng(0).normal(0, 0.01, (2, seeds, len(none)))
    return {"none": np.asarray(none) + noise[0], "bn": np.asarray(bn) + noise[1]}


def test_init_scale_claim_sees_a_plain_network_that_trains_at_one_scale_only():
    # At chance (0.1) everywhere but one scale: a small std over scales, yet everything depends on the scale.
    r = {"test_acc_scales": _scales(none=[0.1, 0.33, 0.09, 0.09, 0.09, 0.09], bn=[0.24, 0.36, 0.45, 0.44, 0.44, 0.39])}
    assert np.mean(np.std(r["test_acc_scales"]["none"], axis=1)) > np.mean(np.std(r["test_acc_scales"]["bn"], axis=1))
    assert claim_init_scale(r).verdict == "supported"
    r = {"test_acc_scales": _scales(none=[0.4, 0.41, 0.4, 0.42], bn=[0.1, 0.4, 0.1, 0.4])}
    assert claim_init_scale(r).verdict == "refuted"


def test_speed_high_lr_and_regularization_claims_follow_the_numbers():
    seeds = [0.01, -0.01, 0.005, -0.004]
    fast, slow = [0.6 + s for s in seeds], [0.35 - s / 2 for s in seeds]
    r = {"k": 5, "ref_acc_k": {"bn": fast, "none": slow}, "acc_k": _scales(none=[0.1, 0.3], bn=[0.4, 0.5])}
    assert claim_speed(r).verdict == "supported"
    r["acc_k"] = _scales(none=[0.4, 0.5], bn=[0.1, 0.3])
    assert claim_speed(r).verdict == "refuted"
    r = {"lrs": [0.01, 1.0], "test_acc_lr": {"bn": {1.0: fast}, "none": {1.0: [0.102] * 4}},
         "diverged_lr": {"bn": {1.0: [False] * 4}, "none": {1.0: [True] * 4}}}
    found = claim_high_lr(r)
    assert found.verdict == "supported" and found.numbers["without BN: diverged runs"] == 4
    r = {"gap": {"bn": fast, "none": slow}}
    assert claim_regularizes(r).verdict == "refuted"
    r = {"gap": {"bn": fast[:2], "none": slow[:2]}}
    assert claim_regularizes(r).verdict == "inconclusive"


def test_placement_and_dropout_claims_follow_the_numbers():
    base = [0.40, 0.42, 0.41, 0.43]
    better = [a + 3 * BETTER for a in base]
    r = {"test_acc_lr": {"bn": {BASE_LR: better}, "bn_after": {BASE_LR: base}, "none": {BASE_LR: base}}}
    assert claim_placement(r).verdict == "supported"
    r["test_acc_lr"]["bn_after"][BASE_LR] = better
    assert claim_placement(r).verdict == "refuted"  # identical results
    # Dropout adds 5 points to the plain net and nothing to the BN net: BN reduced the need for it.
    r["test_acc_dropout"] = {"none": [a + 0.05 for a in base], "bn": [a + d for a, d in zip(better, (0.001, -0.002,
                                                                                                     0.0, 0.002))]}
    assert dropout_gain(r, "none") == pytest.approx([0.05] * 4)
    assert claim_less_dropout(r).verdict == "supported"
    r["test_acc_dropout"]["bn"] = [a + 0.08 for a in better]
    assert claim_less_dropout(r).verdict == "refuted"
    # Dropout hurts both nets: a smaller "gain" with BN says nothing about a need that is not there.
    r["test_acc_dropout"] = {"none": [a - 0.02 for a in base], "bn": [a - 0.06 for a in better]}
    found = claim_less_dropout(r)
    assert found.verdict == "inconclusive" and found.parts["BN gains less"].verdict == "supported"


def test_gradient_decades_compare_the_first_and_last_hidden_backpropagated_gradient_and_bn_ignores_the_scale():
    torch.manual_seed(0)
    model = MLP(depth=3, width=8, activation="relu", norm="batch").build((3,), 2, torch.Generator().manual_seed(0))
    model = model.double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 2, (32,))
    _, rms, _ = backpropagated_gradients(model, x, y)
    assert len(rms) == 3 and gradient_decades(model, x, y) == pytest.approx(abs(np.log10(rms[0] / rms[-1])))
    # Each BN divides its layer's output by its std, so scaling the hidden weights leaves the ratio where it was.
    before = gradient_decades(model, x, y)
    with torch.no_grad():
        for m in [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]:
            m.weight.mul_(10)
    assert gradient_decades(model, x, y) == pytest.approx(before, abs=1e-3)


def test_drift_is_the_change_of_the_hidden_units_mean_and_std_in_initial_stds():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    x = torch.randn(64, 2)
    stats = layer_input_stats(model, x)
    assert [m.shape[0] for m, _ in stats] == [3, 2]  # the inputs of the 2nd and 3rd linear layers
    hidden = torch.relu(model[0](x)).detach()
    torch.testing.assert_close(stats[0][0], hidden.mean(0))
    assert drift(stats, stats) == 0.0
    shifted = [(m + 0.5 * s.mean(), s * 2) for m, s in stats]
    assert drift(stats, shifted) == pytest.approx(1.5, rel=1e-5)


def test_gradient_flow_and_drift_claims_follow_the_numbers():
    rng = np.random.default_rng(0)
    even, steep = rng.uniform(0.1, 0.2, (4, 3)), rng.uniform(2.0, 3.0, (4, 3))
    assert claim_gradient_flow({"gradient_decades": {"bn": even, "none": steep}}).verdict == "supported"
    close = steep - GRADIENT_DECADES / 5 + rng.uniform(0, 0.01, (4, 3))
    assert claim_gradient_flow({"gradient_decades": {"bn": close, "none": steep}}).verdict == "refuted"
    noise = [0.01, -0.01, 0.005, 0.0]
    r = {"drift": {"none": [4 * MIN_DRIFT + d for d in noise], "bn": [MIN_DRIFT / 2 + d for d in noise]}}
    assert claim_drift(r).verdict == "supported"
    r["drift"]["bn"] = r["drift"]["none"]
    assert claim_drift(r).verdict == "refuted"


@pytest.mark.slow
def test_on_three_seeds_bn_trains_at_a_learning_rate_where_the_plain_net_fails(tmp_path, monkeypatch):
    bn = STUDIES["batch_norm"]
    # Digits learn in a few epochs; at lr 1 with momentum 0.9 the plain 3-layer net does not.
    budget = dataclasses.replace(bn.smoke, seeds=3, epochs=3, train_size=300)
    outcome = run_study(bn, make_context(bn, mode="smoke", budget=budget, data="digits", out=tmp_path))
    claims = {c.key: c for c in outcome.claims}
    assert [c.key for c in outcome.claims] == [c.key for c in bn.claims]
    assert claims["bn_larger_lr"].verdict == "supported"
    assert claims["bn_larger_lr"].numbers["diff"] > 0.3  # test accuracy, BN minus no BN, at lr 1
    assert len(outcome.figures) == 6 and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)
    calls = []
    monkeypatch.setattr(trainlab.runs, "train", lambda *a, **k: calls.append(a))
    ctx = make_context(bn, mode="smoke", budget=budget, data="digits", out=tmp_path)
    results = bn.measure(ctx)
    assert calls == [] and ctx.runs_trained == 0 and ctx.runs_cached == outcome.runs_trained
    assert [c.evaluate(results) for c in bn.claims] == outcome.claims
    # The placement and dropout claims read the runs.
    by_lr = results["by_lr"]
    assert claims["bn_before_activation"].numbers["BN before mean"] == pytest.approx(
        np.mean(finals(by_lr["bn"][BASE_LR], "test_acc")))
    assert claims["bn_before_activation"].numbers["BN after mean"] == pytest.approx(
        np.mean(finals(by_lr["bn_after"][BASE_LR], "test_acc")))
    assert claims["bn_less_dropout"].numbers["BN gains less: BN mean"] == pytest.approx(
        np.mean(dropout_gain(results, "bn")))
    assert results["test_acc_dropout"]["none"] != results["test_acc_lr"]["none"][BASE_LR]
    # Gradient flow is measured at init for every seed and scale; the drift from each reference run's checkpoint.
    assert results["gradient_decades"]["none"].shape == (3, budget.scales)
    assert claims["bn_gradient_flow"].numbers["no BN mean"] == pytest.approx(
        np.mean(results["gradient_decades"]["none"]))
    assert results["drift"]["bn"][0] == pytest.approx(run_drift(by_lr["bn"][BASE_LR][0]))
    assert claims["bn_less_drift"].numbers["BN suppresses the drift: BN mean"] == pytest.approx(
        np.mean(results["drift"]["bn"]))
