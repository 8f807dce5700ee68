"""The module types the rest of trainlab recognises, in one place.

Activation modules come from the activation registry (each component's ``torch_module``), with the facts the
component states about them: saturation bounds and whether a unit can die. Weight layers are the layers whose
weight has PyTorch's ``(out, in, *kernel)`` layout, which initializers, penalties and probes act on. Transposed
convolutions are left out: their weight is ``(in, out, *kernel)``, so fan rules would swap fan_in and fan_out.
"""

from __future__ import annotations

from torch import nn

from trainlab.activations import ACTIVATIONS

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def activation_modules() -> tuple[type[nn.Module], ...]:
    """The ``torch.nn`` classes of every registered activation (one entry per class)."""
    return tuple(dict.fromkeys(ACTIVATIONS.get(name).torch_module for name in ACTIVATIONS))


def activation_bounds() -> dict[type[nn.Module], tuple[float, float]]:
    """Saturating output ranges by module class: ``{nn.Sigmoid: (0, 1), nn.Tanh: (-1, 1)}``."""
    return {c.torch_module: c.bounds for c in map(ACTIVATIONS.get, ACTIVATIONS) if c.bounds is not None}


def zero_floor_modules() -> tuple[type[nn.Module], ...]:
    """Classes whose units are dead when they output exactly 0 for every input (their gradient is 0 there too)."""
    return tuple(dict.fromkeys(c.torch_module for c in map(ACTIVATIONS.get, ACTIVATIONS) if c.can_die))
