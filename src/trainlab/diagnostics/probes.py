"""Probes: forward hooks (or the capture of functional activation calls) that turn layer outputs into per-layer
statistics and histograms, and the per-parameter gradient and weight statistics of one optimizer step.

Per layer: mean, std, the fraction of values near the bounds of a bounded activation (sigmoid, tanh), the number of
dead units of an activation with a zero floor (ReLU: units that output 0 for every sample of the batch), and a
histogram. Per parameter: the gradient norm and std, the weight norm, the update-to-weight ratio
``||w_{t+1} - w_t|| / ||w_t||`` and how far the rows of a weight matrix are from identical (symmetric units never
separate). Which modules are activations, and which of them saturate or can die, comes from ``trainlab.layers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from trainlab.activations import ACTIVATIONS
from trainlab.layers import WEIGHT_LAYERS, activation_bounds, activation_modules, zero_floor_modules

HIST_BINS = 40
# Within 2% of the output range of a bound, sigmoid's derivative is below 0.02 (8% of its peak): the unit barely
# passes gradient any more.
SATURATION_MARGIN = 0.02

# Activation functions a forward may call instead of using modules, by the registered activation they compute.
# ``F.sigmoid`` and ``F.tanh`` call the Tensor methods, so those are seen too.
_FUNCTIONS: dict[str, tuple[Any, ...]] = {
    "sigmoid": (torch.sigmoid, torch.sigmoid_, Tensor.sigmoid, Tensor.sigmoid_),
    "tanh": (torch.tanh, torch.tanh_, Tensor.tanh, Tensor.tanh_),
    "relu": (torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.relu, F.relu_),
    "leaky_relu": (F.leaky_relu, F.leaky_relu_),
    "elu": (F.elu, F.elu_),
    "gelu": (F.gelu,),
    "selu": (torch.selu, torch.selu_, F.selu),
    "silu": (F.silu,),
}
# Each function with the name its calls are probed under and the module class of its registered activation, so the
# bounds and the zero floor of that activation apply to its calls.
FUNCTIONAL_ACTIVATIONS: dict[Any, tuple[str, type[nn.Module]]] = {
    func: (name, ACTIVATIONS.get(name).torch_module) for name, funcs in _FUNCTIONS.items() for func in funcs}

# One row of per-layer statistics, as stored; NaN where a statistic does not apply to the layer.
LAYER_FIELDS = ("mean", "std", "saturated", "dead", "units", "nonfinite")
# One row of per-parameter statistics. row_spread: max |row - mean row| / max |w| (0: all rows identical).
PARAM_FIELDS = ("grad_norm", "grad_std", "weight_norm", "update_ratio", "row_spread")

# Statistics of one layer output as tensors on its device: (LAYER_FIELDS row, histogram counts, (lo, hi)).
Stats = tuple[Tensor, Tensor, Tensor]
# One call made during a forward pass: its name (``sigmoid#2``), kind (``Sigmoid``) and number of units.
Call = tuple[str, str, int]


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


def to_layer_stats(kind: str, row: np.ndarray, hist: np.ndarray, rng: np.ndarray) -> LayerStats:
    """A ``LayerStats`` from a stored LAYER_FIELDS row, its histogram counts and range."""
    mean, std, saturated, dead, units, _ = (float(v) for v in row)
    return LayerStats(kind=kind, mean=mean, std=std, saturated=None if math.isnan(saturated) else saturated,
                      dead=None if math.isnan(dead) else int(dead), units=int(units), hist=hist.astype(np.int64),
                      hist_range=(float(rng[0]), float(rng[1])))


def probed_modules(model: nn.Module) -> tuple[str, dict[str, nn.Module]]:
    """("activations", activation modules), or ("layers", Linear/Conv layers) for a model without any."""
    kinds = activation_modules()
    acts = {name: m for name, m in model.named_modules() if isinstance(m, kinds)}
    if acts:
        return "activations", acts
    return "layers", {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def _activation_stats(out: Tensor, bounds: tuple[float, float] | None, zero_floor: bool, bins: int,
                      margin: float) -> Stats:
    """The statistics of one layer output, with no host sync; ``bounds`` and ``zero_floor`` are its activation's."""
    out = out.detach().float()
    finite = torch.isfinite(out)
    x = torch.where(finite, out, torch.zeros((), device=out.device))
    # (N, units, positions): a unit is a feature of a dense output or a channel of a conv output.
    per_unit = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    units = per_unit.shape[1]
    nan = torch.full((), float("nan"), device=x.device)
    if bounds is not None:
        lo, hi = (torch.tensor(b, device=x.device) for b in bounds)
        band = margin * (bounds[1] - bounds[0])
        saturated = ((x <= lo + band) | (x >= hi - band)).float().mean()
    else:
        lo, hi = x.min(), x.max()
        saturated = nan
    dead = (per_unit.amax(dim=(0, 2)) <= 0).sum().float() if zero_floor else nan
    row = torch.stack([x.mean(), x.std(correction=0), saturated, dead,
                       torch.tensor(float(units), device=x.device), 1 - finite.float().mean()])
    # A layer with a single value (all units equal) still gets a histogram of non-zero width.
    width = torch.clamp(hi - lo, min=1e-6)
    index = ((x.flatten() - lo) / width * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(bins, device=x.device).scatter_add_(0, index, torch.ones_like(index, dtype=torch.float))
    return row, counts, torch.stack([lo, lo + width])


class _FunctionalCapture(TorchFunctionMode):
    """Hands the output of every call of a function in ``table`` made while it is active to ``on_call``
    (by default the functional activations).

    torch leaves a mode while it runs the mode's handler, so the statistics computed in ``on_call`` and the
    functions an activation calls internally (``F.relu`` calls ``torch.relu``) are not seen a second time.
    """

    def __init__(self, on_call: Callable[[tuple[str, type[nn.Module]], Any], None],
                 table: dict[Any, tuple[str, type[nn.Module]]] = FUNCTIONAL_ACTIVATIONS):
        super().__init__()
        self.on_call, self.table = on_call, table

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        family = self.table.get(func)
        if family is not None:
            self.on_call(family, out)
        return out


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
        self.reference: list[Call] | None = None
        self._hooked: dict[str, Stats] = {}
        self._called: dict[str, Stats] = {}
        self.calls: list[Call] = []
        self._counts: dict[str, int] = {}
        self._capture: _FunctionalCapture | None = None
        self._handles: list[Any] = []
        # Bounds and zero floor by module class, read from the registry once per probe rather than once per layer.
        self._bounds, self._zero_floor = activation_bounds(), zero_floor_modules()

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

    def collect(self) -> dict[str, Stats] | None:
        """The statistics of the forwards since ``attach``, by layer; None when a functionally probed model made
        other activation calls than in its first probed forward."""
        if self.mode is None:
            self.mode = "functional" if self._called else "layers"
        if self.mode != "functional":
            return dict(self._hooked)
        if self.reference is None:
            self.reference = list(self.calls)
        return dict(self._called) if self.calls == self.reference else None

    def _stats(self, family: type[nn.Module], out: Tensor) -> Stats:
        bounds = next((b for t, b in self._bounds.items() if issubclass(family, t)), None)
        with torch.no_grad():
            return _activation_stats(out, bounds, issubclass(family, self._zero_floor), self.bins, self.margin)

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
        self._called[key] = self._stats(cls, out)
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
            self._hooked[key] = self._stats(type(module), output)
            self.kinds[key] = type(module).__name__

        return hook


def describe_calls(calls: Sequence[Call]) -> str:
    """A short text of the activation calls of one forward: ``2 call(s): sigmoid#1 (6 units), relu#1 (6 units)``."""
    names = [f"{name} ({units} units)" for name, _, units in calls]
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
    return f"{len(calls)} call(s): {shown}" if calls else "no activation calls"


def probe_forward(model: nn.Module, x: Tensor, *, bins: int = HIST_BINS,
                  margin: float = SATURATION_MARGIN) -> dict[str, LayerStats]:
    """Statistics of every probed layer's output for one forward pass of ``x`` (no gradients, mode unchanged):
    the activation modules, else the functional activation calls, else the Linear/Conv layers."""
    check_probe_args(bins, margin)
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
    return {name: to_layer_stats(probe.kinds[name], *(t.cpu().numpy() for t in res)) for name, res in results.items()}


def check_probe_args(bins: int, margin: float) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"The 'bins' parameter must be an int >= 2. Got {bins!r} instead.")
    if not 0 < margin < 0.5:
        raise ValueError(f"The 'margin' parameter must be a float in (0, 0.5). Got {margin!r} instead.")


