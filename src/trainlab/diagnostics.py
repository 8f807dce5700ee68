"""Diagnostics: probes that see inside every layer, and rules that turn what they see into findings with a fix.

Probes work on any ``nn.Module``. Forward hooks on the activation modules record per layer (a model that applies its
activations as functions, ``torch.sigmoid(x)`` or ``F.relu(x)``, is probed at those calls through a
TorchFunctionMode on sampled forwards only; a model with neither at its Linear/Conv layers): mean, std, the fraction
of values near the bounds of a bounded activation (sigmoid, tanh), the number of dead units of a ReLU (units that
output 0 for every sample of the batch), and a histogram. Per parameter they record the gradient norm and std, the
weight norm, the update-to-weight ratio ``||w_{t+1} - w_t|| / ||w_t||`` of one optimizer step, and how far the rows
of a weight matrix are from identical (symmetric units never separate).

``probe_forward(model, x)`` takes one forward pass; the ``Diagnostics`` callback samples every ``every`` steps of a
training run into a ``DiagnosticsRecord`` (npz + json, no pickle); ``find_problems(record)`` applies the rules;
``diagnose(model, data)`` and ``doctor(config)`` train briefly with probes and return a ``DiagnosisReport``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from trainlab.callbacks import Callback
from trainlab.checkpoints import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console

    from trainlab.data import Data
    from trainlab.trainer import Trainer

# --- probes ---------------------------------------------------------------------------------------------------------

HIST_BINS = 40
# Within 2% of the output range of a bound, sigmoid's derivative is below 0.02 (8% of its peak): the unit barely
# passes gradient any more.
SATURATION_MARGIN = 0.02
# A sampled step costs one to three extra plain steps of a small MLP (hooks, histograms, a weight snapshot; less for
# bigger models); one in 100 keeps the overhead at 1-3% (bench/bench_probes.py measures it). A 10k-step run still
# gets 100 samples; doctor and diagnose sample ~50 times whatever their length.
DEFAULT_EVERY = 100

ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU,
                                                   nn.GELU, nn.SELU, nn.SiLU)
WEIGHT_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BOUNDS: dict[type[nn.Module], tuple[float, float]] = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}
# Units of these modules are dead when they output exactly 0 for every input: their gradient is 0 there too.
# (Leaky ReLU, ELU, GELU, SiLU keep a non-zero gradient for negative inputs, so their units cannot die this way.)
ZERO_FLOOR_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)
# Activation functions a forward may call instead of using modules, each with the name its calls are probed under
# and the module class of its family (so the bounds and the zero floor above apply). ``F.sigmoid`` and ``F.tanh``
# call the Tensor methods.
FUNCTIONAL_ACTIVATIONS: dict[Any, tuple[str, type[nn.Module]]] = {
    func: (name, family) for name, family, funcs in (
        ("sigmoid", nn.Sigmoid, (torch.sigmoid, torch.sigmoid_, Tensor.sigmoid, Tensor.sigmoid_)),
        ("tanh", nn.Tanh, (torch.tanh, torch.tanh_, Tensor.tanh, Tensor.tanh_)),
        ("relu", nn.ReLU, (torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.relu, F.relu_)),
        ("relu6", nn.ReLU6, (F.relu6,)),
        ("leaky_relu", nn.LeakyReLU, (F.leaky_relu, F.leaky_relu_)),
        ("elu", nn.ELU, (F.elu, F.elu_)),
        ("gelu", nn.GELU, (F.gelu,)),
        ("selu", nn.SELU, (torch.selu, torch.selu_, F.selu)),
        ("silu", nn.SiLU, (F.silu,)),
    ) for func in funcs}

# One row of per-layer statistics, as stored; NaN where a statistic does not apply to the layer.
LAYER_FIELDS = ("mean", "std", "saturated", "dead", "units", "nonfinite")
# One row of per-parameter statistics. row_spread: max |row - mean row| / max |w| (0: all rows identical).
PARAM_FIELDS = ("grad_norm", "grad_std", "weight_norm", "update_ratio", "row_spread")


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one layer's output over one batch.

    ``saturated`` is the fraction of values within ``margin * (hi - lo)`` of a bound (None for unbounded
    activations); ``dead`` the number of units (features, or channels of a conv output) that are 0 for every sample
    and position (None for activations without a zero floor); ``hist`` counts values in ``HIST_BINS`` equal bins
    over ``hist_range``.
    """

    kind: str
    mean: float
    std: float
    saturated: float | None
    dead: int | None
    units: int
    hist: np.ndarray
    hist_range: tuple[float, float]

    @property
    def dead_fraction(self) -> float | None:
        return None if self.dead is None else self.dead / max(self.units, 1)

    @property
    def bin_edges(self) -> np.ndarray:
        return np.linspace(self.hist_range[0], self.hist_range[1], len(self.hist) + 1)


