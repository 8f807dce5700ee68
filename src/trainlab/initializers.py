"""Weight initializers: one variance-scaling formula with the Glorot/LeCun/He presets, plus the simple ones.

Fans follow PyTorch's weight layout ``(out, in, *kernel)``: ``fan_in = in * prod(kernel)`` and
``fan_out = out * prod(kernel)`` (see ``compute_fans``). ``auto`` is resolved against the network's activation
(``auto.resolve(activation)``); ``initialize(model, init, activation)`` applies an initializer to every linear and
convolution weight of a model and zeroes their biases.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from trainlab.activations import Activation, LeakyReLU
from trainlab.layers import WEIGHT_LAYERS
from trainlab.registry import Component, Registry

# std of N(0, 1) truncated to [-2, 2]; dividing by it gives the truncated normal the intended variance (as Keras).
_TRUNCATED_NORMAL_STD = 0.87962566103423978



def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of PyTorch layout ``(out, in, *kernel)``.

    The receptive field ``prod(kernel)`` multiplies both fans. A tensor with fewer than 2 dimensions (a bias, a
    norm scale) has no fans and raises ``ValueError``: fan-based initializers are for weight matrices and kernels.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"Fans need a weight of shape (out, in, *kernel) with at least 2 dimensions. "
                         f"Got shape {shape} instead.")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


class Initializer(Component):
    """Base of the initializers: ``init_(tensor, generator)`` fills a tensor in place and returns it."""

    def init_(self, tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Fill ``tensor`` in place (without recording gradients), drawing from ``generator`` if given."""
        with torch.no_grad():
            self._fill(tensor, generator)
        return tensor

    @abstractmethod
    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None: ...


INITIALIZERS: Registry[Initializer] = Registry("initializer", Initializer)


@INITIALIZERS.register("zeros")
class Zeros(Initializer):
    """All zeros: every unit of a layer computes the same function, so symmetry is never broken."""

    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None:
        nn.init.zeros_(tensor)


@INITIALIZERS.register("constant")
class Constant(Initializer):
    """Every entry set to ``value``; like zeros, units stay symmetric."""

    value: float = 0.0

    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None:
        nn.init.constant_(tensor, self.value)


@INITIALIZERS.register("normal")
class Normal(Initializer):
    """Normal with a fixed std, independent of the layer size: W ~ N(mean, std²)."""

    mean: float = 0.0
    std: float = Field(0.01, gt=0)

    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None:
        nn.init.normal_(tensor, self.mean, self.std, generator=generator)


@INITIALIZERS.register("uniform")
class Uniform(Initializer):
    """Uniform with a fixed half-width, independent of the layer size: W ~ U(-a, a)."""

    a: float = Field(0.05, gt=0)

    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None:
        nn.init.uniform_(tensor, -self.a, self.a, generator=generator)


@INITIALIZERS.register("orthogonal")
class Orthogonal(Initializer):
    """(Semi-)orthogonal matrix times ``gain``, the weight flattened to (out, in * prod(kernel)).

    W Wᵀ = gain² I when out <= in (else Wᵀ W = gain² I). Saxe, McClelland & Ganguli, "Exact solutions to the
    nonlinear dynamics of learning in deep linear neural networks", 2014.
    """

    gain: float = Field(1.0, gt=0)

    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None:
        nn.init.orthogonal_(tensor, self.gain, generator=generator)


@INITIALIZERS.register("variance_scaling")
class VarianceScaling(Initializer):
    """Std scaled to the layer size: Var(W) = scale / fan, fan = fan_in, fan_out or their mean.

    normal: W ~ N(0, scale / fan). uniform: W ~ U(-l, l) with l = sqrt(3 * scale / fan). truncated_normal: normal
    cut at 2 std, its std divided by 0.8796 so the variance stays scale / fan. Same formula as Keras
    ``VarianceScaling``; Glorot (scale 1, fan_avg), LeCun (scale 1, fan_in) and He (scale 2, fan_in) are presets.
    """

    scale: float = Field(1.0, gt=0)
    mode: Literal["fan_in", "fan_out", "fan_avg"] = "fan_in"
    distribution: Literal["normal", "truncated_normal", "uniform"] = "truncated_normal"

    def std(self, shape: Sequence[int]) -> float:
        """The target std of the entries, sqrt(scale / fan), for a weight of this shape."""
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        return math.sqrt(self.scale / fan)

    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None:
        std = self.std(tensor.shape)
        if self.distribution == "normal":
            nn.init.normal_(tensor, 0.0, std, generator=generator)
        elif self.distribution == "uniform":
            limit = math.sqrt(3.0) * std
            nn.init.uniform_(tensor, -limit, limit, generator=generator)
        else:
            std = std / _TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(tensor, 0.0, std, -2.0 * std, 2.0 * std, generator=generator)


