from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import trainlab.studies.init_activations as study
from trainlab.diagnostics import probe_forward
from trainlab.models import MLP
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.runs import RunResult
from trainlab.studies.base import finals
from trainlab.studies.init_activations import (EXPLODES, INITS, SIMILAR, SPECS,
                                               InitBudget, claim_he_notes, claim_he_relu, claim_large_explodes,
                                               claim_plateau_slow, claim_small_shallow, claim_xavier_he_close,
                                               ends_share, first_layer_gradients, forward_stats, gradient_flow,
                                               gradient_growth, plateau_steps)

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


def test_first_layer_gradients_explode_with_depth_from_large_weights_only():
    budget = InitBudget(seeds=1, epochs=1, layers=4, samples=200, networks=2)
    grads = {init: [first_layer_gradients(init, seed, budget) for seed in range(3)] for init in ("normal_1", "he")}
    assert all(len(g["log_grad"]) == 4 for g in grads["he"])
    # N(0, 1) with 100 ReLU inputs multiplies the backward signal by about sqrt(100 / 2) ≈ 7 per layer.
    assert np.mean(gradient_growth(grads["normal_1"])) == pytest.approx(3 * np.log10(np.sqrt(50)), abs=0.5)
    assert abs(np.mean(gradient_growth(grads["he"]))) < 0.5
    assert claim_large_explodes({"gradients": grads}).verdict == "supported"
    assert first_layer_gradients("he", 0, budget)["log_grad"].tolist() == grads["he"][0]["log_grad"].tolist()


def test_large_weights_claim_is_refuted_when_growth_stays_below_a_decade():
    flat = [{"log_grad": np.array([-2.0, -2.0 + EXPLODES / 4 + d])} for d in (0.0, 0.01, -0.01)]
    assert claim_large_explodes({"gradients": {"normal_1": flat, "he": flat}}).verdict == "refuted"


def _acc_runs(accs: list[float]) -> list[RunResult]:
    return [RunResult({"seed": i}, [], {"test_acc": a}, {}) for i, a in enumerate(accs)]


def test_small_weights_claim_needs_the_shallow_net_close_to_he_and_the_deep_one_far():
    he, close, far = [0.50, 0.52, 0.51], [0.49, 0.515, 0.50], [0.10, 0.11, 0.10]
    runs = {"shallow he": _acc_runs(he), "shallow normal_0.01": _acc_runs(close), "he": _acc_runs(he),
            "normal_0.01": _acc_runs(far)}
    r = {"runs": runs, "depths": {"shallow": 1, "deep": 6}}
    found = claim_small_shallow(r)
    assert found.verdict == "supported"
    assert found.numbers["fails with 6: mean"] == pytest.approx(np.mean(he) - np.mean(far))
    runs["shallow normal_0.01"] = _acc_runs(far)  # small weights fail in the shallow net too
    assert claim_small_shallow(r).verdict == "refuted"


def test_gradient_flow_balances_tanh_from_xavier_and_not_from_large_weights():
    budget = InitBudget(seeds=1, epochs=1, layers=4, width=50, samples=200, networks=2)
    xavier, large = gradient_flow("tanh", "xavier", 0, budget), gradient_flow("tanh", "normal_1", 0, budget)
    # From N(0, 1) the tanh layers' gradients are far apart: the first layer's about 0.9 decades above the last
    # hidden layer's over these 4 layers (3.3 decades over the study's 10); from Xavier they match.
    assert abs(xavier["log_ratio"]) < 0.3 < 0.6 < large["log_ratio"]
    # Backwards, Xavier's tanh layers shrink the gradient a little (tanh' < 1 off 0), N(0, 1)'s grow it.
    assert -0.5 < xavier["delta_ratio"] < 0 < 0.6 < large["delta_ratio"]
    # Xavier's logits are small, so the loss starts near chance, ln(10); N(0, 1)'s are large and confidently wrong.
    assert xavier["start_loss"] == pytest.approx(np.log(10), abs=0.3) and large["start_loss"] > 2 * np.log(10)
    assert 0 < xavier["unit_spread"] < 1
    assert gradient_flow("tanh", "xavier", 0, budget) == xavier  # the seed fixes every draw


def test_backpropagated_gradients_tell_relu_weight_scales_apart_where_weight_gradients_cannot():
    budget = InitBudget(seeds=1, epochs=1, layers=4, width=50, samples=200, networks=2)
    flow = {init: gradient_flow("relu", init, 0, budget) for init in ("he", "normal_1", "normal_0.01")}
    # Backwards through 3 layers of 50 ReLUs the gradient is multiplied by about sqrt(50 sigma^2 / 2) per layer:
    # 1 from He, 5 from N(0, 1) (+2.1 decades), 0.05 from N(0, 0.01^2) (-3.9 decades).
    assert abs(flow["he"]["delta_ratio"]) < 0.3
    assert flow["normal_1"]["delta_ratio"] == pytest.approx(3 * math.log10(5), abs=0.4)
    assert flow["normal_0.01"]["delta_ratio"] == pytest.approx(3 * math.log10(0.05), abs=0.4)
    # Each weight gradient scales by sigma^(L - 1) alike (for a given gradient at the output), so their ratio stays
    # within half a decade of 1 from every scale.
    assert all(abs(f["log_ratio"]) < 0.6 for f in flow.values())


