"""Model specs: MLP, 1-D CNN and 2-D CNN with configurable activation, init, normalization and dropout.

``spec.build(input_shape, num_outputs, generator)`` returns an ``nn.Sequential`` whose children are named so that
module names read the same in every model (diagnostics key their per-layer statistics on them)::

    to_channels            (CNNs given an input without a channel dimension: (L,) -> (1, L), (H, W) -> (1, H, W);
                            cnn1d with memory_format channels_last: -> (C, 1, L), a one-row image)
    channels_last          (CNNs with memory_format channels_last: the input in channels-last layout)
    conv_blocks.{i}.conv   (CNNs) then .norm / .act in the configured order, then .pool, .dropout
    global_pool            (CNNs with global_pool avg|max: one value per feature map)
    flatten
    blocks.{i}.linear      dense hidden block i, then .norm / .act in the configured order, then .dropout
    head.out               the output linear layer (logits or regression outputs, no activation)

``norm_position="before_activation"`` gives ``linear -> norm -> act``, ``"after_activation"`` gives
``linear -> act -> norm``; with batch norm before the activation the linear/conv layer has no bias, since the
norm's mean subtraction would cancel it. Absent parts (no norm, no dropout, no pooling) are left out, not replaced
by identities. The input shape excludes the batch dimension.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from trainlab.activations import ACTIVATIONS, ReLU
from trainlab.initializers import INITIALIZERS, Auto, initialize
from trainlab.registry import Component, Registry

PositiveInt = Annotated[int, Field(ge=1)]


class ClassicDropout(nn.Module):
    """Dropout as first published: units are dropped with probability p in training without rescaling, and
    outputs are multiplied by (1 - p) at test time, so both have expected value (1 - p) x.

    ``nn.Dropout`` ("inverted" dropout) instead scales kept units by 1 / (1 - p) in training and does nothing at
    test time. Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", 2014.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"The 'p' parameter of ClassicDropout must be a float in [0, 1). Got {p!r} instead.")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            # bernoulli_ on an empty_like tensor is the mask nn.Dropout draws, so a seed gives the same units.
            return x * torch.empty_like(x).bernoulli_(1.0 - self.p)
        return x * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ChannelsLast(nn.Module):
    """Its 4-D input in channels-last layout (the same values, strides ordered N, H, W, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class ModelSpec(Component):
    """Base of the model specs: the fields every model shares and ``build``."""

    activation: ACTIVATIONS.field() = Field(default_factory=ReLU)
    init: INITIALIZERS.field() = Field(default_factory=Auto)
    norm: Literal["none", "batch", "layer"] = "none"
    norm_position: Literal["before_activation", "after_activation"] = "before_activation"
    dropout: float = Field(0.0, ge=0, lt=1)
    dropout_mode: Literal["inverted", "classic"] = "inverted"

    def build(self, input_shape: tuple[int, ...], num_outputs: int,
              generator: torch.Generator | None = None) -> nn.Module:
        """The network for inputs of shape ``input_shape`` (batch dimension excluded) and ``num_outputs`` outputs.

        Weights are set by the spec's initializer (``auto`` resolved with the activation) drawing from
        ``generator``; building does not advance the global random state.
        """
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise ValueError(f"The input shape of {self.name} must be a non-empty tuple of positive ints "
                             f"(batch dimension excluded). Got {input_shape!r} instead.")
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"The 'num_outputs' of {self.name} must be a positive int. Got {num_outputs!r} instead.")
        # torch layers draw their default init from the global generator; it is overwritten below anyway.
        with torch.random.fork_rng(devices=[]):
            model = self._layers(shape, num_outputs)
        initialize(model, self.init, self.activation, generator)
        return model

    @abstractmethod
    def _layers(self, input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential: ...

    def _bias(self) -> bool:
        return not (self.norm == "batch" and self.norm_position == "before_activation")

    def _dropout(self, p: float) -> nn.Module:
        return nn.Dropout(p) if self.dropout_mode == "inverted" else ClassicDropout(p)

    def _norm(self, batch: Callable[[int], nn.Module], layer: Callable[[int], nn.Module],
              features: int) -> nn.Module | None:
        if self.norm == "none":
            return None
        return batch(features) if self.norm == "batch" else layer(features)

    def _block(self, layer_name: str, layer: nn.Module, norm: nn.Module | None,
               tail: list[tuple[str, nn.Module]]) -> nn.Sequential:
        parts: list[tuple[str, nn.Module]] = [(layer_name, layer)]
        act = ("act", self.activation.module())
        if norm is None:
            parts.append(act)
        elif self.norm_position == "before_activation":
            parts += [("norm", norm), act]
        else:
            parts += [act, ("norm", norm)]
        return nn.Sequential(OrderedDict(parts + tail))

    def _dense(self, in_features: int, widths: list[int], num_outputs: int) -> list[tuple[str, nn.Module]]:
        """``blocks`` (hidden linear blocks) and ``head`` (the output layer), from ``in_features`` inputs."""
        blocks = []
        for width in widths:
            norm = self._norm(nn.BatchNorm1d, nn.LayerNorm, width)
            tail = [("dropout", self._dropout(self.dropout))] if self.dropout > 0 else []
            blocks.append(self._block("linear", nn.Linear(in_features, width, bias=self._bias()), norm, tail))
            in_features = width
        head = nn.Sequential(OrderedDict(out=nn.Linear(in_features, num_outputs)))
        return [("blocks", nn.Sequential(*blocks)), ("head", head)]


MODELS: Registry[ModelSpec] = Registry("model", ModelSpec)


@MODELS.register("mlp")
class MLP(ModelSpec):
    """Multilayer perceptron: flattened input, hidden linear blocks, a linear head.

    ``h_{k+1} = dropout(act(norm(W_k h_k + b_k)))``, output ``W_L h_L + b_L``. Widths: ``widths`` if given, else
    ``depth`` hidden layers of ``width`` units. (Rumelhart, Hinton & Williams, "Learning representations by
    back-propagating errors", 1986.)
    """

    depth: int = Field(2, ge=0)
    width: int = Field(128, ge=1)
    widths: list[PositiveInt] | None = None

    @model_validator(mode="after")
    def _widths_or_depth(self) -> MLP:
        fields = type(self).model_fields
        depth, width = fields["depth"].default, fields["width"].default
        if self.widths is not None and (self.depth != depth or self.width != width):
            raise ValueError(f"mlp takes either 'widths' or 'depth' and 'width'; with 'widths' given, leave "
                             f"'depth' and 'width' at their defaults ({depth}, {width}). Got widths={self.widths}, "
                             f"depth={self.depth}, width={self.width} instead.")
        return self

    @property
    def hidden_widths(self) -> list[int]:
        """The width of each hidden layer."""
        return list(self.widths) if self.widths is not None else [self.width] * self.depth

    def _layers(self, input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
        parts = [("flatten", nn.Flatten())] + self._dense(math.prod(input_shape), self.hidden_widths, num_outputs)
        return nn.Sequential(OrderedDict(parts))


class _CNN(ModelSpec):
    """Convolution blocks (conv -> norm/act -> pool -> dropout), then a dense head as in the MLP.

    ``pool_after`` lists the blocks (from 0) followed by pooling (default: every block, when ``pool`` is not
    "none"). ``memory_format="channels_last"`` runs the conv blocks in channels-last layout (oneDNN's faster CPU
    kernels); a cnn1d then computes its 1-D layers as 2-D ones over one-row images, (C, L) -> (C, 1, L), so its
    conv weights have shape (out, in, 1, k). Same init and function, other rounding; measured on MNIST-1D (4 blocks
    of 32, batch 128, one thread, idle machine) a step took 0.66-0.71x the contiguous one's time without pooling and
    0.50-0.54x with pooling after block 1 (where a contiguous step got no faster: bench/RESULTS.md).
    """

    spatial_dims: ClassVar[int]
    input_layout: ClassVar[str]

    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], min_length=1)
    kernel_size: int = Field(5, ge=1)
    pool: Literal["max", "avg", "none"] = "max"
    head: list[PositiveInt] = Field(default_factory=lambda: [128])
    conv_dropout: float = Field(0.0, ge=0, lt=1)
    global_pool: Literal["none", "avg", "max"] = "none"
    pool_after: list[Annotated[int, Field(ge=0)]] | None = None
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"

    @model_validator(mode="after")
    def _check_pool_after(self) -> _CNN:
        if self.pool_after is None:
            return self
        if self.pool == "none":
            raise ValueError(f"{self.name}'s 'pool_after' names the blocks followed by pooling, so it needs "
                             f"pool='max' or 'avg'. Got pool_after={self.pool_after} with pool='none' instead.")
        wrong = [i for i in self.pool_after if i >= len(self.channels)]
        if wrong or len(set(self.pool_after)) != len(self.pool_after):
            raise ValueError(f"{self.name}'s 'pool_after' must list distinct block indices from 0 to "
                             f"{len(self.channels) - 1} (one block per entry of 'channels'). "
                             f"Got pool_after={self.pool_after} instead.")
        return self

    def build(self, input_shape: tuple[int, ...], num_outputs: int,
              generator: torch.Generator | None = None) -> nn.Module:
        model = super().build(input_shape, num_outputs, generator)
        if self.memory_format == "channels_last":
            # Kernels in channels-last layout too: with one input channel the input's layout is ambiguous, and
            # oneDNN then takes the output's from the weight.
            model.to(memory_format=torch.channels_last)
        return model

    @property
    def pooled_blocks(self) -> set[int]:
        """The indices of the conv blocks followed by pooling."""
        if self.pool == "none":
            return set()
        return set(range(len(self.channels))) if self.pool_after is None else set(self.pool_after)

    def _layers(self, input_shape: tuple[int, ...], num_outputs: int) -> nn.Sequential:
        nd = self.spatial_dims
        if len(input_shape) not in (nd, nd + 1):
            raise ValueError(f"{self.name} needs an input shape {self.input_layout} (batch dimension excluded). "
                             f"Got {input_shape} instead.")
        parts: list[tuple[str, nn.Module]] = []
        in_channels, spatial = (1, input_shape) if len(input_shape) == nd else (input_shape[0], input_shape[1:])
        # In channels-last layout a 1-D net runs as a 2-D one over one-row images, (C, L) -> (C, 1, L): oneDNN's
        # channels-last CPU kernels for convolution, batch norm and pooling are faster than its 1-D ones.
        as_image = nd == 1 and self.memory_format == "channels_last"
        if as_image:  # (L,) -> (1, 1, L); (C, L) -> (C, 1, L)
            dim, sizes = (1, (1, 1, spatial[0])) if len(input_shape) == 1 else (2, (1, spatial[0]))
            parts.append(("to_channels", nn.Unflatten(dim, sizes)))
        elif len(input_shape) == nd:
            parts.append(("to_channels", nn.Unflatten(1, (1, input_shape[0]))))
        if self.memory_format == "channels_last":
            parts.append(("channels_last", ChannelsLast()))
        pooled = self.pooled_blocks
        halvings = len(pooled)
        if min(spatial) < 2 ** halvings:
            raise ValueError(f"{self.name} halves each spatial size {halvings} times (pool={self.pool!r} after "
                             f"{halvings} of its {len(self.channels)} conv blocks), so it needs spatial sizes of at "
                             f"least {2 ** halvings}. Got input shape {input_shape} instead; use fewer 'channels', "
                             f"fewer 'pool_after' blocks or pool='none'.")
        dims = 2 if as_image else nd
        conv, batch_norm = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}[dims]
        pool = {"max": {1: nn.MaxPool1d, 2: nn.MaxPool2d}, "avg": {1: nn.AvgPool1d, 2: nn.AvgPool2d}}
        kernel, window = ((1, self.kernel_size), (1, 2)) if as_image else (self.kernel_size, 2)
        blocks = []
        for index, out_channels in enumerate(self.channels):
            # GroupNorm with one group normalizes each sample over all its channels and positions: layer norm.
            norm = self._norm(batch_norm, lambda c: nn.GroupNorm(1, c), out_channels)
            tail = []
            if index in pooled:
                tail.append(("pool", pool[self.pool][dims](window)))
            if self.conv_dropout > 0:
                tail.append(("dropout", self._dropout(self.conv_dropout)))
            layer = conv(in_channels, out_channels, kernel, padding="same", bias=self._bias())
            blocks.append(self._block("conv", layer, norm, tail))
            in_channels = out_channels
        parts.append(("conv_blocks", nn.Sequential(*blocks)))
        if self.global_pool != "none":
            # One value per feature map: the head sees what was found, not where (translation invariance).
            adaptive = {"avg": {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d},
                        "max": {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d}}[self.global_pool][dims]
            parts.append(("global_pool", adaptive(1)))
            flat = self.channels[-1]
        else:
            flat = self.channels[-1] * math.prod(s // 2 ** halvings for s in spatial)
        parts.append(("flatten", nn.Flatten()))
        return nn.Sequential(OrderedDict(parts + self._dense(flat, list(self.head), num_outputs)))


@MODELS.register("cnn1d")
class CNN1d(_CNN):
    """1-D convolutional net: conv blocks ('same' padding, pooling by 2) then a dense head; input (L,) or (C, L).

    Each block: Conv1d -> norm/act -> pool -> dropout (``conv_dropout``); ``global_pool`` (avg or max) reduces each
    feature map to one value (Lin et al. 2014, "Network in network"); ``head`` lists the dense hidden widths after
    flattening. Norm "batch" is BatchNorm per feature map, "layer" GroupNorm(1, C) on conv blocks and
    LayerNorm on dense ones. (LeCun et al., "Gradient-based learning applied to document recognition", 1998.)
    """

    spatial_dims: ClassVar[int] = 1
    input_layout: ClassVar[str] = "(L,) or (C, L)"


@MODELS.register("cnn2d")
class CNN2d(_CNN):
    """2-D convolutional net: conv blocks ('same' padding, pooling by 2) then a dense head; input (H, W) or (C, H, W).

    Each block: Conv2d -> norm/act -> pool -> dropout (``conv_dropout``); ``head`` lists the dense hidden widths
    after flattening. Norm "batch" is BatchNorm per feature map, "layer" GroupNorm(1, C) on conv blocks and
    LayerNorm on dense ones. (LeCun et al., "Gradient-based learning applied to document recognition", 1998.)
    """

    spatial_dims: ClassVar[int] = 2
    input_layout: ClassVar[str] = "(H, W) or (C, H, W)"


def count_parameters(model: nn.Module) -> int:
    """The number of scalar parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
