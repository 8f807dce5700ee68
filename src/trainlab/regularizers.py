"""Penalties added to the loss: L1, L2 and elastic net, on weights (kernel) or on layer outputs (activity).

A regularizer is a config; ``reg.attach(model)`` turns it into a ``Penalty`` bound to one model, whose ``value()``
is the scalar to add to the loss::

    penalty = L2(strength=1e-4).attach(model)
    loss = criterion(model(x), y) + penalty.value()

Kernel penalties sum over the selected parameters. Activity penalties (Keras's ``activity_regularizer``) record the
outputs of the selected modules with forward hooks during training-mode forward passes and follow the Keras
convention: the penalty of a batch is its sum over every element divided by the batch size (dim 0), i.e. the
per-sample penalty averaged over the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from trainlab.layers import WEIGHT_LAYERS, activation_modules
from trainlab.registry import Component, Registry


class Regularizer(Component, ABC):
    """Base of the penalties: what is penalized (``target``) and where (``layers``, ``include_bias``).

    ``target="kernel"`` penalizes parameters: by default every parameter with ndim >= 2 (weights), leaving out
    biases and normalization parameters unless ``include_bias``. ``target="activity"`` penalizes module outputs:
    by default those of the activation modules (``layers.activation_modules()``), or, in a model without any, of every
    Linear/Conv layer but the last. ``layers`` names the modules (as in ``model.named_modules()``) to use instead;
    for kernels, all parameters inside the named modules are candidates.
    """

    target: Literal["kernel", "activity"] = "kernel"
    include_bias: bool = False
    layers: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _bias_is_for_kernels(self) -> Regularizer:
        # include_bias means nothing for activities; accepting it silently would hide a config mistake.
        if self.include_bias and self.target == "activity":
            raise ValueError(f"The 'include_bias' parameter of {type(self).__name__} applies only to "
                             f"target='kernel'. Got include_bias=True with target='activity' instead.")
        return self

    @abstractmethod
    def penalty(self, x: Tensor) -> Tensor:
        """The penalty of one tensor, summed over its elements (strengths included)."""

    def attach(self, model: nn.Module) -> Penalty:
        """Bind to ``model``: select its parameters (kernel) or hook its modules (activity)."""
        modules = dict(model.named_modules())
        del modules[""]
        if self.layers is not None:
            unknown = [n for n in self.layers if n not in modules]
            if unknown:
                raise ValueError(f"The 'layers' parameter of {type(self).__name__} names modules the model does not "
                                 f"have: {unknown}. Available: {', '.join(modules) or '(none)'}.")
        if self.target == "kernel":
            return KernelPenalty(self, model, self._select_parameters(model, modules))
        return ActivityPenalty(self, model, self._select_modules(modules))

    def _select_parameters(self, model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
        if self.layers is None:
            candidates = dict(model.named_parameters())
        else:
            candidates, seen = {}, set()
            for layer in self.layers:
                for pname, p in modules[layer].named_parameters():
                    # Nested or weight-tied selections must not count a parameter twice.
                    if id(p) not in seen:
                        seen.add(id(p))
                        candidates[f"{layer}.{pname}"] = p
        # Biases and normalization scales/shifts are 1-D; penalizing them constrains nothing useful (as timm's
        # no-weight-decay group).
        chosen = {n: p for n, p in candidates.items() if self.include_bias or p.ndim >= 2}
        if not chosen:
            raise ValueError(f"{type(self).__name__} with layers={self.layers} and include_bias={self.include_bias} "
                             f"selects no parameters of the model. Parameters: "
                             f"{', '.join(f'{n} {tuple(p.shape)}' for n, p in candidates.items()) or '(none)'}.")
        return chosen

    def _select_modules(self, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
        if self.layers is not None:
            return {n: modules[n] for n in self.layers}
        chosen = {n: m for n, m in modules.items() if isinstance(m, activation_modules())}
        if not chosen:
            # The last weight layer produces the model's output (logits), which an activity penalty should not shrink.
            layers = [(n, m) for n, m in modules.items() if isinstance(m, WEIGHT_LAYERS)]
            chosen = dict(layers[:-1])
        if not chosen:
            raise ValueError(f"{type(self).__name__}(target='activity') found no activation modules and fewer than "
                             f"two Linear/Conv layers to regularize; name them in 'layers'. "
                             f"Available: {', '.join(modules) or '(none)'}.")
        return chosen


REGULARIZERS: Registry[Regularizer] = Registry("regularizer", Regularizer)


@REGULARIZERS.register("l1")
class L1(Regularizer):
    """L1 penalty (lasso): lambda * sum |w|; drives many weights to exactly zero.

    Its subgradient lambda * sign(w) pulls every weight towards zero by the same amount, which is why L1 produces
    sparse weights. Reference: Tibshirani, "Regression shrinkage and selection via the lasso", 1996.
    """

    strength: float = Field(1e-4, gt=0, allow_inf_nan=False)

    def penalty(self, x: Tensor) -> Tensor:
        return self.strength * x.abs().sum()


@REGULARIZERS.register("l2")
class L2(Regularizer):
    """L2 penalty (ridge, Tikhonov): (lambda / 2) * sum w^2; keeps all weights uniformly small.

    Written as in the study notes, L <- L + lambda/2 sum W^2, so its gradient is lambda * w: with plain SGD this is
    exactly ``torch.optim.SGD(weight_decay=lambda)``. (With adaptive optimizers such as Adam it is not decoupled
    weight decay; see AdamW.) Reference: Krogh & Hertz, "A simple weight decay can improve generalization", 1992.
    """

    strength: float = Field(1e-4, gt=0, allow_inf_nan=False)

    def penalty(self, x: Tensor) -> Tensor:
        return 0.5 * self.strength * x.square().sum()


@REGULARIZERS.register("elastic_net")
class ElasticNet(Regularizer):
    """Elastic net: l1 * sum |w| + (l2 / 2) * sum w^2; sparse like L1, stable under correlated inputs like L2.

    Reference: Zou & Hastie, "Regularization and variable selection via the elastic net", 2005.
    """

    l1: float = Field(1e-4, ge=0, allow_inf_nan=False)
    l2: float = Field(1e-4, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _not_both_zero(self) -> ElasticNet:
        if self.l1 == 0 and self.l2 == 0:
            raise ValueError("The 'l1' and 'l2' parameters of ElasticNet must not both be 0. "
                             "Got l1=0.0 and l2=0.0 instead.")
        return self

    def penalty(self, x: Tensor) -> Tensor:
        return self.l1 * x.abs().sum() + 0.5 * self.l2 * x.square().sum()


class Penalty(ABC):
    """A regularizer bound to one model. ``value()`` is the scalar to add to the loss; ``remove()`` detaches it."""

    def __init__(self, regularizer: Regularizer, model: nn.Module):
        self.regularizer = regularizer
        self._device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
        self._dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())

    @abstractmethod
    def value(self) -> Tensor:
        """The penalty as a differentiable scalar on the model's device."""

    @abstractmethod
    def remove(self) -> None:
        """Remove the hooks this penalty installed; ``value()`` raises afterwards."""

    def _zero(self) -> Tensor:
        return torch.zeros((), device=self._device, dtype=self._dtype)


