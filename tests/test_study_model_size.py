from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

import trainlab.runs
from trainlab.studies import run_studies
from trainlab.studies.model_size import (SizeRecorder, SizeResults, claim_fit_more, claim_overfit_small,
                                         per_seed_correlation, rank_correlation)
from trainlab.trainer import build_trainer

MODELS = [(1, 4), (1, 16), (2, 4), (2, 16)]
PARAMS = np.array([100.0, 400.0, 120.0, 700.0])


def synthetic(train_small, val_small, train_full, val_full, seeds: int = 4) -> SizeResults:
    """A grid whose per-model accuracies are the given means plus a little seed noise."""
    rng = np.random.default_rng(0)

    def noisy(means):
        return np.clip(np.asarray(means) + rng.normal(0, 0.005, (seeds, len(means))), 0, 1)

    return SizeResults(MODELS, PARAMS, train={"small": noisy(train_small), "full": noisy(train_full)},
                       val={"small": noisy(val_small), "full": noisy(val_full)},
                       test={"small": noisy(val_small), "full": noisy(val_full)}, small_size=100, full_size=1000,
                       runs={})


# Models in MODELS order; by parameters the order is (1, 4) < (2, 4) < (1, 16) < (2, 16).
AS_NOTES = dict(train_small=[0.5, 0.9, 0.6, 1.0], val_small=[0.40, 0.45, 0.42, 0.45],
                train_full=[0.45, 0.8, 0.55, 0.9], val_full=[0.42, 0.7, 0.5, 0.78])


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
    np.testing.assert_allclose(r.gap("small"), r.train["small"] - r.val["small"])


def test_claims_supported_when_the_grid_behaves_as_the_notes_say():
    r = synthetic(**AS_NOTES)
    assert claim_fit_more(r).verdict == "supported"
    assert claim_overfit_small(r).verdict == "supported"


def test_claims_refuted_when_bigger_nets_fit_less_and_overfit_full_data_more():
    r = synthetic(train_small=[0.9, 0.5, 0.8, 0.45], val_small=[0.4, 0.45, 0.42, 0.44],
                  train_full=[0.95, 0.6, 0.9, 0.55], val_full=[0.40, 0.5, 0.45, 0.4])
    assert claim_fit_more(r).verdict == "refuted"
    assert claim_overfit_small(r).verdict == "refuted"


def test_claims_inconclusive_with_two_seeds():
    r = synthetic(**AS_NOTES, seeds=2)
    assert claim_fit_more(r).verdict == "inconclusive"
    assert claim_overfit_small(r).verdict == "inconclusive"


def test_size_recorder_stores_parameters_and_eval_mode_train_accuracy():
    config = {"data": {"dataset": {"name": "moons", "n_samples": 120}, "batch_size": 32},
              "model": {"name": "mlp", "depth": 1, "width": 4}, "epochs": 2, "threads": 1}
    trainer = build_trainer(config, [SizeRecorder()])
    trainer.fit()
    assert trainer.extras["parameters"] == (2 * 4 + 4) + (4 * 2 + 2)
    with torch.no_grad():
        predicted = trainer.model.eval()(trainer.data.x_train).argmax(1)
    accuracy = (predicted == trainer.data.y_train).float().mean().item()
    assert trainer.extras["train_eval"]["acc"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_study_runs_end_to_end_then_trains_nothing_again(tmp_path, monkeypatch):
    calls = []
    real = trainlab.runs.train
    monkeypatch.setattr(trainlab.runs, "train", lambda config, *a, **k: calls.append(config) or real(config, *a, **k))
    # 500 MNIST-1D samples leave 360 for training, so the small set is capped at a quarter of it (90 < 100).
    data = {"dataset": {"name": "mnist1d", "num_samples": 500}}
    (outcome,) = run_studies(["model_size"], mode="smoke", data=data, out=tmp_path, progress=False)
    assert len(calls) == outcome.runs_trained == 2 * 4 * 2  # data sizes x models x seeds
    assert {c.data.train_size for c in calls} == {90, None}
    assert [c.key for c in outcome.claims] == ["bigger_fit_more", "bigger_overfit_small"]
    assert all(c.verdict == "inconclusive" for c in outcome.claims)  # 2 seeds are too few for any verdict
    assert len(outcome.figures) == 3
    assert all((tmp_path / f.path).stat().st_size > 0 for f in outcome.figures)
    assert all(t.rows for t in outcome.tables)
    assert len(outcome.tables[0].rows) == 2 * 4
    assert (tmp_path / "model_size.html").is_file()

    (again,) = run_studies(["model_size"], mode="smoke", data=data, out=tmp_path, progress=False)
    assert len(calls) == 16
    assert (again.runs_trained, again.runs_cached) == (0, 16)
    assert again.claims == outcome.claims
