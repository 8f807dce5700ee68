"""Statistics that turn runs over seeds into verdicts: means with t confidence intervals, t-tests, effect sizes.

Pure numpy/scipy. Every value passed in must be finite (a diverged run is the study's to handle, e.g. by
recording it as a failure), so a ``nan`` here always means "undefined", never "bad input".

Degenerate cases, decided once here so that studies never meet a surprise ``nan``:

- One value: std and sem are undefined (``nan``) and the confidence interval is infinite, (-inf, inf): one run says
  nothing about the spread, and an infinite interval makes every threshold verdict inconclusive.
- Zero variance (all values identical, exactly): std = sem = 0 and the interval is the point (mean, mean). In a
  comparison whose standard error is 0: if the difference is 0 then t = 0, p = 1 and the effect size is 0;
  otherwise t and the effect size are +-inf and p = 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

Verdict = Literal["supported", "refuted", "inconclusive"]
POWER = 0.8  # the power at which an inconclusive test reports the smallest effect it could have detected


def _values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"The '{what}' argument must be a non-empty 1-D sequence of numbers. "
                         f"Got shape {x.shape} instead.")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"The '{what}' argument must hold finite numbers. Got {x[bad[0]]} at index {bad[0]} instead.")
    return x


def _mean(x: np.ndarray) -> float:
    """The mean; exactly the value for identical values (np.mean([0.1] * 3) is 0.10000000000000002)."""
    return float(x[0]) if np.all(x == x[0]) else float(np.mean(x))


def _var(x: np.ndarray) -> float:
    """Sample variance (ddof=1); exactly 0 for identical values, where np.var can leave rounding noise."""
    return 0.0 if np.all(x == x[0]) else float(np.var(x, ddof=1))


def _check_unit(value: float, what: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"The '{what}' argument must be a float in (0, 1). Got {value!r} instead.")


def _check_min_n(min_n: int) -> None:
    if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 2:
        raise ValueError(f"The 'min_n' argument must be an int >= 2 (a spread needs two values). "
                         f"Got {min_n!r} instead.")


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1), standard error and t confidence interval of the mean."""

    n: int
    mean: float
    std: float
    sem: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    def describe(self) -> str:
        """``mean 0.912 [0.905, 0.919], n = 5``."""
        if self.n == 1:
            return f"mean {_fmt(self.mean)} (n = 1, no CI)"
        return f"mean {_fmt(self.mean)} [{_fmt(self.ci_low)}, {_fmt(self.ci_high)}], n = {self.n}"


def summarize(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Summary:
    """``mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n)``; see the module docstring for n = 1 and zero variance."""
    _check_unit(confidence, "confidence")
    x = _values(values, "values")
    n, mean = x.size, _mean(x)
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, -math.inf, math.inf, confidence)
    std = math.sqrt(_var(x))
    sem = std / math.sqrt(n)
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * sem
    return Summary(n, mean, std, sem, mean - half, mean + half, confidence)


