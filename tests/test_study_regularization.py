from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import trainlab.runs
from trainlab.models import ClassicDropout
from trainlab.data import RawData
from trainlab.runs import RunResult
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.studies.base import finals
from trainlab.studies.measures import generalization_gap, rank_correlation
from trainlab.studies.regularization import (ARMS, DROPOUT_ARMS, DROPOUT_RATES, FITS_BETTER, HIST_EDGES, L2_PATH,
                                             LONGER_EPOCHS, LOSS_CHANGE, NOISE_ARMS, RATE_MATTERS,
                                             SELECTS, SWEEP, TARGET_LOSS, FeatureProbe, after_val_minimum,
                                             claim_dropout_slower, claim_early_stopping, claim_fits_better, claim_gap,
                                             claim_large_weights, claim_longer_overfits, claim_rate_matters,
                                             claim_selects_features, claim_weaker_penalty, epochs_to_target_loss,
                                             mc_dropout, val_min_epoch, weight_stats,
                                             with_noise_features, within)


def run(val_losses=(1.0,), final=None, extras=None, seed=0) -> RunResult:
    history = [{"epoch": i + 1, "val_loss": v} for i, v in enumerate(val_losses)]
    return RunResult({"seed": seed}, history, dict(final or {}), dict(extras or {}))


def test_val_min_epoch_is_one_based():
    assert val_min_epoch(run([2.0, 1.5, 1.2, 1.4, 1.9])) == 3


def test_weight_stats_count_small_weights_and_bin_the_first_layer():
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 5e-4, 0.2, -0.4], [2.0, -0.6, 1e-7, 0.3]]))
        model[2].weight.copy_(torch.tensor([[0.5, -3.0]]))
    stats = weight_stats(model)
    assert stats["sparsity"] == pytest.approx(3 / 10)  # 0, 5e-4, 1e-7 of the 10 weights; biases do not count
    assert stats["zeros"] == pytest.approx(2 / 10)
    assert stats["first_sparsity"] == pytest.approx(3 / 8)
    assert stats["max"] == pytest.approx(3.0)
    every = np.array([0, 5e-4, 0.2, -0.4, 2.0, -0.6, 1e-7, 0.3, 0.5, -3.0])
    assert stats["rms"] == pytest.approx(np.sqrt(np.mean(every ** 2)), rel=1e-6)
    hist = np.array(stats["first_hist"])
    assert hist.sum() == 8 and len(hist) == len(HIST_EDGES) - 1
    assert hist[-1] == 1  # 2.0 lies outside [-1, 1] and is clipped into the last bin
    assert stats["first_quantiles"][0] == pytest.approx(np.quantile(np.abs(every[:8]), 0.5), rel=1e-6)


