"""The record of what the probes saw during a run (``DiagnosticsRecord``, stored as npz + json, no pickle), the
``Diagnostics`` callback that samples it every ``every`` steps, and its export to TensorBoard.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.callbacks import Callback, StopTraining
from trainlab.checkpoints import atomic_write, atomic_write_text
from trainlab.diagnostics.probes import (
    HIST_BINS,
    LAYER_FIELDS,
    PARAM_FIELDS,
    SATURATION_MARGIN,
    Call,
    LayerStats,
    _ActivationProbe,
    check_probe_args,
    describe_calls,
    describe_model,
    grad_stats,
    input_scales,
    locate_nonfinite,
    to_layer_stats,
    weight_stats,
)
from trainlab.diagnostics.rules import SYMMETRY_TOL

if TYPE_CHECKING:
    from trainlab.trainer import Trainer

# A sampled step costs one to three extra plain steps of a small MLP (hooks, histograms, a weight snapshot; less for
# bigger models); one in 100 keeps the overhead at 1-3% (bench/bench_probes.py measures it). A 10k-step run still
# gets 100 samples; doctor and diagnose sample ~50 times whatever their length.
DEFAULT_EVERY = 100
# With ``stop_on_fatal``, rows of a weight matrix still identical (within SYMMETRY_TOL) after this many sampled steps
# are certain to stay so (their gradients are identical too), and the run stops: more steps cannot change the finding.
FATAL_SAMPLES = 5


@dataclass
class DiagnosticsRecord:
    """What the probes saw during a run: per sampled step, per layer and per parameter, plus the loss and history.

    Arrays: ``steps`` (S,), ``layer_stats`` (S, L, len(LAYER_FIELDS)), ``hists`` (S, L, bins), ``hist_ranges``
    (S, L, 2), ``param_stats`` (S, P, len(PARAM_FIELDS)), ``loss_steps``/``losses`` (every step's training loss),
    ``input_scales`` (RMS of each input feature on the first sampled batch). ``history`` is the trainer's per-epoch
    metrics; ``meta`` holds the task, number of classes, sampling interval, what was probed (``probed``:
    activations, functional or layers), ``notes`` on what could not be probed, and so on.
    """

    layers: list[str]
    layer_kinds: list[str]
    params: list[str]
    param_shapes: list[tuple[int, ...]]
    steps: np.ndarray
    layer_stats: np.ndarray
    hists: np.ndarray
    hist_ranges: np.ndarray
    param_stats: np.ndarray
    loss_steps: np.ndarray
    losses: np.ndarray
    input_scales: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str, stat: str) -> np.ndarray:
        """One layer statistic over the sampled steps."""
        return self.layer_stats[:, self.layers.index(name), LAYER_FIELDS.index(stat)]

    def param(self, name: str, stat: str) -> np.ndarray:
        """One parameter statistic over the sampled steps."""
        return self.param_stats[:, self.params.index(name), PARAM_FIELDS.index(stat)]

    @property
    def weight_params(self) -> list[str]:
        """Parameters with >= 2 dimensions (weight matrices and kernels), in registration order."""
        return [n for n, s in zip(self.params, self.param_shapes) if len(s) >= 2]

    def stats_at(self, step: int) -> dict[str, LayerStats]:
        """Per-layer statistics at one sampled step."""
        if step not in set(self.steps.tolist()):
            raise ValueError(f"Step {step} was not sampled. Sampled steps: {self.steps.tolist()}.")
        i = int(np.flatnonzero(self.steps == step)[0])
        return {name: to_layer_stats(kind, self.layer_stats[i, j], self.hists[i, j], self.hist_ranges[i, j])
                for j, (name, kind) in enumerate(zip(self.layers, self.layer_kinds))}

    def save(self, directory: str | Path) -> Path:
        """Write ``diagnostics.npz`` (arrays) and ``diagnostics.json`` (names, history, meta) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in _ARRAY_FIELDS}
        atomic_write(directory / "diagnostics.npz", lambda f: np.savez_compressed(f, **arrays))
        info = {"layers": self.layers, "layer_kinds": self.layer_kinds, "params": self.params,
                "param_shapes": [list(s) for s in self.param_shapes], "history": self.history, "meta": self.meta,
                "layer_fields": list(LAYER_FIELDS), "param_fields": list(PARAM_FIELDS)}
        atomic_write_text(directory / "diagnostics.json", json.dumps(info, indent=1, default=float))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DiagnosticsRecord:
        directory = Path(directory)
        files = [directory / "diagnostics.json", directory / "diagnostics.npz"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"No diagnostics record in {str(directory)!r}: missing {', '.join(missing)}.")
        info = json.loads(files[0].read_text())
        with np.load(files[1], allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _ARRAY_FIELDS}
        return cls(layers=info["layers"], layer_kinds=info["layer_kinds"], params=info["params"],
                   param_shapes=[tuple(s) for s in info["param_shapes"]], history=info["history"],
                   meta=info["meta"], **arrays)


