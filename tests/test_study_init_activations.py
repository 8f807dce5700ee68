from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import trainlab.studies.init_activations as study
from trainlab.diagnostics import probe_forward
from trainlab.models import MLP
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.studies.init_activations import (INITS, InitBudget, claim_he_notes, claim_he_relu, ends_share,
                                               forward_stats)

from study_helpers import assert_rerun_is_cached


@pytest.fixture(scope="module")
def relu_forward():
    budget = InitBudget(seeds=3, epochs=1, layers=8, samples=300, networks=3)
    return {"forward": {"relu": {init: [forward_stats("relu", init, s, budget) for s in range(3)]
                                 for init in ("xavier", "he", "he_notes")}}}


def test_the_notes_he_std_is_refuted_and_the_real_one_supported(relu_forward):
    assert claim_he_notes(relu_forward).verdict == "refuted"
    assert claim_he_relu(relu_forward).verdict == "supported"
    std = np.mean([s["std"] for s in relu_forward["forward"]["relu"]["he_notes"]], axis=0)
    # 2/sqrt(n) has twice He's variance, so the std grows by about sqrt(2) per layer.
    assert np.exp(np.mean(np.diff(np.log(std)))) == pytest.approx(np.sqrt(2), rel=0.1)


def test_ends_share_is_the_probe_saturation_with_a_ten_percent_margin():
    model = MLP(depth=3, width=50, activation="sigmoid", init=INITS["normal_1"]).build((50,), 1,
                                                                                      torch.Generator().manual_seed(0))
    x = torch.randn(200, 50, generator=torch.Generator().manual_seed(1))
    wide = probe_forward(model, x, margin=0.1)
    for name, stats in probe_forward(model, x).items():
        assert ends_share(stats.hist) == pytest.approx(wide[name].saturated)


@pytest.mark.slow
def test_on_three_seeds_zero_init_keeps_units_identical_and_a_second_run_computes_nothing(tmp_path, monkeypatch):
    init = STUDIES["init_activations"]
    budget = dataclasses.replace(init.smoke, seeds=3, layers=4)
    outcome = run_study(init, make_context(init, mode="smoke", budget=budget, out=tmp_path))
    claims = {c.key: c for c in outcome.claims}
    # Zero weights get identical gradients, so every hidden unit stays a copy of the others: exactly, on any budget.
    assert claims["zeros"].verdict == "supported"
    assert claims["zeros"].numbers["units stay identical: ci_high"] < 1e-6
    # N(0, 1) weights saturate a deep sigmoid stack from the first layer on.
    assert claims["normal_sigmoid"].verdict == "supported"
    assert outcome.runs_trained == 3 * len(INITS)
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)

    assert_rerun_is_cached(init, outcome, monkeypatch, study,
                           "forward_stats", 3 * len(INITS), budget=budget, out=tmp_path)
