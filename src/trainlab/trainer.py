"""The one training loop: ``fit -> epoch -> step``, with callbacks at a closed set of events (see callbacks.py).

The loop keeps its running sums on the device and reads them once per epoch, so it makes no host sync per step
unless a callback asks for one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from trainlab.callbacks import Callback, StopTraining, fire
from trainlab.data import ArraysLike, Data, DataConfig, WeightedData
from trainlab.registry import ConfigError, suggest

if TYPE_CHECKING:
    from trainlab.config import RunConfig
    from trainlab.distributed import DataParallel
    from trainlab.schedules import LRController

# Events at which data-parallel ranks agree whether to stop (once an epoch, not per step: see distributed.py).
AGREED_EVENTS = frozenset({"on_fit_start", "on_epoch_start", "on_epoch_end"})


class Trainer:
    """Trains ``model`` on ``data`` for ``epochs`` epochs; callbacks add everything else.

    ``scheduler`` (from ``Schedule.build``) sets the optimizer's lr after every step; batch sizes default to
    ``DataConfig``'s. ``parallel`` (``distributed.start``) makes this one rank of a data-parallel run: it trains
    ``model`` wrapped in DistributedDataParallel on its slice of every batch.
    """

    def __init__(self, model: nn.Module, data: Data, optimizer: torch.optim.Optimizer, *, epochs: int,
                 scheduler: LRController | None = None, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 penalties: Sequence[Any] = (), callbacks: Sequence[Callback] = (),
                 batch_size: int = DataConfig.model_fields["batch_size"].default,
                 eval_batch_size: int = DataConfig.model_fields["eval_batch_size"].default,
                 generator: torch.Generator | None = None, parallel: DataParallel | None = None,
                 precision: str = "fp32"):
        self.model, self.data, self.optimizer, self.scheduler = model, data, optimizer, scheduler
        self.parallel = parallel
        # The training forward pass goes through DDP (which averages gradients); the state and evaluation use model.
        self.train_model = parallel.wrap(model) if parallel is not None else model
        self.rank_rng: list[list[Tensor]] | None = None  # every rank's generator states at the last epoch end
        self.loss_fn = loss_fn or default_loss(data.task)
        self.penalties = list(penalties)
        self.callbacks = list(callbacks)
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.device = next(model.parameters()).device
        self.precision = MixedPrecision(precision, self.device)
        self.step = 0
        self.epoch = 0
        self.batch: tuple[Tensor, Tensor] | None = None
        self.loss: Tensor | None = None
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.extras: dict[str, Any] = {}
        self.stopped_reason = ""
        self.elapsed_s = 0.0

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch or the first stop; the final summary (see ``summary``)."""
        with flush_subnormals():
            self._fire("on_fit_start")
            try:
                # A resumed run that had already stopped (early stopping, divergence) stays stopped.
                while self.epoch < self.epochs and not self.stopped_reason:
                    self._epoch()
            except StopTraining as stop:
                self.stopped_reason = str(stop)
            self._fire("on_fit_end")
            return self.summary()

    def _epoch(self) -> None:
        self.model.train()
        self._fire("on_epoch_start")
        start = time.perf_counter()
        full_batch = getattr(self.optimizer, "full_batch", False)
        loss_sum, correct, seen = self._full_batch_step() if full_batch else self._minibatch_steps()
        self.elapsed_s += time.perf_counter() - start
        self.epoch += 1
        metrics = {"epoch": self.epoch, "step": self.step, "train_loss": loss_sum.item() / max(seen, 1)}
        if self.data.task == "classification":
            metrics["train_acc"] = correct.item() / max(seen, 1)
        if len(self.data.y_val):
            metrics.update({f"val_{k}": v for k, v in self.evaluate("val").items()})
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["time_s"] = self.elapsed_s
        self.metrics = metrics
        self.history.append(metrics)
        if self.scheduler is not None:
            self.scheduler.epoch_end(metrics)
        if self.parallel is not None:
            self.rank_rng = self.parallel.rng_states()
        self._fire("on_epoch_end")

    def _minibatch_steps(self) -> tuple[Tensor, Tensor, int]:
        """One step per training batch; the epoch's summed loss, correct count and sample count.

        The steps' losses and predictions are kept and summed at the epoch's end, in fewer ops than running sums.
        """
        losses: list[Tensor] = []
        sizes: list[int] = []
        predicted: list[Tensor] = []
        targets: list[Tensor] = []
        classification = self.data.task == "classification"
        for x, y in self.data.train_batches(self.batch_size, self.generator):
            counted = True
            if self.parallel is not None:
                x, y, counted = self.parallel.shard(x, y)
            self.batch = (x, y)
            self._fire("on_step_start")
            with self.precision.autocast():
                out = self.train_model(x)
                loss = self.loss_fn(out, y)
            total = loss + sum(p.value() for p in self.penalties) if self.penalties else loss
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.backward(total, self.optimizer)
            # Data-parallel ranks all see the global batch's loss, so they take the same decisions from it.
            self.loss = total.detach() if self.parallel is None else self.parallel.mean(total)
            self._fire("after_backward")
            self.precision.step(self.optimizer)
            if counted:
                losses.append(loss.detach())
                sizes.append(len(y))
                if classification:
                    predicted.append(out.detach().argmax(1))
                    targets.append(y)
            self._end_step()
        loss_sum = weighted_sum_in_order(losses, sizes, self.device)
        correct = (torch.cat(predicted).eq(torch.cat(targets)).sum() if predicted
                   else torch.zeros((), device=self.device, dtype=torch.long))
        seen = sum(sizes)
        if self.parallel is not None:
            return self.parallel.sum(loss_sum, correct, seen)
        return loss_sum, correct, seen

    def _full_batch_step(self) -> tuple[Tensor, Tensor, int]:
        """One ``optimizer.step(closure)`` on the whole training split (``full_batch`` optimizers).

        ``closure()`` evaluates loss + penalties on all training data and backpropagates; ``closure(backward=False)``
        returns it attached to its graph (for Hessian products). The metrics and ``after_backward`` come from the
        first evaluation, which the full-batch optimizers make at the parameters before the step.
        """
        x, y = self.batch = (self.data.x_train, self.data.y_train)
        self._fire("on_step_start")
        first: list[tuple[Tensor, Tensor]] = []

        def closure(backward: bool = True) -> Tensor:
            out = self.model(x)
            loss = self.loss_fn(out, y)
            total = loss + sum(p.value() for p in self.penalties) if self.penalties else loss
            if not backward:
                return total
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if not first:
                first.append((loss.detach(), self._correct(out, y)))
                self.loss = total.detach()
                self._fire("after_backward")
            return total.detach()

        self.optimizer.step(closure)
        loss, correct = first[0]
        self._end_step()
        return loss * len(y), correct, len(y)

    def _correct(self, out: Tensor, y: Tensor) -> Tensor:
        if self.data.task != "classification":
            return torch.zeros((), device=self.device, dtype=torch.long)
        return (out.detach().argmax(1) == y).sum()

    def _end_step(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        self._fire("on_step_end")
        self.step += 1

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Mean loss (and accuracy for classification) on ``train``, ``val`` or ``test``, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in self.data.eval_batches(split, self.eval_batch_size):
            out = self.model(x)
            loss_sum += self.loss_fn(out, y) * len(y)
            if self.data.task == "classification":
                correct += (out.argmax(1) == y).sum()
            seen += len(y)
        self.model.train(was_training)
        result = {"loss": loss_sum.item() / max(seen, 1)}
        if self.data.task == "classification":
            result["acc"] = correct.item() / max(seen, 1)
        return result

    def summary(self) -> dict[str, Any]:
        """Final metrics: the last epoch's, then test metrics of the model as it is now (best weights if restored)."""
        final: dict[str, Any] = dict(self.history[-1]) if self.history else {}
        final.pop("epoch", None)
        final.pop("step", None)  # reported as "steps" below
        if len(self.data.y_val):
            final.update({f"val_{k}": v for k, v in self.evaluate("val").items()})
        if len(self.data.y_test):
            final.update({f"test_{k}": v for k, v in self.evaluate("test").items()})
        final["epochs_run"] = self.epoch
        final["steps"] = self.step
        final["stopped_reason"] = self.stopped_reason
        final["time_s"] = self.elapsed_s
        return final

    def _fire(self, event: str) -> None:
        stop = fire(self.callbacks, self, event)
        if self.parallel is not None and event in AGREED_EVENTS:
            stop = self.parallel.agree(stop, self.extras)
        if stop is not None:
            raise stop

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs besides the config: weights, optimizer, schedule, callbacks, RNG, counters."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr": self.scheduler.state_dict() if self.scheduler is not None else {},
            "callbacks": {key: cb.state_dict() for key, cb in self._stateful_callbacks().items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "precision": self.precision.state_dict(),
            "epoch": self.epoch, "step": self.step, "elapsed_s": self.elapsed_s,
            "history": self.history, "extras": self.extras, "stopped_reason": self.stopped_reason,
            **({"rank_rng": self.rank_rng} if self.parallel is not None else {}),
        }

    def _stateful_callbacks(self) -> dict[str, Callback]:
        """Callbacks that carry state, keyed by class name and occurrence (``EarlyStopping#0``)."""
        out: dict[str, Callback] = {}
        for cb in self.callbacks:
            if type(cb).state_dict is not Callback.state_dict:
                name = type(cb).__name__
                out[f"{name}#{sum(k.startswith(name + '#') for k in out)}"] = cb
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["lr"])
        stateful = self._stateful_callbacks()
        if set(stateful) != set(state["callbacks"]):
            raise ValueError(f"The checkpoint holds state for callbacks {sorted(state['callbacks'])}; this trainer "
                             f"has {sorted(stateful)}. Resume with the same config and callbacks.")
        for key, cb in stateful.items():
            cb.load_state_dict(state["callbacks"][key])
        self.precision.load_state_dict(state.get("precision", {}))
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.parallel is not None:
            self.parallel.restore_rng(state)
            self.rank_rng = state.get("rank_rng")
        self.epoch, self.step, self.elapsed_s = state["epoch"], state["step"], state["elapsed_s"]
        self.history = list(state["history"])
        self.metrics = dict(self.history[-1]) if self.history else {}
        self.extras = dict(state["extras"])
        # Checkpoints written before the reason was part of the state hold none: they resume as unstopped.
        self.stopped_reason = state.get("stopped_reason", "")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NO_AUTOCAST = nullcontext()


