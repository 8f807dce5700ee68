from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trainlab.data import batches_per_epoch
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.studies.base import finals
from trainlab.studies.learning_curve import (arm_name, claim_deeper, claim_more_data,
                                             claim_surest_cure, equal_step_epochs, train_sizes)
from trainlab.studies.measures import generalization_gap


def test_train_sizes_are_rounded_fractions_of_the_whole_split():
    assert train_sizes((1 / 16, 0.5, 1.0), 3600) == [225, 1800, 3600]
    assert train_sizes((0.001,), 100) == [1]
    with pytest.raises(ValueError, match="fractions"):
        train_sizes((0.5, 1.5), 100)


def test_smaller_sets_train_more_epochs_for_at_least_the_same_steps():
    assert equal_step_epochs(3600, 3600, 20, 128) == 20
    assert equal_step_epochs(225, 3600, 20, 128) == 290  # 29 steps an epoch on 3600, 2 on 225
    for size in (100, 257, 900):
        epochs = equal_step_epochs(size, 3600, 20, 128)
        steps = epochs * batches_per_epoch(size, 128)
        assert 20 * batches_per_epoch(3600, 128) <= steps < 20 * batches_per_epoch(3600, 128) + batches_per_epoch(
            size, 128)


def synthetic(test_small: tuple[float, float], test_full: tuple[float, float], gap_full: float,
              gap_small: float = 0.7, gap_dropout: float = 0.6, seeds: int = 4) -> dict:
    """Results of a two-size curve (small, full) for depths 1 and 4, with a little seed noise."""
    rng = np.random.default_rng(0)

    def noisy(*means: float) -> np.ndarray:
        return np.asarray(means) + rng.normal(0, 0.004, (seeds, len(means)))

    return {"sizes": [200, 3600], "depths": (1, 4),
            "test": {1: noisy(test_small[0], test_full[0]), 4: noisy(test_small[1], test_full[1])},
            "gap": {1: noisy(gap_small, gap_full), 4: noisy(gap_small, gap_full)},
            "dropout_gap": list(noisy(gap_dropout)[:, 0])}


def test_claims_are_supported_when_the_curves_behave_as_the_notes_say():
    r = synthetic(test_small=(0.30, 0.29), test_full=(0.55, 0.60), gap_full=0.3)
    assert claim_more_data(r).verdict == "supported"
    assert claim_deeper(r).verdict == "supported"
    found = claim_surest_cure(r)
    assert found.verdict == "supported"
    assert found.numbers["smaller gap than the small set: diff"] == pytest.approx(0.3 - 0.7, abs=0.01)


def test_claims_are_refuted_when_depth_and_data_do_not_help():
    # The deep net is no better on the whole split, and the full set hardly helps either net.
    r = synthetic(test_small=(0.50, 0.50), test_full=(0.51, 0.50), gap_full=0.69)
    assert claim_more_data(r).verdict == "refuted"
    assert claim_deeper(r).verdict == "refuted"
    assert claim_surest_cure(r).verdict == "refuted"


@pytest.mark.slow
def test_on_digits_more_data_closes_the_gap_and_a_second_run_trains_nothing(tmp_path, train_calls):
    study = STUDIES["learning_curve"]
    budget = dataclasses.replace(study.smoke, seeds=3, epochs=6, fractions=(0.05, 1.0))
    outcome = run_study(study, make_context(study, mode="smoke", budget=budget, data="digits", out=tmp_path))
    claims = {c.key: c for c in outcome.claims}
    assert [c.key for c in outcome.claims] == [c.key for c in study.claims]
    assert outcome.runs_trained == len(train_calls) == 3 * (2 * 2 + 1)
    # Digits: 65 of the 1293 training images fit far better than they generalize; all of them, for as many steps,
    # leave a small gap.
    assert claims["data_surest_cure"].verdict == "supported"
    assert claims["data_surest_cure"].numbers["smaller gap than the small set: diff"] < -0.1
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)

    ctx = make_context(study, mode="smoke", budget=budget, data="digits", out=tmp_path)
    results = study.measure(ctx)
    assert len(train_calls) == outcome.runs_trained and ctx.runs_cached == outcome.runs_trained
    assert [c.evaluate(results) for c in study.claims] == outcome.claims
    small, full = results["sizes"]
    runs = results["runs"]
    assert claims["more_data"].numbers["depth 1: diff"] == pytest.approx(
        np.mean(finals(runs[arm_name(1, full)], "test_acc")) - np.mean(finals(runs[arm_name(1, small)], "test_acc")))
    deep = results["depths"][1]
    assert results["dropout_gap"] == [generalization_gap(r) for r in runs[arm_name(deep, small, budget.dropout)]]
    assert runs[arm_name(1, small)][0].config["epochs"] > runs[arm_name(1, full)][0].config["epochs"] == 6