@pytest.mark.parametrize("dropout", [nn.Dropout(0.5), ClassicDropout(0.5)])
def test_mc_dropout_averages_thinned_nets_and_leaves_the_global_generator_alone(dropout):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), dropout, nn.Linear(16, 3))
    x, y = torch.randn(200, 5), torch.randint(0, 3, (200,))
    state = torch.get_rng_state()
    found = mc_dropout(model, x, y, samples=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training  # restored
    model.eval()
    assert found["deterministic"] == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
    assert len(found["ensemble"]) == 8
    # The same seed draws the same masks: the result is reproducible.
    assert mc_dropout(model, x, y, samples=8) == found


def test_mc_dropout_of_one_mask_is_one_thinned_net():
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    x, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
    found = mc_dropout(model, x, y, samples=1)
    assert found["ensemble"] == [pytest.approx(found["single"])]


def test_within_is_supported_inside_the_tolerance_and_refuted_outside():
    assert within([0.001, -0.002, 0.0, 0.001], 0.01, "diff").verdict == "supported"
    assert within([0.05, 0.06, 0.055], 0.01, "diff").verdict == "refuted"
    assert within([0.001, -0.002], 0.01, "diff").verdict == "inconclusive"


def test_early_stopping_claim_compares_with_the_unstopped_minimum():
    curves = [[2.0, 1.0, 1.5, 1.8], [2.0, 1.8, 1.1, 1.6], [1.9, 1.2, 1.3, 1.7]]
    none = [run(c, seed=s) for s, c in enumerate(curves)]
    near = [run(extras={"best_epoch": val_min_epoch(n)}) for n in none]
    far = [run(extras={"best_epoch": val_min_epoch(n) + 5}) for n in none]
    assert claim_early_stopping({"runs": {"none": none, "early_stopping": near}}).verdict == "supported"
    assert claim_early_stopping({"runs": {"none": none, "early_stopping": far}}).verdict == "refuted"


def test_gap_claim_is_refuted_when_one_technique_widens_the_gap():
    def arm(gaps):
        return [run(final={"test_acc": 1.0 - g}, extras={"train_eval": {"acc": 1.0}}) for g in gaps]

    runs = {a: arm([0.30, 0.32, 0.31]) for a in ARMS}
    runs["none"] = arm([0.60, 0.62, 0.65])
    assert claim_gap({"runs": runs}).verdict == "supported"
    runs["dropout"] = arm([0.80, 0.83, 0.81])
    result = claim_gap({"runs": runs})
    assert result.verdict == "refuted" and result.numbers["dropout: diff"] == pytest.approx(0.8133 - 0.6233, abs=1e-3)


def curve_run(losses, seed=0) -> RunResult:
    return RunResult({"seed": seed, "epochs": len(losses)}, [{"epoch": i + 1, "train_loss": v}
                                                             for i, v in enumerate(losses)], {}, {})


def test_epochs_to_the_target_loss_count_a_miss_as_one_more_than_the_run():
    assert epochs_to_target_loss(curve_run([2.3, 1.6, TARGET_LOSS, 0.5])) == 3
    assert epochs_to_target_loss(curve_run([2.3, 2.0, 1.9])) == 4


def test_dropout_is_slower_only_by_more_than_the_minimum_number_of_epochs():
    fast = [curve_run([2.0] * k + [0.5] * (20 - k), seed=k) for k in (3, 4, 5)]  # target reached at epoch 4, 5, 6
    slow = [curve_run([2.0] * (k + 2 * LONGER_EPOCHS) + [0.5] * (20 - k - 2 * LONGER_EPOCHS)) for k in (3, 4, 5)]
    found = claim_dropout_slower({"runs": {"none": fast, **{arm: slow for arm in DROPOUT_ARMS}}})
    assert found.verdict == "supported" and found.numbers["dropout: diff"] == 2 * LONGER_EPOCHS
    almost = [curve_run([2.0] * (k + 1) + [0.5] * (19 - k)) for k in (3, 4, 5)]  # one epoch slower
    assert claim_dropout_slower({"runs": {"none": fast, **{arm: almost for arm in DROPOUT_ARMS}}}).verdict == "refuted"


def test_a_penalty_fits_better_only_by_more_than_the_minimum_accuracy():
    def arm(accs):
        return [run(final={"test_acc": a}) for a in accs]

    test = claim_fits_better("l2", "l1", "kernel")
    base = [0.30, 0.32, 0.31, 0.33]
    assert test({"runs": {"l2": arm([a + 3 * FITS_BETTER for a in base]), "l1": arm(base)}}).verdict == "supported"
    close = [a + FITS_BETTER / 10 + d for a, d in zip(base, (0.0005, -0.0005, 0.0, 0.0002))]
    assert test({"runs": {"l2": arm(close), "l1": arm(base)}}).verdict == "refuted"  # within the minimum: no effect


def scored(test_accs, gaps=None, rms=None, val_accs=None):
    """Runs with these test accuracies, gaps (clean train acc - test acc), weight RMS and validation accuracies."""
    n = len(test_accs)
    gaps, rms, val_accs = gaps or [0.3] * n, rms or [0.1] * n, val_accs or test_accs
    return [run(final={"test_acc": t, "val_acc": v}, extras={"train_eval": {"acc": t + g}, "weights": {"rms": w}},
                seed=i) for i, (t, g, w, v) in enumerate(zip(test_accs, gaps, rms, val_accs))]


def test_the_dropout_rate_matters_when_the_best_by_validation_beats_the_worst_on_test():
    base, noise = 0.40, (0.002, -0.003, 0.0, 0.001)
    every = {arm: scored([base + d for d in noise]) for arm in DROPOUT_RATES.values()}
    every[DROPOUT_RATES[0.5]] = scored([base + 3 * RATE_MATTERS + d for d in noise])
    found = claim_rate_matters({"all": every})
    assert found.verdict == "supported" and found.numbers["rate 0.5: test acc"] == pytest.approx(base + 0.03 + 0.0)
    # The best rate on validation is no better on test: the rate does not matter here.
    every[DROPOUT_RATES[0.5]] = scored([base + d / 2 for d in noise], val_accs=[0.9] * 4)
    assert claim_rate_matters({"all": every}).verdict == "refuted"


def test_a_weaker_penalty_must_grow_the_weights_and_widen_the_gap_at_every_step():
    noise = np.array([0.002, -0.003, 0.0, 0.001])
    path = [arm for _, arm in L2_PATH]
    every = {arm: scored([0.4] * 4, gaps=list(0.1 + 0.05 * i + noise), rms=list(0.05 * 1.5 ** i * (1 + noise)))
             for i, arm in enumerate(path)}
    assert claim_weaker_penalty({"all": every}).verdict == "supported"
    every[path[-1]] = scored([0.4] * 4, gaps=list(0.1 + 0.05 + noise), rms=list(0.05 * 1.5 ** 2 * (1 + noise)))
    found = claim_weaker_penalty({"all": every})
    assert found.verdict == "refuted" and found.parts["0 vs 0.003: gap widens"].verdict == "refuted"


def test_large_weights_claim_is_the_per_seed_rank_correlation_across_arms():
    assert rank_correlation([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    every = {f"arm{i}": scored([0.4] * 4, gaps=[0.1 * i + 0.01 * s for s in range(4)],
                               rms=[0.1 * i + 0.02 * s for s in range(4)]) for i in range(5)}
    found = claim_large_weights({"all": every})
    assert found.verdict == "supported" and found.numbers["mean"] == pytest.approx(1.0)
    every = {f"arm{i}": scored([0.4] * 4, gaps=[0.1 * i + 0.01 * s for s in range(4)],
                               rms=[1.0 - 0.1 * i + 0.02 * s for s in range(4)]) for i in range(5)}
    assert claim_large_weights({"all": every}).verdict == "refuted"


def test_noise_features_double_the_inputs_and_the_probe_compares_their_first_layer_weights():
    raw = RawData(np.arange(24.0).reshape(6, 2, 2), np.arange(6) % 2, None, None, "classification", 2)
    arrays = with_noise_features(raw)
    assert set(arrays) == {"x", "y"} and arrays["x"].shape == (6, 8)
    np.testing.assert_array_equal(arrays["x"][:, :4], raw.x_train.reshape(6, 4))
    assert 0.3 * np.std(raw.x_train) < arrays["x"][:, 4:].std() < 3 * np.std(raw.x_train) and np.array_equal(arrays["y"], raw.y_train)
    np.testing.assert_array_equal(with_noise_features(raw)["x"], arrays["x"])  # drawn once, the same every time
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.1, 0.0], [3.0, 2.0, -0.3, 0.4]]))
    trainer = type("T", (), {"model": model, "extras": {}})()
    FeatureProbe(informative=2).on_fit_end(trainer)
    assert trainer.extras["noise_weight_ratio"] == pytest.approx((0.8 / 4) / (8.0 / 4))
    ratios = {"l1+noise": [SELECTS / 10 * (1 + d) for d in (0.0, 0.1, -0.1, 0.05)], "l2+noise": [0.9, 0.95, 0.85, 0.9]}
    runs = {arm: [run(extras={"noise_weight_ratio": v}) for v in vs] for arm, vs in ratios.items()}
    assert claim_selects_features({"noise": runs}).verdict == "supported"