def detectable_difference(se: float, df: float, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest true difference that a two-sided t-test at level ``alpha`` detects with probability ``power``.

    With standard error ``se`` and ``df`` degrees of freedom, the test statistic under a true difference delta is
    noncentral t(df, delta / se); delta solves P(|T| > t_{1-alpha/2, df}) = power (Cohen, "Statistical power analysis
    for the behavioral sciences", 1988, ch. 2). For large df, delta -> (z_{1-alpha/2} + z_power) se = 2.80 se.
    ``nan`` when undefined (one value: se is nan); 0 when se is 0 (every difference shows).
    """
    _check_unit(alpha, "alpha")
    _check_unit(power, "power")
    if not (se >= 0 and df >= 1):
        return math.nan
    if se == 0:
        return 0.0
    crit = float(sps.t.ppf(1 - alpha / 2, df))

    def power_at(ncp: float) -> float:
        rejected = float(sps.nct.sf(crit, df, ncp) + sps.nct.cdf(-crit, df, ncp))
        # scipy's noncentral t loses precision far in the tail at tiny df (n = 2): there the test surely rejects.
        return (1.0 if math.isnan(rejected) else rejected) - power

    high = crit + 4.0
    while power_at(high) < 0:
        high *= 2
    return optimize.brentq(power_at, 0.0, high, xtol=1e-10) * se


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) with its confidence interval, a two-sided t-test and a standardized effect size.

    ``effect_name`` is ``"d_z"`` (paired: mean difference / std of the differences, Cohen) or ``"g"`` (Welch:
    Cohen's d with the pooled std, times Hedges' small-sample correction J). ``detectable`` is the smallest
    difference the test would have found with probability ``POWER`` at this n and spread (``detectable_difference``).
    Undefined values (a group of one) are ``nan`` and the interval is infinite.
    """

    test: Literal["paired t", "welch t"]
    a: Summary
    b: Summary
    diff: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    df: float
    effect: float
    effect_name: Literal["d_z", "g"]
    confidence: float = 0.95
    detectable: float = math.nan

    def describe(self) -> str:
        """``mean 0.912 [0.905, 0.919] vs 0.861 [0.850, 0.872], diff +0.051, p = 0.002, g = 3.1, n = 5 vs 5``."""
        def mean_ci(s: Summary) -> str:
            return _fmt(s.mean) if s.n == 1 else f"{_fmt(s.mean)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]"

        p = "p = n/a" if math.isnan(self.p) else ("p < 0.001" if 0 < self.p < 0.001 else f"p = {_fmt(self.p, 2)}")
        effect = "n/a" if math.isnan(self.effect) else _fmt(self.effect, 2)
        n = f"n = {self.a.n} pairs" if self.test == "paired t" else f"n = {self.a.n} vs {self.b.n}"
        return (f"mean {mean_ci(self.a)} vs {mean_ci(self.b)}, diff {self.diff:+.3g} "
                f"[{_fmt(self.ci_low, 3)}, {_fmt(self.ci_high, 3)}], {p}, {self.effect_name} = {effect}, {n} "
                f"({self.test})")


def _test(diff: float, se: float, df: float, spread: float, confidence: float) -> tuple[float, ...]:
    """(ci_low, ci_high, t, p, standardized effect before any correction) of a t statistic ``diff / se``."""
    if se == 0:
        if diff == 0:
            return 0.0, 0.0, 0.0, 1.0, 0.0
        return diff, diff, math.copysign(math.inf, diff), 0.0, math.copysign(math.inf, diff)
    t = diff / se
    p = float(2 * sps.t.sf(abs(t), df))
    half = float(sps.t.ppf((1 + confidence) / 2, df)) * se
    return diff - half, diff + half, t, p, diff / spread


def compare(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, paired: bool,
            confidence: float = 0.95) -> Comparison:
    """Compare mean(a) with mean(b): a paired t-test (Cohen's d_z) or Welch's t-test (Hedges' g).

    Paired (same seeds in both arms; as ``scipy.stats.ttest_rel``): d = a - b, t = mean(d) / (sd(d) / sqrt(n)),
    df = n - 1, d_z = mean(d) / sd(d). Welch (as ``scipy.stats.ttest_ind(equal_var=False)``):
    se = sqrt(va/na + vb/nb), df = se^4 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1)) (Welch-Satterthwaite),
    g = J * diff / s_pooled with J = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)), m = na + nb - 2 (Hedges 1981). When both
    groups have zero variance Welch's df is 0/0; it is then reported as na + nb - 2. References: Student 1908;
    Welch 1947; Cohen, "Statistical power analysis for the behavioral sciences", 1988; Hedges & Olkin 1985.
    """
    _check_unit(confidence, "confidence")
    x, y = _values(a, "a"), _values(b, "b")
    sa, sb = summarize(x, confidence), summarize(y, confidence)
    diff = sa.mean - sb.mean
    nan = math.nan
    if paired:
        if x.size != y.size:
            raise ValueError(f"A paired comparison needs as many values in 'a' as in 'b'. "
                             f"Got {x.size} and {y.size} instead.")
        n = x.size
        if n < 2:
            return Comparison("paired t", sa, sb, diff, -math.inf, math.inf, nan, nan, nan, nan, "d_z", confidence)
        d = x - y
        diff = _mean(d)
        sd = math.sqrt(_var(d))
        lo, hi, t, p, dz = _test(diff, sd / math.sqrt(n), n - 1, sd, confidence)
        return Comparison("paired t", sa, sb, diff, lo, hi, t, p, float(n - 1), dz, "d_z", confidence,
                          detectable_difference(sd / math.sqrt(n), n - 1, 1 - confidence))
    na, nb = x.size, y.size
    if na < 2 or nb < 2:
        return Comparison("welch t", sa, sb, diff, -math.inf, math.inf, nan, nan, nan, nan, "g", confidence)
    va, vb = _var(x), _var(y)
    se = math.sqrt(va / na + vb / nb)
    m = na + nb - 2
    df = se**4 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1)) if se > 0 else float(m)
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / m)
    lo, hi, t, p, d = _test(diff, se, df, pooled, confidence)
    j = math.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / math.sqrt(m / 2)
    return Comparison("welch t", sa, sb, diff, lo, hi, t, p, df, j * d, "g", confidence,
                      detectable_difference(se, df, 1 - confidence))


