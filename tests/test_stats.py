from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from trainlab.stats import Evidence, compare, summarize, verdict_compare, verdict_threshold

A = [0.912, 0.905, 0.921, 0.899, 0.917, 0.908]
B = [0.861, 0.850, 0.872, 0.866, 0.851, 0.859]


# --- summaries -----------------------------------------------------------------------------------------------------

def test_summary_matches_t_interval():
    s = summarize(A, confidence=0.9)
    x = np.asarray(A)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    half = sps.t.ppf(0.95, x.size - 1) * sem
    assert (s.n, s.confidence) == (6, 0.9)
    assert s.mean == pytest.approx(x.mean())
    assert s.std == pytest.approx(x.std(ddof=1))
    assert s.sem == pytest.approx(sps.sem(x))
    assert (s.ci_low, s.ci_high) == pytest.approx(sps.t.interval(0.9, x.size - 1, loc=x.mean(), scale=sem))
    assert s.ci_high - s.mean == pytest.approx(half)


def test_summary_degenerate_cases():
    one = summarize([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.sem)
    assert (one.ci_low, one.ci_high) == (-math.inf, math.inf)
    same = summarize([0.1, 0.1, 0.1])  # np.var leaves ~1e-34 of rounding noise here; the summary must not
    assert same.std == 0.0 and same.sem == 0.0 and same.ci_low == same.ci_high == same.mean


@pytest.mark.parametrize("bad, match", [([], "non-empty"), ([[1.0, 2.0]], "1-D"), ([1.0, math.nan], "index 1"),
                                        ([math.inf, 1.0], "finite")])
def test_summary_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        summarize(bad)


def test_summary_rejects_bad_confidence():
    with pytest.raises(ValueError, match="'confidence'"):
        summarize(A, confidence=95)


# --- comparisons against scipy -------------------------------------------------------------------------------------

def test_paired_matches_ttest_rel():
    c = compare(A, B, paired=True)
    ref = sps.ttest_rel(A, B)
    d = np.asarray(A) - np.asarray(B)
    assert c.test == "paired t" and c.effect_name == "d_z"
    assert c.diff == pytest.approx(d.mean())
    assert (c.t, c.p, c.df) == pytest.approx((ref.statistic, ref.pvalue, ref.df))
    ci = ref.confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
    assert c.effect == pytest.approx(d.mean() / d.std(ddof=1))


def test_welch_matches_ttest_ind():
    a, b = A, [0.861, 0.85, 0.872, 0.83, 0.9]  # unequal sizes and variances
    c = compare(a, b, paired=False, confidence=0.9)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert c.test == "welch t" and c.effect_name == "g"
    assert c.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (c.t, c.p, c.df) == pytest.approx((ref.statistic, ref.pvalue, ref.df))
    ci = ref.confidence_interval(0.9)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    na, nb = len(a), len(b)
    assert c.df == pytest.approx((va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1)))


def test_hedges_g_hand_formula():
    a, b = [1.0, 2.0, 4.0, 5.0], [0.0, 1.0, 1.0, 2.0, 3.0, 5.0]
    m = 8
    pooled = math.sqrt((3 * np.var(a, ddof=1) + 5 * np.var(b, ddof=1)) / m)
    j = math.gamma(m / 2) / (math.sqrt(m / 2) * math.gamma((m - 1) / 2))
    assert j == pytest.approx(1 - 3 / (4 * m - 1), abs=2e-3)  # Hedges' usual approximation
    assert compare(a, b, paired=False).effect == pytest.approx(j * (np.mean(a) - np.mean(b)) / pooled)