_ARRAY_FIELDS = ("steps", "layer_stats", "hists", "hist_ranges", "param_stats", "loss_steps", "losses",
                 "input_scales")


class Diagnostics(Callback):
    """Samples layer and parameter statistics every ``every`` steps of training (step 0 included).

    On a sampled step, ``on_step_start`` attaches the forward hooks (or the capture of functional activation calls)
    and snapshots the weights, ``after_backward`` detaches them and reads the gradients, and ``on_step_end``
    measures the update. The statistics stay small tensors on the device until ``record()`` converts them, so
    unsampled steps cost no host sync. The training loss of every step is kept the same way. With ``out_dir`` the
    record is saved there at the end of training; with ``tensorboard_dir`` it is also exported for TensorBoard.

    Once per run it also notes what the rules about the model's make-up need (``meta``): the module sequence and a
    summary of the output (one extra forward in eval mode at step 0), the loss class, frozen parameters and those
    the optimizer does not hold, the targets' scale or the majority class's share; on a CPU it checks every step's
    loss, and the first non-finite one is located in the layer where it appears. With ``stop_on_fatal`` it ends the
    run once a fatal finding is certain: weight rows still identical after ``FATAL_SAMPLES`` sampled steps.
    """

    def __init__(self, every: int = DEFAULT_EVERY, *, bins: int = HIST_BINS, margin: float = SATURATION_MARGIN,
                 out_dir: str | Path | None = None, tensorboard_dir: str | Path | None = None,
                 stop_on_fatal: bool = False):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"The 'every' parameter of Diagnostics must be an int >= 1. Got {every!r} instead.")
        check_probe_args(bins, margin)
        if tensorboard_dir is not None:
            summary_writer_class()
        self.every, self.bins, self.margin, self.stop_on_fatal = every, bins, margin, stop_on_fatal
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self._reset()

    def _reset(self) -> None:
        self._probe: _ActivationProbe | None = None
        self._params: list[tuple[str, nn.Parameter]] = []
        self._sampling = False
        self._snapshot: list[Tensor] | None = None
        self._pending: dict[str, Any] = {}
        self._mismatched: list[tuple[int, list[Call]]] = []
        self._samples: list[dict[str, Any]] = []
        self._loss_steps: list[int] = []
        self._losses: list[Tensor] = []
        self._input_scales = np.zeros(0)
        self._history: list[dict[str, Any]] = []
        self._meta: dict[str, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self._reset()
        self._probe = _ActivationProbe(trainer.model, self.bins, self.margin)
        self._params = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        data = trainer.data
        self._meta = {"every": self.every, "bins": self.bins, "margin": self.margin, "task": data.task,
                      "num_classes": data.num_classes, "train_size": len(data.x_train), "val_size": len(data.y_val),
                      "model": type(trainer.model).__name__, **_setup_facts(trainer)}

    def on_step_start(self, trainer: Trainer) -> None:
        self._sampling = trainer.step % self.every == 0
        if not self._sampling:
            return
        if not self._samples and not self._pending and trainer.batch is not None:
            self._input_scales = input_scales(trainer.batch[0])
            if "sequence" not in self._meta:
                self._meta.update(describe_model(trainer.model, trainer.batch[0]))
        self._probe.attach()
        self._snapshot = [p.detach().clone() for _, p in self._params]

    def after_backward(self, trainer: Trainer) -> None:
        self._loss_steps.append(trainer.step)
        self._losses.append(trainer.loss.detach().reshape(()))
        # On a CPU reading the loss costs nothing (NonFiniteGuard reads it too); on an accelerator only sampled steps.
        if ("nonfinite" not in self._meta and (self._sampling or trainer.loss.device.type == "cpu")
                and not bool(torch.isfinite(trainer.loss)) and trainer.batch is not None):
            self._probe.detach()
            self._meta["nonfinite"] = {"step": trainer.step, **locate_nonfinite(trainer.model, trainer.batch[0])}
            if self._sampling:
                self._probe.attach()
        if not self._sampling:
            return
        self._probe.detach()
        layers = self._probe.collect()
        if layers is None:
            self._mismatched.append((trainer.step, list(self._probe.calls)))
        with torch.no_grad():
            grads = grad_stats([p for _, p in self._params])
        self._pending = {"step": trainer.step, "layers": layers or {}, "grads": grads}

    def on_step_end(self, trainer: Trainer) -> None:
        if not self._sampling or not self._pending:
            return
        with torch.no_grad():
            weights = weight_stats([p for _, p in self._params], self._snapshot)
        self._pending["params"] = torch.cat([self._pending.pop("grads"), weights], dim=1)
        self._samples.append(self._pending)
        self._pending, self._snapshot, self._sampling = {}, None, False
        if self.stop_on_fatal and len(self._samples) >= FATAL_SAMPLES:
            self._stop_if_symmetric()

    def _stop_if_symmetric(self) -> None:
        """End the run when some weight matrix (>= 2 rows) had identical rows at every sampled step so far."""
        column = PARAM_FIELDS.index("row_spread")
        spread = torch.stack([s["params"][:, column] for s in self._samples]).amax(0)
        stuck = [n for (n, p), v in zip(self._params, spread.tolist()) if p.ndim >= 2 and p.shape[0] > 1
                 and v <= SYMMETRY_TOL]
        if stuck:
            self._meta["stopped_early"] = (f"the rows of {stuck[0]} were identical at all {len(self._samples)} "
                                           f"sampled steps: symmetric units stay symmetric")
            raise StopTraining(f"doctor: {self._meta['stopped_early']}")

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._history = [dict(h) for h in trainer.history]

    def on_fit_end(self, trainer: Trainer) -> None:
        self._history = [dict(h) for h in trainer.history]
        if self._probe is not None:
            self._probe.detach()
        if self.out_dir is None and self.tensorboard_dir is None:
            return
        record = self.record()
        if self.out_dir is not None:
            record.save(self.out_dir)
        if self.tensorboard_dir is not None:
            export_tensorboard(record, self.tensorboard_dir)

    def record(self) -> DiagnosticsRecord:
        """The statistics gathered so far as numpy arrays (one host transfer)."""
        samples = self._samples
        layers: list[str] = []
        for s in samples:
            layers += [k for k in s["layers"] if k not in layers]
        kinds = dict(self._probe.kinds) if self._probe else {}
        n_s, n_l, bins = len(samples), len(layers), self.bins
        layer_stats = np.full((n_s, n_l, len(LAYER_FIELDS)), np.nan, dtype=np.float32)
        hists = np.zeros((n_s, n_l, bins), dtype=np.float32)
        ranges = np.zeros((n_s, n_l, 2), dtype=np.float32)
        for i, s in enumerate(samples):
            for j, name in enumerate(layers):
                if name in s["layers"]:
                    row, counts, rng = (t.cpu().numpy() for t in s["layers"][name])
                    layer_stats[i, j], hists[i, j], ranges[i, j] = row, counts, rng
        params = (torch.stack([s["params"] for s in samples]).cpu().numpy().astype(np.float32) if samples
                  else np.zeros((0, len(self._params), len(PARAM_FIELDS)), dtype=np.float32))
        losses = (torch.stack(self._losses).float().cpu().numpy() if self._losses
                  else np.zeros(0, dtype=np.float32))
        return DiagnosticsRecord(
            layers=layers, layer_kinds=[kinds.get(n, "") for n in layers],
            params=[n for n, _ in self._params], param_shapes=[tuple(p.shape) for _, p in self._params],
            steps=np.array([s["step"] for s in samples], dtype=np.int64), layer_stats=layer_stats, hists=hists,
            hist_ranges=ranges, param_stats=params, loss_steps=np.array(self._loss_steps, dtype=np.int64),
            losses=losses, input_scales=self._input_scales.astype(np.float32),
            history=[dict(h) for h in self._history], meta=self._record_meta())

    def _record_meta(self) -> dict[str, Any]:
        meta = dict(self._meta, probed=self._probe.mode if self._probe else None)
        if self._mismatched:
            step, calls = self._mismatched[0]
            reference = self._probe.reference
            meta["notes"] = [
                f"The activation functions called by {meta['model']}'s forward changed between sampled steps: "
                f"{len(self._mismatched)} of {len(self._samples)} sampled steps (the first at step {step}) made "
                f"{describe_calls(calls)} instead of the {describe_calls(reference)} of step "
                f"{int(self._samples[0]['step'])}. "
                f"Names like 'relu#2' would not mean the same layer at those steps, so they have no activation "
                f"statistics; the gradient and weight statistics are complete. Activation modules (nn.ReLU, ...) "
                f"instead of functions are probed at every step."]
        return meta


def _setup_facts(trainer: Trainer) -> dict[str, Any]:
    """What the rules about the set-up need, read once at the start: the loss class, the parameters that are frozen
    (``requires_grad=False``) or that the optimizer does not hold, the loss's label smoothing, and the targets' scale
    or the majority share."""
    params = list(trainer.model.named_parameters())
    loss = getattr(trainer.loss_fn, "plain", trainer.loss_fn)  # a weighted loss keeps its plain one
    groups = getattr(trainer.optimizer, "param_groups", None)
    held = {id(p) for g in groups for p in g["params"]} if groups is not None else {id(p) for _, p in params}
    facts: dict[str, Any] = {
        "loss": type(trainer.loss_fn).__name__,
        "label_smoothing": float(getattr(loss, "label_smoothing", 0.0) or 0.0),
        "frozen": [n for n, p in params if not p.requires_grad],
        "not_in_optimizer": [n for n, p in params if p.requires_grad and id(p) not in held],
        "param_sizes": {n: p.numel() for n, p in params}}
    y = trainer.data.y_train
    if trainer.data.task == "regression" and len(y):
        targets = y.detach().float().reshape(len(y), -1)
        facts["target_mean"] = targets.mean(0).tolist()
        facts["target_std"] = targets.std(0, correction=0).tolist()
        facts["target_min"], facts["target_max"] = targets.amin(0).tolist(), targets.amax(0).tolist()
    elif len(y):
        facts["majority_share"] = float(torch.bincount(y.detach().long()).max()) / len(y)
    return facts


def summary_writer_class() -> type:
    """TensorBoard's ``SummaryWriter``, or an error that says how to install it (callers check before training)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ModuleNotFoundError("TensorBoard export needs the 'tensorboard' package, which is not installed. "
                                  "Install it with `pip install tensorboard`, or leave out the TensorBoard "
                                  "directory.") from None
    return SummaryWriter


def export_tensorboard(record: DiagnosticsRecord, log_dir: str | Path) -> Path:
    """Write the record as TensorBoard scalars and histograms into ``log_dir``."""
    writer = summary_writer_class()(log_dir=str(log_dir))
    try:
        for step, loss in zip(record.loss_steps.tolist(), record.losses.tolist()):
            writer.add_scalar("loss/train_step", loss, step)
        for row in record.history:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    writer.add_scalar(f"epoch/{key}", value, int(row.get("step", row.get("epoch", 0))))
        for i, step in enumerate(record.steps.tolist()):
            for j, name in enumerate(record.layers):
                for k, stat in enumerate(LAYER_FIELDS):
                    if not math.isnan(record.layer_stats[i, j, k]):
                        writer.add_scalar(f"layers/{name}/{stat}", float(record.layer_stats[i, j, k]), step)
                lo, hi = (float(v) for v in record.hist_ranges[i, j])
                counts = record.hists[i, j]
                edges = np.linspace(lo, hi, len(counts) + 1)
                centers = (edges[:-1] + edges[1:]) / 2
                total = float(counts.sum())
                if total > 0:
                    mean = float((counts * centers).sum() / total)
                    writer.add_histogram_raw(
                        f"activations/{name}", min=lo, max=hi, num=total, sum=mean * total,
                        sum_squares=float((counts * centers ** 2).sum()), bucket_limits=edges[1:].tolist(),
                        bucket_counts=counts.tolist(), global_step=step)
            for j, name in enumerate(record.params):
                for k, stat in enumerate(PARAM_FIELDS):
                    if not math.isnan(record.param_stats[i, j, k]):
                        writer.add_scalar(f"params/{name}/{stat}", float(record.param_stats[i, j, k]), step)
    finally:
        writer.close()
    return Path(log_dir)
