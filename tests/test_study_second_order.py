from __future__ import annotations

import numpy as np
import pytest
import torch

import trainlab.studies.second_order as study
from trainlab.runs import RunResult
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.studies.second_order import (CUBIC_EXPONENT, QUASI, claim_fewer_iterations, claim_lbfgs_cheaper,
                                           claim_newton_cubic, constant_loss, fit_exponent, to_target)

from study_helpers import assert_rerun_is_cached


def run(losses, times, max_iter: int = 1, steps_per_epoch: int = 1) -> RunResult:
    epochs = len(losses) - 1
    history = [{"epoch": e + 1, "train_loss": losses[e], "time_s": times[e]} for e in range(epochs)]
    final = {"steps": epochs * steps_per_epoch, "epochs_run": epochs}
    return RunResult({"epochs": epochs, "optimizer": {"max_iter": max_iter}}, history, final,
                     {"train_curve": list(losses)})


def test_target_counts_iterations_and_seconds_with_one_rule_for_a_miss():
    bfgs = run([0.7, 0.4, 0.1, 0.05], [0.1, 0.2, 0.3], max_iter=10)
    assert to_target(bfgs, 0.2) == (20, 0.2, True)
    adam = run([0.7, 0.5, 0.4], [0.1, 0.2], steps_per_epoch=8)
    assert to_target(adam, 0.2) == (3 * 8, 0.2, False)  # one epoch more than the run; its whole time


def test_exponent_fit_and_constant_loss_follow_their_formulas():
    m = np.array([50.0, 100.0, 400.0])
    a, b = fit_exponent(m, 2e-9 * m**3)
    assert b == pytest.approx(3.0) and np.exp(a) == pytest.approx(2e-9)
    assert constant_loss(torch.tensor([0, 1, 0, 1]), "classification") == pytest.approx(np.log(2))
    assert constant_loss(torch.tensor([1.0, 3.0]), "regression") == pytest.approx(1.0)


def _results(newton_b, lbfgs_b, quasi_iters, adam_iters) -> dict:
    return {"exponents": {"newton": newton_b, "lbfgs": lbfgs_b},
            "iterations": {"adam": adam_iters, **{name: quasi_iters for name in QUASI}}}


def test_claims_follow_synthetic_numbers():
    good = _results([2.9, 3.0, 2.8], [0.2, 0.1, 0.3], [20.0, 30.0, 25.0], [400.0, 600.0, 300.0])
    assert claim_newton_cubic(good).verdict == "supported"
    assert claim_fewer_iterations(good).verdict == "supported"
    assert claim_lbfgs_cheaper(good).verdict == "supported"
    bad = _results([1.9, 2.0, 2.1], [1.9, 2.1, 2.0], [400.0, 600.0, 300.0], [20.0, 30.0, 25.0])
    assert claim_newton_cubic(bad).verdict == "refuted"
    assert claim_fewer_iterations(bad).verdict == "refuted"
    assert claim_lbfgs_cheaper(bad).verdict == "refuted"
    unclear = _results([CUBIC_EXPONENT - 1, CUBIC_EXPONENT + 1, CUBIC_EXPONENT], [0.5, 1.9, 0.1],
                       [20.0, 30.0, 25.0], [10.0, 60.0, 30.0])
    assert claim_newton_cubic(unclear).verdict == "inconclusive"
    assert claim_fewer_iterations(unclear).verdict == "inconclusive"
    assert claim_lbfgs_cheaper(unclear).verdict == "inconclusive"


@pytest.mark.slow
def test_on_three_seeds_quasi_newton_beats_adam_and_a_second_run_computes_nothing(tmp_path, monkeypatch):
    s = STUDIES["second_order"]
    outcome = run_study(s, make_context(s, mode="smoke", seeds=3, out=tmp_path))
    claims = {c.key: c for c in outcome.claims}
    assert len(claims) == len(s.claims) == 3
    # Adam needs hundreds of minibatch steps; the full-batch methods a few dozen iterations.
    assert claims["quasi_fewer_iterations"].verdict == "supported"
    # Newton's Hessian grows like m² or faster, an L-BFGS iteration barely grows at these sizes; whether the gap
    # exceeds 1 with confidence depends on timing noise on a shared machine, its sign does not.
    assert claims["lbfgs_cheaper"].numbers["diff"] < -0.5
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)
    assert outcome.runs_trained == 6 * 3
    assert_rerun_is_cached(s, outcome, monkeypatch, study, "time_iterations", 18, seeds=3, out=tmp_path)
