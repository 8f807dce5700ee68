"""K replicas (seeds) of one config trained as one computation, equal to K sequential runs.

``train_replicas(config, seeds)`` gives, for each seed ``s``, what ``build_trainer(load_config(config, {"seed": s}))
.fit()`` gives: the same history, final metrics, extras and trained weights. It is one computation because the K
replicas' weights are stacked along a leading replica axis and every batch has shape ``(K, B, ...)``:

    y_k = x_k W_k^T + b_k            Linear: one batched matmul (``baddbmm``) for all k
    BN_k(x_k)                        batch norm (and conv, layer/group norm): one call per replica on its own
                                     slice, so every replica keeps its own batch and running statistics
    loss = sum_k mean_loss_k         so the gradient of replica k's weights is that of its own mean loss alone

Everything that differs between seeds is drawn from the replica's own streams exactly as a sequential run draws
it (``trainer.seeds_for``): initial weights (``config.model.build`` with the "init" generator), data order and
augmentation (``Data.train_batches`` with the "data" generator), dropout masks (``bernoulli_`` on the "torch"
stream, one mask per replica, in the layer order and shape of a sequential forward), gradient and weight noise
(the callbacks themselves, on the "noise" generator).

Each replica is a real ``Trainer`` from ``build_trainer`` (with the data loaded once) whose model's parameters
and buffers are views of the stacked tensors. The batch drives the K trainers in lockstep: its callbacks (grad
clipping, noise, the non-finite guard, early stopping, and the factory's callbacks) run on that trainer at the
loop's events, so clipping uses the replica's own global norm and stopping is per replica. One torch optimizer
holds every replica's own parameters (K optimizers' state, the decay / no-decay groups of ``optimizers.py``);
all replicas share the schedule's lr multiplier (the steps per epoch are equal). A replica that stops (early
stopping, divergence) leaves the stack: its weights, batch-norm statistics and optimizer state are never touched
again, its best weights are restored, and the rest continue, until all have stopped or the epochs run out.

Equality is bitwise on CPU (tests/test_batched.py checks every case with ``torch.equal`` and ``==``): each kernel
either runs once per replica on the replica's contiguous slice, which is the sequential run's own call, or is one
whose result per element does not depend on the layout (batched matmuls, which MKL computes as one gemm per
replica; relu; max pooling). Several penalties on one parameter meet in autograd's order of accumulation, which
matched the sequential run's in the tests (two kernel penalties on every weight) but is not guaranteed by
construction. ``can_batch`` says what cannot be batched.

Speed: exactness means each replica runs the kernels a sequential run runs (its own dropout mask, batch norm and
loss calls; matmuls of its own size), so on one CPU thread batching saves the loop's per-step overhead (Python,
dispatch, optimizer and callback calls), not the arithmetic: bench/bench_batched.py measures 1.2x over K = 16
sequential runs of a 2x256 MLP with batch norm and dropout, 2.2x for a 2x32 one.
"""

from __future__ import annotations

import copy
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.callbacks import Callback, fire
from trainlab.layers import activation_modules
from trainlab.models import CNN1d, CNN2d, MLP, ClassicDropout
from trainlab.regularizers import ActivityPenalty

if TYPE_CHECKING:
    from trainlab.config import RunConfig
    from trainlab.data import Data
    from trainlab.trainer import Trainer