def probed_modules(model: nn.Module) -> tuple[str, dict[str, nn.Module]]:
    """("activations", activation modules), or ("layers", Linear/Conv layers) for a model without any."""
    acts = {name: m for name, m in model.named_modules() if isinstance(m, ACTIVATION_MODULES)}
    if acts:
        return "activations", acts
    return "layers", {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_MODULES)}


def _activation_stats(family: type[nn.Module], out: Tensor, bins: int,
                      margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """(LAYER_FIELDS row, histogram counts, (lo, hi)) of the output of a ``family`` layer (an activation or
    Linear/Conv module class), as tensors on the output's device, with no host sync."""
    out = out.detach().float()
    finite = torch.isfinite(out)
    x = torch.where(finite, out, torch.zeros((), device=out.device))
    # (N, units, positions): a unit is a feature of a dense output or a channel of a conv output.
    per_unit = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    units = per_unit.shape[1]
    nan = torch.full((), float("nan"), device=x.device)
    bounds = next((b for t, b in BOUNDS.items() if issubclass(family, t)), None)
    if bounds is not None:
        lo, hi = (torch.tensor(b, device=x.device) for b in bounds)
        band = margin * (bounds[1] - bounds[0])
        saturated = ((x <= lo + band) | (x >= hi - band)).float().mean()
    else:
        lo, hi = x.min(), x.max()
        saturated = nan
    if issubclass(family, ZERO_FLOOR_MODULES):
        dead = (per_unit.amax(dim=(0, 2)) <= 0).sum().float()
    else:
        dead = nan
    row = torch.stack([x.mean(), x.std(correction=0), saturated, dead,
                       torch.tensor(float(units), device=x.device), 1 - finite.float().mean()])
    # A layer with a single value (all units equal) still gets a histogram of non-zero width.
    width = torch.clamp(hi - lo, min=1e-6)
    index = ((x.flatten() - lo) / width * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(bins, device=x.device).scatter_add_(0, index, torch.ones_like(index, dtype=torch.float))
    return row, counts, torch.stack([lo, lo + width])


class _FunctionalCapture(TorchFunctionMode):
    """Hands the output of every functional activation call made while it is active to ``on_call``.

    torch leaves a mode while it runs the mode's handler, so the statistics computed in ``on_call`` and the
    functions an activation calls internally (``F.relu`` calls ``torch.relu``) are not seen a second time.
    """

    def __init__(self, on_call: Callable[[tuple[str, type[nn.Module]], Any], None]):
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        family = FUNCTIONAL_ACTIVATIONS.get(func)
        if family is not None:
            self.on_call(family, out)
        return out


# One call made during a forward pass: its name (``sigmoid#2``), kind (``Sigmoid``) and number of units.
_Call = tuple[str, str, int]


class _ActivationProbe:
    """Per-layer statistics of the forward passes made while attached.

    A model with activation modules is probed at them (forward hooks; a module called twice gets ``name#2``). A model
    without any is probed at the activation functions its forward calls (``torch.sigmoid``, ``F.relu``,
    ``x.tanh()``, ...), named ``<fn>#<k>`` for the k-th call of that function in the forward pass, through a
    TorchFunctionMode that is entered only around the root module's forward while attached; a model that calls none
    is probed at its Linear/Conv outputs (pre-activations). The first forward watches both and fixes the choice
    (``mode``) for the later ones.
    """

    def __init__(self, model: nn.Module, bins: int, margin: float):
        kind, self.modules = probed_modules(model)
        self.model = model
        # None until the first forward decides between functional calls and Linear/Conv layers.
        self.mode: Literal["activations", "functional", "layers"] | None = (
            "activations" if kind == "activations" else None)
        self.bins, self.margin = bins, margin
        self.kinds: dict[str, str] = {}
        # The calls of the first forward probed functionally: later forwards must make the same ones, or their
        # ``<fn>#<k>`` names would not mean the same layers.
        self.reference: list[_Call] | None = None
        self._hooked: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self._called: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.calls: list[_Call] = []
        self._counts: dict[str, int] = {}
        self._capture: _FunctionalCapture | None = None
        self._handles: list[Any] = []

    def attach(self) -> None:
        self._hooked, self._called, self.calls, self._counts = {}, {}, [], {}
        if self.mode != "functional":
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name or type(module).__name__)))
        if self.mode in (None, "functional"):
            self._handles.append(self.model.register_forward_pre_hook(self._enter_capture))
            self._handles.append(self.model.register_forward_hook(self._exit_capture, always_call=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def collect(self) -> dict[str, tuple[Tensor, Tensor, Tensor]] | None:
        """The statistics of the forwards since ``attach``, by layer; None when a functionally probed model made
        other activation calls than in its first probed forward."""
        if self.mode is None:
            self.mode = "functional" if self._called else "layers"
        if self.mode != "functional":
            return dict(self._hooked)
        if self.reference is None:
            self.reference = list(self.calls)
        return dict(self._called) if self.calls == self.reference else None

    def _enter_capture(self, module: nn.Module, args: Any) -> None:
        self._capture = _FunctionalCapture(self._record_call)
        self._capture.__enter__()

    def _exit_capture(self, module: nn.Module, args: Any, output: Any) -> None:
        # Registered with always_call, so a forward that raises leaves no mode behind; it also runs when an earlier
        # pre-hook raised before ours entered one.
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None

    def _record_call(self, family: tuple[str, type[nn.Module]], out: Any) -> None:
        if not isinstance(out, Tensor) or out.ndim == 0:
            return
        fn, cls = family
        self._counts[fn] = self._counts.get(fn, 0) + 1
        key = f"{fn}#{self._counts[fn]}"
        with torch.no_grad():
            self._called[key] = _activation_stats(cls, out, self.bins, self.margin)
        self.kinds[key] = cls.__name__
        self.calls.append((key, cls.__name__, out.shape[1] if out.ndim > 1 else 1))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor) or output.ndim == 0:
                return
            key, k = name, 1
            while key in self._hooked:
                k += 1
                key = f"{name}#{k}"
            with torch.no_grad():
                self._hooked[key] = _activation_stats(type(module), output, self.bins, self.margin)
            self.kinds[key] = type(module).__name__

        return hook


def _layer_stats(kind: str, row: np.ndarray, hist: np.ndarray, rng: np.ndarray) -> LayerStats:
    mean, std, saturated, dead, units, _ = (float(v) for v in row)
    return LayerStats(kind=kind, mean=mean, std=std, saturated=None if math.isnan(saturated) else saturated,
                      dead=None if math.isnan(dead) else int(dead), units=int(units), hist=hist.astype(np.int64),
                      hist_range=(float(rng[0]), float(rng[1])))


def probe_forward(model: nn.Module, x: Tensor, *, bins: int = HIST_BINS,
                  margin: float = SATURATION_MARGIN) -> dict[str, LayerStats]:
    """Statistics of every probed layer's output for one forward pass of ``x`` (no gradients, mode unchanged):
    the activation modules, else the functional activation calls, else the Linear/Conv layers."""
    _check_probe_args(bins, margin)
    probe = _ActivationProbe(model, bins, margin)
    probe.attach()
    try:
        with torch.no_grad():
            model(x)
    finally:
        probe.detach()
    results = probe.collect()
    if not results:
        raise ValueError(f"probe_forward found nothing to probe in {type(model).__name__}: it has no activation "
                         f"modules, calls no activation functions and has no Linear/Conv layers.")
    return {name: _layer_stats(probe.kinds[name], *(t.cpu().numpy() for t in res)) for name, res in results.items()}


def _check_probe_args(bins: int, margin: float) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"The 'bins' parameter must be an int >= 2. Got {bins!r} instead.")
    if not 0 < margin < 0.5:
        raise ValueError(f"The 'margin' parameter must be a float in (0, 0.5). Got {margin!r} instead.")