def grad_stats(params: Sequence[Tensor]) -> Tensor:
    """(P, 2): gradient norm and std of each parameter (NaN for a parameter without a gradient)."""
    nan = torch.full((2,), float("nan"))
    return torch.stack([torch.stack([p.grad.float().norm(), p.grad.float().std(correction=0)])
                        if p.grad is not None else nan.to(p.device) for p in params])


def weight_stats(params: Sequence[Tensor], before: Sequence[Tensor]) -> Tensor:
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


# --- the model's structure and its output, seen once -------------------------------------------------------------

# Functions a forward may call that turn scores into probabilities: with the activations, what the structure probe
# notes between layers.
_NORMALIZERS: dict[Any, tuple[str, type[nn.Module]]] = {
    **{f: ("softmax", nn.Softmax) for f in (torch.softmax, F.softmax, Tensor.softmax)},
    **{f: ("log_softmax", nn.LogSoftmax) for f in (torch.log_softmax, F.log_softmax, Tensor.log_softmax)},
}
STRUCTURE_FUNCTIONS = {**FUNCTIONAL_ACTIVATIONS, **_NORMALIZERS}
# Modules that are affine maps of their input (in eval mode) or pass it through: a stack of weight layers with only
# these between them computes one affine map.
AFFINE_MODULES: tuple[type[nn.Module], ...] = (
    *WEIGHT_LAYERS, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.modules.batchnorm._BatchNorm)


