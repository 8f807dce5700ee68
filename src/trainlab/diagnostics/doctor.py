"""The report of a diagnosed run (``DiagnosisReport``: a rich table, an HTML page, a short repr), and the two ways
to get one: ``diagnose(model, data)`` for any ``nn.Module`` and ``doctor(config)`` for a ``RunConfig``. Both train
briefly with the probes of ``Diagnostics`` and apply the rules of ``find_problems``.
"""

from __future__ import annotations

import importlib
import math
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.checkpoints import atomic_write_text
from trainlab.data import ArraysLike, Data, DataConfig
from trainlab.diagnostics.record import Diagnostics, DiagnosticsRecord
from trainlab.diagnostics.rules import Finding, find_problems
from trainlab.html import Markup, esc, image, page, table

if TYPE_CHECKING:
    from rich.console import Console

    from trainlab.config import RunConfig

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEVERITY_COLOR = {"error": "#cf222e", "warning": "#9a6700", "info": "#0969da"}
# diagnose batches and splits like a config does unless told otherwise: one place for those defaults.
_DATA_DEFAULTS = DataConfig.model_fields
FINDING_COLUMNS = ("severity", "problem", "layer", "step", "evidence", "fix")
# The doctor's default budget: a few hundred steps show every problem the rules know (most within the first 100)
# and take seconds; ``full`` trains the config's own epochs instead.
DEFAULT_STEPS = 250


def _first_sentence(text: str) -> str:
    """The text up to its first '. ' or '; ', on one line."""
    return re.split(r"(?<=[.;])\s", " ".join(text.split()), maxsplit=1)[0].rstrip(";")


@dataclass
class DiagnosisReport:
    """Findings of a diagnosed run, with the record they came from and the run's final metrics."""

    findings: list[Finding]
    record: DiagnosticsRecord
    final: dict[str, Any] = field(default_factory=dict)
    title: str = "trainlab doctor"
    # More page sections after the figures, as (heading, HTML body): the repair's table and curves.
    sections: list[tuple[str, str]] = field(default_factory=list)

    @property
    def top(self) -> Finding | None:
        """The most severe finding (causes before symptoms), or None for a clean run."""
        return self.findings[0] if self.findings else None

    @property
    def summary(self) -> str:
        """``3 finding(s) in 256 steps (trainlab doctor)`` or ``No problems found in 256 steps (...)``."""
        steps = len(self.record.losses)
        if not self.findings:
            return f"No problems found in {steps} steps ({self.title})."
        return f"{len(self.findings)} finding(s) in {steps} steps ({self.title}):"

    def __repr__(self) -> str:
        # One line per finding; the record's arrays would bury them, so they are left out.
        lines = [self.summary] + [
            f"  {f.severity} {f.code} at {f.layer or '-'}, step {'-' if f.step is None else f.step}: "
            f"{_first_sentence(f.evidence)}" for f in self.findings]
        return "\n".join(lines)

    def render(self, console: Console) -> None:
        """Print the findings as a rich table (or a line saying there are none)."""
        from rich.markup import escape
        from rich.table import Table

        steps = len(self.record.losses)
        for note in self.record.meta.get("notes", []):
            console.print(f"[cyan]note:[/cyan] {escape(note)}", highlight=False)
        if not self.findings:
            console.print(f"[green]No problems found[/green] in {steps} steps.")
            return
        table = Table(title=f"{self.title}: {len(self.findings)} finding(s) in {steps} steps", show_lines=True)
        for column in FINDING_COLUMNS:
            table.add_column(column, overflow="fold")
        for f in self.findings:
            table.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", f.code, f.layer or "-",
                          "-" if f.step is None else str(f.step), f.evidence, f.fix)
        console.print(table)

    def _findings_html(self) -> str:
        """The notes and the findings table (a wide table scrolls in its own box on a narrow screen)."""
        notes = "".join(f'<p class="note">{esc(note)}</p>' for note in self.record.meta.get("notes", []))
        if not self.findings:
            return f"{notes}<p>No problems found.</p>"
        rows = [[Markup(f'<strong style="color:{SEVERITY_COLOR[f.severity]}">{esc(f.severity)}</strong>'), f.code,
                 f.layer or "-", "-" if f.step is None else str(f.step), f.evidence, f.fix] for f in self.findings]
        return notes + table(FINDING_COLUMNS, rows, cls="text")

    def _repr_html_(self) -> str:
        """The findings for a notebook cell: the summary line, the notes and the table, without the figures."""
        return f"<p>{esc(self.summary)}</p>{self._findings_html()}"

    def to_html(self) -> str:
        """A self-contained page: the findings table and every figure as an embedded PNG; all text escaped."""
        from trainlab.diagnostics.figures import record_figures
        from trainlab.figures import png_base64

        # Every record figure ends with tight_layout: no second layout pass on saving.
        figures = "".join(f"<h2>{esc(name)}</h2><figure>{image(png_base64(fig, tight=False), name)}</figure>"
                          for name, fig in record_figures(self.record).items())
        extra = "".join(f"<h2>{esc(heading)}</h2>{html}" for heading, html in self.sections)
        body = (f"<h2>Findings</h2>{self._findings_html()}<h2>Final metrics</h2>"
                f"{table(['metric', 'value'], list(self.final.items()))}{figures}{extra}")
        return page(self.title, body)

    def write_html(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_html())

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "findings": [f.to_dict() for f in self.findings], "final": self.final}