class _VarianceScalingPreset(VarianceScaling):
    """A VarianceScaling whose scale, mode and distribution are fixed class constants, not fields."""

    # Each preset sets the three in one line: ``scale, mode, distribution = 2.0, "fan_in", "normal"``.
    scale: ClassVar[float]
    mode: ClassVar[str]
    distribution: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _no_fields(cls, data: Any) -> Any:
        if data:
            raise ValueError(
                f"{cls.name} is variance_scaling with scale={cls.scale}, mode={cls.mode!r}, "
                f"distribution={cls.distribution!r} fixed; it takes no parameters. Got {data!r} instead. "
                f"To choose them, use {{name: variance_scaling, scale: ..., mode: ..., distribution: ...}}.")
        return data


@INITIALIZERS.register("xavier_normal")
class XavierNormal(_VarianceScalingPreset):
    """Glorot/Xavier normal: W ~ N(0, 2 / (fan_in + fan_out)), for sigmoid and tanh.

    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural networks", 2010.
    """

    scale, mode, distribution = 1.0, "fan_avg", "normal"


@INITIALIZERS.register("xavier_uniform")
class XavierUniform(_VarianceScalingPreset):
    """Glorot/Xavier uniform: W ~ U(-l, l), l = sqrt(6 / (fan_in + fan_out)), for sigmoid and tanh.

    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural networks", 2010.
    """

    scale, mode, distribution = 1.0, "fan_avg", "uniform"


@INITIALIZERS.register("lecun_normal")
class LecunNormal(_VarianceScalingPreset):
    """LeCun normal: W ~ N(0, 1 / fan_in) (the notes' "Xavier = 1/sqrt(n)"); the init SELU needs.

    LeCun et al., "Efficient BackProp", 1998; Klambauer et al., "Self-Normalizing Neural Networks", 2017.
    """

    scale, mode, distribution = 1.0, "fan_in", "normal"


@INITIALIZERS.register("lecun_uniform")
class LecunUniform(_VarianceScalingPreset):
    """LeCun uniform: W ~ U(-l, l), l = sqrt(3 / fan_in).

    LeCun et al., "Efficient BackProp", 1998.
    """

    scale, mode, distribution = 1.0, "fan_in", "uniform"


@INITIALIZERS.register("he_normal")
class HeNormal(_VarianceScalingPreset):
    """He/Kaiming normal: W ~ N(0, 2 / fan_in), i.e. std = sqrt(2 / fan_in), for ReLU.

    (The notes' std "2/sqrt(n)" is variance_scaling(scale=4, mode=fan_in).) He et al., "Delving Deep into
    Rectifiers", 2015.
    """

    scale, mode, distribution = 2.0, "fan_in", "normal"


@INITIALIZERS.register("he_uniform")
class HeUniform(_VarianceScalingPreset):
    """He/Kaiming uniform: W ~ U(-l, l), l = sqrt(6 / fan_in), for ReLU.

    He et al., "Delving Deep into Rectifiers", 2015.
    """

    scale, mode, distribution = 2.0, "fan_in", "uniform"


@INITIALIZERS.register("auto")
class Auto(Initializer):
    """Chosen by activation: Xavier for sigmoid/tanh/linear, He for the ReLU family, LeCun for SELU.

    Leaky ReLU with slope a gets variance_scaling(scale = 2 / (1 + a²), fan_in, normal) (He et al., 2015).
    """

    def resolve(self, activation: Activation | None) -> Initializer:
        """The initializer for a network of this activation (``None``: linear)."""
        if activation is None or activation.family in ("sigmoid", "tanh"):
            return XavierNormal()
        if isinstance(activation, LeakyReLU):
            return VarianceScaling(scale=2.0 / (1.0 + activation.negative_slope ** 2), mode="fan_in",
                                   distribution="normal")
        if activation.family == "relu":
            return HeNormal()
        if activation.family == "selu":
            return LecunNormal()
        raise ValueError(f"auto has no initializer for the activation family {activation.family!r} of "
                         f"{activation.name}; expected one of 'sigmoid', 'tanh', 'relu', 'selu'.")

    def _fill(self, tensor: Tensor, generator: torch.Generator | None) -> None:
        raise TypeError("The auto initializer depends on the activation: call auto.resolve(activation) and use "
                        "the initializer it returns (initialize(model, init, activation) does this).")


def initialize(model: nn.Module, init: Initializer, activation: Activation | None = None,
               generator: torch.Generator | None = None) -> None:
    """Initialize every ``nn.Linear`` / ``nn.Conv1d/2d/3d`` of ``model`` in place.

    Their weights (every parameter of those layers with >= 2 dimensions) are filled by ``init`` (``auto`` is
    resolved with ``activation``, ``None`` meaning linear) and their biases set to 0. Other layers, norm layers
    included, are left as they are (fresh norm layers have weight 1 and bias 0).
    """
    if isinstance(init, Auto):
        init = init.resolve(activation)
    for module in model.modules():
        if not isinstance(module, WEIGHT_LAYERS):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.ndim >= 2:
                init.init_(param, generator)
            elif name == "bias":
                with torch.no_grad():
                    param.zero_()