def _judge_compare(c: Comparison, direction: Literal["greater", "less"], alpha: float, min_effect: float,
                   min_n: int) -> tuple[Verdict, str]:
    if c.a.n < min_n or c.b.n < min_n:
        return "inconclusive", f"too few values (n = {c.a.n} and {c.b.n}; at least {min_n} each needed)"
    sign = 1.0 if direction == "greater" else -1.0
    claimed = sign * c.diff
    significant = c.p < alpha
    if significant and claimed > min_effect:
        by = f", by more than {min_effect:g}" if min_effect > 0 else ""
        return "supported", f"significant (p < {alpha:g}) in the claimed direction{by}"
    if significant and claimed < 0:
        return "refuted", f"significant (p < {alpha:g}) in the opposite direction"
    if -min_effect <= c.ci_low and c.ci_high <= min_effect:
        if min_effect == 0:
            return "refuted", "the two groups' results are identical"
        return "refuted", (f"the {c.confidence:.0%} CI of the difference lies within +-{min_effect:g}: "
                           "no meaningful effect")
    if significant:
        return "inconclusive", (f"significant in the claimed direction, but the difference {c.diff:+.3g} does not "
                                f"exceed {min_effect:g} and the CI does not rule out an effect that large")
    reason = f"not significant (p = {c.p:.2g})"
    if min_effect > 0:
        reason += f" and the CI does not rule out an effect of {min_effect:g}"
    return "inconclusive", reason + _detectable_note(c.detectable, c.a.n if c.test == "paired t" else c.a.n + c.b.n,
                                                     "pairs" if c.test == "paired t" else "values")


def _detectable_note(detectable: float, n: int, unit: str) -> str:
    if math.isnan(detectable):
        return ""
    return f"; at n = {n} {unit} it would detect a difference of {_fmt(detectable, 3)} {POWER:.0%} of the time"


def verdict_compare(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                    direction: Literal["greater", "less"], paired: bool, alpha: float = 0.05,
                    min_effect: float = 0.0, min_n: int = 3) -> tuple[Verdict, Comparison]:
    """Verdict on the claim "mean(a) is ``direction`` than mean(b)" (by more than ``min_effect``).

    The comparison's CI is at confidence 1 - alpha, so "p < alpha" and "the CI excludes 0" agree. In order:

    - inconclusive if either group has fewer than ``min_n`` values;
    - supported if p < alpha, the difference has the claimed sign and its magnitude |diff| exceeds ``min_effect``;
    - refuted if p < alpha with the opposite sign;
    - refuted if the whole CI lies within [-min_effect, min_effect] (closed): the data rule out any effect that
      matters. This is an equivalence test at level alpha per side (stricter than TOST, which uses a 1 - 2 alpha
      interval). With min_effect = 0 it refutes only identical results (a CI of exactly (0, 0));
    - inconclusive otherwise, including a significant effect in the claimed direction that is smaller than
      ``min_effect`` but whose CI reaches beyond it.
    """
    _check_unit(alpha, "alpha")
    _check_min_n(min_n)
    if direction not in ("greater", "less"):
        raise ValueError(f"The 'direction' argument must be 'greater' or 'less'. Got {direction!r} instead.")
    if not (min_effect >= 0 and math.isfinite(min_effect)):
        raise ValueError(f"The 'min_effect' argument must be a float in [0, inf). Got {min_effect!r} instead.")
    comparison = compare(a, b, paired=paired, confidence=1 - alpha)
    return _judge_compare(comparison, direction, alpha, min_effect, min_n)[0], comparison