def loss_run(val, train, seed=0) -> RunResult:
    history = [{"epoch": i + 1, "val_loss": v, "train_loss": t} for i, (v, t) in enumerate(zip(val, train))]
    return RunResult({"seed": seed}, history, {}, {})


def test_longer_training_overfits_when_the_val_loss_rises_while_the_train_loss_falls():
    assert after_val_minimum(loss_run([2.0, 1.0, 1.5, 1.8], [2.0, 1.0, 0.5, 0.2])) == pytest.approx((0.8, 0.8))
    rise = 3 * LOSS_CHANGE
    none = [loss_run([2.0, 1.0 + d, 1.0 + rise + d], [2.0, 1.0, 1.0 - rise - d], seed=i)
            for i, d in enumerate((0.0, 0.01, -0.01, 0.02))]
    assert claim_longer_overfits({"runs": {"none": none}}).verdict == "supported"
    flat = [loss_run([2.0, 1.0, 1.0 + LOSS_CHANGE / 10 + d / 10], [2.0, 1.0, 0.2], seed=i)
            for i, d in enumerate((0.0, 0.01, -0.01, 0.02))]
    found = claim_longer_overfits({"runs": {"none": flat}})
    assert found.verdict == "refuted" and found.parts["training loss keeps falling"].verdict == "supported"