class MixedPrecision:
    """The training step's arithmetic: ``fp32``, or mixed precision, ``bf16`` or ``fp16``.

    Mixed precision runs the training forward pass and loss under ``torch.autocast``: matmuls and convolutions in
    the low-precision type, the ops autocast keeps in float32 (the loss; on CUDA also softmax and layer norm) in
    float32, the rest (activations, batch norm on the CPU) in the type they receive. Weights, gradients, optimizer
    state and penalties stay float32, and evaluation runs in float32. ``fp16`` has a 5-bit exponent, so its loss is
    scaled by a ``torch.amp.GradScaler``: the ``after_backward`` callbacks (clipping, gradient noise, probes) see
    the gradients unscaled, and a step whose gradients overflowed is skipped and the scale halved. ``bf16`` has
    float32's range and needs no scaling. Micikevicius et al., "Mixed precision training", ICLR 2018.
    """

    def __init__(self, name: str, device: torch.device):
        if name not in PRECISIONS:
            raise ValueError(f"The 'precision' parameter must be one of {', '.join(PRECISIONS)}. "
                             f"Got {name!r} instead.")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("The 'precision' parameter is 'bf16', which this CUDA device does not support. "
                             "Use 'fp16' or 'fp32'.")
        if name == "fp16" and device.type == "cpu":
            warnings.warn("precision 'fp16' on the CPU: CPUs without float16 arithmetic emulate it (an epoch of the "
                          "MNIST-1D recipes took 10-13x its fp32 time on an AVX-512 CPU); 'bf16' is the CPU's "
                          "mixed precision.", stacklevel=3)
        self.device_type, self.dtype = device.type, PRECISIONS[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        # A disabled torch.autocast still costs 6 us a step on the CPU; a nullcontext 0.3 us.
        if self.dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, total: Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            total.backward()
            return
        self.scaler.scale(total).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def flushes_subnormals() -> bool:
    """Whether the CPU now treats subnormal floats as zero: 1e-39 (below float32's smallest normal, 1.2e-38) times 2
    is 0 then, and 2e-39 otherwise."""
    return float(torch.tensor([1e-39], dtype=torch.float32).mul(2.0)[0]) == 0.0


@contextmanager
def flush_subnormals() -> Iterator[None]:
    """Flush subnormal floats to zero inside the block, and restore the caller's setting after it.

    A collapsing network's activations and gradients can go subnormal (below 1.2e-38 in float32), and x86 CPUs
    compute on those tens of times slower (a ReLU MLP trained at 9 s an epoch instead of 0.36 s here). Values that
    small carry no information for training, so zero is as good and fast. Where the CPU offers no such mode,
    ``torch.set_flush_denormal`` says so and nothing changes.
    """
    before = flushes_subnormals()
    changed = torch.set_flush_denormal(True) and not before
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def weighted_sum_in_order(values: list[Tensor], counts: list[int], device: torch.device) -> Tensor:
    """``sum_i values[i] * counts[i]`` (0-dim tensors times ints) added left to right in the values' dtype, read
    from the device once: bitwise the running sum ``total += value * count`` that many ops would compute.

    (torch's own sums accumulate float32 in double on the CPU, so they would not reproduce the running sum.)
    """
    if not values:
        return torch.zeros((), device=device)
    terms = torch.stack(values)
    terms = (terms * torch.tensor(counts, dtype=terms.dtype, device=terms.device)).cpu().numpy()
    total = terms.dtype.type(0)
    for term in terms:
        total = total + term
    return torch.tensor(total, device=device)


def epoch_metric_names(data: Data) -> list[str]:
    """The metrics ``Trainer`` logs at each epoch's end for this data (what a monitor may name)."""
    names = ["epoch", "step", "train_loss"]
    if data.task == "classification":
        names.append("train_acc")
    if len(data.y_val):
        names += ["val_loss", "val_acc"] if data.task == "classification" else ["val_loss"]
    return names + ["lr", "time_s"]


def _check_monitor(monitor: str, path: str, data: Data) -> None:
    logged = epoch_metric_names(data)
    if monitor in logged:
        return
    if monitor.startswith("val_") and not len(data.y_val):
        why = "there is no validation split: data.val_fraction is 0. "
    elif monitor.endswith("_acc") and data.task != "classification":
        why = f"accuracy is logged for classification only; this data is a {data.task} task. "
    else:
        why = suggest(monitor, logged)
    raise ConfigError(f"The '{path}' parameter names {monitor!r}, which this run does not log; {why}"
                      f"Logged metrics: {', '.join(logged)}.")


def _check_full_batch(config: RunConfig, data: Data) -> None:
    """Refuse what a full-batch optimizer (one closure step per epoch, with its own line search) cannot honour."""
    name = config.optimizer.name
    reasons = {
        "grad_clip": (config.grad_clip is not None, "it would change the gradient the line search relies on"),
        "gradient_noise": (config.gradient_noise > 0, "it would change the gradient the line search relies on"),
        "data.augment": (bool(data.augment), "augmentation makes the full-batch objective random"),
        "schedule": (config.schedule.name != "constant" and "lr" not in type(config.optimizer).model_fields,
                     f"{name} has no learning rate to schedule"),
        "precision": (config.precision != "fp32", "its line search and curvature need the objective in float32"),
    }
    for path, (applies, why) in reasons.items():
        if applies:
            raise ConfigError(f"The '{path}' parameter cannot apply with the full-batch optimizer {name}: {why}. "
                              f"Remove it, or use a minibatch optimizer (adamw, sgd, ...).")


def default_loss(task: str, label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy for classification, mean squared error for regression."""
    if task == "classification":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return nn.MSELoss()


class WeightedLoss(nn.Module):
    """``mean_i(w_i * loss_i)`` over a training batch of ``WeightedData`` (weights of mean 1 over the training set);
    the plain mean loss in evaluation, where the data sets no batch weights."""

    def __init__(self, data: WeightedData, label_smoothing: float = 0.0):
        super().__init__()
        self.data = data
        self.plain = default_loss(data.task, label_smoothing)
        self.per_sample = (nn.CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)
                           if data.task == "classification" else nn.MSELoss(reduction="none"))

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        weights = self.data.batch_weights
        if weights is None:
            return self.plain(out, y)
        losses = self.per_sample(out, y)
        return (losses.reshape(len(y), -1).mean(1) * weights).mean()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("The 'device' parameter of RunConfig is 'cuda', but this torch build sees no CUDA device. "
                         "Use 'cpu' or 'auto'.")
    return torch.device(name)


def seeds_for(seed: int) -> dict[str, int]:
    """Independent streams from one seed, so changing the model does not change the data order (and so on)."""
    import numpy as np

    streams = ("init", "data", "torch", "noise")
    return dict(zip(streams, (int(s) for s in np.random.SeedSequence(seed).generate_state(len(streams)))))


def build_trainer(config: RunConfig, callbacks: Sequence[Callback] = (), *, model: nn.Module | None = None,
                  data: Data | ArraysLike | None = None, parallel: DataParallel | None = None) -> Trainer:
    """Data, model, optimizer, schedule, penalties and callbacks from a validated config (``load_config``).

    ``model`` replaces the config's model with any ``nn.Module``; ``data`` replaces loading the config's data: a
    ``Data``, or arrays ``(x, y)`` / ``(x, y, x_test, y_test)`` split and preprocessed by ``config.data``.
    ``parallel`` (``distributed.start``) builds one rank of a data-parallel run, on that rank's device.
    """
    from trainlab.callbacks import EarlyStopping, GradClip, GradientNoise, NonFiniteGuard, WeightNoise
    from trainlab.config import require_config
    from trainlab.data import as_data

    require_config(config, "build_trainer")
    device = resolve_device(config.device) if parallel is None else parallel.device
    if config.threads:
        torch.set_num_threads(config.threads)
    seeds = seeds_for(config.seed)
    torch.manual_seed(seeds["torch"] if parallel is None else parallel.seed(seeds["torch"]))
    data = as_data(data, config.data, "build_trainer").to(device)
    if parallel is not None:
        parallel.check(data)
    # A monitor or a loss option that cannot apply fails now, not after the first epoch (or silently).
    if config.early_stopping is not None:
        _check_monitor(config.early_stopping.monitor, "early_stopping.monitor", data)
    if config.schedule.name == "plateau":
        _check_monitor(config.schedule.monitor, "schedule.monitor", data)
    if config.label_smoothing and data.task != "classification":
        raise ConfigError(f"The 'label_smoothing' parameter of RunConfig applies to classification only; this "
                          f"data is a {data.task} task. Got {config.label_smoothing} instead; use 0.")
    if model is None:
        model = config.model.build(data.input_shape, data.num_outputs, torch.Generator().manual_seed(seeds["init"]))
    model = model.to(device)
    if parallel is not None:
        model = parallel.prepare(model)  # before the optimizer and penalties take its parameters and modules
    optimizer = config.optimizer.build(model)
    full_batch = getattr(optimizer, "full_batch", False)
    if full_batch:
        _check_full_batch(config, data)
    steps_per_epoch = 1 if full_batch else data.steps_per_epoch(config.data.batch_size)
    scheduler = config.schedule.build(optimizer, config.epochs * steps_per_epoch, steps_per_epoch)
    penalties = [r.attach(model) for r in config.regularizers]
    noise = torch.Generator().manual_seed(seeds["noise"])
    standard: list[Callback] = []
    if config.weight_noise:
        standard.append(WeightNoise(config.weight_noise, noise))
    if config.gradient_noise:
        standard.append(GradientNoise(config.gradient_noise, noise))
    if config.grad_clip:
        standard.append(GradClip(config.grad_clip))
    # The guard comes first so a diverged run is reported as such, not as an early stop on a NaN metric.
    standard.append(NonFiniteGuard())
    if config.early_stopping is not None:
        standard.append(EarlyStopping(config.early_stopping))
    loss_fn = (WeightedLoss(data, config.label_smoothing) if isinstance(data, WeightedData)
               else default_loss(data.task, config.label_smoothing))
    return Trainer(model, data, optimizer, scheduler=scheduler, loss_fn=loss_fn,
                   penalties=penalties, callbacks=[*standard, *callbacks], epochs=config.epochs,
                   batch_size=config.data.batch_size, eval_batch_size=config.data.eval_batch_size,
                   generator=torch.Generator().manual_seed(seeds["data"]), parallel=parallel,
                   precision=config.precision)
