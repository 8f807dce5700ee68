from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import trainlab.studies.ensembles as study
from trainlab.ensembles import LOG_LOSS_EPS, Ensemble
from trainlab.studies import STUDIES, run_studies
from trainlab.studies.ensembles import (REFERENCE, claim_bagging, claim_beats_single, claim_boosting,
                                        claim_snapshot_swa, member_log_losses, reference, run_seed, summarize)

from study_helpers import assert_rerun_is_cached

SINGLE = [0.30, 0.28, 0.31, 0.29]


def method(accuracy, members=None, last=None) -> dict[str, list[float]]:
    """A method's numbers over four seeds: ensemble accuracy, its average (and last) member's."""
    members = SINGLE if members is None else members
    return {"accuracy": list(accuracy), "mean_member_accuracy": list(members),
            "last_member_accuracy": list(members if last is None else last)}


def results(gain: float, noise=(0.01, -0.01, 0.0, 0.005)) -> dict:
    """Every ensemble ``gain`` above its reference, give or take ``noise`` per seed."""
    better = [a + gain + n for a, n in zip(SINGLE, noise)]
    return {"single": {"accuracy": SINGLE, "log_loss": [2.0] * 4},
            "ensembles": {m: method(better) for m in REFERENCE}}


@pytest.mark.parametrize("claim", [claim_beats_single, claim_bagging, claim_boosting, claim_snapshot_swa])
def test_claims_follow_hand_made_numbers(claim):
    assert claim(results(+0.04)).verdict == "supported"
    assert claim(results(-0.04)).verdict == "refuted"
    assert claim(results(0.0, noise=(0.02, -0.02, 0.01, -0.01))).verdict == "inconclusive"


def test_each_claim_compares_with_its_own_reference():
    r = results(0.0, noise=(0, 0, 0, 0))
    r["ensembles"]["bagging"] = method([0.35, 0.33, 0.36, 0.34], members=[0.25, 0.24, 0.26, 0.25])
    assert claim_bagging(r).verdict == "supported"
    # Averaging beats its members but not the single model: the claim is about the single model.
    r["ensembles"]["averaging"] = method([0.31, 0.27, 0.30, 0.30], members=[0.2, 0.2, 0.2, 0.2])
    assert claim_beats_single(r).verdict != "supported"
    # The snapshot ensemble is set against its own last snapshot; SWA against the single run it averages.
    r["ensembles"]["snapshot"] = method(SINGLE, last=[0.25, 0.22, 0.26, 0.24])
    r["ensembles"]["swa"] = method([0.33, 0.32, 0.34, 0.33])
    assert claim_snapshot_swa(r).verdict == "supported"
    assert reference(r, "swa") == SINGLE
    # One part refuted refutes the joint claim.
    r["ensembles"]["voting"] = method([0.25, 0.23, 0.27, 0.24])
    assert claim_beats_single(r).verdict == "refuted"


def test_member_seeds_of_study_seeds_never_overlap():
    members = 5
    used = [set(range(run_seed(s, members), run_seed(s, members) + members)) for s in range(10)]
    assert all(not (a & b) for i, a in enumerate(used) for b in used[i + 1:])


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_member_log_losses_follow_the_formula_and_summaries_read_them():
    ensemble = Ensemble([Fixed([0.0, 0.0]), Fixed([0.0, 100.0])], torch.tensor([0.5, 0.5]), "averaging")
    x, y = torch.zeros(2, 1), torch.tensor([0, 1])
    losses = member_log_losses(ensemble, x, y)
    assert losses[0] == pytest.approx(math.log(2))
    assert losses[1] == pytest.approx(-0.5 * math.log(LOG_LOSS_EPS), rel=1e-5)  # one sure miss, clipped
    evaluation = {"accuracy": 0.5, "log_loss": 1.0, "mean_member_accuracy": 0.5, "best_member_accuracy": 0.5,
                  "member_accuracies": [0.5, 0.5], "member_log_losses": losses, "members": 2}
    summary = summarize([evaluation, evaluation])
    assert summary["mean_member_log_loss"] == pytest.approx([sum(losses) / 2] * 2)
    assert summary["last_member_log_loss"] == [losses[1]] * 2


@pytest.mark.slow
def test_on_three_seeds_bagging_beats_its_members_and_a_second_run_computes_nothing(tmp_path, monkeypatch):
    (outcome,) = run_studies(["ensembles"], mode="smoke", seeds=3, out=tmp_path, progress=False)
    claims = {c.key: c for c in outcome.claims}
    assert len(claims) == len(STUDIES["ensembles"].claims) == 4
    # Members overfit their own bootstrap; their soft average is several points better on every seed.
    assert claims["bagging_beats_members"].verdict == "supported"
    assert claims["bagging_beats_members"].numbers["diff"] > 0.01
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and len(outcome.tables[0].rows) == len(REFERENCE)
    assert outcome.runs_trained == 3  # the single models; ensemble members train inside the cached evaluations

    ensembles = STUDIES["ensembles"]
    assert_rerun_is_cached(ensembles, outcome, monkeypatch, study, "evaluate_method", 3, seeds=3, out=tmp_path)
