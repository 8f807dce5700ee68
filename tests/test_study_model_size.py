from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats as sps

from trainlab.config import load_config
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.studies.model_size import (ParameterCount, SizeResults, claim_fit_more, claim_overfit_small,
                                         per_seed_correlation, small_train_size)
from trainlab.studies.measures import rank_correlation
from trainlab.trainer import build_trainer

MODELS = [(1, 4), (1, 16), (2, 4), (2, 16)]
PARAMS = np.array([100.0, 400.0, 120.0, 700.0])


def synthetic(train_small, test_small, train_full, test_full, seeds: int = 4) -> SizeResults:
    """A grid whose per-model accuracies are the given means plus a little seed noise."""
    rng = np.random.default_rng(0)

    def noisy(means):
        return np.clip(np.asarray(means) + rng.normal(0, 0.005, (seeds, len(means))), 0, 1)

    train = {"small": noisy(train_small), "full": noisy(train_full)}
    test = {"small": noisy(test_small), "full": noisy(test_full)}
    return SizeResults(MODELS, PARAMS, train=train, val=test, test=test,
                       gap={size: train[size] - test[size] for size in train}, small_size=100, full_size=1000,
                       runs={})


# Models in MODELS order; by parameters the order is (1, 4) < (2, 4) < (1, 16) < (2, 16).
AS_NOTES = dict(train_small=[0.5, 0.9, 0.6, 1.0], test_small=[0.40, 0.45, 0.42, 0.45],
                train_full=[0.45, 0.8, 0.55, 0.9], test_full=[0.42, 0.7, 0.5, 0.78])


def test_rank_correlation_is_spearman_and_zero_for_a_constant():
    x, y = np.array([1.0, 5.0, 2.0, 9.0]), np.array([0.3, 0.1, 0.4, 0.8])
    assert rank_correlation(x, y) == pytest.approx(sps.spearmanr(x, y)[0])
    assert rank_correlation(x, x ** 2) == pytest.approx(1.0)
    assert rank_correlation(x, np.ones(4)) == 0.0
    assert per_seed_correlation(x, np.stack([y, -y])) == pytest.approx([sps.spearmanr(x, y)[0],
                                                                          -sps.spearmanr(x, y)[0]])


def test_big_models_are_the_upper_half_by_parameters():
    r = synthetic(**AS_NOTES)
    assert sorted(r.big.tolist()) == [1, 3]
    assert (r.smallest, r.largest) == (0, 3)
    assert r.label(3) == "2x16 (700 params)"


def test_the_small_set_is_at_most_a_quarter_of_the_full_one():
    assert small_train_size(400, 3600) == 400
    assert small_train_size(100, 360) == 90


def test_claims_supported_when_the_grid_behaves_as_the_notes_say():
    r = synthetic(**AS_NOTES)
    assert claim_fit_more(r).verdict == "supported"
    assert claim_overfit_small(r).verdict == "supported"


def test_claims_refuted_when_bigger_nets_fit_less_and_overfit_full_data_more():
    r = synthetic(train_small=[0.9, 0.5, 0.8, 0.45], test_small=[0.4, 0.45, 0.42, 0.44],
                  train_full=[0.95, 0.6, 0.9, 0.55], test_full=[0.40, 0.5, 0.45, 0.4])
    assert claim_fit_more(r).verdict == "refuted"
    assert claim_overfit_small(r).verdict == "refuted"


def test_claims_inconclusive_with_two_seeds():
    r = synthetic(**AS_NOTES, seeds=2)
    assert claim_fit_more(r).verdict == "inconclusive"
    assert claim_overfit_small(r).verdict == "inconclusive"


def test_parameter_count_is_weights_plus_biases():
    config = load_config({"data": {"dataset": {"name": "moons", "n_samples": 120}, "batch_size": 32},
                          "model": {"name": "mlp", "depth": 1, "width": 4}, "epochs": 1, "threads": 1})
    trainer = build_trainer(config, [ParameterCount()])
    trainer.fit()
    assert trainer.extras["parameters"] == (2 * 4 + 4) + (4 * 2 + 2)  # 2 -> 4 -> 2 classes


@pytest.mark.slow
def test_on_three_seeds_bigger_nets_fit_more_and_a_second_run_trains_nothing(tmp_path, monkeypatch, train_calls):
    calls = train_calls
    size = STUDIES["model_size"]
    # Digits: 1797 samples, 20% test and 10% of the rest validation leave 1293 to train on.
    budget = dataclasses.replace(size.smoke, seeds=3, widths=(4, 64), small_epochs=10)
    outcome = run_study(size, make_context(size, mode="smoke", budget=budget, data="digits", out=tmp_path))
    assert len(calls) == outcome.runs_trained == 2 * 4 * 3  # data sizes x models x seeds
    assert {c.data.train_size for c in calls} == {100, None}
    assert "100 vs 1293 training samples" in outcome.tables[0].title
    claims = {c.key: c for c in outcome.claims}
    # A 1x4 MLP cannot fit ten digit classes; a 2x64 one fits its training set.
    assert claims["bigger_fit_more"].verdict == "supported"
    assert claims["bigger_fit_more"].numbers["small: extremes: diff"] > 0.5
    assert len(outcome.figures) == 3 and all((tmp_path / f.path).stat().st_size > 0 for f in outcome.figures)
    assert len(outcome.tables[0].rows) == 2 * 4 and all(t.rows for t in outcome.tables)

    ctx = make_context(size, mode="smoke", budget=budget, data="digits", out=tmp_path)
    results = size.measure(ctx)
    assert len(calls) == 24 and (ctx.runs_trained, ctx.runs_cached) == (0, 24)
    assert [c.evaluate(results) for c in size.claims] == outcome.claims