def _grad_stats(params: Sequence[Tensor]) -> Tensor:
    """(P, 2): gradient norm and std of each parameter (NaN for a parameter without a gradient)."""
    nan = torch.full((2,), float("nan"))
    return torch.stack([torch.stack([p.grad.float().norm(), p.grad.float().std(correction=0)])
                        if p.grad is not None else nan.to(p.device) for p in params])


def _weight_stats(params: Sequence[Tensor], before: Sequence[Tensor]) -> Tensor:
    """(P, 3): weight norm, update-to-weight ratio against the pre-step snapshot ``before``, row spread."""
    rows = []
    for p, w0 in zip(params, before):
        w, w0 = p.detach().float(), w0.float()
        ratio = (w - w0).norm() / w0.norm()
        if w.ndim >= 2 and w.shape[0] > 1:
            flat = w.reshape(w.shape[0], -1)
            top = w.abs().max()
            # All-zero weights have identical rows too: their spread is 0, not 0/0; non-finite weights have none.
            spread = (flat - flat.mean(0)).abs().max() / top.clamp(min=1e-30)
            spread = torch.where(top == 0, torch.zeros((), device=w.device), spread)
        else:
            spread = torch.full((), float("nan"), device=w.device)
        rows.append(torch.stack([w.norm(), ratio, spread]))
    return torch.stack(rows)


