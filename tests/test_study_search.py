from __future__ import annotations

import numpy as np

import trainlab.studies.search as study
from trainlab.studies import STUDIES, make_context
from trainlab.studies.search import NONINFERIORITY, claim_coarse_to_fine, claim_random_beats_grid

from study_helpers import assert_rerun_is_cached


def _search(best: float, coarse: float = 0.5, fine: float = 0.5, ratio: float = 0.2) -> dict:
    return {"best_val": best, "best_coarse": coarse, "best_fine": fine, "span_ratio": ratio,
            "values": np.array([best]), "lr": np.array([1e-3])}


def _results(random: list[float], grid: list[float], fine_minus_coarse: list[float],
             ratios: list[float]) -> dict:
    c2f = [_search(0.5, 0.5, 0.5 + d, r) for d, r in zip(fine_minus_coarse, ratios)]
    return {"searches": {"random": [_search(v) for v in random], "grid": [_search(v) for v in grid],
                         "coarse_to_fine": c2f}, "trials": 16}


def test_random_beats_grid_follows_the_paired_difference():
    grid = [0.50, 0.52, 0.48, 0.51, 0.49]
    assert claim_random_beats_grid(_results([g + 0.05 + 0.002 * k for k, g in enumerate(grid)], grid, [0.0],
                                            [0.2])).verdict == "supported"
    assert claim_random_beats_grid(_results([g - 0.05 - 0.002 * k for k, g in enumerate(grid)], grid, [0.0],
                                            [0.2])).verdict == "refuted"
    assert claim_random_beats_grid(_results([0.55, 0.45, 0.52, 0.46, 0.50], grid, [0.0],
                                            [0.2])).verdict == "inconclusive"


def test_coarse_to_fine_needs_a_narrower_range_and_no_loss():
    ok = _results([0.5], [0.5], [0.01, 0.012, 0.008], [0.2, 0.25, 0.15])
    assert claim_coarse_to_fine(ok).verdict == "supported"
    wider = _results([0.5], [0.5], [0.01, 0.012, 0.008], [1.0, 1.0, 1.0])
    assert claim_coarse_to_fine(wider).verdict == "refuted"
    worse = _results([0.5], [0.5], [-3 * NONINFERIORITY, -3.2 * NONINFERIORITY, -2.8 * NONINFERIORITY],
                     [0.2, 0.25, 0.15])
    assert claim_coarse_to_fine(worse).verdict == "refuted"
    noisy = _results([0.5], [0.5], [0.05, -0.08, 0.02], [0.2, 0.25, 0.15])
    assert claim_coarse_to_fine(noisy).verdict == "inconclusive"


def test_on_three_repetitions_the_fine_stage_is_narrower_and_a_second_run_computes_nothing(tmp_path, monkeypatch):
    search = STUDIES["search"]
    outcome = search.run(make_context(search, mode="smoke", seeds=3, out=tmp_path))
    claims = {c.key: c for c in outcome.claims}
    assert set(claims) == {"random_beats_grid", "coarse_to_fine"}
    # Two coarse trials keep the best one, so the fine lr range is a fifth of the full one (WIDEN on each side).
    results = search.measure(make_context(search, mode="smoke", seeds=3, out=tmp_path))
    assert claim_coarse_to_fine(results).parts["narrower"].verdict == "supported"
    assert all(len(x["values"]) == results["trials"] == 4 for runs in results["searches"].values() for x in runs)
    grid_lrs = {float(v) for x in results["searches"]["grid"] for v in x["lr"]}
    assert len(grid_lrs) == 2  # the grid repeats its two lr values; random search does not
    assert len({float(v) for x in results["searches"]["random"] for v in x["lr"]}) == 12
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)
    assert_rerun_is_cached(search, outcome, monkeypatch, study, "run_search", 0, seeds=3, out=tmp_path)
