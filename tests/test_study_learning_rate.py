from __future__ import annotations

import math

import numpy as np
import pytest

import trainlab.studies.learning_rate as study
from trainlab.lr_range import LRRangeResult
from trainlab.runs import RunResult
from trainlab.studies import STUDIES, run_studies
from trainlab.studies.learning_rate import (EXPLODE, best_lr, claim_range_test, claim_too_high, claim_too_low,
                                            diverged)

from study_helpers import assert_rerun_is_cached


def run(train_loss: float = 1.0, val_acc: float = 0.5, step_loss=(2.0, 1.5, 1.0), lr: float = 0.1,
        **extras) -> RunResult:
    history = [{"epoch": 1, "train_loss": train_loss, "val_acc": val_acc}]
    return RunResult({"optimizer": {"lr": lr}}, history, {"val_acc": val_acc},
                     {"step_loss": list(step_loss), **extras})


def test_a_run_diverged_when_stopped_non_finite_or_exploding():
    assert not diverged(run())
    assert not diverged(run(step_loss=(2.0, 0.99 * EXPLODE * 2.0, 1.0)))  # a spike below EXPLODE x the start
    assert diverged(run(step_loss=(2.0, 1.01 * EXPLODE * 2.0, 1.0)))  # exploded, then settled
    assert diverged(run(step_loss=(2.0, math.inf)))
    assert diverged(run(diverged=True))
    assert diverged(run(train_loss=math.nan))
    assert diverged(RunResult({}, [], {"val_acc": 0.1}, {"step_loss": [2.0, math.nan], "diverged": True}))


def test_the_best_lr_has_the_highest_accuracy_among_lrs_that_never_diverged():
    sweep = {0.01: [run(val_acc=0.3)] * 3, 0.1: [run(val_acc=0.5)] * 3,
             1.0: [run(val_acc=0.6), run(val_acc=0.6), run(diverged=True)]}
    assert best_lr(sweep) == 0.1
    with pytest.raises(ValueError, match="diverged"):
        best_lr({1.0: [run(diverged=True)]})


def _results(high_diverges: bool, suggested_acc: float) -> dict:
    sweep = {1e-4: [run(train_loss=2.9 + 0.01 * k) for k in range(3)],
             0.1: [run(train_loss=1.0 + 0.02 * k, val_acc=0.5 + 0.01 * k) for k in range(3)],
             10.0: [run(diverged=high_diverges) for _ in range(3)]}
    tests = [LRRangeResult(np.array([1e-3, 1.0]), np.array([2.0, 1.0]), np.array([2.0, 1.0]), 1.0, 1.0, 0.1,
                           "min_tenth", "reached max_lr 1") for _ in range(3)]
    suggested = [run(val_acc=suggested_acc + 0.01 * k) for k in range(3)]
    return {"sweep": sweep, "range": tests, "suggested": suggested, "best_lr": 0.1}


def test_claims_follow_synthetic_numbers():
    good = _results(high_diverges=True, suggested_acc=0.5)
    assert claim_too_low(good).verdict == "supported"
    assert claim_too_high(good).verdict == "supported"
    assert claim_range_test(good).verdict == "supported"
    bad = _results(high_diverges=False, suggested_acc=0.2)
    assert claim_too_high(bad).verdict == "refuted"
    assert claim_range_test(bad).verdict == "refuted"


@pytest.mark.slow
def test_on_three_seeds_lr_10_diverges_and_a_second_run_computes_nothing(tmp_path, monkeypatch):
    (outcome,) = run_studies(["learning_rate"], mode="smoke", seeds=3, out=tmp_path, progress=False)
    claims = {c.key: c for c in outcome.claims}
    assert len(claims) == len(STUDIES["learning_rate"].claims) == 3
    # Plain SGD at lr 10 blows up on every seed.
    assert claims["too_high"].verdict == "supported"
    assert claims["too_high"].numbers["mean"] == 1.0
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)
    assert outcome.runs_trained == 3 * 3 + 3  # the sweep, and one run of each seed's suggestion

    lr = STUDIES["learning_rate"]
    assert_rerun_is_cached(lr, outcome, monkeypatch, study, "lr_range_test", 12, seeds=3, out=tmp_path)