def input_scales(x: Tensor) -> np.ndarray:
    """Root mean square of each input feature over a batch: 1 for standardized inputs."""
    flat = x.detach().float().reshape(x.shape[0], -1)
    return flat.pow(2).mean(0).sqrt().cpu().numpy()


# --- the record -----------------------------------------------------------------------------------------------------

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
        return {name: _layer_stats(kind, self.layer_stats[i, j], self.hists[i, j], self.hist_ranges[i, j])
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


# --- the callback ---------------------------------------------------------------------------------------------------

class Diagnostics(Callback):
    """Samples layer and parameter statistics every ``every`` steps of training (step 0 included).

    On a sampled step, ``on_step_start`` attaches the forward hooks (or the capture of functional activation calls)
    and snapshots the weights, ``after_backward`` detaches them and reads the gradients, and ``on_step_end``
    measures the update. The statistics stay small tensors on the device until ``record()`` converts them, so
    unsampled steps cost no host sync. The training loss of every step is kept the same way. With ``out_dir`` the
    record is saved there at the end of training; with ``tensorboard_dir`` it is also exported for TensorBoard.
    """

    def __init__(self, every: int = DEFAULT_EVERY, *, bins: int = HIST_BINS, margin: float = SATURATION_MARGIN,
                 out_dir: str | Path | None = None, tensorboard_dir: str | Path | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"The 'every' parameter of Diagnostics must be an int >= 1. Got {every!r} instead.")
        _check_probe_args(bins, margin)
        if tensorboard_dir is not None:
            _summary_writer_class()
        self.every, self.bins, self.margin = every, bins, margin
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self._reset()

    def _reset(self) -> None:
        self._probe: _ActivationProbe | None = None
        self._params: list[tuple[str, nn.Parameter]] = []
        self._sampling = False
        self._snapshot: list[Tensor] | None = None
        self._pending: dict[str, Any] = {}
        self._mismatched: list[tuple[int, list[_Call]]] = []
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
                      "num_classes": data.num_classes, "train_size": len(data.x_train),
                      "model": type(trainer.model).__name__}

    def on_step_start(self, trainer: Trainer) -> None:
        self._sampling = trainer.step % self.every == 0
        if not self._sampling:
            return
        if not self._samples and not self._pending and trainer.batch is not None:
            self._input_scales = input_scales(trainer.batch[0])
        self._probe.attach()
        self._snapshot = [p.detach().clone() for _, p in self._params]

    def after_backward(self, trainer: Trainer) -> None:
        self._loss_steps.append(trainer.step)
        self._losses.append(trainer.loss.detach().reshape(()))
        if not self._sampling:
            return
        self._probe.detach()
        layers = self._probe.collect()
        if layers is None:
            self._mismatched.append((trainer.step, list(self._probe.calls)))
        with torch.no_grad():
            grads = _grad_stats([p for _, p in self._params])
        self._pending = {"step": trainer.step, "layers": layers or {}, "grads": grads}

    def on_step_end(self, trainer: Trainer) -> None:
        if not self._sampling or not self._pending:
            return
        with torch.no_grad():
            weights = _weight_stats([p for _, p in self._params], self._snapshot)
        self._pending["params"] = torch.cat([self._pending.pop("grads"), weights], dim=1)
        self._samples.append(self._pending)
        self._pending, self._snapshot, self._sampling = {}, None, False

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
                f"{_calls_text(calls)} instead of the {_calls_text(reference)} of step "
                f"{int(self._samples[0]['step'])}. "
                f"Names like 'relu#2' would not mean the same layer at those steps, so they have no activation "
                f"statistics; the gradient and weight statistics are complete. Activation modules (nn.ReLU, ...) "
                f"instead of functions are probed at every step."]
        return meta


