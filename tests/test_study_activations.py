from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import trainlab.studies.activations as study
from trainlab.diagnostics import probe_forward
from trainlab.runs import RunResult
from trainlab.studies import STUDIES, make_context, run_studies
from trainlab.studies.activations import (COSTLIER, NONLINEAR_GAIN, SLOWER_LOSS, CentredSigmoid, CentreSigmoids,
                                          LinearNet, benchmark, claim_cost, claim_dead, claim_elu_cost,
                                          claim_nonlinearity, claim_not_centred, claim_positive_slow,
                                          claim_relu_first, claim_vanishing, dead_fraction, log_ratio, mean_loss)
from trainlab.studies.measures import smoothed_loss

from study_helpers import assert_rerun_is_cached


def run(**extras) -> RunResult:
    return RunResult({}, [{"epoch": 1, "train_loss": 1.0}], {}, extras)


def test_dead_fraction_of_relu_agrees_with_the_diagnostics_probe_in_every_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # three units of the first layer never fire
    x = torch.randn(50, 4)
    expected = [s.dead_fraction for s in probe_forward(model, x).values()]
    assert dead_fraction(model, x) == pytest.approx(expected)
    assert dead_fraction(model, x)[0] == pytest.approx(3 / 8)


def test_leaky_units_never_die_and_saturated_sigmoids_do():
    x = torch.randn(64, 3)
    for act, dead in ((nn.LeakyReLU(0.01), 0.0), (nn.Sigmoid(), 0.5), (nn.ELU(), 0.5)):
        model = nn.Sequential(nn.Linear(3, 4), act)
        with torch.no_grad():
            model[0].weight.zero_()
            model[0].bias.copy_(torch.tensor([-50.0, -50.0, 0.0, 1.0]))
        # leaky: slope 0.01 > 1e-3 everywhere; sigmoid: saturated at 0; elu: exp(-50) slope in its flat tail.
        assert dead_fraction(model, x) == [pytest.approx(dead)]


def test_dead_fraction_leaves_the_model_output_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(10, 4)
    before = model(x).detach()
    dead_fraction(model, x)
    assert torch.equal(model(x).detach(), before)
    assert not model[1]._forward_hooks


def test_log_ratio_is_first_over_last_column_in_decades():
    rms = np.array([[1e-4, 1.0, 1e-1], [1.0, 1.0, 1.0]])
    assert np.allclose(log_ratio(rms), [-3.0, 0.0])


def test_benchmark_times_every_activation_and_restores_the_thread_count():
    threads = torch.get_num_threads()
    times = benchmark(("sigmoid", "relu"), 1024, 2, seed=0)
    assert set(times) == {"sigmoid", "relu"} and all(t > 0 for t in times.values())
    assert torch.get_num_threads() == threads


def _results(sigmoid_ratio: float, dead_relu: float) -> dict:
    rng = np.random.default_rng(0)

    def runs(log_ratio_value: float, mean: float, dead: float) -> list[RunResult]:
        return [run(grad_rms=[[10 ** (log_ratio_value + rng.normal(0, 0.05)), 1.0]] * 3,
                    mean_end=[mean + rng.normal(0, 0.01)] * 4, dead_end=[dead + rng.uniform(0, 0.01) * (dead > 0)] * 4)
                for _ in range(3)]

    return {"runs": {"sigmoid": runs(sigmoid_ratio, 0.5, 0.0), "tanh": runs(-0.2, 0.0, 0.0),
                     "relu": runs(-0.3, 0.3, 0.01)},
            "dead_runs": {"relu": runs(-0.3, 0.3, dead_relu), "leaky_relu": runs(-0.3, 0.3, 0.0),
                          "elu": runs(-0.3, 0.3, 0.0)},
            "bench": [{"sigmoid": [1.2 + 0.01 * k, 1.0], "relu": [1.0, 1.0], "elu": [1.3 - 0.01 * k, 1.0]}
                      for k in range(3)],
            "centring": {"depth": 3, "sigmoid": [2.0, 2.1, 2.05], "centred": [1.9, 1.95, 1.92]},
            "steps": {"relu": [50, 55, 60], "sigmoid": [300, 300, 300], "tanh": [150, 160, 170]}}


def test_claims_follow_synthetic_numbers():
    r = _results(sigmoid_ratio=-4.0, dead_relu=0.2)
    assert claim_vanishing(r).verdict == "supported"
    assert claim_not_centred(r).verdict == "supported"
    assert claim_cost(r).verdict == "supported"
    assert claim_relu_first(r).verdict == "supported"
    assert claim_dead(r).verdict == "supported"
    assert claim_elu_cost(r).verdict == "supported"
    assert claim_positive_slow(r).verdict == "supported"