def test_zero_variance_comparisons():
    same = compare([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], paired=True)
    assert (same.diff, same.t, same.p, same.effect, same.ci_low, same.ci_high) == (0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    shifted = compare([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], paired=True)  # every difference is exactly 1
    assert shifted.p == 0.0 and shifted.t == math.inf and (shifted.ci_low, shifted.ci_high) == (1.0, 1.0)
    welch = compare([0.1, 0.1, 0.1], [0.3, 0.3], paired=False)
    assert welch.p == 0.0 and welch.t == -math.inf and welch.effect == -math.inf and welch.df == 3
    welch_same = compare([0.1, 0.1], [0.1, 0.1, 0.1], paired=False)
    assert (welch_same.t, welch_same.p, welch_same.effect) == (0.0, 1.0, 0.0)
    one_flat = compare([0.5, 0.5, 0.5], [0.4, 0.6, 0.5, 0.45], paired=False)  # only one group is flat: plain Welch
    with warnings.catch_warnings():  # scipy warns that the flat group's variance is ~1e-33 rather than 0
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = sps.ttest_ind([0.5, 0.5, 0.5], [0.4, 0.6, 0.5, 0.45], equal_var=False)
    assert (one_flat.t, one_flat.p) == pytest.approx((ref.statistic, ref.pvalue))


def test_comparison_with_a_single_value_is_undefined_not_an_error():
    c = compare([0.9], [0.8, 0.85, 0.82], paired=False)
    assert c.diff == pytest.approx(0.9 - np.mean([0.8, 0.85, 0.82]))
    assert math.isnan(c.p) and math.isnan(c.t) and (c.ci_low, c.ci_high) == (-math.inf, math.inf)


def test_paired_needs_equal_lengths():
    with pytest.raises(ValueError, match="Got 6 and 5"):
        compare(A, B[:5], paired=True)


# --- verdicts ------------------------------------------------------------------------------------------------------

def test_clear_effect_is_supported():
    verdict, c = verdict_compare(A, B, "greater", paired=False)
    assert verdict == "supported" and c.p < 0.05
    assert verdict_compare(B, A, "less", paired=True, min_effect=0.02)[0] == "supported"


def test_claim_in_wrong_direction_is_refuted():
    assert verdict_compare(A, B, "less", paired=False)[0] == "refuted"
    assert verdict_compare(B, A, "greater", paired=True, min_effect=0.1)[0] == "refuted"


def test_too_few_seeds_is_inconclusive():
    verdict, c = verdict_compare(A[:2], B[:2], "greater", paired=False)
    assert verdict == "inconclusive" and c.p < 0.05  # significant, but two seeds are below min_n
    assert verdict_compare(A, B[:2], "greater", paired=False, min_n=2)[0] == "supported"


def test_null_effect_with_tight_ci_and_min_effect_is_refuted():
    rng = np.random.default_rng(0)
    a = 0.9 + 0.001 * rng.standard_normal(10)
    b = 0.9 + 0.001 * rng.standard_normal(10)
    verdict, c = verdict_compare(a, b, "greater", paired=False, min_effect=0.01)
    assert verdict == "refuted" and -0.01 <= c.ci_low and c.ci_high <= 0.01
    # Without a minimal effect, a null result cannot refute the claim.
    assert verdict_compare(a, b, "greater", paired=False)[0] == "inconclusive"


def test_noisy_small_effect_is_inconclusive():
    rng = np.random.default_rng(1)
    a = 0.905 + 0.05 * rng.standard_normal(4)
    b = 0.9 + 0.05 * rng.standard_normal(4)
    verdict, c = verdict_compare(a, b, "greater", paired=False, min_effect=0.01)
    assert verdict == "inconclusive" and c.p > 0.05


def test_significant_but_smaller_than_min_effect():
    a = [1.0 + 0.001 * k for k in range(5)]
    b = [0.995 + 0.001 * k for k in (0, 2, 1, 4, 3)]
    assert verdict_compare(a, b, "greater", paired=False)[0] == "supported"
    # diff 0.005 < 0.006, yet the CI reaches past 0.006: it cannot be ruled in or out.
    verdict, c = verdict_compare(a, b, "greater", paired=False, min_effect=0.006)
    assert verdict == "inconclusive" and c.ci_high > 0.006 and c.p < 0.05
    assert verdict_compare(a, b, "greater", paired=False, min_effect=0.05)[0] == "refuted"


def test_ci_of_verdict_matches_alpha():
    _, c = verdict_compare(A, B, "greater", paired=True, alpha=0.01)
    ci = sps.ttest_rel(A, B).confidence_interval(0.99)
    assert c.confidence == pytest.approx(0.99) and (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))