class KernelPenalty(Penalty):
    """Penalty on parameters; ``selected`` names them."""

    def __init__(self, regularizer: Regularizer, model: nn.Module, params: dict[str, nn.Parameter]):
        super().__init__(regularizer, model)
        self.selected: tuple[str, ...] = tuple(params)
        # (module, attribute) rather than the tensors: read at value() time, so torch.func.functional_call's
        # swapped-in parameters are the ones penalized (second_order.DampedNewton's Hessian depends on it).
        self._owners: list[tuple[nn.Module, str]] | None = [
            (model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]) for name in params]

    def value(self) -> Tensor:
        if self._owners is None:
            raise RuntimeError(f"This {self.regularizer.name} penalty was removed.")
        total = self._zero()
        for module, attribute in self._owners:
            total = total + self.regularizer.penalty(getattr(module, attribute))
        return total

    def remove(self) -> None:
        self._owners = None


class ActivityPenalty(Penalty):
    """Penalty on module outputs of the latest training-mode forward pass; ``selected`` names the modules."""

    def __init__(self, regularizer: Regularizer, model: nn.Module, modules: dict[str, nn.Module]):
        super().__init__(regularizer, model)
        self.selected: tuple[str, ...] = tuple(modules)
        self.outputs: list[Tensor] = []
        self._removed = False
        self._handles = [model.register_forward_pre_hook(self._reset)]
        self._handles += [m.register_forward_hook(self._record(n)) for n, m in modules.items()]

    def _reset(self, model: nn.Module, args: object) -> None:
        # A new training forward starts a new batch; eval passes (validation) must not erase the training batch.
        if model.training:
            self.outputs = []

    def _record(self, name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if not module.training:
                return
            if not isinstance(output, Tensor):
                raise TypeError(f"An activity penalty needs module {name!r} to output a tensor. "
                                f"Got {type(output).__name__} instead.")
            self.outputs.append(output)
        return hook

    def value(self) -> Tensor:
        if self._removed:
            raise RuntimeError(f"This {self.regularizer.name} penalty was removed.")
        total = self._zero()
        for out in self.outputs:
            # Under mixed precision the outputs are bf16 or fp16; the penalty is summed in float32, as the loss is.
            out = out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
            total = total + self.regularizer.penalty(out) / (out.shape[0] if out.ndim else 1)
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.outputs = []
        self._removed = True


def sparsity(model: nn.Module, threshold: float = 1e-3) -> float:
    """Fraction of weights (parameters with ndim >= 2) with |w| < threshold."""
    if not threshold > 0:
        raise ValueError(f"The 'threshold' parameter of sparsity must be a float in (0, inf). "
                         f"Got {threshold!r} instead.")
    weights = [p.detach() for p in model.parameters() if p.ndim >= 2]
    if not weights:
        raise ValueError("sparsity needs a model with weights (parameters with ndim >= 2). Got none.")
    small = sum(int((w.abs() < threshold).sum()) for w in weights)
    return small / sum(w.numel() for w in weights)