def test_xavier_and_he_are_close_only_within_the_margin():
    he = [0.50, 0.52, 0.51]
    runs = {"he": _acc_runs(he), "xavier": _acc_runs([a - SIMILAR / 3 for a in he])}
    r = {"runs": runs, "depths": {"deep": 6}}
    assert claim_xavier_he_close(r).verdict == "supported"
    runs["xavier"] = _acc_runs([a - 2 * SIMILAR for a in he])
    assert claim_xavier_he_close(r).verdict == "refuted"


def test_the_plateau_claim_counts_steps_to_the_target_and_needs_the_minimum_delay():
    # A loss that drops below the target at step k (the moving average follows a few steps later).
    curve = lambda k: [3.0] * k + [0.5] * (100 - k)  # noqa: E731
    fast = [RunResult({}, [], {}, {"step_loss": curve(k)}) for k in (10, 12, 11)]
    slow = [RunResult({}, [], {}, {"step_loss": curve(k)}) for k in (60, 65, 70)]
    # The moving average (beta 0.9) of 3.0 then 0.5 falls below 0.9 ln(10) ≈ 2.07 at the fourth step of 0.5.
    assert plateau_steps(fast, 100) == [k + 4 for k in (10, 12, 11)]
    assert claim_plateau_slow({"plateau": {"normal_1": slow, "xavier": fast}}).verdict == "supported"
    barely = [RunResult({}, [], {}, {"step_loss": curve(k)}) for k in (13, 14, 12)]  # 1-3 steps late: < LATER x 100
    assert claim_plateau_slow({"plateau": {"normal_1": barely, "xavier": fast}}).verdict == "refuted"


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
    assert outcome.runs_trained == 3 * (len(SPECS) + 2 + 2)  # the inits, two shallow arms, two plateau arms
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)

    monkeypatch.setattr(study, "first_layer_gradients", lambda *a: pytest.fail("gradients computed again"))
    monkeypatch.setattr(study, "gradient_flow", lambda *a: pytest.fail("gradient flow computed again"))
    assert_rerun_is_cached(init, outcome, monkeypatch, study,
                           "forward_stats", 3 * (len(SPECS) + 2 + 2), budget=budget, out=tmp_path)
    # The new claims read the runs and the gradient experiment.
    results = init.measure(make_context(init, mode="smoke", budget=budget, out=tmp_path))
    shortfall = np.subtract(finals(results["runs"]["shallow he"], "test_acc"),
                            finals(results["runs"]["shallow normal_0.01"], "test_acc"))
    assert claims["small_shallow_only"].numbers["works with 1 hidden layer(s): mean"] == pytest.approx(
        np.mean(shortfall))
    growth = gradient_growth(results["gradients"]["normal_1"])
    assert claims["large_explodes"].numbers["grows with depth: mean"] == pytest.approx(np.mean(growth))
    assert np.mean(growth) > EXPLODES  # N(0, 1) over 4 layers of 100 ReLUs: about 7x per layer
    runs, flow = results["runs"], results["flow"]
    assert claims["uniform_worse"].numbers["he: U(-1, 1) mean"] == pytest.approx(np.mean(finals(runs["uniform_1"],
                                                                                              "test_acc")))
    assert claims["xavier_he_close"].numbers[f"below {SIMILAR:g}: mean"] == pytest.approx(
        np.mean(np.subtract(finals(runs["he"], "test_acc"), finals(runs["xavier"], "test_acc"))))
    total = max(len(r.extras["step_loss"]) for rs in results["plateau"].values() for r in rs)
    assert claims["plateau_slow"].numbers["N(0, 1) mean"] == pytest.approx(
        np.mean(plateau_steps(results["plateau"]["normal_1"], total)))
    assert claims["good_init_starts_lower"].numbers["he: N(0, 1) mean"] == pytest.approx(
        np.mean([f["start_loss"] for f in flow["relu"]["normal_1"]]))
    assert claims["init_balances_gradients"].numbers["tanh: normal_1 far from 1: mean"] == pytest.approx(
        np.mean([abs(f["delta_ratio"]) for f in flow["tanh"]["normal_1"]]))
    assert claims["uniform_uneven_units"].numbers["tanh: U(-1, 1) mean"] == pytest.approx(
        np.mean([f["unit_spread"] for f in flow["tanh"]["uniform_1"]]))
    assert claims["tanh_saturates"].numbers["mean"] == pytest.approx(
        np.mean([np.mean(s["ends"]) for s in results["forward"]["tanh"]["normal_1"]]))
