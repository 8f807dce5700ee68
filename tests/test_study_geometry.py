from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, Ridge
from torch import nn

import trainlab.studies.geometry as study
from trainlab.studies import STUDIES, make_context, run_study
from trainlab.studies.geometry import (BINS, FAR, GROWS, INITS, LR_FACTORS, NEAR, GeometryBudget, PlaneLoss,
                                       claim_small_inits_uneven, distinct_minima, forward_stats, growth,
                                       l1_norm_growth, l1_path, l2_lambdas, l2_path, lr_paths, named_minimum,
                                       quadratic, regression, sparse_range)

from study_helpers import assert_rerun_is_cached


def test_the_l1_path_sets_a_weight_exactly_to_zero_and_the_l2_path_never_does():
    x, y = regression()
    alphas, coefs = l1_path(x, y)
    one_zero = [(w == 0).sum() == 1 for w in coefs]
    assert any(one_zero) and alphas[one_zero.index(True)] > 0  # at a finite, non-zero penalty
    assert sparse_range(alphas, coefs) > 0.1
    assert l1_norm_growth(coefs) < 0  # the L1 norm shrinks at every knot as α grows
    h, g = quadratic(x, y)
    ridge = l2_path(h, g, l2_lambdas(h))
    assert np.all(ridge != 0) and np.abs(ridge).min(1).min() / np.abs(ridge).max() > 0


def test_the_paths_match_scikit_learn_lasso_and_ridge():
    x, y = regression(resample=3)
    alphas, coefs = l1_path(x, y)
    alpha = 0.5 * (alphas[0] + alphas[1])  # inside the sparse range: one weight exactly 0
    lasso = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12).fit(x, y).coef_
    between = coefs[0] + (alpha - alphas[0]) / (alphas[1] - alphas[0]) * (coefs[1] - coefs[0])
    np.testing.assert_allclose(lasso, between, atol=1e-9)
    assert (lasso == 0).sum() == 1
    h, g = quadratic(x, y)
    lam = 0.3
    # loss + (λ/2)||w||² with loss = ||y - Xw||² / 2n is Ridge's ||y - Xw||² + α||w||² at α = nλ.
    ridge = Ridge(alpha=len(y) * lam, fit_intercept=False).fit(x, y).coef_
    np.testing.assert_allclose(l2_path(h, g, np.array([lam]))[0], ridge, rtol=1e-10)


def test_the_sparse_range_is_the_share_of_penalties_with_exactly_one_zero_weight():
    alphas = np.array([2.0, 1.0, 0.0])
    coefs = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 1.0]])
    assert sparse_range(alphas, coefs) == pytest.approx(0.5)
    assert sparse_range(alphas, np.array([[0.0, 0.0], [0.5, 0.2], [1.0, 1.0]])) == 0.0


def test_learning_rates_too_low_crawl_good_converge_and_too_high_diverge():
    lr = lr_paths(list(range(10)), steps=100)
    ratio = {name: lr[name]["distance"][:, -1] / lr[name]["distance"][:, 0] for name in LR_FACTORS}
    assert np.all(ratio["too low"] > FAR) and np.all(ratio["good"] < NEAR) and np.all(ratio["too high"] > 1e3)
    assert lr["too high"]["lr"] > 2 / lr["lambda_max"] > lr["good"]["lr"]  # past gradient descent's stability bound
    np.testing.assert_allclose(lr["good"]["distance"][:, 0], 1.0)  # every start at distance 1


def _mlp_loss(x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    w1, b1, w2, b2 = params
    logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    return nn.functional.cross_entropy(logits, y) + study.DECAY * sum((p ** 2).sum() for p in params)


def test_the_plane_loss_is_the_network_loss_at_the_plane_point():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    shapes = [(5, 6), (5,), (10, 5), (10,)]
    minima = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    ab = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.3, -0.7], [1.2, 0.4]])
    got = PlaneLoss(x, y, minima)(ab)
    for (a, b), value in zip(ab.tolist(), got):
        params = [pa + a * (pb - pa) + b * (pc - pa) for pa, pb, pc in zip(*minima)]
        assert float(value) == pytest.approx(float(_mlp_loss(x, y, params)), rel=1e-5)


