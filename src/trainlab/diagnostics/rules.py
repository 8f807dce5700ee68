"""Rules that turn a ``DiagnosticsRecord`` into findings: the thresholds, one function per group of problems
(``*_findings``), and ``find_problems``, which applies them all and sorts causes before symptoms.

Each ``Finding`` names the problem, where it shows (layer, step), the evidence in numbers and the technique that
fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from trainlab.diagnostics.probes import PARAM_FIELDS, SATURATION_MARGIN
from trainlab.layers import activation_bounds

if TYPE_CHECKING:
    from trainlab.diagnostics.record import DiagnosticsRecord

Severity = Literal["info", "warning", "error"]
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}

# Thresholds. Healthy nets keep per-layer gradient RMS within ~1-2 orders of magnitude of each other; three orders
# between the first and the last weight layer means the first layers learn ~1000x slower (or faster).
VANISH_RATIO = 1e-3
EXPLODE_RATIO = 1e3
# A gradient RMS this large at initialization means one SGD step moves weights far beyond their scale.
EXPLODE_RMS = 1e2
# Share of a ReLU layer's units that are silent on the whole probe batch; a healthy net has a few percent.
DEAD_FRACTION = 0.4
# Share of sigmoid/tanh outputs within SATURATION_MARGIN of a bound; at Xavier init it is a few percent.
SATURATED_FRACTION = 0.3
# Std of the deepest probed layer over the first one: below this the signal shrinks ~10x through the net.
COLLAPSE_RATIO = 0.1
# Std of a bounded activation as a share of its range: below this every unit outputs about the same value.
NARROW_STD = 0.02
# Rows of a weight matrix closer than this (relative to its largest entry) are identical up to float32 rounding,
# which lets rows that started equal drift apart by ~1e-7 per hundred steps; random inits differ by O(1).
SYMMETRY_TOL = 1e-4
# Smoothed loss at the end this many times the loss of the first steps, or any step's loss this many times the first
# one: the run diverged (a healthy run never ends above its start, and minibatch noise stays within ~2x).
DIVERGE_FACTOR = 1.3
SPIKE_FACTOR = 10.0
# The loss ends this much above its start, or climbs back this share of what it had gained: lr too high.
RISE_FACTOR = 1.05
REBOUND_SHARE = 0.5
# Relative decrease of the smoothed loss over the whole run below this: the loss is flat.
FLAT_DECREASE = 0.05
# Update-to-weight ratios are ~1e-3 per step in healthy training (Karpathy, CS231n); 10x below, steps are tiny.
SMALL_UPDATE_RATIO = 1e-4
# Validation loss this much above its minimum, with the minimum at least two epochs back: overfitting.
OVERFIT_RISE = 0.1
# Final training loss above this share of the chance-level loss (ln C, or the initial loss for regression),
# with the last third of the run improving less than PLATEAU_DECREASE: underfitting.
UNDERFIT_SHARE = 0.5
PLATEAU_DECREASE = 0.05
# Input features should have RMS about 1; above these the first layer's pre-activations are far off its init.
UNSCALED_RMS = 10.0
UNSCALED_RMS_ERROR = 100.0


@dataclass(frozen=True)
class Finding:
    """One problem the rules found: where (layer, step), how sure (severity), why (evidence), and what to do (fix)."""

    code: str
    layer: str | None
    step: int | None
    severity: Severity
    evidence: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "layer": self.layer, "step": self.step, "severity": self.severity,
                "evidence": self.evidence, "fix": self.fix}


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _chunks(losses: np.ndarray) -> np.ndarray:
    """Medians of ~10 consecutive chunks of the per-step loss: minibatch noise removed, trend kept."""
    n = len(losses)
    size = max(1, n // 10)
    return np.array([np.median(losses[i:i + size]) for i in range(0, n - size + 1, size)])


def _loss_findings(r: DiagnosticsRecord) -> list[Finding]:
    losses, steps = r.losses, r.loss_steps
    if not len(losses):
        return []
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        step = int(steps[bad[0]])
        return [Finding("divergence", None, step, "error",
                        f"the training loss became non-finite ({losses[bad[0]]}) at step {step}",
                        "lower lr (e.g. 10x); add warmup (schedule: warmup) or grad_clip; standardize inputs")]
    chunks = _chunks(losses)
    # ``head`` is the first few steps (a run may converge within its first chunk), noisy; ``start`` the first chunk.
    head = float(np.median(losses[:max(3, len(losses) // 50)]))
    start, end, low = chunks[0], chunks[-1], chunks.min()
    spike = int(np.argmax(losses))
    if losses[spike] > SPIKE_FACTOR * losses[0] or end > DIVERGE_FACTOR * head:
        evidence = (f"the training loss spiked from {_fmt(losses[0])} at step {int(steps[0])} to "
                    f"{_fmt(losses[spike])} at step {int(steps[spike])}" if losses[spike] > SPIKE_FACTOR * losses[0]
                    else f"the smoothed training loss grew from {_fmt(head)} to {_fmt(end)}")
        return [Finding("divergence", None, int(steps[spike]), "error", evidence,
                        "lower lr (e.g. 10x); add warmup (schedule: warmup) or grad_clip")]
    gained = start - low > FLAT_DECREASE * abs(start)
    if len(chunks) >= 3 and (end > RISE_FACTOR * start or (gained and end - low > REBOUND_SHARE * (start - low))):
        return [Finding("lr_too_high", None, int(steps[-1]), "warning",
                        f"the smoothed training loss went {_fmt(start)} -> min {_fmt(low)} -> {_fmt(end)}: it "
                        f"climbs back up instead of settling",
                        "lower lr (3-10x), or decay it (schedule: cosine); batch norm tolerates larger rates")]
    # Flat from the first chunk on, and not merely converged within it: the first steps were not much higher either.
    early = float(np.median(losses[:max(3, len(losses) // 20)]))
    # A flat loss with sizeable updates is a model that cannot fit (underfitting), not a step that is too small.
    weights = [r.params.index(n) for n in r.weight_params]
    update = _median(r.param_stats[:, weights, PARAM_FIELDS.index("update_ratio")].ravel()) if weights else math.nan
    if (start - end < FLAT_DECREASE * abs(start) and early - end < 2 * FLAT_DECREASE * abs(early)
            and not update >= SMALL_UPDATE_RATIO):
        moved = "" if math.isnan(update) else f"; each step moves the weights by {_fmt(update)} of their norm"
        return [Finding("lr_too_low", None, int(steps[-1]), "warning",
                        f"the smoothed training loss only moved from {_fmt(start)} to {_fmt(end)} "
                        f"({_fmt(100 * (start - end) / abs(start))}%) in {len(losses)} steps{moved}",
                        "raise lr (e.g. 10x; an LR range test finds the scale); adam/adamw adapt to the scale")]
    return []


def _epoch_findings(r: DiagnosticsRecord) -> list[Finding]:
    findings = []
    rows = [h for h in r.history if math.isfinite(h.get("train_loss", math.nan))]
    val = [h for h in rows if math.isfinite(h.get("val_loss", math.nan))]
    if len(val) >= 3:
        best = min(range(len(val)), key=lambda i: val[i]["val_loss"])
        last = val[-1]
        if (best <= len(val) - 3 and last["val_loss"] > (1 + OVERFIT_RISE) * val[best]["val_loss"]
                and last["train_loss"] < val[best]["train_loss"]):
            findings.append(Finding(
                "overfitting", None, int(val[best]["step"]), "warning",
                f"validation loss rose from {_fmt(val[best]['val_loss'])} (epoch {val[best]['epoch']}) to "
                f"{_fmt(last['val_loss'])} while training loss fell from {_fmt(val[best]['train_loss'])} to "
                f"{_fmt(last['train_loss'])}",
                "early stopping (restore_best); l2 / weight decay or dropout; augmentation or more data; "
                "a smaller net"))
    losses = r.losses[np.isfinite(r.losses)]
    if len(rows) >= 3 and len(losses) >= 10:
        classes = r.meta.get("num_classes")
        reference = math.log(classes) if r.meta.get("task") == "classification" and classes else float(
            _chunks(losses)[0])
        third = rows[-max(2, len(rows) // 3):]
        final = rows[-1]["train_loss"]
        gain = (third[0]["train_loss"] - final) / max(abs(third[0]["train_loss"]), 1e-12)
        # A plateau is flat: a loss that climbs back up over the last epochs is an lr or divergence problem, which
        # its own rules name, and "train longer" would be the wrong advice for it.
        if final > UNDERFIT_SHARE * reference and -PLATEAU_DECREASE < gain < PLATEAU_DECREASE:
            findings.append(Finding(
                "underfitting", None, int(rows[-1]["step"]), "warning",
                f"training loss plateaued at {_fmt(final)} ({_fmt(100 * final / reference)}% of the chance-level "
                f"{_fmt(reference)}); it changed by {_fmt(-100 * gain)}% over the last {len(third)} epochs",
                "a bigger model (depth/width); train longer or with a higher lr; less regularization"))
    return findings


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else math.nan


def _gradient_findings(r: DiagnosticsRecord) -> list[Finding]:
    # A parameter the forward pass never uses has no gradient (NaN at every sampled step) and finite weights that
    # never move; it says nothing about gradient flow. A NaN gradient of a diverged run makes the weights NaN too.
    weights = [n for n in r.weight_params
               if not (np.isnan(r.param(n, "grad_norm")).all() and np.isfinite(r.param(n, "weight_norm")).all())]
    if len(weights) < 2 or not len(r.steps):
        return []
    shapes = dict(zip(r.params, r.param_shapes))
    rms = {n: r.param(n, "grad_norm") / math.sqrt(math.prod(shapes[n])) for n in weights}
    first, last = weights[0], weights[-1]
    findings = []
    init_rms = {n: float(v[0]) for n, v in rms.items()}
    worst = max(init_rms, key=lambda n: init_rms[n] if math.isfinite(init_rms[n]) else math.inf)
    # Zero gradients (a zero-initialized layer) are a symmetry problem, not an explosion.
    depth_ratio = init_rms[first] / init_rms[last] if init_rms[last] > 0 else 0.0
    if not math.isfinite(init_rms[worst]) or init_rms[worst] > EXPLODE_RMS or depth_ratio > EXPLODE_RATIO:
        findings.append(Finding(
            "exploding_gradients", worst, int(r.steps[0]), "error",
            f"at step {int(r.steps[0])} the gradient RMS of {worst} is {_fmt(init_rms[worst])}; {first} / {last} "
            f"gradient RMS ratio {_fmt(depth_ratio)}",
            "a variance-preserving init (he_normal for relu, xavier_normal for tanh); batch norm; grad_clip; "
            "lower lr"))
    # A diverged run has inf/inf and NaN ratios; _median drops them, so numpy need not warn about them.
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = _median(rms[first] / np.where(rms[last] > 0, rms[last], np.nan))
    if ratio < VANISH_RATIO:
        findings.append(Finding(
            "vanishing_gradients", first, None, "warning",
            f"the gradient RMS of the first weight layer ({first}) is {_fmt(ratio)} times that of the last "
            f"({last}), median over sampled steps",
            "relu/leaky_relu instead of sigmoid/tanh; he_normal or xavier_normal init; batch norm; fewer layers"))
    return findings


def _symmetry_findings(r: DiagnosticsRecord) -> list[Finding]:
    findings = []
    for name in r.weight_params:
        if r.param_shapes[r.params.index(name)][0] < 2 or not len(r.steps):
            continue
        spread = _median(r.param(name, "row_spread"))
        if spread <= SYMMETRY_TOL:
            findings.append(Finding(
                "symmetric_units", name, int(r.steps[-1]), "error",
                f"all {r.param_shapes[r.params.index(name)][0]} rows of {name} are identical (relative spread "
                f"{_fmt(spread)}, median over sampled steps): its units compute the same function and get the same "
                f"gradient, so they never differ",
                "random init that breaks symmetry: he_normal (relu) or xavier_normal (tanh/sigmoid), "
                "not zeros/constant"))
    return findings[:1]


def _activation_findings(r: DiagnosticsRecord) -> list[Finding]:
    if not len(r.steps) or not r.layers:
        return []
    findings = []
    kinds = dict(zip(r.layers, r.layer_kinds))
    # A layer may lack statistics at some steps (a forward that skipped it): its unit count is the one it had.
    dead = {n: _median(_finite_layer(r, n, "dead")[-max(1, len(r.steps) // 3):]) / np.nanmax(r.layer(n, "units"))
            for n in r.layers}
    dead = {n: v for n, v in dead.items() if math.isfinite(v)}
    if dead:
        worst = max(dead, key=dead.get)
        if dead[worst] >= DEAD_FRACTION:
            findings.append(Finding(
                "dead_units", worst, int(r.steps[-1]), "warning",
                f"{_fmt(100 * dead[worst])}% of the units of {worst} ({kinds[worst]}) output 0 for every sample "
                f"of the probe batch late in training; their gradient is 0, so they cannot recover",
                "leaky_relu or elu; he_normal init; lower lr; batch norm before the activation"))
    sat = {n: _median(_finite_layer(r, n, "saturated")) for n in r.layers}
    sat = {n: v for n, v in sat.items() if math.isfinite(v)}
    if sat:
        worst = max(sat, key=sat.get)
        if sat[worst] >= SATURATED_FRACTION:
            findings.append(Finding(
                "saturation", worst, None, "warning",
                f"{_fmt(100 * sat[worst])}% of the outputs of {worst} ({kinds[worst]}) lie within "
                f"{_fmt(100 * r.meta.get('margin', SATURATION_MARGIN))}% of a bound (median over sampled steps), "
                f"where its derivative is near 0",
                "xavier_normal init (not N(0,1)); standardize inputs; relu; batch norm before the activation"))
    # The output layer of a model probed at its Linear/Conv layers is not a hidden representation.
    hidden = r.layers[:-1] if r.meta.get("probed") == "layers" else r.layers
    std0 = {n: float(r.layer(n, "std")[0]) for n in hidden}
    if len(hidden) >= 2 and std0[hidden[0]] > 0:
        ratio = std0[hidden[-1]] / std0[hidden[0]]
        narrow = [n for n in hidden[1:] if n in sat and std0[n] < NARROW_STD * _bound_width(kinds[n])]
        if ratio < COLLAPSE_RATIO or narrow:
            where = narrow[-1] if narrow and ratio >= COLLAPSE_RATIO else hidden[-1]
            findings.append(Finding(
                "activation_collapse", where, int(r.steps[0]), "warning",
                f"at step {int(r.steps[0])} the activation std falls from {_fmt(std0[hidden[0]])} ({hidden[0]}) "
                f"to {_fmt(std0[where])} ({where}): deeper layers see nearly the same value for every input",
                "a variance-preserving init: he_normal (relu), xavier_normal (tanh/sigmoid), not a tiny normal; "
                "batch norm"))
    return findings


def _finite_layer(r: DiagnosticsRecord, name: str, stat: str) -> np.ndarray:
    """A layer statistic with NaN at the steps where the layer's output had non-finite values (a diverged run)."""
    return np.where(r.layer(name, "nonfinite") > 0, np.nan, r.layer(name, stat))