def test_cost_and_centring_claims_need_more_than_their_minimum_effects():
    r = _results(sigmoid_ratio=-4.0, dead_relu=0.2)
    r["bench"] = [{"sigmoid": [1.0, 1.0], "relu": [1.0, 1.0], "elu": [COSTLIER - 0.05 + 0.01 * k, 1.0]}
                  for k in range(3)]
    assert claim_elu_cost(r).verdict == "refuted"  # the whole interval lies below the minimum ratio
    r["centring"] = {"depth": 3, "sigmoid": [2.0, 2.1, 2.05],
                     "centred": [2.0 - SLOWER_LOSS / 4, 2.1 - SLOWER_LOSS / 5, 2.05 - SLOWER_LOSS / 3]}
    assert claim_positive_slow(r).verdict == "refuted"  # faster, but by less than the minimum


def test_the_centred_sigmoid_is_sigmoid_shifted_with_the_same_slope():
    x = torch.linspace(-6, 6, 101, requires_grad=True)
    (slope,) = torch.autograd.grad(CentredSigmoid()(x).sum(), x)
    (reference,) = torch.autograd.grad(torch.sigmoid(x).sum(), x)
    assert torch.allclose(CentredSigmoid()(x), torch.sigmoid(x) - 0.5)
    assert torch.allclose(slope, reference)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()))
    weights = [p.clone() for p in model.parameters()]
    CentreSigmoids().on_fit_start(type("T", (), {"model": model})())
    assert [type(m) for m in model.modules()].count(CentredSigmoid) == 2 and not any(
        isinstance(m, nn.Sigmoid) for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_the_linear_net_replaces_every_tanh_by_the_identity_and_keeps_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 2))
    weights = [p.clone() for p in model.parameters()]
    LinearNet().on_fit_start(type("T", (), {"model": model})())
    assert not any(isinstance(m, nn.Tanh) for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    x = torch.randn(5, 3)
    product = x @ model[0].weight.T + model[0].bias
    product = product @ model[2][0].weight.T + model[2][0].bias
    assert torch.allclose(model(x), product @ model[3].weight.T + model[3].bias, atol=1e-6)  # one affine map


def test_the_nonlinearity_claim_needs_relu_ahead_by_the_minimum_gain():
    relu = [RunResult({}, [], {"test_acc": a}, {}) for a in (0.60, 0.62, 0.61)]
    r = {"runs": {"relu": relu}, "linear": [0.30, 0.33, 0.31]}
    assert claim_nonlinearity(r).verdict == "supported"
    r["linear"] = [a - NONLINEAR_GAIN / 4 for a in (0.60, 0.615, 0.605)]
    assert claim_nonlinearity(r).verdict == "refuted"  # ahead, but by less than the minimum


def test_mean_loss_is_the_mean_of_the_moving_average():
    losses = [2.3, 2.0, 1.5, 1.4]
    assert mean_loss(losses) == pytest.approx(float(np.mean(smoothed_loss(losses))))


def test_no_dead_relus_refutes_the_fix_and_healthy_sigmoid_gradients_refute_vanishing():
    r = _results(sigmoid_ratio=-0.3, dead_relu=0.0)
    assert claim_dead(r).verdict == "refuted"  # nothing died, so there is nothing to fix
    assert claim_vanishing(r).verdict == "refuted"


@pytest.mark.slow
def test_on_three_seeds_sigmoid_gradients_vanish_and_a_second_run_computes_nothing(tmp_path, monkeypatch):
    (outcome,) = run_studies(["activations"], mode="smoke", seeds=3, out=tmp_path, progress=False)
    claims = {c.key: c for c in outcome.claims}
    assert len(claims) == len(STUDIES["activations"].claims) == 8
    # Each sigmoid layer scales the gradient by at most 1/4: the first layer's is orders of magnitude below ReLU's.
    assert claims["sigmoid_vanishing"].verdict == "supported"
    assert claims["sigmoid_vanishing"].numbers["at the start: diff"] < -1.0
    assert claims["sigmoid_not_centred"].verdict == "supported"
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)
    # The smoke net has the centring depth (3): the centring part's sigmoid runs are the main ones, from the store.
    assert (outcome.runs_trained, outcome.runs_cached) == (3 * (7 + 3), 3)
    # The centring claim compares the stored sigmoid runs with the centred ones, which a second measure loads.
    assert claims["sigmoid_positive_slow"].numbers["n"] == 3

    activations = STUDIES["activations"]
    assert_rerun_is_cached(activations, outcome, monkeypatch, study, "benchmark", 3 * (7 + 3 + 1), seeds=3,
                           out=tmp_path)
    centring = activations.centring(make_context(activations, mode="smoke", seeds=3, out=tmp_path))
    assert len(set(centring["sigmoid"])) == 3 and len(set(centring["centred"])) == 3  # one run per seed
    numbers = claims["sigmoid_positive_slow"].numbers
    assert (numbers["sigmoid mean"], numbers["sigmoid - 1/2 mean"]) == pytest.approx(
        (np.mean(centring["sigmoid"]), np.mean(centring["centred"])))
    # The nonlinearity claim compares the stored ReLU runs with the linear ones, which a second measure loads.
    linear = activations.linear(make_context(activations, mode="smoke", seeds=3, out=tmp_path))
    assert len(linear) == 3 and claims["nonlinearity_needed"].numbers["identity mean"] == pytest.approx(
        np.mean(linear))
