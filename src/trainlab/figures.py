"""Every matplotlib helper: curves and bars with confidence bands, schedule previews, the LR range plot, saving.

Figures are drawn with pyplot on the Agg backend (no display needed) and written with ``save_figure``, which writes
atomically and closes the figure. Study-specific figures are drawn in their study's ``present`` from these pieces.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

from trainlab.checkpoints import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from trainlab.lr_range import LRRangeResult
    from trainlab.schedules import Schedule


def mean_band(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t ``confidence`` interval over the rows of ``values`` (seeds x points), NaN = missing.

    Points seen by fewer than two seeds get a zero-width band (there is no spread to estimate); points no seed has
    (every run diverged to NaN there) are NaN, a gap in the plot, not 0.
    """
    from scipy import stats as sps  # here: scipy.stats takes ~0.5 s to import, and most pages need no band

    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D array (seeds x points). Got shape {values.shape} instead.")
    n = np.sum(~np.isnan(values), axis=0)
    mean = np.where(n > 0, np.nansum(values, axis=0) / np.maximum(n, 1), np.nan)
    sd = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / np.maximum(n - 1, 1))
    half = sps.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1))
    half = np.where(n >= 2, np.nan_to_num(half), 0.0)
    return mean, mean - half, mean + half


def stack_ragged(series: Sequence[Sequence[float]]) -> np.ndarray:
    """Rows of different lengths (runs stopped early) as one NaN-padded array."""
    width = max((len(s) for s in series), default=0)
    out = np.full((len(series), width), np.nan)
    for i, s in enumerate(series):
        out[i, : len(s)] = np.asarray(s, dtype=float)
    return out