def _judge_threshold(s: Summary, op: Literal[">", "<"], threshold: float, min_n: int) -> tuple[Verdict, str]:
    if s.n < min_n:
        return "inconclusive", f"too few values (n = {s.n}; at least {min_n} needed)"
    above, below = s.ci_low > threshold, s.ci_high < threshold
    if (op == ">" and above) or (op == "<" and below):
        return "supported", f"the whole {s.confidence:.0%} CI is {op} {threshold:g}"
    if (op == ">" and s.ci_high <= threshold) or (op == "<" and s.ci_low >= threshold):
        return "refuted", f"the whole {s.confidence:.0%} CI is on the other side of {threshold:g}"
    detectable = detectable_difference(s.sem, s.n - 1, 1 - s.confidence)
    return "inconclusive", (f"the {s.confidence:.0%} CI contains {threshold:g}"
                            + _detectable_note(detectable, s.n, "values"))


def verdict_threshold(values: Sequence[float] | np.ndarray, op: Literal[">", "<"], threshold: float,
                      min_n: int = 3, alpha: float = 0.05) -> tuple[Verdict, Summary]:
    """Verdict on the claim "the mean is ``op`` ``threshold``", from the mean's 1 - alpha t interval.

    Supported if the whole CI is strictly on the claimed side; refuted if it is entirely on the other side, the
    threshold included (all values equal to the threshold refute "> threshold"); inconclusive otherwise, and when
    there are fewer than ``min_n`` values.
    """
    _check_unit(alpha, "alpha")
    _check_min_n(min_n)
    if op not in (">", "<"):
        raise ValueError(f"The 'op' argument must be '>' or '<'. Got {op!r} instead.")
    if not math.isfinite(threshold):
        raise ValueError(f"The 'threshold' argument must be a finite float. Got {threshold!r} instead.")
    summary = summarize(values, confidence=1 - alpha)
    return _judge_threshold(summary, op, threshold, min_n)[0], summary


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "inf", "-inf", "nan": strict JSON, and float() reads them back
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj


def _from_json(cls: type, data: dict[str, Any]) -> Any:
    return cls(**{k: float(v) if isinstance(v, str) and v in ("inf", "-inf", "nan") else v for k, v in data.items()})


@dataclass(frozen=True)
class Evidence:
    """One claim's verdict, the reason for it and the statistics behind it; stored by studies, printed by reports.

    ``to_dict()`` is strict JSON: the few non-finite floats (an undefined std, an infinite CI bound, the infinite
    t of a zero-variance comparison) become the strings "nan", "inf", "-inf"; ``from_dict`` reads it back exactly.
    """

    claim: str
    verdict: Verdict
    reason: str
    comparison: Comparison | None = None
    summary: Summary | None = None

    @classmethod
    def compare(cls, claim: str, a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                direction: Literal["greater", "less"], paired: bool, alpha: float = 0.05, min_effect: float = 0.0,
                min_n: int = 3) -> Evidence:
        """``verdict_compare`` with the claim and the reason recorded."""
        _, comparison = verdict_compare(a, b, direction, paired, alpha, min_effect, min_n)
        verdict, reason = _judge_compare(comparison, direction, alpha, min_effect, min_n)
        return cls(claim, verdict, reason, comparison=comparison)

    @classmethod
    def threshold(cls, claim: str, values: Sequence[float] | np.ndarray, op: Literal[">", "<"], threshold: float,
                  min_n: int = 3, alpha: float = 0.05) -> Evidence:
        """``verdict_threshold`` with the claim and the reason recorded."""
        _, summary = verdict_threshold(values, op, threshold, min_n, alpha)
        verdict, reason = _judge_threshold(summary, op, threshold, min_n)
        return cls(claim, verdict, reason, summary=summary)

    def describe(self) -> str:
        """One line: ``SUPPORTED: <claim> (<reason>); <statistics>``."""
        stats = self.comparison or self.summary
        return f"{self.verdict.upper()}: {self.claim} ({self.reason}); {stats.describe() if stats else 'no data'}"

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        comparison = summary = None
        if data.get("comparison") is not None:
            c = dict(data["comparison"])
            c["a"], c["b"] = _from_json(Summary, c["a"]), _from_json(Summary, c["b"])
            comparison = _from_json(Comparison, c)
        if data.get("summary") is not None:
            summary = _from_json(Summary, data["summary"])
        return cls(data["claim"], data["verdict"], data["reason"], comparison=comparison, summary=summary)