def test_identical_results_refute_even_without_min_effect():
    assert verdict_compare([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "greater", paired=True)[0] == "refuted"


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0.0}, "'alpha'"), ({"min_n": 1}, "'min_n'"), ({"min_effect": -0.1}, "'min_effect'"),
    ({"direction": "up"}, "'direction'"),
])
def test_verdict_compare_rejects_bad_arguments(kwargs, match):
    args = {"direction": "greater", "paired": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        verdict_compare(A, B, **args)


def test_verdict_threshold():
    assert verdict_threshold(A, ">", 0.85)[0] == "supported"
    assert verdict_threshold(A, "<", 0.85)[0] == "refuted"
    assert verdict_threshold(A, "<", 0.95)[0] == "supported"
    verdict, s = verdict_threshold(A, ">", float(np.mean(A)))
    assert verdict == "inconclusive" and s.ci_low < np.mean(A) < s.ci_high
    assert verdict_threshold(A[:2], ">", 0.5)[0] == "inconclusive"
    assert verdict_threshold([0.5, 0.5, 0.5], ">", 0.5)[0] == "refuted"  # equal to the threshold is not above it
    with pytest.raises(ValueError, match="'op'"):
        verdict_threshold(A, ">=", 0.5)


# --- evidence records ----------------------------------------------------------------------------------------------

def test_evidence_describe_and_json_round_trip():
    ev = Evidence.compare("A beats B", A, B, "greater", paired=False)
    assert ev.verdict == "supported"
    line = ev.describe()
    assert line.startswith("SUPPORTED: A beats B") and "vs" in line and "g = " in line and "n = 6 vs 6" in line
    text = json.dumps(ev.to_dict(), allow_nan=False)
    assert Evidence.from_dict(json.loads(text)) == ev


def test_evidence_with_non_finite_values_is_strict_json():
    ev = Evidence.threshold("one run", [0.9], ">", 0.5, min_n=2)
    assert ev.verdict == "inconclusive" and "too few" in ev.reason
    back = Evidence.from_dict(json.loads(json.dumps(ev.to_dict(), allow_nan=False)))
    assert back.summary.ci_high == math.inf and math.isnan(back.summary.std)
    flat = Evidence.compare("shift", [2.0, 3.0, 4.0], [1.0, 2.0, 3.0], "greater", paired=True)
    assert Evidence.from_dict(json.loads(json.dumps(flat.to_dict(), allow_nan=False))) == flat
    assert "n = 3 pairs" in flat.describe()


def test_detectable_difference_has_the_claimed_power():
    from trainlab.stats import detectable_difference

    # Large df: the normal approximation (z_0.975 + z_0.8) * se.
    assert detectable_difference(1.0, 10_000) == pytest.approx(sps.norm.ppf(0.975) + sps.norm.ppf(0.8), rel=1e-3)
    assert detectable_difference(0.0, 5) == 0.0 and math.isnan(detectable_difference(math.nan, 0))
    # Simulated paired t-tests with that true difference reject 80% of the time.
    rng = np.random.default_rng(0)
    n, sd = 10, 2.0
    delta = detectable_difference(sd / math.sqrt(n), n - 1)
    d = rng.normal(delta, sd, size=(40_000, n))
    p = 2 * sps.t.sf(np.abs(d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))), n - 1)
    assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.01)
    with pytest.raises(ValueError, match="'power' argument must be a float in \\(0, 1\\)"):
        detectable_difference(1.0, 5, power=1.0)


def test_an_inconclusive_comparison_says_what_it_could_have_detected():
    from trainlab.stats import Evidence

    a, b = [1.0, 1.2, 0.9, 1.1], [1.05, 1.1, 1.0, 1.0]
    ev = Evidence.compare("a beats b", a, b, "greater", paired=True)
    c = ev.comparison
    assert ev.verdict == "inconclusive"
    sd = np.std(np.subtract(a, b), ddof=1)
    from trainlab.stats import detectable_difference

    assert c.detectable == pytest.approx(detectable_difference(sd / 2, 3))
    assert f"at n = 4 pairs it would detect a difference of {c.detectable:.3g} 80% of the time" in ev.reason
    assert Evidence.from_dict(ev.to_dict()) == ev
    th = Evidence.threshold("mean above 1", [0.9, 1.3, 1.0], ">", 1.0)
    assert th.verdict == "inconclusive" and "at n = 3 values it would detect a difference of" in th.reason