def curves_figure(curves: Mapping[str, Sequence[Sequence[float]]], *, title: str, xlabel: str, ylabel: str,
                  x: Sequence[float] | None = None, logy: bool = False, ax: Any = None) -> Any:
    """One line per label: the mean over seeds with its 95% band. ``curves[label]`` is seeds x points (ragged ok)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, runs in curves.items():
        values = stack_ragged(runs)
        mean, low, high = mean_band(values)
        xs = np.arange(1, values.shape[1] + 1) if x is None else np.asarray(x, dtype=float)[: values.shape[1]]
        (line,) = ax.plot(xs, mean, label=label, lw=1.6)
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig if fig is not None else ax.figure


def bars_figure(groups: Mapping[str, Sequence[float]], *, title: str, ylabel: str, logy: bool = False) -> Any:
    """One bar per label: the mean over seeds with its 95% Student-t interval as an error bar."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(groups) + 2), 4.0))
    labels = list(groups)
    means, errs = [], [[], []]
    for label in labels:
        mean, low, high = (float(v[0]) for v in mean_band(np.asarray(groups[label], dtype=float)[:, None]))
        means.append(mean)
        errs[0].append(mean - low)
        errs[1].append(high - mean)
    ax.bar(range(len(labels)), means, yerr=errs, capsize=4, color="#4c72b0", alpha=0.85)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4
                  else "center")
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def grouped_bars_figure(series: Mapping[str, Mapping[str, Sequence[float]]], *, title: str, ylabel: str,
                        figsize: tuple[float, float] = (8.0, 4.0), rotate: bool = False) -> tuple[Any, Any]:
    """Bars grouped by label, one bar per series in each group: the mean over seeds with its 95% t interval.

    ``series`` maps a series name (the legend) to ``{label: values over seeds}``; every series has the same labels.
    Returns ``(fig, ax)`` so a study can add reference lines before saving.
    """
    labels = list(next(iter(series.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=figsize)
    for i, (name, groups) in enumerate(series.items()):
        bands = [mean_band(np.asarray(groups[label], dtype=float)[:, None]) for label in labels]
        mean, low, high = (np.array([float(b[k][0]) for b in bands]) for k in range(3))
        xs = np.arange(len(labels)) + (i - (len(series) - 1) / 2) * width
        ax.bar(xs, mean, width, yerr=[mean - low, high - mean], capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG (parents created) and close it; returns ``path``."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- outcomes


def plot_lr_range(result: LRRangeResult, ax: Any = None, label: str | None = None, raw: bool = True) -> Any:
    """Loss against lr (log scale): the raw step losses (faint), the smoothed curve, and both suggestions.

    Draws on ``ax`` when given (several results on one axis compare seeds); returns the figure.
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
    (line,) = ax.plot(result.lrs, result.smoothed, lw=1.6, label=label or "smoothed loss")
    color = line.get_color()
    if raw:
        ax.plot(result.lrs, result.losses, lw=0.6, alpha=0.3, color=color)
    ax.axvline(result.min_loss_lr / 10, color=color, ls="--", lw=1,
               label=f"min-loss lr / 10 = {result.min_loss_lr / 10:.3g}")
    ax.axvline(result.steepest_lr, color=color, ls=":", lw=1, label=f"steepest descent = {result.steepest_lr:.3g}")
    ax.set_xscale("log")
    top = float(np.max(result.smoothed[: int(np.argmin(result.smoothed)) + 1])) if result.smoothed.size else 1.0
    low = float(np.min(result.smoothed)) if result.smoothed.size else 0.0
    # The explosion at the end would squash the interesting part of the curve.
    ax.set_ylim(low - 0.1 * (top - low + 1e-12), top + 0.6 * (top - low + 1e-12))
    ax.set(title="LR range test", xlabel="learning rate", ylabel="training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig if fig is not None else ax.figure


def save_lr_range_plot(result: LRRangeResult, path: str | Path) -> Path:
    """The plot of ``plot_lr_range`` as a PNG file."""
    return save_figure(plot_lr_range(result), Path(path))


def plot_schedules(schedules: Mapping[str, Schedule], total_steps: int, steps_per_epoch: int, base_lr: float,
                   ax: Any = None) -> Any:
    """The lr per step of each labelled schedule (``schedules.preview``); returns the figure."""
    from trainlab.schedules import preview

    if not schedules:
        raise ValueError("plot_schedules needs at least one schedule. Got an empty mapping instead.")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    for label, schedule in schedules.items():
        ax.plot(np.arange(total_steps), preview(schedule, total_steps, steps_per_epoch, base_lr), label=label)
    ax.set(xlabel="step", ylabel="learning rate")
    ax.grid(alpha=0.3)
    ax.legend()
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


#: One histogram panel: (bin heights, (low edge, high edge), a note printed in its corner or "").
HistogramCell = tuple[np.ndarray, tuple[float, float], str]


def histogram_grid(rows: Sequence[str], columns: Sequence[str], cell: Callable[[int, int], HistogramCell], *,
                   title: str, width: float = 2.1, height: float = 1.25) -> Any:
    """A grid of histograms, one row per ``rows`` label (an init) and one column per ``columns`` label (a layer),
    ``cell(r, c)`` giving each panel's bins; the layout of the notes' activation-distribution pictures.

    Each panel shows its own range as its only two x ticks and no y ticks, and the margins are fixed: the default
    ticks and ``tight_layout`` over dozens of small axes cost seconds."""
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(width * len(columns) + 0.6, height * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            hist, (lo, hi), note = cell(r, c)
            ax.stairs(hist, np.linspace(lo, hi, len(hist) + 1), fill=True, color="#4c72b0")
            if note:
                ax.text(0.97, 0.93, note, transform=ax.transAxes, ha="right", va="top", fontsize=6)
            ax.set_xticks([lo, hi], [f"{lo:.2g}", f"{hi:.2g}"])
            ax.set_yticks([])
            ax.tick_params(labelsize=6, pad=1)
            if r == 0:
                ax.set_title(column, fontsize=9)
            if c == 0:
                ax.set_ylabel(row, fontsize=7)
    fig.suptitle(title, fontsize=10)
    inches = height * len(rows)  # margins of 0.35 in below and 0.75 in above (the title and column labels)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.35 / inches, top=1 - 0.75 / inches, wspace=0.1, hspace=0.45)
    return fig


def panel_grid(n: int, width: float = 3.0, height: float = 2.4) -> tuple[Any, np.ndarray]:
    """A figure with ``n`` panels of ``width`` x ``height`` inches, four to a row; returns ``(fig, axes)``."""
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


def png_base64(fig: Any, tight: bool = True) -> str:
    """``fig`` as a base64 PNG for embedding in a page; closes the figure.

    ``tight`` crops the saved image to what is drawn (one more layout pass); a figure that already laid itself out
    (``tight_layout``) needs none.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
