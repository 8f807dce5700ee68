"""Study 2: activation functions in a deep MLP — speed, gradient flow, dead units and cost.

Main part: a deep MLP (``depth`` hidden layers of ``width`` units) on MNIST-1D, once per activation (sigmoid, tanh,
relu, leaky_relu, elu, gelu, selu), each with the initialization ``auto`` picks for it (Xavier for sigmoid/tanh,
He for the ReLU family, LeCun for SELU), so every activation starts from its recommended scale and the comparison
is about the function, not a mismatched init. SGD with momentum, the same lr for all. The ``Diagnostics`` callback
samples every ``every`` steps the gradient RMS (norm / sqrt(size)) of every weight matrix; ``measures.StepLoss``
keeps the loss of every step. At the end a probe on the validation set measures each layer's mean activation and its
dead units.

Dead-unit part: ReLUs die when large updates push a unit's pre-activation below 0 for every input; then its output
and its gradient are 0 and it never recovers. At the main learning rate few die, so relu, leaky_relu and elu are
also trained with Adam at ten times its default lr (``dead_lr``), a setting where ReLUs do die.

Centring part: is it sigmoid's always-positive output (mean about 1/2) that slows learning, or its shape? A shallower
MLP (``centring_depth`` hidden layers: at the main depth a sigmoid net learns nothing within the budget, the
vanishing gradients above, so a difference in speed could not show) is trained with sigmoid and with
``CentredSigmoid``, σ(x) - 1/2: the same function shifted down, with the same slope at every input, so the only
difference is the mean of the outputs. Both start from the same weights (Xavier, as ``auto`` picks for sigmoid) and
see the same batches. With positive inputs, every weight into a unit has a gradient of the unit's sign (δ·h with
h > 0), so the updates of a row move together and zig-zag (LeCun et al., "Efficient BackProp", 1998). The positive
mean also shifts the first logits, so the sigmoid net starts from a higher loss; the measure counts both.

Nonlinearity part: the main tanh net trained again with every tanh replaced by the identity (``LinearNet``, from
the same Xavier weights, which keep a linear stack's scale), so the network is a linear model; its test accuracy
against the main ReLU net's.

Definitions fixed before measuring:

- *dead unit*: a unit whose activation slope |f'(z)| is below ``SLOPE_EPS`` for every sample of the probe batch:
  no gradient passes through it. For ReLU this is "outputs 0 for every sample" (the diagnostics' definition); a
  leaky ReLU's slope is never below its negative slope (0.01), so its units cannot die by construction, which is
  exactly the fix the notes claim; an ELU unit dies only deep in its flat negative tail (z < ln(1e-3) ≈ -6.9); a
  sigmoid or tanh unit dies when saturated for every sample.
- *gradient ratio*: gradient RMS of the first weight matrix over that of the last (the output layer), as log10;
  "much smaller" means by at least ``MUCH_SMALLER_DECADES`` orders of magnitude.
- *converges faster*: fewer steps until the moving average of the step loss (``measures.smoothed_loss``) falls to
  ``target_fraction`` of the chance-level loss ln(classes) (the loss of a uniform guess; one absolute target for
  every activation, since their first losses differ); a run that never gets there counts as one step more than a
  full run (``measures.steps_to_target``).
- *learns slower*: a higher mean over the run of the moving-average step loss (the area under the training curve per
  step, lower = learned sooner), by more than ``SLOWER_LOSS`` nats, paired by seed;
- *costs more*: at least ``COSTLIER`` (1.1) times ReLU's time in a micro-benchmark of one forward and backward
  pass on a tensor of ``bench_sizes[0]`` float32 values (1 MiB: the data stay in cache, so the arithmetic, exp
  included, is what is timed), fastest of ``bench_reps`` repeats, activations interleaved, one trial per seed;
  ``bench_sizes[1]`` (16 MiB) is measured too and shown: there memory traffic dominates and the cost of exp can
  vanish. The table also gives each run's wall time per
  training step (diagnostics included), where at width 64 the Python overhead of a step hides the activation.
- *much better* (nonlinearity): a final test accuracy higher by at least ``NONLINEAR_GAIN`` (10 points), paired by
  seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from trainlab.activations import ACTIVATIONS as ACTIVATION_REGISTRY
from trainlab.callbacks import Callback
from trainlab.diagnostics import Diagnostics, probe_forward, probed_modules
from trainlab.diagnostics.probes import forward_hooks
from trainlab.initializers import Auto
from trainlab.figures import bars_figure, curves_figure, grouped_bars_figure
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, one_thread, series, threshold_result)
from trainlab.studies.measures import StepLoss, mean_finite, reached, smoothed_loss, steps_to_target

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "selu")
DEAD_ARMS = ("relu", "leaky_relu", "elu")
SLOPE_EPS = 1e-3  # |f'(z)| below this for every probe sample: the unit passes no gradient
MUCH_SMALLER_DECADES = 1.0
CENTRED = 0.1  # a layer's mean activation within this of 0 (tanh) or of 0.5 (sigmoid)
BENCH_VERSION = 1  # bump when the benchmark changes, so cached timings are remeasured
COSTLIER = 1.1  # time ratio to ReLU from which an activation "costs more"
SLOWER_LOSS = 0.02  # nats of mean training loss (about 1% of ln 10) from which one net learns slower
CENTRED_VERSION = 1  # bump when the centred-sigmoid runs change, so their cached results are recomputed
LINEAR_VERSION = 1  # the same for the linear (identity activation) runs
NONLINEAR_GAIN = 0.10  # test accuracy (10 points) by which the nonlinear net does "much better" than the linear one


@dataclass(frozen=True)
class ActivationBudget(Budget):
    depth: int = 6
    width: int = 64
    lr: float = 0.05  # SGD with momentum 0.9, every activation
    dead_lr: float = 0.01  # Adam, the dead-unit arms
    every: int = 25  # diagnostics sampling interval (steps)
    target_fraction: float = 0.6
    bench_sizes: tuple[int, ...] = (1 << 18, 1 << 22)
    bench_reps: int = 20
    centring_depth: int = 3


def dead_fraction(model: nn.Module, x: torch.Tensor, eps: float = SLOPE_EPS) -> list[float]:
    """Per activation module of ``model``: the share of its units whose slope |f'(z)| < ``eps`` for every row of ``x``.

    A unit is a feature (dense) or a channel (conv). The slope is taken by autograd on the module's own input, so
    any elementwise activation works. The model's train/eval mode is left as it is.
    """
    kind, modules = probed_modules(model)
    if kind != "activations":
        raise ValueError(f"dead_fraction needs a model with activation modules; {type(model).__name__} has none.")
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str) -> Any:
        # A forward hook that returned a value would replace the module's output: this one returns None.
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            inputs.setdefault(name, args[0].detach())

        return hook

    with forward_hooks({m: keep_input(name) for name, m in modules.items()}), torch.no_grad():
        model(x)
    out = []
    for name, module in modules.items():
        z = inputs[name].clone().requires_grad_(True)
        with torch.enable_grad():
            (slope,) = torch.autograd.grad(module(z).sum(), z)
        per_unit = slope.abs().reshape(z.shape[0], z.shape[1] if z.ndim > 1 else 1, -1).amax(dim=(0, 2))
        out.append(float((per_unit < eps).float().mean()))
    return out


class ActivationRecorder(Callback):
    """Turns a ``Diagnostics`` record into ``extras`` (so cached runs keep it) and probes the trained network.

    ``extras``: ``grad_steps`` and ``grad_rms`` (sampled steps x weight matrices),
    ``mean_end`` and ``dead_end`` (per layer, validation set), ``chance_loss`` (ln(classes); for regression the
    first step's loss).
    """

    def __init__(self, diagnostics: Diagnostics):
        self.diagnostics = diagnostics

    def on_fit_end(self, trainer: Any) -> None:
        record = self.diagnostics.record()
        weights = record.weight_params
        sizes = [math.prod(record.param_shapes[record.params.index(w)]) for w in weights]
        rms = np.stack([record.param(w, "grad_norm") / math.sqrt(n) for w, n in zip(weights, sizes)], axis=1)
        trainer.extras["grad_steps"] = record.steps.tolist()
        trainer.extras["grad_rms"] = rms.tolist()
        classes = trainer.data.num_classes
        trainer.extras["chance_loss"] = math.log(classes) if classes else float(record.losses[0])
        x = trainer.data.x_val if len(trainer.data.x_val) else trainer.data.x_train[:512]
        was_training = trainer.model.training
        trainer.model.eval()
        try:
            trainer.extras["mean_end"] = [s.mean for s in probe_forward(trainer.model, x).values()]
            trainer.extras["dead_end"] = dead_fraction(trainer.model, x)
        finally:
            trainer.model.train(was_training)


class CentredSigmoid(nn.Module):
    """σ(x) - 1/2: sigmoid shifted to a zero mean, with sigmoid's slope σ(x)(1 - σ(x)) at every x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) - 0.5


class SwapActivations(Callback):
    """At fit start, puts ``make()`` in place of every module of type ``kind`` in the model; activations have no
    parameters, so the optimizer built before and the initial weights stay as they are."""

    def __init__(self, kind: type[nn.Module], make: Any):
        self.kind, self.make = kind, make

    def on_fit_start(self, trainer: Any) -> None:
        for module in list(trainer.model.modules()):
            for name, child in module.named_children():
                if isinstance(child, self.kind):
                    setattr(module, name, self.make())


class CentreSigmoids(SwapActivations):
    """At fit start, puts a ``CentredSigmoid`` in place of every ``nn.Sigmoid`` of the model."""

    def __init__(self) -> None:
        super().__init__(nn.Sigmoid, CentredSigmoid)


class LinearNet(SwapActivations):
    """At fit start, puts the identity in place of every ``nn.Tanh``: the network becomes a product of affine
    maps, from the weights tanh's ``auto`` init (Xavier, the init that keeps a linear stack's scale) drew."""

    def __init__(self) -> None:
        super().__init__(nn.Tanh, nn.Identity)


def swapped_run(config: Any, swap: Callback) -> dict[str, Any]:
    """Train ``config`` with ``swap`` changing its activations at fit start; its step losses and final metrics."""
    from trainlab.runs import train

    result = train(config, callbacks=[swap, StepLoss()])
    return {"step_loss": np.asarray(result.extras["step_loss"]), "final": result.final}


def centred_run(config: Any) -> dict[str, Any]:
    """Train ``config`` (a sigmoid MLP) with its sigmoids centred; its step losses and final metrics."""
    return swapped_run(config, CentreSigmoids())


def mean_loss(step_loss: Any) -> float:
    """The mean of the moving-average step loss over a run: the area under its training curve per step."""
    return float(np.mean(smoothed_loss(step_loss)))


def recorders(every: int) -> list[Callback]:
    """A ``Diagnostics`` callback sampling every ``every`` steps, the recorder that stores what it saw, and the
    step losses."""
    diagnostics = Diagnostics(every=every)
    return [diagnostics, ActivationRecorder(diagnostics), StepLoss()]


def benchmark(activations: tuple[str, ...], size: int, reps: int, seed: int) -> dict[str, float]:
    """Seconds of one forward + backward pass of each activation on ``size`` float32 values: fastest of ``reps``.

    One thread; the activations take turns within each repeat, so a slow spell of a shared machine hits them
    alike; a first round warms up and is not counted.
    """
    with one_thread():
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(size, generator=generator)
        grad = torch.randn(size, generator=generator)
        modules = {name: ACTIVATION_REGISTRY.create(name).module() for name in activations}
        times: dict[str, list[float]] = {name: [] for name in activations}
        for _ in range(reps + 1):
            for name, module in modules.items():
                leaf = x.detach().requires_grad_(True)
                start = time.perf_counter()
                module(leaf).backward(grad)
                times[name].append(time.perf_counter() - start)
        return {name: min(t[1:]) for name, t in times.items()}


def log_ratio(rms: np.ndarray) -> np.ndarray:
    """log10 of first-layer over last-layer gradient RMS at each sampled step (rows of ``rms``)."""
    rms = np.asarray(rms, dtype=float)
    return np.log10(rms[:, 0] / rms[:, -1])


def _start_ratio(runs: list[Any]) -> list[float]:
    return [float(log_ratio(r.extras["grad_rms"])[0]) for r in runs]


def _training_ratio(runs: list[Any]) -> list[float]:
    return [float(np.mean(log_ratio(r.extras["grad_rms"]))) for r in runs]


def claim_vanishing(r: dict[str, Any]) -> ClaimResult:
    sig, relu = r["runs"]["sigmoid"], r["runs"]["relu"]
    what = "log10(first / last layer gradient RMS)"
    return joint({
        "at the start": compare_result(_start_ratio(sig), _start_ratio(relu), "less", f"{what} at step 0",
                                       ("sigmoid", "relu"), paired=False, min_effect=MUCH_SMALLER_DECADES),
        "during training": compare_result(_training_ratio(sig), _training_ratio(relu), "less",
                                          f"{what}, mean over training", ("sigmoid", "relu"), paired=False,
                                          min_effect=MUCH_SMALLER_DECADES),
    })


def claim_not_centred(r: dict[str, Any]) -> ClaimResult:
    sig = [float(np.mean(np.abs(np.array(run.extras["mean_end"]) - 0.5))) for run in r["runs"]["sigmoid"]]
    tanh = [float(np.mean(np.abs(run.extras["mean_end"]))) for run in r["runs"]["tanh"]]
    return joint({
        "sigmoid near 0.5": threshold_result(sig, "<", CENTRED, "sigmoid layers' |mean activation - 0.5|"),
        "tanh near 0": threshold_result(tanh, "<", CENTRED, "tanh layers' |mean activation|"),
    })


def cost_result(r: dict[str, Any], activation: str) -> ClaimResult:
    """"``activation`` costs more than ReLU": its in-cache time ratio to ReLU above ``COSTLIER``."""
    ratios = [t[activation][0] / t["relu"][0] for t in r["bench"]]
    found = threshold_result(ratios, ">", COSTLIER, f"{activation} / relu time of a forward + backward pass "
                                                    "(in cache)")
    memory = [t[activation][-1] / t["relu"][-1] for t in r["bench"]]
    return ClaimResult(found.verdict, found.evidence + f" (Memory-bound size, not part of the test: ratio mean "
                                                       f"{np.mean(memory):.3g}.)",
                       {**found.numbers, "memory-bound ratio mean": float(np.mean(memory))})


def claim_cost(r: dict[str, Any]) -> ClaimResult:
    return cost_result(r, "sigmoid")


def claim_elu_cost(r: dict[str, Any]) -> ClaimResult:
    return cost_result(r, "elu")


def claim_positive_slow(r: dict[str, Any]) -> ClaimResult:
    c = r["centring"]
    return compare_result(c["sigmoid"], c["centred"], "greater", "mean training loss over the run (moving average "
                                                                  f"per step, {c['depth']} hidden layers)",
                          ("sigmoid", "sigmoid - 1/2"), min_effect=SLOWER_LOSS)


def claim_nonlinearity(r: dict[str, Any]) -> ClaimResult:
    return compare_result(finals(r["runs"]["relu"], "test_acc"), r["linear"], "greater",
                          "final test accuracy of the deep MLP", ("relu", "identity"), min_effect=NONLINEAR_GAIN)


def claim_relu_first(r: dict[str, Any]) -> ClaimResult:
    steps = r["steps"]
    return joint({other: compare_result(steps["relu"], steps[other], "less", "steps to the target loss",
                                        ("relu", other), paired=False) for other in ("sigmoid", "tanh")})


def _dead(runs: list[Any]) -> list[float]:
    return [float(np.mean(run.extras["dead_end"])) for run in runs]


def claim_dead(r: dict[str, Any]) -> ClaimResult:
    dead = r["dead_runs"]
    return joint({other: compare_result(_dead(dead[other]), _dead(dead["relu"]), "less",
                                        "share of dead units (Adam at a high lr)", (other, "relu"), paired=False)
                  for other in ("leaky_relu", "elu")})


CLAIMS = (
    Claim("sigmoid_vanishing", "Sigmoid saturates and kills gradients in deep nets: the first layer's gradient is "
                               "orders of magnitude smaller than the last layer's, much more so than with ReLU.",
          claim_vanishing),
    Claim("sigmoid_not_centred", "Sigmoid is not zero-centred: its layers' outputs average about 0.5, while tanh's "
                                 "average about 0.", claim_not_centred),
    Claim("sigmoid_cost", "Sigmoid costs more to compute than ReLU (it needs an exponential).", claim_cost),
    Claim("elu_cost", "ELU costs more to compute than ReLU (it needs an exponential).", claim_elu_cost),
    Claim("sigmoid_positive_slow", "Sigmoid's always-positive outputs bias the updates and slow learning: the same "
                                   "function shifted to a zero mean, σ(x) - 1/2, learns faster.",
          claim_positive_slow),
    Claim("relu_first", "Start with ReLU: a deep network with ReLU converges faster than with sigmoid or tanh.",
          claim_relu_first),
    Claim("leaky_elu_dead", "Leaky ReLU and ELU fix dead ReLUs: fewer of their units die.", claim_dead),
    Claim("nonlinearity_needed", "The nonlinearity is what lets the network learn complex patterns: the same deep "
                                 "MLP learns MNIST-1D much better with ReLU than with the identity (a linear "
                                 "model).", claim_nonlinearity),
)


@register_study
class Activations(Study[ActivationBudget]):
    name = "activations"
    title = "Activation functions"
    question = ("How do sigmoid, tanh, ReLU, leaky ReLU, ELU, GELU and SELU change how fast a deep network trains, "
                "how gradients reach its first layers, how many units die, and what they cost?")
    order = 2
    smoke = ActivationBudget(seeds=2, epochs=1, train_size=300, depth=3, every=2, bench_sizes=(1 << 12, 1 << 14),
                             bench_reps=2)
    quick = ActivationBudget(seeds=10, epochs=12)
    full = ActivationBudget(seeds=20, epochs=30, bench_reps=50)
    claims = CLAIMS

    def base_config(self, b: ActivationBudget) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": b.depth, "width": b.width},
                "optimizer": {"name": "momentum", "lr": b.lr, "momentum": 0.9}, "threads": 1}

    def measure(self, ctx: StudyContext[ActivationBudget]) -> dict[str, Any]:
        b = ctx.budget
        factory = lambda arm, seed: recorders(b.every)  # noqa: E731
        base = self.base_config(b)
        runs = ctx.train_arms(base, {a: {"model.activation": a} for a in ACTIVATIONS}, callbacks_factory=factory)
        dead_runs = ctx.train_arms(base, {f"{a} (adam {b.dead_lr:g})": {"model.activation": a, "optimizer":
                                                                        {"name": "adam", "lr": b.dead_lr}}
                                          for a in DEAD_ARMS}, callbacks_factory=factory)
        centring = self.centring(ctx)
        bench = []
        with ctx.task(f"{self.name} · benchmark", len(ctx.seeds)) as advance:
            for seed in ctx.seeds:
                params = {"activations": ACTIVATIONS, "sizes": b.bench_sizes, "reps": b.bench_reps, "seed": seed,
                          "version": BENCH_VERSION}

                def compute(seed: int = seed) -> dict[str, Any]:
                    per_size = [benchmark(ACTIVATIONS, size, b.bench_reps, seed) for size in b.bench_sizes]
                    return {a: [t[a] for t in per_size] for a in ACTIVATIONS}

                bench.append(ctx.cached("benchmark", params, compute))
                advance()
        # A run stopped early (diverged) is shorter; the longest run has the length of a complete one.
        total = max(len(run.extras["step_loss"]) for rs in runs.values() for run in rs)
        steps = {a: [steps_to_target(smoothed_loss(run.extras["step_loss"]),
                                     b.target_fraction * run.extras["chance_loss"], total) for run in rs]
                 for a, rs in runs.items()}
        return {"runs": runs, "dead_runs": dict(zip(DEAD_ARMS, dead_runs.values())), "bench": bench,
                "steps": steps, "total_steps": total, "centring": centring, "linear": self.linear(ctx)}

    def linear(self, ctx: StudyContext[ActivationBudget]) -> list[float]:
        """Per seed, the final test accuracy of the main tanh net trained with its tanh replaced by the identity
        (``LinearNet``): the same MLP, batches and lr, without a nonlinearity."""
        base, out = self.base_config(ctx.budget), []
        with ctx.task(f"{self.name} · identity", len(ctx.seeds)) as advance:
            for seed in ctx.seeds:
                config = ctx.run_config(base, {"model.activation": "tanh"}, seed)
                params = {"config": config.model_dump(mode="json"), "version": LINEAR_VERSION}
                found = ctx.cached("linear", params, lambda c=config: swapped_run(c, LinearNet()))
                out.append(float(found["final"]["test_acc"]))
                advance()
        return out

    def centring(self, ctx: StudyContext[ActivationBudget]) -> dict[str, Any]:
        """The shallow sigmoid net trained as it is and with its sigmoids centred: per seed, the mean training
        loss, and the moving-average loss curves."""
        b = ctx.budget
        base = self.base_config(b)
        overrides = {"model.activation": "sigmoid", "model.depth": b.centring_depth}
        plain = ctx.train_arms(base, {f"sigmoid (depth {b.centring_depth})": overrides},
                               callbacks_factory=lambda arm, seed: [StepLoss()])
        plain_losses = [run.extras["step_loss"] for run in next(iter(plain.values()))]
        centred_losses = []
        with ctx.task(f"{self.name} · centred sigmoid", len(ctx.seeds)) as advance:
            for seed in ctx.seeds:
                config = ctx.run_config(base, overrides, seed)
                params = {"config": config.model_dump(mode="json"), "version": CENTRED_VERSION}
                centred_losses.append(ctx.cached("centred", params, lambda c=config: centred_run(c))["step_loss"])
                advance()
        return {"depth": b.centring_depth, "sigmoid": [mean_loss(x) for x in plain_losses],
                "centred": [mean_loss(x) for x in centred_losses],
                "curves": {"sigmoid": [smoothed_loss(x) for x in plain_losses],
                           "sigmoid - 1/2": [smoothed_loss(x) for x in centred_losses]}}

    def present(self, results: dict[str, Any], ctx: StudyContext[ActivationBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        b = ctx.budget
        runs, dead_runs, bench = results["runs"], results["dead_runs"], results["bench"]
        figures = []
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        curves_figure({a: [smoothed_loss(r.extras["step_loss"]) for r in rs] for a, rs in runs.items()},
                      title="training loss per step (moving average)", xlabel="step", ylabel="loss", ax=axes[0])
        target = b.target_fraction * runs["relu"][0].extras["chance_loss"]
        axes[0].axhline(target, color="black", lw=0.8, ls="--")
        axes[0].annotate("target", (0, target), textcoords="offset points", xytext=(4, 3), fontsize=8)
        curves_figure({a: series(rs, "val_acc") for a, rs in runs.items()}, title="validation accuracy",
                      xlabel="epoch", ylabel="accuracy", ax=axes[1])
        figures.append(ctx.figure(fig, "training", f"MLP with {b.depth} hidden layers of {b.width} units, one curve "
                                                   "per activation (each with its auto init): mean over seeds with "
                                                   "95% band."))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        # Means and bands of log10 values: a t interval of the raw values would reach below zero.
        curves_figure({a: [np.log10(np.asarray(r.extras["grad_rms"])[0]) for r in rs] for a, rs in runs.items()},
                      title="gradient RMS per weight matrix at step 0", xlabel="layer (last = output layer)",
                      ylabel="log10 gradient RMS", ax=axes[0])
        steps_x = runs["relu"][0].extras["grad_steps"]
        curves_figure({a: [log_ratio(r.extras["grad_rms"]) for r in rs] for a, rs in runs.items()},
                      title="first / last layer gradient RMS during training", xlabel="step",
                      ylabel="log10 ratio", x=steps_x, ax=axes[1])
        figures.append(ctx.figure(fig, "gradients", "Gradient flow: sigmoid's gradient shrinks layer by layer "
                                                    "towards the input; mean of log10 over seeds with 95% band."))
        fig = curves_figure({a: [r.extras["mean_end"] for r in rs] for a, rs in runs.items()},
                            title="mean activation per layer after training (validation set)", xlabel="layer",
                            ylabel="mean activation")
        figures.append(ctx.figure(fig, "mean_activation", "Mean output of each hidden layer: sigmoid's sit near "
                                                          "0.5, tanh's near 0."))
        groups = {a: _dead(rs) for a, rs in runs.items()}
        groups.update({f"{a}\n(adam {b.dead_lr:g})": _dead(rs) for a, rs in dead_runs.items()})
        figures.append(ctx.figure(bars_figure(groups, title="dead units after training", ylabel="share of units"),
                                  "dead_units", f"Share of units with slope below {SLOPE_EPS:g} for every validation "
                                                "sample (mean over layers): momentum SGD for every activation, then "
                                                f"Adam at lr {b.dead_lr:g}, where ReLUs die. Mean and 95% CI."))
        centring = results["centring"]
        fig = curves_figure(centring["curves"], title=f"sigmoid against σ(x) - 1/2 ({centring['depth']} hidden "
                                                      "layers)", xlabel="step", ylabel="training loss (moving average)")
        figures.append(ctx.figure(fig, "centring", "The same net with sigmoid and with sigmoid shifted to a zero mean "
                                                   "(same slope everywhere), from the same weights: mean over seeds "
                                                   "with 95% band."))
        figures.append(ctx.figure(_bench_figure(bench, b.bench_sizes), "cost",
                                  "Time of one forward + backward pass, relative to ReLU, on one thread: mean and "
                                  "95% CI over trials (each the fastest of its repeats)."))
        return figures, _tables(results, b)


def _tables(results: dict[str, Any], b: ActivationBudget) -> list[Table]:
    runs, dead_runs, bench = results["runs"], results["dead_runs"], results["bench"]
    rows = []
    for a, rs in runs.items():
        steps = results["steps"][a]
        rows.append([a, Auto().resolve(ACTIVATION_REGISTRY.create(a)).name, mean_finite(steps),
                     sum(not reached(s, results["total_steps"]) for s in steps),
                     *(mean_finite(finals(rs, key)) for key in ("train_loss", "val_acc")),
                     mean_finite(_start_ratio(rs)), mean_finite(_training_ratio(rs)),
                     mean_finite([np.mean(r.extras["mean_end"]) for r in rs]), mean_finite(_dead(rs)),
                     mean_finite([1e3 * r.final["time_s"] / max(r.final["steps"], 1) for r in rs]),
                     mean_finite([t[a][0] / t["relu"][0] for t in bench]),
                     mean_finite([t[a][-1] / t["relu"][-1] for t in bench])])
    main = Table(f"Momentum SGD (lr {b.lr:g}), {b.epochs} epochs, means over seeds; target loss "
                 f"{b.target_fraction:g} x ln(classes)",
                 ["activation", "init", "steps to target", "runs not reaching it", "final train loss", "val acc",
                  "log10 grad ratio (start)", "log10 grad ratio (training)", "mean activation", "dead units",
                  "ms per step", "cost vs relu (cache)", "cost vs relu (memory)"], rows)
    dead_rows = [[a, mean_finite(_dead(rs)), float(np.max(_dead(rs))),
                  *(mean_finite(finals(rs, key)) for key in ("train_loss", "val_acc"))] for a, rs in dead_runs.items()]
    dead = Table(f"Adam at lr {b.dead_lr:g}: dead units (means over seeds)",
                 ["activation", "dead units", "worst seed", "final train loss", "val acc"], dead_rows)
    c = results["centring"]
    centring = Table(f"Sigmoid against σ(x) - 1/2, {c['depth']} hidden layers (means over seeds)",
                     ["activation", "mean training loss over the run", "final training loss (moving average)"],
                     [[name, mean_finite([np.mean(x) for x in curves]), mean_finite([x[-1] for x in curves])]
                      for name, curves in c["curves"].items()])
    linear = Table("ReLU against the identity (a linear net), same MLP (means over seeds)",
                   ["activation", "final test accuracy"],
                   [["relu", mean_finite(finals(runs["relu"], "test_acc"))],
                    ["identity", mean_finite(results["linear"])]])
    return [main, dead, centring, linear]


def _bench_figure(bench: list[dict[str, Any]], sizes: tuple[int, ...]) -> Any:
    series = {f"{size:,} values ({4 * size / 2 ** 20:.3g} MiB)": {a: [t[a][k] / t["relu"][k] for t in bench]
                                                                  for a in ACTIVATIONS}
              for k, size in enumerate(sizes)}
    fig, ax = grouped_bars_figure(series, title="cost of an activation (forward + backward)",
                                  ylabel="time / relu time")
    ax.axhline(1.0, color="black", lw=0.8)
    return fig
