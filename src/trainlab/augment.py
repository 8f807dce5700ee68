"""Data augmentation and input noise injection, applied to one training batch at a time.

An augmentation maps a batch ``x`` of shape ``(N, ...)`` and a ``torch.Generator`` to a new batch of the same shape.
Random numbers are drawn on the generator's device and then moved to the batch's device, so the same generator
seed gives the same batch on any device.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from trainlab.registry import Component, Registry


class Augmentation(Component):
    """Base of augmentations: ``augmentation(x, generator) -> x'`` on a batch, same shape."""

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation", Augmentation)


def _per_sample(x: Tensor, values: Tensor) -> Tensor:
    """``values`` of shape (N,) viewed as (N, 1, ..., 1) to broadcast against ``x``."""
    return values.view(-1, *([1] * (x.dim() - 1)))


def _shift_along(x: Tensor, shifts: Tensor, dim: int, mode: str) -> Tensor:
    """``out[n, ..., i, ...] = x[n, ..., i - shifts[n], ...]`` along ``dim``; wrapped (roll) or zero-filled (pad)."""
    size = x.shape[dim]
    view = [1] * x.dim()
    view[dim] = size
    positions = torch.arange(size, device=x.device).view(view)
    source = positions - _per_sample(x, shifts)
    if mode == "roll":
        return torch.gather(x, dim, (source % size).expand(x.shape))
    inside = (source >= 0) & (source < size)
    gathered = torch.gather(x, dim, source.clamp(0, size - 1).expand(x.shape))
    return torch.where(inside.expand(x.shape), gathered, torch.zeros((), dtype=x.dtype, device=x.device))


@AUGMENTATIONS.register("shift")
class Shift(Augmentation):
    """Random translation of each sample by up to max_shift positions (1-D signals: last axis; images: both axes).

    Each sample ``n`` draws an integer ``s_n`` uniformly from ``{-max_shift, ..., max_shift}`` (one per spatial
    axis) and ``x'[n, ..., i] = x[n, ..., i - s_n]``: ``roll`` wraps around (``torch.roll``), ``pad`` fills the
    uncovered positions with zeros. Inputs: ``(N, L)`` or ``(N, C, L)`` signals, ``(N, C, H, W)`` images.
    Translation invariance as prior knowledge: Simard, Steinkraus & Platt, "Best practices for convolutional neural
    networks applied to visual document analysis", ICDAR 2003.
    """

    max_shift: int = Field(ge=1)
    mode: Literal["roll", "pad"] = "roll"

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"Shift needs a batch of shape (N, L), (N, C, L) or (N, C, H, W). "
                             f"Got shape {tuple(x.shape)} instead.")
        axes = (-2, -1) if x.dim() == 4 else (-1,)
        for dim in axes:
            shifts = torch.randint(-self.max_shift, self.max_shift + 1, (x.shape[0],), generator=generator,
                                   device=generator.device).to(x.device)
            x = _shift_along(x, shifts, dim, self.mode)
        return x


@AUGMENTATIONS.register("gaussian_noise")
class GaussianNoise(Augmentation):
    """Additive Gaussian input noise: x' = x + std * eps, eps ~ N(0, I), fresh for every batch.

    Training with small input noise is equivalent to Tikhonov regularization of the network's input gradient:
    Bishop, "Training with noise is equivalent to Tikhonov regularization", Neural Computation 1995.
    """

    std: float = Field(gt=0)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        return x + self.std * noise.to(x.device)


@AUGMENTATIONS.register("scale")
class Scale(Augmentation):
    """Random amplitude scaling of each sample: x'_n = a_n * x_n, a_n ~ U(low, high).

    Invariance to the signal's amplitude as prior knowledge (a standard augmentation for time series: Um et al.,
    "Data augmentation of wearable sensor data", ICMI 2017, "scaling").
    """

    low: float = Field(0.8, gt=0)
    high: float = Field(1.2, gt=0)

    @model_validator(mode="after")
    def _check_range(self) -> Scale:
        return check_low_below_high(self)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(x.shape[0], generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        return x * _per_sample(x, self.low + (self.high - self.low) * u)


R = TypeVar("R", bound=Component)


def check_low_below_high(spec: R) -> R:
    """``spec`` if its ``high`` field is above its ``low`` one; else the error naming both (a range's validator)."""
    if not spec.high > spec.low:
        raise ValueError(f"The 'high' parameter of {type(spec).__name__} must be greater than 'low' ({spec.low}). "
                         f"Got {spec.high} instead.")
    return spec