@contextmanager
def _importing_in_background(module: str | None) -> Iterator[None]:
    """Import ``module`` on a second thread while the block runs, and wait for it at the end.

    Training spends most of its time in torch kernels, which release the GIL, so the page's plotting imports
    (matplotlib, about half a second) cost the training little and are done when the page is drawn. Started after
    the trainer is built (its optimizer imports ``torch._dynamo``), so the two threads do not import the same
    modules at once; an import that fails here fails again, with its own message, where the page imports it.
    """
    if module is None:
        yield
        return
    thread = threading.Thread(target=_import_quietly, args=(module,), name="trainlab-page-imports", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _import_quietly(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001  (reported by the page's own import, in the main thread)
        pass


def _sampling_interval(steps: int) -> int:
    """A short diagnostic run samples ~50 times: enough points for the rules, a small share of the steps."""
    return max(1, steps // 50)


def _as_data(data: Any, val_fraction: float, seed: int) -> Data:
    if isinstance(data, Data):
        return data
    if not (isinstance(data, tuple) and len(data) == 2):
        raise TypeError(f"The 'data' argument of diagnose must be a trainlab Data or an (x, y) tuple of arrays or "
                        f"tensors. Got {type(data).__name__} instead.")
    x, y = (torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a) for a in data)
    if len(x) != len(y) or len(x) < 4:
        raise ValueError(f"The 'data' argument of diagnose needs x and y with the same number (>= 4) of samples. "
                         f"Got {len(x)} and {len(y)} instead.")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"The 'val_fraction' parameter of diagnose must be in [0, 1). Got {val_fraction} instead.")
    classification = not torch.is_floating_point(y) and y.ndim == 1
    y = y.long() if classification else y.float().reshape(len(y), -1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(x)))
    val, train = order[:n_val], order[n_val:]
    x = x.float()
    return Data(x[train], y[train], x[val], y[val], x[:0], y[:0], "classification" if classification else "regression",
                int(y.max()) + 1 if classification else None)


def _check_regression_output(model: nn.Module, data: Data) -> None:
    """MSE of an (N,) output against (N, 1) targets broadcasts to (N, N): a loss the model cannot lower, which the
    rules would misread as underfitting. One forward pass (eval mode, no gradient) catches the mismatch first."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_train[:2])
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.shape != data.y_train[:2].shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"diagnose trains a regression model with MSE, which needs outputs shaped like the targets "
                         f"(N, {data.y_train.shape[1]}). Got outputs of shape {shape} for 2 samples instead; return "
                         f"(N, {data.y_train.shape[1]}) or pass a 'loss_fn'.")


def diagnose(model: nn.Module, data: Any, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
             optimizer: Any = None, *, steps: int = DEFAULT_STEPS, batch_size: int = _DATA_DEFAULTS["batch_size"].default,
             every: int | None = None, val_fraction: float = _DATA_DEFAULTS["val_fraction"].default,
             seed: int = 0) -> DiagnosisReport:
    """Train ``model`` (any ``nn.Module``) for about ``steps`` steps with probes and return the findings.

    ``data`` is a trainlab ``Data`` or an ``(x, y)`` tuple (integer 1-d ``y`` means classification; a share
    ``val_fraction`` is held out for validation). ``batch_size`` and ``val_fraction`` default to ``DataConfig``'s.
    ``optimizer`` is a torch optimizer over ``model``'s parameters, a trainlab optimizer spec or name, or None for
    trainlab's default (adamw). ``loss_fn`` defaults to cross-entropy or MSE by task. Training runs in whole epochs,
    as many as make ``steps`` steps (at least one).
    """
    from trainlab.callbacks import NonFiniteGuard
    from trainlab.optimizers import OPTIMIZERS
    from trainlab.trainer import Trainer

    if not isinstance(model, nn.Module):
        raise TypeError(f"The 'model' argument of diagnose must be a torch nn.Module. Got {type(model).__name__} "
                        f"instead.")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"The '{name}' parameter of diagnose must be an int >= 1. Got {value!r} instead.")
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError(f"The 'model' argument of diagnose must have parameters to train. Got "
                         f"{type(model).__name__} with none instead.")
    device = first.device
    data = _as_data(data, val_fraction, seed).to(device)
    if loss_fn is None and data.task == "regression":
        _check_regression_output(model, data)
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = OPTIMIZERS.create(optimizer if optimizer is not None else "adamw").build(model)
    probes = Diagnostics(every if every is not None else _sampling_interval(steps), stop_on_fatal=True)
    epochs = max(1, math.ceil(steps / data.steps_per_epoch(batch_size)))
    trainer = Trainer(model, data, optimizer, loss_fn=loss_fn, callbacks=[NonFiniteGuard(), probes], epochs=epochs,
                      batch_size=batch_size, generator=torch.Generator(device="cpu").manual_seed(seed))
    final = trainer.fit()
    record = probes.record()
    return DiagnosisReport(find_problems(record), record, final, title=f"diagnose {type(model).__name__}")


def doctor_epochs(config: RunConfig, steps: int | None = None, full: bool = False,
                  data: Data | None = None) -> int:
    """The epochs of the doctor's budget: ``steps`` (default ``DEFAULT_STEPS``) rounded up to whole epochs, or the
    config's own epochs with ``full``. Counted from the dataset's size (or ``data``'s) without loading it."""
    from trainlab.data import steps_per_epoch

    if full:
        if steps is not None:
            raise ValueError(f"The 'steps' and 'full' parameters of doctor exclude each other: 'full' trains the "
                             f"config's {config.epochs} epochs. Got steps={steps!r} and full=True instead.")
        return config.epochs
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"The 'steps' parameter of doctor must be an int >= 1. Got {steps!r} instead.")
    per_epoch = steps_per_epoch(config.data) if data is None else data.steps_per_epoch(config.data.batch_size)
    return max(1, math.ceil(steps / per_epoch))


def doctor(config: RunConfig, steps: int | None = None, *, full: bool = False, every: int | None = None,
           out_dir: str | Path | None = None, tensorboard_dir: str | Path | None = None,
           data: Data | ArraysLike | None = None) -> DiagnosisReport:
    """Train a config briefly with probes and return the findings.

    The budget is ``steps`` (default ``DEFAULT_STEPS``) rounded up to whole epochs, or the config's epochs with
    ``full``; training stops early once a fatal finding is certain (a non-finite loss, units still identical after
    symmetric init). ``config`` is a validated ``RunConfig`` (``load_config`` makes one from a YAML path or a dict).
    With ``out_dir`` the record and ``doctor.html`` are written there; with ``tensorboard_dir`` the record is exported
    for TensorBoard. ``data`` (arrays ``(x, y)`` / ``(x, y, x_test, y_test)`` or a ``Data``) replaces the config's
    dataset.
    """
    from trainlab.config import RunConfig, load_config
    from trainlab.data import as_data, steps_per_epoch
    from trainlab.trainer import build_trainer

    if not isinstance(config, RunConfig):
        raise TypeError(f"The 'config' argument of doctor must be a RunConfig (load_config makes one from a YAML "
                        f"path or a dict). Got {type(config).__name__} instead.")
    # Counted from the dataset's size: the data is loaded once, by the trainer.
    if data is not None:
        data = as_data(data, config.data, "doctor")
    config = load_config(config, {"epochs": doctor_epochs(config, steps, full, data)})
    per_epoch = steps_per_epoch(config.data) if data is None else data.steps_per_epoch(config.data.batch_size)
    probes = Diagnostics(every if every is not None else _sampling_interval(config.epochs * per_epoch),
                         out_dir=out_dir, tensorboard_dir=tensorboard_dir, stop_on_fatal=True)
    trainer = build_trainer(config, [probes], data=data)
    with _importing_in_background("trainlab.diagnostics.figures" if out_dir is not None else None):
        final = trainer.fit()
    record = probes.record()
    report = DiagnosisReport(find_problems(record), record, final, title="trainlab doctor")
    if out_dir is not None:
        report.write_html(Path(out_dir) / "doctor.html")
    return report
