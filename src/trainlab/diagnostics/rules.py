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
# with the last third of the run improving less than PLATEAU_DECREASE: underfitting. With label smoothing the
# share is measured from the least reachable loss (``smoothing_floor``) instead of 0.
UNDERFIT_SHARE = 0.5
PLATEAU_DECREASE = 0.05
# Input features should have RMS about 1; above these the first layer's pre-activations are far off its init.
UNSCALED_RMS = 10.0
UNSCALED_RMS_ERROR = 100.0
# Oscillating loss (AUTOTRAINER, Zhang et al., ICSE 2021): the medians of 20 chunks of the per-step loss reverse
# direction at least OSC_SWINGS times, each swing at least OSC_SWING of the first chunk's loss. Minibatch noise is
# gone from chunk medians, and a converging run's late wiggles are a few percent of its start.
OSC_SWING = 0.1
OSC_SWINGS = 4
# Update-to-weight ratio ~1e-3 per step is healthy (Karpathy, CS231n "Babysitting the learning process"); a median
# ten times that moves every weight by 1% per step: the lr is too high even when the loss still falls.
LARGE_UPDATE_RATIO = 1e-2
# Probabilities given to a loss that expects logits (UMLAUT, Schoop et al., CHI 2021): rows of non-negative outputs
# that sum to 1 within float32 rounding, or outputs all in [0, 1] (a sigmoid) for a multi-class cross-entropy.
PROBABILITY_TOL = 1e-3
# Regression targets should have about unit scale (LeCun et al., "Efficient BackProp", 1998, section 4.3): std
# outside [0.1, 10] or a mean more than 10 std away from 0 leave the output layer's init far off.
TARGET_SCALE_LOW, TARGET_SCALE_HIGH = 0.1, 10.0
# Targets of scale 100 or more give MSE gradients 100x those the init expects: the first steps explode.
TARGET_SCALE_ERROR = 100.0
# Labels without signal (Zhang et al., "Understanding deep learning requires rethinking generalization", 2017):
# training accuracy climbs this far above chance while the best validation accuracy stays within
# max(LABEL_MARGIN, 3 binomial standard errors) of it.
LABEL_LEARNED = 0.15
LABEL_MARGIN = 0.05
# Dropout rates above 0.5 (the rate Srivastava et al. 2014 use for hidden units) with the training loss (measured
# with dropout) this many times the validation loss (without) and above UNDERFIT_SHARE of chance: the noise swamps
# the signal and the net underfits.
DROPOUT_RATE = 0.5
DROPOUT_GAP = 1.2


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
        return [_nonfinite_finding(r, int(steps[bad[0]]), float(losses[bad[0]]))]
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
        reference = _chance_loss(r, lambda: float(_chunks(losses)[0]))
        third = rows[-max(2, len(rows) // 3):]
        final = rows[-1]["train_loss"]
        gain = (third[0]["train_loss"] - final) / max(abs(third[0]["train_loss"]), 1e-12)
        # A plateau is flat: a loss that climbs back up over the last epochs is an lr or divergence problem, which
        # its own rules name, and "train longer" would be the wrong advice for it.
        share = _share_of_chance(r, final, reference)
        if share > UNDERFIT_SHARE and -PLATEAU_DECREASE < gain < PLATEAU_DECREASE:
            findings.append(Finding(
                "underfitting", None, int(rows[-1]["step"]), "warning",
                f"training loss plateaued at {_fmt(final)} ({_fmt(100 * share)}% of the chance-level "
                f"{_fmt(reference)}{_above_floor(r)}); it changed by {_fmt(-100 * gain)}% over the last "
                f"{len(third)} epochs",
                "a bigger model (depth/width); train longer or with a higher lr; less regularization"))
    return findings


def _chance_loss(r: DiagnosticsRecord, start: Callable[[], float]) -> float:
    """The loss of guessing: ln C for a classification with C classes, else ``start()`` (the run's starting loss,
    asked for only then)."""
    classes = r.meta.get("num_classes")
    return math.log(classes) if r.meta.get("task") == "classification" and classes else start()


def smoothing_floor(label_smoothing: float, classes: int) -> float:
    """The least cross-entropy any net can reach on targets smoothed by ``label_smoothing`` over ``classes``: the
    entropy of the smoothed target (1 - e + e/C on the label, e/C on each other class); 0 without smoothing."""
    if not label_smoothing or classes < 2:
        return 0.0
    on, off = 1 - label_smoothing + label_smoothing / classes, label_smoothing / classes
    return -(on * math.log(on) + (classes - 1) * off * math.log(off))


def _floor(r: DiagnosticsRecord) -> float:
    classes = r.meta.get("num_classes")
    if r.meta.get("task") != "classification" or not classes:
        return 0.0
    return smoothing_floor(r.meta.get("label_smoothing") or 0.0, classes)


def _share_of_chance(r: DiagnosticsRecord, loss: float, chance: float) -> float:
    """Where ``loss`` lies between the least reachable loss (0: the label-smoothing floor, or a loss of 0 without
    smoothing) and ``chance`` (1)."""
    floor = _floor(r)
    return (loss - floor) / max(chance - floor, 1e-12)


def _above_floor(r: DiagnosticsRecord) -> str:
    floor = _floor(r)
    return f", measured above the label-smoothing floor {_fmt(floor)}" if floor else ""


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


def _nonfinite_finding(r: DiagnosticsRecord, step: int, loss: float) -> Finding:
    """Divergence at the first non-finite loss, located where the non-finite values first appear (DeepLocalize,
    Wardat et al., ICSE 2021): the first layer whose output is NaN/inf, or the parameters that already are."""
    where = r.meta.get("nonfinite") or {}
    layer, located = None, ""
    if where.get("params"):
        layer = where["params"][0]
        located = (f"; the weights themselves are already non-finite ({', '.join(where['params'][:3])}): the update "
                   f"of step {step - 1} overflowed")
    elif where.get("layer"):
        layer = where["layer"]
        made = "from finite inputs" if where.get("input_finite") else "from non-finite inputs"
        located = f"; the first non-finite values appear in the output of {layer} ({where['kind']}), {made}"
    return Finding("divergence", layer, step, "error",
                   f"the training loss became non-finite ({loss}) at step {step}{located}",
                   "lower lr (e.g. 10x); add warmup (schedule: warmup) or grad_clip; standardize inputs")


def _swings(values: np.ndarray, threshold: float) -> int:
    """Direction reversals of a series that move at least ``threshold`` from the last extreme (a zigzag count)."""
    count, direction, extreme = 0, 0, float(values[0])
    for v in values[1:]:
        move = float(v) - extreme
        if direction >= 0 and move <= -threshold or direction <= 0 and move >= threshold:
            count += direction != 0
            direction, extreme = (1 if move > 0 else -1), float(v)
        elif direction * move > 0:
            extreme = float(v)
    return count


def _oscillation_findings(r: DiagnosticsRecord) -> list[Finding]:
    losses = r.losses
    if len(losses) < 40 or not np.isfinite(losses).all():
        return []
    size = len(losses) // 20
    chunks = np.array([np.median(losses[i * size:(i + 1) * size]) for i in range(20)])
    swings = _swings(chunks, OSC_SWING * abs(chunks[0]))
    if swings < OSC_SWINGS:
        return []
    return [Finding(
        "oscillating_loss", None, int(r.loss_steps[-1]), "warning",
        f"the smoothed training loss reversed direction {swings} times by more than {_fmt(100 * OSC_SWING)}% of "
        f"its start ({_fmt(chunks[0])}), between {_fmt(chunks.min())} and {_fmt(chunks[1:].max())}: the steps "
        f"overshoot the minimum",
        "lower lr (3-10x), less momentum, or decay the lr (schedule: cosine)")]


def _update_findings(r: DiagnosticsRecord) -> list[Finding]:
    weights = [r.params.index(n) for n in r.weight_params]
    if not weights or len(r.steps) < 3:
        return []
    ratios = r.param_stats[1:, weights, PARAM_FIELDS.index("update_ratio")]
    ratio = _median(ratios.ravel())
    if not ratio > LARGE_UPDATE_RATIO:
        return []
    lr = r.history[-1].get("lr") if r.history else None
    at = f" at lr {_fmt(lr)}" if lr is not None else ""
    return [Finding(
        "lr_too_high", None, None, "warning",
        f"each step moves the weights by {_fmt(ratio)} of their norm (median over layers and sampled steps){at}; "
        f"about 1e-3 is healthy, so the lr is ~{_fmt(ratio / 1e-3)}x too large",
        "lower lr by about that factor (e.g. 10x); an LR range test finds the scale")]


def _setup_findings(r: DiagnosticsRecord) -> list[Finding]:
    sizes = r.meta.get("param_sizes", {})
    total = sum(sizes.values()) or 1
    findings = []
    missing = r.meta.get("not_in_optimizer", [])
    if missing:
        count = sum(sizes.get(n, 0) for n in missing)
        moved = [n for n in missing if n in r.params and np.nanmax(np.nan_to_num(r.param(n, "update_ratio"))) > 0]
        findings.append(Finding(
            "missing_from_optimizer", missing[0], None, "error",
            f"{len(missing)} parameter(s) ({', '.join(missing[:4])}; {count} of {total} values) get gradients but "
            f"are not in the optimizer, so they never change (update ratio {'> 0 for ' + moved[0] if moved else '0'}"
            f" at every sampled step)",
            "build the optimizer over model.parameters() (or add the missing ones to a param group)"))
    frozen = r.meta.get("frozen", [])
    if frozen:
        count = sum(sizes.get(n, 0) for n in frozen)
        findings.append(Finding(
            "frozen_parameters", frozen[0], None, "warning",
            f"{len(frozen)} parameter(s) ({', '.join(frozen[:4])}; {count} of {total} values, "
            f"{_fmt(100 * count / total)}%) have requires_grad=False and never change",
            "if not frozen on purpose: p.requires_grad_(True) for them, and include them in the optimizer"))
    return findings


_BOUNDED_OUTPUTS = {"Sigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "Tanh": (-1.0, 1.0), "ReLU": (0.0, math.inf)}


def _last_event(r: DiagnosticsRecord) -> tuple[str | None, str]:
    """The name and class of the last module or activation call of the forward (None, "" when unknown)."""
    sequence = r.meta.get("sequence") or []
    return (sequence[-1]["name"], sequence[-1]["kind"]) if sequence else (None, "")


def _output_findings(r: DiagnosticsRecord) -> list[Finding]:
    out, loss = r.meta.get("output") or {}, r.meta.get("loss", "")
    name, last = _last_event(r)
    if not out:
        return []
    problem = ""
    # Softmax rows sum to 1 whatever the last call was; sigmoid outputs lie in [0, 1] but need the call named.
    probabilities = 0 <= out["min"] < out["max"] <= 1 and (out["row_sum_error"] < PROBABILITY_TOL
                                                            or last in ("Sigmoid", "Softmax"))
    if r.meta.get("task") == "classification" and loss in ("CrossEntropyLoss", "WeightedLoss") and probabilities:
        problem = (f"the outputs are probabilities (all in [{_fmt(out['min'])}, {_fmt(out['max'])}], rows sum to 1 "
                   f"within {_fmt(out['row_sum_error'])}; last: {last or 'a function'}) but {loss} expects logits "
                   f"and applies log_softmax itself: the gradients shrink and training stalls")
        fix = "return the raw scores of the last Linear layer (drop the softmax/sigmoid); apply softmax only to predict"
    elif loss == "NLLLoss" and out["logsumexp_error"] > PROBABILITY_TOL:
        problem = (f"NLLLoss expects log-probabilities, but the outputs are not (logsumexp of a row is "
                   f"{_fmt(out['logsumexp_error'])} away from 0; last: {last or 'a function'})")
        fix = "end the model with log_softmax, or use CrossEntropyLoss on the raw scores"
    elif loss == "BCEWithLogitsLoss" and 0 <= out["min"] < out["max"] <= 1:
        problem = (f"BCEWithLogitsLoss applies a sigmoid itself, but the outputs already lie in "
                   f"[{_fmt(out['min'])}, {_fmt(out['max'])}] (last: {last or 'a function'})")
        fix = "drop the final sigmoid"
    else:
        problem, fix = _squashed_regression(r, last)
    return [Finding("loss_mismatch", name, 0, "error", problem, fix)] if problem else []


def _squashed_regression(r: DiagnosticsRecord, last: str) -> tuple[str, str]:
    """A regression output bounded by its last activation while the targets reach beyond the bound."""
    if r.meta.get("task") != "regression" or last not in _BOUNDED_OUTPUTS or "target_min" not in r.meta:
        return "", ""
    lo, hi = _BOUNDED_OUTPUTS[last]
    t_lo, t_hi = min(r.meta["target_min"]), max(r.meta["target_max"])
    if lo <= t_lo and t_hi <= hi:
        return "", ""
    return (f"the regression output passes through {last} (range [{_fmt(lo)}, {_fmt(hi)}]) but the targets span "
            f"[{_fmt(t_lo)}, {_fmt(t_hi)}]: the model cannot output most of them",
            "end a regression model with a Linear layer (no activation), or rescale the targets into the range")


def _structure_findings(r: DiagnosticsRecord) -> list[Finding]:
    """Two weight layers with only affine modules between them (NeuraLint, Nikanjam et al., TOSEM 2021): together
    they are one linear map, so the extra layer adds parameters and no capacity."""
    sequence = r.meta.get("sequence") or []
    previous = None
    for event in sequence:
        if event["weight"]:
            if previous is not None:
                return [Finding(
                    "linear_stack", event["name"], None, "warning",
                    f"{previous['name']} ({previous['kind']}) feeds {event['name']} ({event['kind']}) with no "
                    f"nonlinearity between them, only affine modules: the two compute one linear map",
                    "put an activation (nn.ReLU, ...) between the layers, or merge them into one")]
            previous = event
        elif not event["affine"]:
            previous = None
    return []


def _target_findings(r: DiagnosticsRecord) -> list[Finding]:
    if r.meta.get("task") != "regression" or not r.meta.get("target_std"):
        return []
    stds, means = np.array(r.meta["target_std"]), np.array(r.meta["target_mean"])
    far = np.abs(means) > TARGET_SCALE_HIGH * np.maximum(stds, 1.0)
    if stds.max() <= TARGET_SCALE_HIGH and stds.min() >= TARGET_SCALE_LOW and not far.any():
        return []
    scale = max(float(np.abs(means).max()), float(stds.max()))
    return [Finding(
        "unscaled_targets", None, None, "error" if scale > TARGET_SCALE_ERROR else "warning",
        f"the regression targets have std {_fmt(stds.min())} to {_fmt(stds.max())} and mean {_fmt(means.min())} to "
        f"{_fmt(means.max())}; the output layer's init and the lr assume targets of unit scale",
        "standardize the targets (fit mean/std on the training split, invert for predictions)")]


def _label_findings(r: DiagnosticsRecord) -> list[Finding]:
    rows = [h for h in r.history if math.isfinite(h.get("val_acc", math.nan)) and "train_acc" in h]
    chance, n_val = r.meta.get("majority_share"), r.meta.get("val_size", 0)
    if len(rows) < 3 or chance is None or not n_val:
        return []
    margin = max(LABEL_MARGIN, 3 * math.sqrt(chance * (1 - chance) / n_val))
    best_val = max(h["val_acc"] for h in rows)
    train = rows[-1]["train_acc"]
    if train - chance < LABEL_LEARNED or best_val > chance + margin:
        return []
    return [Finding(
        "labels_no_signal", None, int(rows[-1]["step"]), "warning",
        f"training accuracy rose to {_fmt(train)} while the best validation accuracy is {_fmt(best_val)}, within "
        f"{_fmt(margin)} of chance ({_fmt(chance)}, the majority class): the net memorizes labels that carry no "
        f"signal it can generalize",
        "check the labels: shuffled or misaligned with the inputs, a wrong column, a broken join or split")]


def _dropout_findings(r: DiagnosticsRecord) -> list[Finding]:
    rates = [(e["dropout"], e["name"]) for e in r.meta.get("sequence") or [] if e.get("dropout") is not None]
    rows = [h for h in r.history if math.isfinite(h.get("val_loss", math.nan))]
    if not rates or not rows:
        return []
    rate, name = max(rates)
    train, val = rows[-1]["train_loss"], rows[-1]["val_loss"]
    chance = _chance_loss(r, lambda: float(r.losses[0]))
    share = _share_of_chance(r, train, chance)
    if rate <= DROPOUT_RATE or train < DROPOUT_GAP * val or share < UNDERFIT_SHARE:
        return []
    return [Finding(
        "dropout_too_high", name, int(rows[-1]["step"]), "warning",
        f"dropout {_fmt(rate)} at {name}: the training loss (with dropout) is {_fmt(train)}, {_fmt(train / val)}x "
        f"the validation loss without it ({_fmt(val)}), and {_fmt(100 * share)}% of chance{_above_floor(r)}: the net "
        f"underfits through the noise",
        "dropout 0.1-0.3 (0.5 at most for wide hidden layers)")]


# Causes before symptoms: among findings of equal severity the cause is listed first.
PRIORITY = ("missing_from_optimizer", "loss_mismatch", "symmetric_units", "unscaled_inputs", "unscaled_targets",
            "frozen_parameters", "linear_stack", "exploding_gradients", "divergence", "labels_no_signal",
            "saturation", "dead_units", "activation_collapse", "vanishing_gradients", "dropout_too_high",
            "oscillating_loss", "lr_too_high", "lr_too_low", "overfitting", "underfitting")
RULES: tuple[Callable[[DiagnosticsRecord], list[Finding]], ...] = (
    _setup_findings, _output_findings, _structure_findings, _symmetry_findings, _input_findings, _target_findings,
    _gradient_findings, _activation_findings, _loss_findings, _oscillation_findings, _update_findings, _label_findings,
    _dropout_findings, _epoch_findings)


def find_problems(record: DiagnosticsRecord) -> list[Finding]:
    """Every rule applied to a record, one finding per problem (the first rule's), sorted by severity and then
    cause-before-symptom."""
    findings: dict[str, Finding] = {}
    for rule in RULES:
        for f in rule(record):
            findings.setdefault(f.code, f)
    return sorted(findings.values(), key=lambda f: (SEVERITY_RANK[f.severity], PRIORITY.index(f.code)))