def _calls_text(calls: Sequence[_Call]) -> str:
    names = [f"{name} ({units} units)" for name, _, units in calls]
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
    return f"{len(calls)} call(s): {shown}" if calls else "no activation calls"


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ModuleNotFoundError("TensorBoard export needs the 'tensorboard' package, which is not installed. "
                                  "Install it with `pip install tensorboard`, or leave out the TensorBoard "
                                  "directory.") from None
    return SummaryWriter


def export_tensorboard(record: DiagnosticsRecord, log_dir: str | Path) -> Path:
    """Write the record as TensorBoard scalars and histograms into ``log_dir``."""
    writer = _summary_writer_class()(log_dir=str(log_dir))
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


# --- findings -------------------------------------------------------------------------------------------------------

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
        if final > UNDERFIT_SHARE * reference and gain < PLATEAU_DECREASE:
            findings.append(Finding(
                "underfitting", None, int(rows[-1]["step"]), "warning",
                f"training loss plateaued at {_fmt(final)} ({_fmt(100 * final / reference)}% of the chance-level "
                f"{_fmt(reference)}); it improved {_fmt(100 * gain)}% over the last {len(third)} epochs",
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
    return next((hi - lo for t, (lo, hi) in BOUNDS.items() if t.__name__ == kind), math.inf)


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


# --- the report, diagnose and doctor --------------------------------------------------------------------------------

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEVERITY_COLOR = {"error": "#cf222e", "warning": "#9a6700", "info": "#0969da"}


@dataclass
class DiagnosisReport:
    """Findings of a diagnosed run, with the record they came from and the run's final metrics."""

    findings: list[Finding]
    record: DiagnosticsRecord
    final: dict[str, Any] = field(default_factory=dict)
    title: str = "trainlab doctor"

    @property
    def top(self) -> Finding | None:
        """The most severe finding (causes before symptoms), or None for a clean run."""
        return self.findings[0] if self.findings else None

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
        for column in ("severity", "problem", "layer", "step", "evidence", "fix"):
            table.add_column(column, overflow="fold")
        for f in self.findings:
            table.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", f.code, f.layer or "-",
                          "-" if f.step is None else str(f.step), f.evidence, f.fix)
        console.print(table)

    def to_html(self) -> str:
        """A self-contained page: the findings table and every figure as an embedded PNG; all text escaped."""
        from trainlab.diagnostics_figures import png_base64, record_figures

        esc = html.escape
        rows = "".join(
            f"<tr><td style='color:{SEVERITY_COLOR[f.severity]}'><b>{esc(f.severity)}</b></td><td>{esc(f.code)}</td>"
            f"<td>{esc(f.layer or '-')}</td><td>{esc('-' if f.step is None else str(f.step))}</td>"
            f"<td>{esc(f.evidence)}</td><td>{esc(f.fix)}</td></tr>" for f in self.findings)
        # A wide table scrolls inside its own box on a narrow screen instead of widening the page.
        table = ("<div class='scroll'><table><tr><th>severity</th><th>problem</th><th>layer</th><th>step</th>"
                 f"<th>evidence</th><th>fix</th></tr>{rows}</table></div>" if self.findings
                 else "<p>No problems found.</p>")
        notes = "".join(f"<p class='note'>{esc(note)}</p>" for note in self.record.meta.get("notes", []))
        final = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in self.final.items())
        figures = "".join(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='data:image/png;base64,{png_base64(fig)}'>"
                          for name, fig in record_figures(self.record).items())
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse}.scroll{overflow-x:auto}.scroll td{min-width:5em}"
                 "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}img{max-width:100%}"
                 ".note{border-left:4px solid #0969da;padding-left:8px}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{esc(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{esc(self.title)}</h1>{notes}<h2>Findings</h2>{table}"
                f"<h2>Final metrics</h2><table>{final}</table>{figures}</body></html>")

    def write_html(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_html())

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "findings": [f.to_dict() for f in self.findings], "final": self.final}