@pytest.mark.slow
def test_on_three_seeds_l1_gives_sparse_weights_and_a_second_run_trains_nothing(tmp_path, monkeypatch):
    calls = []
    real = trainlab.runs.train
    monkeypatch.setattr(trainlab.runs, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    study = STUDIES["regularization"]
    # Digits in batches of 16: 104 steps, enough for L1 to pin many weights at zero and L2 to shrink them all.
    budget = dataclasses.replace(study.smoke, seeds=3, epochs=8)
    data = {"dataset": "digits", "batch_size": 16}
    outcome = run_study(study, make_context(study, mode="smoke", budget=budget, data=data, out=tmp_path))
    trained = len(ARMS) + len(SWEEP) + len(NOISE_ARMS)
    assert outcome.runs_trained == trained * 3
    assert len(calls) == len(ARMS) * 3  # the sweep and noise arms record per replica: one batch each
    claims = {c.key: c for c in outcome.claims}
    assert [c.key for c in outcome.claims] == [c.key for c in study.claims]
    assert claims["l1_sparse_l2_small"].verdict == "supported"
    numbers = claims["l1_sparse_l2_small"].numbers
    assert numbers["L1 sparser than none: l1 mean"] > 5 * numbers["L1 sparser than none: none mean"]
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)

    ctx = make_context(study, mode="smoke", budget=budget, data=data, out=tmp_path)
    results = study.measure(ctx)
    assert len(calls) == len(ARMS) * 3 and (ctx.runs_trained, ctx.runs_cached) == (0, trained * 3)
    assert [c.evaluate(results) for c in study.claims] == outcome.claims
    # The new claims read the runs: the test accuracies of the arms they compare, the epochs of their curves.
    runs = results["runs"]
    for key, better, worse in (("kernel_l2_fits_better", "l2", "l1"),
                               ("activity_l1_fits_better", "activity_l1", "activity")):
        assert claims[key].numbers[f"{better} mean"] == pytest.approx(np.mean(finals(runs[better], "test_acc")))
        assert claims[key].numbers[f"{worse} mean"] == pytest.approx(np.mean(finals(runs[worse], "test_acc")))
    assert claims["dropout_slower"].numbers["dropout: none mean"] == pytest.approx(
        np.mean([epochs_to_target_loss(r) for r in runs["none"]]))
    every = results["all"]
    assert claims["dropout_rate_matters"].numbers["rate 0.7: test acc"] == pytest.approx(
        np.mean(finals(every["dropout@0.7"], "test_acc")))
    assert claims["weaker_penalty_grows"].numbers["0.003 vs 0.03: gap widens: L2 0.003 mean"] == pytest.approx(
        np.mean([generalization_gap(r) for r in every["l2@0.003"]]))
    assert claims["overfit_large_weights"].numbers["n"] == 3
    rises = [after_val_minimum(r)[0] for r in runs["none"]]
    assert claims["longer_overfits"].numbers["validation loss rises: mean"] == pytest.approx(np.mean(rises))
    # The noise arms see the digits' 64 pixels and 64 noise features; the claim reads their first layers' ratio.
    noise = results["noise"]["l1+noise"]
    assert noise[0].config["data"]["dataset"]["name"] == "npz"
    assert noise[0].load_model()[1][0].linear.in_features == 128
    assert claims["l1_selects_features"].numbers["L1 leaves the noise features: mean"] == pytest.approx(
        np.mean([r.extras["noise_weight_ratio"] for r in noise]))