def test_end_points_are_grouped_by_minimum():
    ends = np.array([[0.0, 0.01], [1.02, 0.0], [0.0, 0.05], [0.5, 0.5], [0.98, -0.03]])
    labels = distinct_minima(ends)
    assert labels.tolist() == [0, 1, 0, 2, 1]
    assert named_minimum(ends).tolist() == [0, 1, 0, 3, 1]


@pytest.fixture(scope="module")
def sigmoid_relu():
    budget = GeometryBudget(seeds=1, epochs=1, layers=3, width=40, samples=200)
    return {act: forward_stats(act, 0, budget) for act in ("sigmoid", "relu")}


def test_forward_statistics_have_one_histogram_per_init_and_layer(sigmoid_relu):
    for act, stats in sigmoid_relu.items():
        for init in INITS:
            assert stats[f"{init}/hist"].shape == (3, BINS) and stats[f"{init}/std"].shape == (3,)
            assert stats[f"{init}/range"].shape == (3, 2)
        assert np.allclose(stats["he_normal/hist"].sum(1), 1)
    # Zero weights: every sigmoid unit outputs exactly 0.5, every ReLU unit exactly 0.
    assert np.all(sigmoid_relu["sigmoid"]["zeros/std"] == 0)
    assert np.all(sigmoid_relu["relu"]["zeros/zeros"] == 1) and np.all(sigmoid_relu["relu"]["zeros/hist"] == 0)
    # U(-1, 1) on 40-unit layers: var grows ~ 40 · (1/3) / 2 per ReLU layer, so the std more than doubles.
    std = sigmoid_relu["relu"]["uniform_1/std"]
    assert np.all(std[1:] / std[:-1] > 2)


def test_small_inits_shrink_relu_layers_and_leave_sigmoid_uneven(sigmoid_relu):
    r = {"forward": {act: [stats] * 3 for act, stats in sigmoid_relu.items()}}
    found = claim_small_inits_uneven(r)
    relu = sigmoid_relu["relu"]
    # N(0, 0.05²) on 40-unit ReLU layers: the std scales by sqrt(40 · 0.05² / 2) ≈ 0.22 per layer.
    assert found.numbers["ReLU N(0, 0.05²) shrinks: mean"] == pytest.approx(growth(relu["normal/std"]))
    assert growth(relu["normal/std"]) == pytest.approx(np.sqrt(40 * 0.05 ** 2 / 2), rel=0.25)
    assert growth(relu["normal/std"]) < 1 / GROWS
    uneven = sigmoid_relu["sigmoid"]["uniform/uneven"]
    assert found.numbers["sigmoid U(±0.05) uneven: mean"] == pytest.approx(uneven.min())
    assert found.numbers["sigmoid N(0, 0.05²) uneven: mean"] == pytest.approx(
        sigmoid_relu["sigmoid"]["normal/uneven"].min())
    assert found.verdict == "supported"
    # Where N(0, 0.05²) spread a sigmoid layer no more than zeros do, the claim does not hold.
    flat = {**sigmoid_relu["sigmoid"], "normal/std": sigmoid_relu["sigmoid"]["zeros/std"]}
    assert claim_small_inits_uneven({"forward": {**r["forward"], "sigmoid": [flat] * 3}}).verdict == "refuted"


@pytest.mark.slow
def test_on_three_seeds_l1_reaches_zero_lr_extremes_show_and_a_second_run_computes_nothing(tmp_path, monkeypatch):
    geometry = STUDIES["geometry"]
    outcome = run_study(geometry, make_context(geometry, mode="smoke", out=tmp_path))
    claims = {c.key: c for c in outcome.claims}
    assert len(claims) == len(geometry.claims)
    assert claims["l1_zero_l2_shrinks"].numbers["L1 reaches exactly 0: mean"] > 0.1
    lr = claims["lr_too_low_too_high"].numbers
    assert lr["too low is still far: mean"] > FAR and lr["good converges: ci_high"] < NEAR
    assert lr["too high diverges: ci_low"] > 0  # log10 of the distance ratio: it grew on every seed
    assert claims["starts_decide_minimum"].numbers["several minima: mean"] > 1
    assert claims["uniform_range_grows"].verdict == "supported"
    assert len(outcome.figures) == 6 and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)

    def nothing_new(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(study, "path_stats", nothing_new)
    monkeypatch.setattr(study, "landscape", nothing_new)
    assert_rerun_is_cached(geometry, outcome, monkeypatch, study, "forward_stats", 0, out=tmp_path)