def _sampling_interval(steps: int) -> int:
    """A short diagnostic run samples ~50 times: enough points for the rules, a small share of the steps."""
    return max(1, steps // 50)


def _as_data(data: Any, val_fraction: float, seed: int) -> Data:
    from trainlab.data import Data

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
             optimizer: Any = None, *, steps: int = 300, batch_size: int = 64, every: int | None = None,
             val_fraction: float = 0.2, seed: int = 0) -> DiagnosisReport:
    """Train ``model`` (any ``nn.Module``) for about ``steps`` steps with probes and return the findings.

    ``data`` is a trainlab ``Data`` or an ``(x, y)`` tuple (integer 1-d ``y`` means classification; a share
    ``val_fraction`` is held out for validation). ``optimizer`` is a torch optimizer over ``model``'s parameters, a
    trainlab optimizer spec or name, or None for trainlab's default (adamw). ``loss_fn`` defaults to cross-entropy
    or MSE by task. Training runs in whole epochs, as many as make ``steps`` steps (at least one).
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
    probes = Diagnostics(every if every is not None else _sampling_interval(steps))
    epochs = max(1, math.ceil(steps / data.steps_per_epoch(batch_size)))
    trainer = Trainer(model, data, optimizer, loss_fn=loss_fn, callbacks=[NonFiniteGuard(), probes], epochs=epochs,
                      batch_size=batch_size, generator=torch.Generator(device="cpu").manual_seed(seed))
    final = trainer.fit()
    record = probes.record()
    return DiagnosisReport(find_problems(record), record, final, title=f"diagnose {type(model).__name__}")


def doctor(config: Any, steps: int | None = None, *, every: int | None = None,
           out_dir: str | Path | None = None, tensorboard_dir: str | Path | None = None) -> DiagnosisReport:
    """Train a config briefly with probes (``steps`` rounded up to whole epochs; None keeps the config's epochs).

    ``config`` is a RunConfig, a dict or a YAML path. With ``out_dir`` the record and ``doctor.html`` are written
    there; with ``tensorboard_dir`` the record is exported for TensorBoard.
    """
    from trainlab.config import load_config
    from trainlab.data import load_data
    from trainlab.trainer import build_trainer

    config = load_config(config)
    data = load_data(config.data)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"The 'steps' parameter of doctor must be an int >= 1. Got {steps!r} instead.")
        per_epoch = data.steps_per_epoch(config.data.batch_size)
        config = load_config(config, {"epochs": max(1, math.ceil(steps / per_epoch))})
    total = config.epochs * data.steps_per_epoch(config.data.batch_size)
    probes = Diagnostics(every if every is not None else _sampling_interval(total), out_dir=out_dir,
                         tensorboard_dir=tensorboard_dir)
    trainer = build_trainer(config, [probes], data=data)
    final = trainer.fit()
    record = probes.record()
    report = DiagnosisReport(find_problems(record), record, final, title="trainlab doctor")
    if out_dir is not None:
        report.write_html(Path(out_dir) / "doctor.html")
    return report