def _leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name or type(m).__name__: m for name, m in model.named_modules() if not list(m.children())}


def _module_event(name: str, module: nn.Module) -> dict[str, Any]:
    """One step of the structure: name, class, whether it is a weight layer, affine, and its dropout rate."""
    p = getattr(module, "p", None)
    return {"name": name, "kind": type(module).__name__, "weight": isinstance(module, WEIGHT_LAYERS),
            "affine": isinstance(module, AFFINE_MODULES),
            "dropout": float(p) if isinstance(p, float) and "Dropout" in type(module).__name__ else None}


def output_summary(out: Tensor) -> dict[str, float]:
    """What kind of numbers a model outputs: their range, and how far rows are from summing to 1 as probabilities
    (``row_sum_error``) or log-probabilities (``logsumexp_error``)."""
    out = out.detach().float().reshape(out.shape[0], -1)
    finite = out[torch.isfinite(out).all(1)]
    if not len(finite):
        return {}
    return {"min": float(finite.min()), "max": float(finite.max()), "columns": int(finite.shape[1]),
            "row_sum_error": float((finite.sum(1) - 1).abs().max()),
            "logsumexp_error": float(finite.logsumexp(1).abs().max())}


def describe_model(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """One forward of ``x`` in eval mode without gradients: the leaf modules and the activation / softmax calls in
    the order they ran (``sequence``), and a summary of the output (``output``, see ``output_summary``)."""
    sequence: list[dict[str, Any]] = []
    hooks = {m: (lambda mod, i, o, name=name: sequence.append(_module_event(name, mod)))
             for name, m in _leaf_modules(model).items()}

    def on_call(family: tuple[str, type[nn.Module]], out: Any) -> None:
        sequence.append({"name": f"{family[0]}()", "kind": family[1].__name__, "weight": False, "affine": False,
                         "dropout": None})

    was_training = model.training
    model.eval()
    try:
        with forward_hooks(hooks), torch.no_grad(), _FunctionalCapture(on_call, STRUCTURE_FUNCTIONS):
            out = model(x)
    finally:
        model.train(was_training)
    return {"sequence": sequence, "output": output_summary(out) if isinstance(out, Tensor) and out.ndim else {}}


def locate_nonfinite(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """Where non-finite values first appear in a forward of ``x`` (DeepLocalize, Wardat et al., ICSE 2021): the
    parameters that hold NaN/inf, and the first leaf module (in execution order) whose output is non-finite, with
    whether its input was finite (the module made them) or not (they came from the input or a function call)."""
    bad_params = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    first: list[dict[str, Any]] = []

    def hook(name: str) -> Callable[..., None]:
        def check(module: nn.Module, inputs: Any, output: Any) -> None:
            if first or not isinstance(output, Tensor) or bool(torch.isfinite(output).all()):
                return
            ins = [t for t in inputs if isinstance(t, Tensor)]
            first.append({"layer": name, "kind": type(module).__name__,
                          "input_finite": all(bool(torch.isfinite(t).all()) for t in ins)})
        return check

    with forward_hooks({m: hook(name) for name, m in _leaf_modules(model).items()}), torch.no_grad():
        model(x)
    return {**(first[0] if first else {}), "params": bad_params}


@contextmanager
def forward_hooks(hooks: Mapping[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    """Each module's forward hook registered for the block, and removed however the block ends."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