BATCHED_MODELS = (MLP, CNN1d, CNN2d)
# Layers with no parameters that act on each sample alone (see PerSample).
PER_SAMPLE_LAYERS = (nn.Flatten, nn.Unflatten, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
MERGED_EXACT = (nn.Flatten, nn.Unflatten, nn.Identity, nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


# --- stacked layers: one module for K replicas' layers, input and output (K, B, ...) ---------------------------------

class _StackedLinearFn(torch.autograd.Function):
    """``y_k = x_k W_k^T + b_k`` for each replica k, with the gradients in the form torch's ``addmm`` computes them.

    ``dW_k = dy_k^T x_k``, ``dx_k = dy_k W_k``, ``db_k = sum_b dy_k``. Autograd's own ``bmm`` backward computes
    ``(x_k^T dy_k)^T`` instead, which for narrow layers (the head) differs from ``F.linear``'s in the last bit.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # forward(ctx, ...) rather than setup_context: with the latter, apply binds arguments via inspect.signature
        # on every call (measured: a third of this layer's Python time).
        ctx.save_for_backward(x, weight)
        wt = weight.transpose(1, 2)
        return torch.bmm(x, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, wt)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return (torch.bmm(grad, weight) if need_x else None,
                torch.bmm(grad.transpose(1, 2), x) if need_w else None,
                grad.sum(1) if need_b else None)


class StackedLayer(nn.Module):
    """The parameters and buffers of K replicas' copies of one layer, stacked on a leading replica axis.

    ``stacked.weight[k]`` is ``layers[k].weight``; after building, each replica's tensors are views of the stack,
    so an optimizer step on a replica's parameter (or ``load_state_dict`` on its model) changes the stack, and the
    replica's model shows the stack's current state.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        first = layers[0]
        for name, p in first._parameters.items():
            self.register_parameter(name, None if p is None else nn.Parameter(_stack(layers, name)))
        for name, b in first._buffers.items():
            self.register_buffer(name, None if b is None else _stack(layers, name))
        for k, layer in enumerate(layers):
            for name, t in (*self._parameters.items(), *self._buffers.items()):
                if t is not None:
                    getattr(layer, name).data = t.detach()[k]


def _stack(layers: Sequence[nn.Module], name: str) -> Tensor:
    return torch.stack([getattr(layer, name).detach() for layer in layers])


class StackedLinear(StackedLayer):
    """K ``nn.Linear`` layers: ``(K, B, in) -> (K, B, out)`` in one batched matmul."""

    def forward(self, x: Tensor) -> Tensor:
        return _StackedLinearFn.apply(x, self.weight, self.bias)


def _per_replica(fn: Callable[..., Tensor], x: Tensor, *stacked: Tensor | None) -> Tensor:
    """``stack([fn(x_k, t1_k, t2_k, ...) for each replica k])``; a ``None`` tensor is passed as ``None``.

    One call per replica on contiguous slices is the sequential run's own computation; for normalization it is
    also faster than one call over K·C channels, which needs two transposing copies each way (measured: 0.7 ms
    against 1.5 ms for batch norm of K = 8 x (128, 256), forward and backward).
    """
    parts = [t.unbind(0) if t is not None else [None] * len(x) for t in stacked]
    return torch.stack([fn(xk, *args) for xk, *args in zip(x.unbind(0), *parts)])


class StackedPerReplica(StackedLayer):
    """K ``nn.Conv1d/2d``, ``nn.LayerNorm`` or ``nn.GroupNorm`` layers: the layer's functional form once per replica.

    ``GroupNorm(1, C)`` is the layer norm of conv blocks. Alternatives measured and not taken: a grouped
    convolution (groups = K over K·C channels) is one call but neither faster on CPU for mnist1d's shapes nor
    bitwise equal (oneDNN picks another algorithm); one ``layer_norm`` without the affine transform followed by
    ``* w_k + b_k`` is not bitwise equal either (the kernel fuses the affine transform).
    """

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__(layers)
        self.fn = _functional(layers[0])

    def forward(self, x: Tensor) -> Tensor:
        return _per_replica(self.fn, x, self.weight, self.bias)


def _functional(layer: nn.Module) -> Callable[[Tensor, Tensor | None, Tensor | None], Tensor]:
    """``(x, weight, bias) -> layer(x)`` with the layer's other settings."""
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.padding_mode != "zeros":
            raise ValueError(f"Batched training supports convolutions with padding_mode='zeros'. "
                             f"Got padding_mode={layer.padding_mode!r} instead.")
        return functools.partial(F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d, stride=layer.stride,
                                 padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    if isinstance(layer, nn.LayerNorm):
        return functools.partial(_layer_norm, shape=layer.normalized_shape, eps=layer.eps)
    return functools.partial(_group_norm, groups=layer.num_groups, eps=layer.eps)


def _layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, *, shape: tuple[int, ...],
                eps: float) -> Tensor:
    return F.layer_norm(x, shape, weight, bias, eps)


def _group_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, *, groups: int, eps: float) -> Tensor:
    return F.group_norm(x, groups, weight, bias, eps)


class StackedBatchNorm(StackedLayer):
    """K ``nn.BatchNorm1d/2d`` layers (per unit or per feature map), each with its own batch and running statistics.

    Replica k normalizes with the mean and variance of its own batch and updates its own running statistics
    (rows k of the stacked (K, C) buffers), as ``nn.BatchNorm`` with a float momentum does.
    """

    def __init__(self, layers: Sequence[nn.modules.batchnorm._BatchNorm]):
        super().__init__(layers)
        first = layers[0]
        if first.momentum is None or not first.track_running_stats or not first.affine:
            raise ValueError(f"Batched training supports batch norm with a float momentum, running statistics and "
                             f"an affine transform. Got {first!r} instead.")
        self.momentum, self.eps = first.momentum, first.eps

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return _per_replica(lambda xk, mean, var, w, b: F.batch_norm(xk, mean, var, w, b, self.training,
                                                                     self.momentum, self.eps),
                            x, self.running_mean, self.running_var, self.weight, self.bias)


class StackedDropout(nn.Module):
    """K dropout layers (inverted ``nn.Dropout`` or ``ClassicDropout``), each mask from its replica's generator.

    Training: replica k's mask is ``empty(B, ...).bernoulli_(1 - p)`` drawn from ``generators[k]``, the stream a
    sequential run's dropout draws from (its global torch RNG), then divided by 1 - p for inverted dropout, as
    torch's CPU dropout does; ``y_k = x_k * mask_k``. Evaluation: identity (inverted) or ``x * (1 - p)`` (classic).
    """

    def __init__(self, layer: nn.Dropout | ClassicDropout, generators: Sequence[torch.Generator]):
        super().__init__()
        self.p, self.inverted = layer.p, isinstance(layer, nn.Dropout)
        self.generators = list(generators)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x if self.inverted else x * (1.0 - self.p)
        mask = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        for mask_k, generator in zip(mask.unbind(0), self.generators):
            mask_k.bernoulli_(1.0 - self.p, generator=generator)
        if self.inverted:
            mask.div_(1.0 - self.p)
        return x * mask


class PerSample(nn.Module):
    """A parameter-free layer that acts on each sample alone (activation, pooling, flatten).

    Layers in ``MERGED_EXACT`` run once on the K·B samples (views, comparisons, one multiply per element: exact in
    any layout). The others run once per replica: their vectorized kernels (exp, erf, sums) compute a tail that is
    not a multiple of the vector width with scalar code, so one call over K·B samples would differ from a
    sequential run in the last bit wherever a replica's tail falls (measured for elu, selu, silu and sigmoid with
    20 units and batches of 30).
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.inner, self.merged = layer, isinstance(layer, MERGED_EXACT)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.inner(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return _per_replica(self.inner, x)


STACKED_LAYERS: dict[type[nn.Module], type[StackedLayer]] = {
    nn.Linear: StackedLinear, nn.Conv1d: StackedPerReplica, nn.Conv2d: StackedPerReplica,
    nn.BatchNorm1d: StackedBatchNorm, nn.BatchNorm2d: StackedBatchNorm, nn.GroupNorm: StackedPerReplica,
    nn.LayerNorm: StackedPerReplica}


def stack_replicas(models: Sequence[nn.Module], generators: Sequence[torch.Generator]) -> nn.Module:
    """One module that runs K models of one architecture on a ``(K, B, ...)`` batch: output k is ``models[k]``'s.

    Containers (``nn.Sequential``) are mirrored with the same child names, so the stack's parameter and module
    names are the models' (``blocks.0.linear.weight`` is (K, out, in)). Each model's parameters and buffers become
    views of the stack (see ``StackedLayer``). ``generators[k]`` draws replica k's dropout masks.
    """
    first = models[0]
    if type(first) is nn.Sequential:
        return nn.Sequential(OrderedDict((name, stack_replicas([m._modules[name] for m in models], generators))
                                         for name in first._modules))
    if isinstance(first, (nn.Dropout, ClassicDropout)):
        return StackedDropout(first, generators)
    if type(first) in STACKED_LAYERS:
        return STACKED_LAYERS[type(first)](models)
    stateless = not any(True for _ in first.parameters()) and not any(True for _ in first.buffers())
    if stateless and isinstance(first, PER_SAMPLE_LAYERS + activation_modules()):
        return PerSample(copy.deepcopy(first))
    raise ValueError(f"Batched training has no stacked form of the layer {type(first).__name__} ({first!r}); "
                     f"train these runs sequentially.")


# --- what can be batched ----------------------------------------------------------------------------------------------

def can_batch(config: RunConfig, callbacks: Sequence[Callback] = (),
              model: nn.Module | None = None) -> tuple[bool, str]:
    """``(True, "")`` if ``train_replicas`` can train this config's seeds as one computation, else ``(False, why)``.

    ``callbacks`` are those a replica would get (one replica's ``callbacks_factory(seed)``); ``model`` stands for a
    user's own ``nn.Module`` in place of the config's model.
    """
    from trainlab.config import require_config

    require_config(config, "can_batch")
    if model is not None:
        return False, (f"a user's own nn.Module ({type(model).__name__}) has no stacked form; only the models "
                       f"config.model builds ({', '.join(m.name for m in BATCHED_MODELS)}) are batched")
    if not isinstance(config.model, BATCHED_MODELS):
        return False, (f"the 'model' {config.model.name!r} has no stacked form; batched models: "
                       f"{', '.join(m.name for m in BATCHED_MODELS)}")
    if getattr(config.model, "memory_format", "contiguous") == "channels_last":
        return False, ("the model's 'memory_format' 'channels_last' has no stacked form: per-replica slices of a "
                       "stacked batch are not in channels-last layout, so the kernels (and roundings) would differ "
                       "from a sequential run's")
    if config.precision != "fp32":
        return False, (f"the 'precision' {config.precision!r} (autocast) rounds a stacked matmul differently from "
                       f"each replica's own, so batched runs would not equal sequential ones")
    if config.optimizer.full_batch:
        return False, (f"the 'optimizer' {config.optimizer.name!r} takes one full-batch step per epoch with a "
                       f"closure; batched replicas step on minibatches")
    if config.schedule.name == "plateau":
        return False, ("the 'schedule' 'plateau' cuts each run's lr on that run's own metric, so the replicas' lrs "
                       "diverge; batched replicas share one lr multiplier")
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return False, (f"the 'device' {config.device!r} means CUDA; equality with sequential runs (dropout masks "
                       f"drawn from each run's own CPU stream, CPU kernels) is established on CPU only")
    for cb in callbacks:
        if not cb.per_replica:
            return False, (f"the callback {type(cb).__name__} does not declare per_replica (it may need the "
                           f"trainer's optimizer, schedule, full state or forward hooks)")
    return True, ""


# --- training K replicas in lockstep ----------------------------------------------------------------------------------

@dataclass
class ReplicaResult:
    """One replica's run, as a sequential run reports it: ``history`` (per-epoch metrics), ``final``
    (``Trainer.summary()``), ``extras`` (best_epoch, restored_epoch, diverged) and the trained ``model``.

    ``time_s`` in ``history`` and ``final`` is the batch's training time (shared by its replicas).
    """

    seed: int
    config: RunConfig
    history: list[dict[str, Any]]
    final: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None


CallbacksFactory = Callable[[int], Sequence[Callback]]


def train_replicas(config: RunConfig, seeds: Sequence[int], callbacks_factory: CallbacksFactory | None = None, *,
                   data: Data | None = None) -> list[ReplicaResult]:
    """Train ``config`` once per seed as one batched computation; result k equals the sequential run of seeds[k].

    ``callbacks_factory(seed)`` gives a replica's own callbacks (as ``build_trainer(config, callbacks)`` takes
    them); ``data`` replaces loading the config's data (once, shared by all replicas). Raises ``ValueError``
    with ``can_batch``'s reason when the config cannot be batched: train it with ``train_sequentially``.
    """
    from trainlab.config import load_config, require_config
    from trainlab.data import load_data
    from trainlab.trainer import build_trainer, resolve_device

    require_config(config, "train_replicas")
    seeds = _check_seeds(seeds)
    callbacks = {s: list(callbacks_factory(s)) if callbacks_factory is not None else [] for s in seeds}
    for s in seeds:
        ok, why = can_batch(config, callbacks[s])
        if not ok:
            raise ValueError(f"The config cannot be batched: {why}. Train its seeds with train_sequentially.")
    data = (data if data is not None else load_data(config.data)).to(resolve_device(config.device))
    configs = [load_config(config, {"seed": s}) for s in seeds]
    trainers = [build_trainer(c, callbacks[s], data=data) for c, s in zip(configs, seeds)]
    return ReplicaBatch(configs, trainers).fit()


def train_sequentially(config: RunConfig, seeds: Sequence[int],
                       callbacks_factory: CallbacksFactory | None = None) -> list[ReplicaResult]:
    """The reference ``train_replicas`` equals: ``build_trainer(load_config(config, {"seed": s})).fit()`` per seed."""
    from trainlab.config import load_config, require_config
    from trainlab.trainer import build_trainer

    require_config(config, "train_sequentially")
    results = []
    for s in _check_seeds(seeds):
        run_config = load_config(config, {"seed": s})
        trainer = build_trainer(run_config, list(callbacks_factory(s)) if callbacks_factory is not None else [])
        final = trainer.fit()
        results.append(ReplicaResult(s, run_config, trainer.history, final, trainer.extras, trainer.model))
    return results


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"The 'seeds' argument must be a non-empty sequence of ints >= 0. Got {seeds!r} instead.")
    return seeds


def _fire(trainer: Trainer, event: str) -> str:
    """Run ``event`` on one replica's callbacks as ``Trainer`` does (``callbacks.fire``); the stop reason or ``""``."""
    stop = fire(trainer.callbacks, trainer, event)
    return "" if stop is None else str(stop)


class ReplicaBatch:
    """K replicas' trainers advanced in lockstep through one stacked network (see the module docstring).

    ``active`` holds the replicas still training, in seed order; ``sums`` their running (loss * n, correct)
    sums of the epoch; ``net`` is rebuilt from the active models whenever one stops.
    """

    def __init__(self, configs: Sequence[RunConfig], trainers: Sequence[Trainer]):
        from trainlab.trainer import seeds_for

        self.configs, self.trainers, self.data = list(configs), list(trainers), trainers[0].data
        self.config = config = configs[0]
        self.classification = self.data.task == "classification"
        self.dropout_generators = [torch.Generator().manual_seed(seeds_for(c.seed)["torch"]) for c in configs]
        models = [t.model for t in self.trainers]
        # One optimizer over every replica's own parameters: K optimizers' state; a stopped replica's parameters
        # get no gradient, so they are skipped (Adam would move them even on a zero gradient).
        self.optimizer = config.optimizer.build(nn.ModuleList(models))
        steps_per_epoch = self.data.steps_per_epoch(config.data.batch_size)
        self.scheduler = config.schedule.build(self.optimizer, config.epochs * steps_per_epoch, steps_per_epoch)
        self.penalties = [(p.regularizer, p.selected, isinstance(p, ActivityPenalty)) for p in trainers[0].penalties]
        for t in self.trainers:
            for p in t.penalties:
                p.remove()  # the stack computes every replica's penalties; the models never run a training forward
        self.active = list(range(len(self.trainers)))
        self.results: dict[int, ReplicaResult] = {}
        self.epoch, self.elapsed_s = 0, 0.0
        self.sums: tuple[Tensor, Tensor] | None = None
        self._restack()

    def _restack(self) -> None:
        models = [self.trainers[k].model for k in self.active]
        self.net = stack_replicas(models, [self.dropout_generators[k] for k in self.active])
        self.params = [list(m.parameters()) for m in models]
        self.net_params = list(self.net.parameters())
        modules = dict(self.net.named_modules())
        self.outputs: dict[str, Tensor] = {}
        for _, names, activity in self.penalties:
            for name in names if activity else ():
                modules[name].register_forward_hook(self._record(name))

    def _record(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: Tensor) -> None:
            if module.training:
                self.outputs[name] = output
        return hook

    def fit(self) -> list[ReplicaResult]:
        self._after_event("on_fit_start", {k: _fire(self.trainers[k], "on_fit_start") for k in self.active})
        while self.active and self.epoch < self.config.epochs:
            self._epoch()
        for k in list(self.active):
            self._retire(k, "")
        return [self.results[k] for k in range(len(self.trainers))]

    def _epoch(self) -> None:
        self.net.train()
        self._after_event("on_epoch_start", {k: _fire(self.trainers[k], "on_epoch_start") for k in self.active})
        start = time.perf_counter()
        batches = {k: self.data.train_batches(self.config.data.batch_size, self.trainers[k].generator)
                   for k in self.active}
        self.sums = (torch.zeros(len(self.active)), torch.zeros(len(self.active), dtype=torch.long))
        seen = 0
        for _ in range(self.data.steps_per_epoch(self.config.data.batch_size)):
            if not self.active:  # every replica stopped inside this epoch
                return
            seen += self._step([next(batches[k]) for k in self.active])
        self.elapsed_s += time.perf_counter() - start
        self.epoch += 1
        self._epoch_end(seen)

    def _step(self, pairs: list[tuple[Tensor, Tensor]]) -> int:
        """One optimizer step of every active replica on its own batch; returns the batch size."""
        trainers = [self.trainers[k] for k in self.active]
        for t, pair in zip(trainers, pairs):
            t.batch = pair
        self._after_event("on_step_start", {k: _fire(self.trainers[k], "on_step_start") for k in self.active})
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        out = self.net(x)
        losses = [t.loss_fn(o, yk) for t, o, yk in zip(trainers, out.unbind(0), y.unbind(0))]
        totals = self._with_penalties(losses)
        for p in self.net_params:
            p.grad = None
        torch.stack(totals).sum().backward()
        self._share_gradients()
        for t, total in zip(trainers, totals):
            t.loss = total.detach()
        self._after_event("after_backward", {k: _fire(self.trainers[k], "after_backward") for k in self.active})
        self.optimizer.step()
        self.scheduler.step()
        self.sums[0].add_(torch.stack(losses).detach() * y.shape[1])
        if self.classification:
            self.sums[1].add_((out.detach().argmax(2) == y).sum(1))
        stops = {k: _fire(self.trainers[k], "on_step_end") for k in self.active}
        for k in self.active:
            if not stops[k]:  # a run stopped at on_step_end does not count that step (as in Trainer._epoch)
                self.trainers[k].step += 1
        self._after_event("on_step_end", stops)
        return y.shape[1]

    def _with_penalties(self, losses: list[Tensor]) -> list[Tensor]:
        """``loss_k + (0 + P_1k + P_2k + ...)`` as a sequential run adds its penalties, each P of replica k alone."""
        if not self.penalties:
            return losses
        params = dict(self.net.named_parameters())
        totals = [torch.zeros(()) for _ in losses]
        for regularizer, names, activity in self.penalties:
            values = [torch.zeros(()) for _ in losses]
            for name in names:
                per_replica = (self.outputs[name] if activity else params[name]).unbind(0)
                for k, t in enumerate(per_replica):
                    values[k] = values[k] + regularizer.penalty(t) / (t.shape[0] if activity and t.ndim else 1)
            totals = [a + b for a, b in zip(totals, values)]
        return [loss + total for loss, total in zip(losses, totals)]

    def _share_gradients(self) -> None:
        """Replica k's parameters get views of the stacked gradients' slice k (what the optimizer steps on)."""
        grads = [p.grad.unbind(0) if p.grad is not None else None for p in self.net_params]
        for i, params in enumerate(self.params):
            for p, g in zip(params, grads):
                p.grad = None if g is None else g[i]

    def _epoch_end(self, seen: int) -> None:
        loss_sums, correct = self.sums[0].tolist(), self.sums[1].tolist()
        val = self._evaluate("val") if len(self.data.y_val) else [{} for _ in self.active]
        lr = self.optimizer.param_groups[0]["lr"]
        # The plateau schedule (the only one that reads epoch metrics) is refused by can_batch.
        for i, k in enumerate(self.active):
            t = self.trainers[k]
            t.epoch, t.elapsed_s = self.epoch, self.elapsed_s
            t.metrics = {"epoch": t.epoch, "step": t.step, "train_loss": loss_sums[i] / max(seen, 1)}
            if self.classification:
                t.metrics["train_acc"] = correct[i] / max(seen, 1)
            t.metrics.update({f"val_{name}": v for name, v in val[i].items()})
            t.metrics.update(lr=lr, time_s=self.elapsed_s)
            t.history.append(t.metrics)
        self._after_event("on_epoch_end", {k: _fire(self.trainers[k], "on_epoch_end") for k in self.active})

    @torch.no_grad()
    def _evaluate(self, split: str) -> list[dict[str, float]]:
        """Each active replica's ``Trainer.evaluate(split)``: mean loss (and accuracy), in eval mode."""
        self.net.eval()
        n = len(self.active)
        loss_sum, correct, seen = torch.zeros(n), torch.zeros(n, dtype=torch.long), 0
        loss_fn = self.trainers[self.active[0]].loss_fn
        for x, y in self.data.eval_batches(split, self.config.data.eval_batch_size):
            out = self.net(x.expand(n, *x.shape).contiguous())
            loss_sum += torch.stack([loss_fn(o, y) for o in out.unbind(0)]) * len(y)
            if self.classification:
                correct += (out.argmax(2) == y).sum(1)
            seen += len(y)
        self.net.train()
        keys = ("loss", "acc") if self.classification else ("loss",)
        return [dict(zip(keys, (loss / max(seen, 1), hits / max(seen, 1))))
                for loss, hits in zip(loss_sum.tolist(), correct.tolist())]

    def _after_event(self, event: str, reasons: dict[int, str]) -> None:
        """Retire the replicas a callback stopped at ``event``; stops are honoured where a sequential run would."""
        stopped = [k for k, reason in reasons.items() if reason]
        if not stopped:
            return
        if event in ("on_step_start", "after_backward"):
            raise RuntimeError(f"A callback stopped replica {stopped[0]} at {event}; batched training honours stops "
                               f"at on_fit_start, on_epoch_start, on_step_end and on_epoch_end only.")
        keep = torch.tensor([i for i, k in enumerate(self.active) if k not in stopped], dtype=torch.long)
        for k in stopped:
            self._retire(k, reasons[k])
        if self.active:
            if self.sums is not None:
                self.sums = (self.sums[0].index_select(0, keep), self.sums[1].index_select(0, keep))
            self._restack()

    def _retire(self, k: int, reason: str) -> None:
        """Replica k leaves the stack: its tensors get storage of their own, then on_fit_end and its summary."""
        t = self.trainers[k]
        self.active.remove(k)
        if reason:
            t.stopped_reason = reason
        for tensor in (*t.model.parameters(), *t.model.buffers()):
            tensor.grad = None
            tensor.data = tensor.data.clone()
        _fire(t, "on_fit_end")
        self.results[k] = ReplicaResult(self.configs[k].seed, self.configs[k], t.history, t.summary(), t.extras,
                                        t.model)
