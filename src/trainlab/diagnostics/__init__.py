"""Diagnostics: probes that see inside every layer, and rules that turn what they see into findings with a fix.

``probes`` (hooks -> per-layer statistics and histograms, gradient and weight statistics), ``record``
(``DiagnosticsRecord``, the ``Diagnostics`` callback, TensorBoard export), ``rules`` (``Finding``, the thresholds,
``find_problems``), ``doctor`` (``DiagnosisReport``, ``diagnose``, ``doctor``) and ``figures`` (plots of a record).

``probe_forward(model, x)`` takes one forward pass; the ``Diagnostics`` callback samples every ``every`` steps of a
training run into a ``DiagnosticsRecord`` (npz + json, no pickle); ``find_problems(record)`` applies the rules;
``diagnose(model, data)`` and ``doctor(config)`` train briefly with probes and return a ``DiagnosisReport``;
``repair(config)`` (``repair``) tries each finding's fixes over seeds and keeps those with a significant gain.
"""

from __future__ import annotations

from trainlab.diagnostics.doctor import DEFAULT_STEPS, DiagnosisReport, diagnose, doctor
from trainlab.diagnostics.probes import (
    FUNCTIONAL_ACTIVATIONS,
    HIST_BINS,
    LAYER_FIELDS,
    PARAM_FIELDS,
    SATURATION_MARGIN,
    LayerStats,
    input_scales,
    probe_forward,
    probed_modules,
)
from trainlab.diagnostics.record import (
    DEFAULT_EVERY,
    Diagnostics,
    DiagnosticsRecord,
    export_tensorboard,
    summary_writer_class,
)
from trainlab.diagnostics.repair import FIXES, RepairReport, fixes_for, repair
from trainlab.diagnostics.rules import PRIORITY, RULES, SEVERITY_RANK, SYMMETRY_TOL, Finding, Severity, find_problems

__all__ = [
    "DEFAULT_EVERY", "DEFAULT_STEPS", "FIXES", "FUNCTIONAL_ACTIVATIONS", "HIST_BINS", "LAYER_FIELDS", "PARAM_FIELDS", "PRIORITY", "RULES",
    "SATURATION_MARGIN", "SEVERITY_RANK", "SYMMETRY_TOL", "DiagnosisReport", "Diagnostics", "DiagnosticsRecord",
    "Finding", "LayerStats", "RepairReport", "Severity", "diagnose", "doctor", "export_tensorboard", "find_problems",
    "fixes_for", "repair",
    "input_scales", "probe_forward", "probed_modules", "summary_writer_class",
]