def _bound_width(kind: str) -> float:
    """The output range of a bounded activation by its class name (inf for an unbounded one)."""
    return next((hi - lo for t, (lo, hi) in activation_bounds().items() if t.__name__ == kind), math.inf)


def _input_findings(r: DiagnosticsRecord) -> list[Finding]:
    scales = r.input_scales[np.isfinite(r.input_scales)]
    if not len(scales) or scales.max() <= UNSCALED_RMS:
        return []
    top = int(np.argmax(r.input_scales))
    used = scales[scales > 0]
    return [Finding(
        "unscaled_inputs", None, None, "error" if scales.max() > UNSCALED_RMS_ERROR else "warning",
        f"input feature RMS ranges from {_fmt(used.min())} to {_fmt(scales.max())} (feature {top}); standardized "
        f"inputs have 1, and the init assumes inputs of that scale",
        "preprocess: standardize (or min_max); fitted on the training split only")]


# Causes before symptoms: among findings of equal severity the cause is listed first.
PRIORITY = ("symmetric_units", "unscaled_inputs", "exploding_gradients", "divergence", "saturation", "dead_units",
            "activation_collapse", "vanishing_gradients", "lr_too_high", "lr_too_low", "overfitting", "underfitting")
RULES: tuple[Callable[[DiagnosticsRecord], list[Finding]], ...] = (
    _symmetry_findings, _input_findings, _gradient_findings, _activation_findings, _loss_findings, _epoch_findings)


def find_problems(record: DiagnosticsRecord) -> list[Finding]:
    """Every rule applied to a record, findings sorted by severity and then cause-before-symptom."""
    findings = [f for rule in RULES for f in rule(record)]
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity], PRIORITY.index(f.code)))
