"""Activation functions as components: each builds the standard ``torch.nn`` module and says what it is like.

Besides the module, an activation carries three facts that other parts of trainlab read:

- ``family``: ``sigmoid``, ``tanh``, ``relu`` (ReLU and its smooth or leaky relatives) or ``selu``; the ``auto``
  initializer picks Xavier for sigmoid/tanh, He for the relu family and LeCun for SELU.
- ``bounds``: the saturating output range (sigmoid (0, 1), tanh (-1, 1)), or ``None``; diagnostics flag units
  that sit near a bound, where the gradient vanishes.
- ``can_die``: whether a unit can be dead, i.e. output 0 with gradient 0 for every negative input (ReLU).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from trainlab.registry import Component, Registry


class Activation(Component):
    """Base of the activation components: ``module()`` returns a fresh ``torch.nn`` module."""

    family: ClassVar[str]
    bounds: ClassVar[tuple[float, float] | None] = None
    can_die: ClassVar[bool] = False
    # The torch class built by ``module()``; the component's fields are its keyword arguments.
    torch_module: ClassVar[type[nn.Module]]

    def module(self) -> nn.Module:
        """A new ``torch.nn`` module computing this activation (fields passed as its keyword arguments)."""
        return self.torch_module(**{k: getattr(self, k) for k in type(self).model_fields})


ACTIVATIONS: Registry[Activation] = Registry("activation", Activation)


@ACTIVATIONS.register("sigmoid")
class Sigmoid(Activation):
    """Logistic sigmoid, saturating in (0, 1) and not zero-centred.

    ``σ(x) = 1 / (1 + exp(-x))``; ``σ'(x) = σ(x)(1 - σ(x)) <= 1/4``, so gradients shrink layer by layer in deep
    nets (LeCun et al., "Efficient BackProp", 1998).
    """

    family: ClassVar[str] = "sigmoid"
    bounds: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    torch_module: ClassVar[type[nn.Module]] = nn.Sigmoid


@ACTIVATIONS.register("tanh")
class Tanh(Activation):
    """Hyperbolic tangent, saturating in (-1, 1) and zero-centred.

    ``tanh(x) = 2σ(2x) - 1``; ``tanh'(0) = 1`` (LeCun et al., "Efficient BackProp", 1998).
    """

    family: ClassVar[str] = "tanh"
    bounds: ClassVar[tuple[float, float] | None] = (-1.0, 1.0)
    torch_module: ClassVar[type[nn.Module]] = nn.Tanh


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    """Rectified linear unit: max(0, x); units can die (zero output and gradient for all inputs).

    ``relu(x) = max(0, x)`` (Nair & Hinton, 2010; Glorot, Bordes & Bengio, "Deep Sparse Rectifier Neural
    Networks", 2011).
    """

    family: ClassVar[str] = "relu"
    can_die: ClassVar[bool] = True
    torch_module: ClassVar[type[nn.Module]] = nn.ReLU


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(Activation):
    """Leaky ReLU: x for x >= 0, negative_slope * x below, so a unit keeps a gradient and cannot die.

    ``f(x) = max(0, x) + negative_slope * min(0, x)`` (Maas, Hannun & Ng, "Rectifier Nonlinearities Improve
    Neural Network Acoustic Models", 2013).
    """

    family: ClassVar[str] = "relu"
    torch_module: ClassVar[type[nn.Module]] = nn.LeakyReLU
    negative_slope: float = Field(0.01, ge=0, lt=1)


@ACTIVATIONS.register("elu")
class ELU(Activation):
    """Exponential linear unit: x for x > 0, alpha * (exp(x) - 1) below; smooth, near zero-mean outputs.

    (Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network Learning by Exponential Linear Units",
    2016.)
    """

    family: ClassVar[str] = "relu"
    torch_module: ClassVar[type[nn.Module]] = nn.ELU
    alpha: float = Field(1.0, gt=0)


@ACTIVATIONS.register("gelu")
class GELU(Activation):
    """Gaussian error linear unit: x * Φ(x), with Φ the standard normal CDF.

    (Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016.)
    """

    family: ClassVar[str] = "relu"
    torch_module: ClassVar[type[nn.Module]] = nn.GELU


@ACTIVATIONS.register("selu")
class SELU(Activation):
    """Scaled ELU: self-normalizing with LeCun-normal init (fixed lambda ≈ 1.0507, alpha ≈ 1.6733).

    ``selu(x) = λ (max(0, x) + min(0, α (exp(x) - 1)))`` (Klambauer et al., "Self-Normalizing Neural Networks",
    2017).
    """

    family: ClassVar[str] = "selu"
    torch_module: ClassVar[type[nn.Module]] = nn.SELU


@ACTIVATIONS.register("silu")
class SiLU(Activation):
    """Sigmoid linear unit (swish): x * sigmoid(x).

    (Elfwing, Uchibe & Doya, "Sigmoid-Weighted Linear Units", 2018; Ramachandran, Zoph & Le, "Searching for
    Activation Functions", 2017.)
    """

    family: ClassVar[str] = "relu"
    torch_module: ClassVar[type[nn.Module]] = nn.SiLU

