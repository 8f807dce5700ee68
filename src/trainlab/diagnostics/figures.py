"""Figures of a diagnostics record: histograms per layer, histograms over time, gradient norms, update-to-weight
ratios and the loss curve. Every function returns a matplotlib Figure (``trainlab.figures.png_base64`` embeds one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

from trainlab.diagnostics.probes import LayerStats  # noqa: E402
from trainlab.diagnostics.record import DiagnosticsRecord  # noqa: E402
from trainlab.figures import panel_grid  # noqa: E402

# Updates of about 1e-3 of the weight norm per step are the usual healthy range (Karpathy, CS231n notes).
HEALTHY_UPDATE_RATIO = 1e-3


def plot_activation_histograms(snapshots: Mapping[str, Mapping[str, LayerStats]], *,
                               title: str = "Activations per layer") -> Any:
    """One panel per layer, one histogram (share of values per bin) per snapshot (e.g. ``{"step 0": stats}``).

    ``probe_forward`` returns one snapshot; ``DiagnosticsRecord.stats_at(step)`` one per sampled step.
    """
    if not snapshots:
        raise ValueError("plot_activation_histograms needs at least one snapshot. Got none.")
    layers: list[str] = []
    for stats in snapshots.values():
        layers += [name for name in stats if name not in layers]
    fig, axes = panel_grid(len(layers))
    for ax, name in zip(axes, layers):
        for label, stats in snapshots.items():
            if name not in stats:
                continue
            s = stats[name]
            share = s.hist / max(s.hist.sum(), 1)
            ax.stairs(share, s.bin_edges, fill=len(snapshots) == 1, alpha=0.8, label=label)
        kind = next(stats[name].kind for stats in snapshots.values() if name in stats)
        ax.set_title(f"{name} ({kind})", fontsize=9)
        ax.tick_params(labelsize=7)
    if len(snapshots) > 1:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer_histograms(record: DiagnosticsRecord, steps: Sequence[int] | None = None) -> Any:
    """Per-layer activation histograms at chosen sampled steps (default: first, middle and last)."""
    if steps is None:
        sampled = record.steps.tolist()
        steps = sorted({sampled[0], sampled[len(sampled) // 2], sampled[-1]}) if sampled else []
    return plot_activation_histograms({f"step {s}": record.stats_at(s) for s in steps},
                                      title="Activation histograms per layer")


def _rebin(counts: np.ndarray, lo: float, hi: float, edges: np.ndarray) -> np.ndarray:
    """Counts over equal bins of [lo, hi] moved onto ``edges`` (mass spread uniformly within each source bin)."""
    src = np.linspace(lo, hi, len(counts) + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    return np.diff(np.interp(edges, src, cumulative))


def plot_histogram_over_time(record: DiagnosticsRecord, bins: int = 60) -> Any:
    """One image per layer: x the sampled step, y the activation value, colour the share of values (log scale).

    Each sampled histogram has its own range; they are re-binned onto one grid per layer spanning the 1st to 99th
    percentile of the sampled ranges, so one diverged step does not squash the rest of the image.
    """
    if not len(record.steps):
        raise ValueError("The record has no sampled steps to plot.")
    fig, axes = panel_grid(len(record.layers), width=3.4)
    for j, (ax, name) in enumerate(zip(axes, record.layers)):
        ranges = record.hist_ranges[:, j]
        finite = ranges[np.isfinite(ranges).all(axis=1)]
        lo = float(np.percentile(finite[:, 0], 1)) if len(finite) else 0.0
        hi = float(np.percentile(finite[:, 1], 99)) if len(finite) else 1.0
        hi = hi if hi > lo else lo + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        image = np.stack([_rebin(record.hists[i, j], *ranges[i], edges) / max(record.hists[i, j].sum(), 1)
                          for i in range(len(record.steps))], axis=1)
        steps = record.steps
        right = steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)
        ax.imshow(np.log10(image + 1e-4), origin="lower", aspect="auto", cmap="magma",
                  extent=(steps[0], right, lo, hi))
        ax.set_title(f"{name} ({record.layer_kinds[j]})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Activation distribution over training (log10 share)")
    fig.tight_layout()
    return fig


def _per_weight_lines(record: DiagnosticsRecord, stat: str, title: str, ylabel: str,
                      reference: float | None = None) -> Any:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in record.weight_params:
        values = record.param(name, stat)
        ax.plot(record.steps, np.where(values > 0, values, np.nan), marker=".", label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_grad_norms(record: DiagnosticsRecord) -> Any:
    """Gradient norm of each weight matrix over the sampled steps (log scale)."""
    return _per_weight_lines(record, "grad_norm", "Gradient norm per layer", "||grad||")


def plot_update_ratios(record: DiagnosticsRecord) -> Any:
    """Update-to-weight ratio ||dw|| / ||w|| of each weight matrix over the sampled steps; dashed line at 1e-3."""
    return _per_weight_lines(record, "update_ratio", "Update / weight ratio per layer", "||dw|| / ||w||",
                             HEALTHY_UPDATE_RATIO)


def plot_loss(record: DiagnosticsRecord) -> Any:
    """Training loss of every step, and the per-epoch train/validation losses when the history has them."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(record.loss_steps, record.losses, linewidth=0.6, alpha=0.6, label="train (step)")
    for key in ("train_loss", "val_loss"):
        rows = [r for r in record.history if key in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", markersize=3,
                    label=f"{key.replace('_', ' ')} (epoch)")
    finite = record.losses[np.isfinite(record.losses)]
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def record_figures(record: DiagnosticsRecord) -> dict[str, Any]:
    """Every figure of a record that has data, by title (only the loss when nothing was sampled).

    A model with neither activation modules nor Linear/Conv layers (weights used through ``x @ w``) has no probed
    layers, and one without weight matrices no per-layer gradient lines: those figures are left out.
    """
    figures = {"Loss": plot_loss(record)} if len(record.losses) else {}
    if not len(record.steps):
        return figures
    if record.layers:
        figures["Activation histograms"] = plot_layer_histograms(record)
        figures["Activations over time"] = plot_histogram_over_time(record)
    if record.weight_params:
        figures["Gradient norms"] = plot_grad_norms(record)
        figures["Update ratios"] = plot_update_ratios(record)
    return figures
