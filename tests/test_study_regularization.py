from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import trainlab.runs
from trainlab.models import ClassicDropout
from trainlab.runs import RunResult
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.studies.base import finals
from trainlab.studies.regularization import (ARMS, DROPOUT_ARMS, FITS_BETTER, HIST_EDGES, LONGER_EPOCHS, TARGET_LOSS,
                                             claim_dropout_slower, claim_early_stopping, claim_fits_better, claim_gap,
                                             epochs_to_target_loss, mc_dropout, val_min_epoch, weight_stats, within)


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
    assert len(calls) == len(ARMS) * 3
    claims = {c.key: c for c in outcome.claims}
    assert [c.key for c in outcome.claims] == [c.key for c in study.claims]
    assert claims["l1_sparse_l2_small"].verdict == "supported"
    numbers = claims["l1_sparse_l2_small"].numbers
    assert numbers["L1 sparser than none: l1 mean"] > 5 * numbers["L1 sparser than none: none mean"]
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)

    ctx = make_context(study, mode="smoke", budget=budget, data=data, out=tmp_path)
    results = study.measure(ctx)
    assert len(calls) == len(ARMS) * 3 and (ctx.runs_trained, ctx.runs_cached) == (0, len(ARMS) * 3)
    assert [c.evaluate(results) for c in study.claims] == outcome.claims
    # The new claims read the runs: the test accuracies of the arms they compare, the epochs of their curves.
    runs = results["runs"]
    for key, better, worse in (("kernel_l2_fits_better", "l2", "l1"),
                               ("activity_l1_fits_better", "activity_l1", "activity")):
        assert claims[key].numbers[f"{better} mean"] == pytest.approx(np.mean(finals(runs[better], "test_acc")))
        assert claims[key].numbers[f"{worse} mean"] == pytest.approx(np.mean(finals(runs[worse], "test_acc")))
    assert claims["dropout_slower"].numbers["dropout: none mean"] == pytest.approx(
        np.mean([epochs_to_target_loss(r) for r in runs["none"]]))
