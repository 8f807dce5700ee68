"""Study 1: weight initialization against activation functions, as in the textbook figure, then in training.

Forward-only part: a stack of ``layers`` dense layers of ``width`` units on standard-normal input (the textbook's
5 layers of 100 units, deeper here so that trends show), for each activation (sigmoid, tanh, relu) and each init,
recording every layer's activation histogram, std, saturated fraction and dead units with
``diagnostics.probe_forward``. Gradient part: ReLU stacks of 1 to ``layers`` hidden layers, from N(0, 1) and from
He, on the same input with random labels; the gradient of the cross-entropy with respect to the first weight matrix
(its RMS, as log10). Training part: a deep ReLU MLP on MNIST-1D per init, U(-1, 1) included (loss curves), a
shallow one (``shallow_depth`` hidden layers) from N(0, 0.01²) and from He, and a ``PLATEAU_DEPTH``-layer sigmoid
MLP from N(0, 1) and from Xavier with every step's loss.

Definitions the claims use, fixed before measuring: a layer has *collapsed* when its std is below 5% of the
activation's output range; *at the ends* means within 10% of the range of a bound (a uniform spread puts 20% there);
*saturated* is the diagnostics' definition (within 2% of a bound, where sigmoid's slope is below 8% of its peak);
activations are *kept* across depth when the last layer's std is within [0.5x, 2x] of the first layer's.
Small weights *work* in a net when its final test accuracy from N(0, 0.01²) falls short of He's by less than
``SHORTFALL`` (5 points), and fail when it falls short by more. Gradients *explode* with depth when the first
layer's gradient RMS of the deepest stack is more than ``EXPLODES`` decades (10x) above that of a one-layer stack,
and grows by that much more than from He.

Gradient-flow part (``gradient_flow``): stacks of ``layers`` hidden layers (ReLU and tanh) per init, U(-1, 1)
included, on the same random-label input: log10 of the first over the last hidden layer's backpropagated gradient
RMS (of the loss with respect to the layer's pre-activations; the output layer's would differ by its shape alone),
the same ratio of their weight gradients (shown, not judged: in a ReLU stack it is blind to the weight scale), the
cross-entropy at initialization, and the spread over the first layer's units of log10 of their gradient norms.
A gradient ratio is *near 1* within ``NEAR_ONE`` decades (about 3x) and *far from 1* beyond ``FAR_FROM_ONE``; a
*lower starting loss* is lower by at least ``LOWER_START`` nats; units learn *unevenly* when the spread of their
gradients exceeds the suitable init's by ``UNEVEN_UNITS`` decades. Xavier and He *differ little* when the paired
difference of their test accuracies lies within ``SIMILAR`` (the ``SHORTFALL`` that counts as "works"). A net
started *in a plateau* (a ``PLATEAU_DEPTH``-layer sigmoid MLP from N(0, 1), saturated) *trains slower* when it
reaches ``PLATEAU_TARGET`` x ln(10) (the chance loss of the study's 10-class data, a loss only a net that has left
the plateau reaches) later than from Xavier by at least ``LATER`` of a full run's steps; U(-1, 1) *trains worse*
when its test accuracy falls short of Xavier's and of He's by more than ``SHORTFALL``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from trainlab.callbacks import Callback
from trainlab.diagnostics import probe_forward
from trainlab.models import MLP
from trainlab.figures import HistogramCell, curves_figure, histogram_grid
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, one_thread, series, threshold_result)
from trainlab.studies.measures import (StepLoss, backpropagated_gradients, mean_finite, smoothed_loss,
                                       steps_to_target)

INITS: dict[str, Any] = {
    "zeros": "zeros",
    "normal_1": {"name": "normal", "std": 1.0},
    "normal_0.01": {"name": "normal", "std": 0.01},
    "xavier": "xavier_normal",
    "he": "he_normal",
    "he_notes": {"name": "variance_scaling", "scale": 4.0, "mode": "fan_in", "distribution": "normal"},
}
LABELS = {"zeros": "zeros", "normal_1": "N(0, 1)", "normal_0.01": "N(0, 0.01²)", "xavier": "Xavier",
          "he": "He √(2/n)", "he_notes": "notes' He 2/√n", "uniform_1": "U(-1, 1)"}
ACTIVATIONS = ("sigmoid", "tanh", "relu")
RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
COLLAPSED = 0.05  # std below this share of the output range
ENDS = 0.1  # "at the ends": within this share of the output range of a bound
KEPT = (0.5, 2.0)  # last-layer std / first-layer std
FORWARD_VERSION = 1  # bump when the forward experiment changes, so cached results are recomputed
GRADIENT_VERSION = 1  # the same for the gradient experiment
GRADIENT_INITS = ("normal_1", "he")
CLASSES = 10  # random labels of the gradient experiment
SHORTFALL = 0.05  # test accuracy below He's that still counts as "works"
EXPLODES = 1.0  # decades of first-layer gradient growth from 1 to ``layers`` hidden layers
UNIFORM = {"name": "uniform", "a": 1.0}  # the notes' "uniform" init at a common half-width: U(-1, 1)
SPECS: dict[str, Any] = {**INITS, "uniform_1": UNIFORM}  # every init of the study, by name
FLOW_VERSION = 2  # bump when the gradient-flow experiment changes
FLOW_INITS = ("xavier", "he", "normal_1", "normal_0.01", "uniform_1")
SUITABLE = {"relu": "he", "tanh": "xavier"}  # the gradient-flow activations, each with its suitable init
NEAR_ONE = 0.5  # decades: a first / last hidden layer gradient ratio within this of 1 is "near 1"
FAR_FROM_ONE = 1.0  # decades: beyond this it is "far from 1"
LOWER_START = 0.1 * math.log(10)  # nats (10% of the chance loss) by which a good init starts lower
UNEVEN_UNITS = 0.25  # decades of per-unit gradient spread above the suitable init's: "some units learn, some not"
SIMILAR = SHORTFALL  # test accuracies within this of each other "differ little"
PLATEAU_DEPTH = 3  # hidden layers of the sigmoid net started in a plateau
PLATEAU_LR = 0.05  # momentum SGD for the plateau arms: the activations study's rate for its 3-layer sigmoid net
PLATEAU_TARGET = 0.9  # x ln(10): the training loss (moving average per step) that marks leaving the plateau
LATER = 0.1  # share of a full run's steps by which the plateau start reaches the target later


@dataclass(frozen=True)
class InitBudget(Budget):
    layers: int = 10  # forward stack depth
    width: int = 100
    samples: int = 1000  # rows of standard-normal input
    networks: int = 10  # random networks per seed: a seed's statistics average over them
    train_depth: int = 6  # hidden layers of the trained MLP
    shallow_depth: int = 1  # hidden layers of the shallow trained MLP


def forward_stats(activation: str, init: str, seed: int, budget: InitBudget) -> dict[str, Any]:
    """Per-layer statistics of randomly initialized stacks on N(0, 1) input, averaged over ``budget.networks``
    networks drawn from ``seed`` (the histogram is the first network's)."""
    generator = torch.Generator().manual_seed(seed)
    spec = MLP(depth=budget.layers, width=budget.width, activation=activation, init=INITS[init])
    rows = []
    with one_thread():
        for _ in range(budget.networks):
            model = spec.build((budget.width,), 1, generator)
            x = torch.randn(budget.samples, budget.width, generator=generator)
            rows.append(list(probe_forward(model, x).values()))
    first = rows[0]
    nan = float("nan")

    def average(stat: Any) -> np.ndarray:
        return np.mean([[stat(s) for s in layers] for layers in rows], axis=0)

    return {
        "std": average(lambda s: s.std),
        "mean": average(lambda s: s.mean),
        "saturated": average(lambda s: nan if s.saturated is None else s.saturated),
        "ends": average(lambda s: ends_share(s.hist) if activation in RANGES else nan),
        "dead": average(lambda s: nan if s.dead_fraction is None else s.dead_fraction),
        "hist": np.stack([s.hist for s in first]),
        "hist_range": np.array([s.hist_range for s in first]),
    }


def first_layer_gradients(init: str, seed: int, budget: InitBudget) -> dict[str, Any]:
    """log10 of the first weight matrix's gradient RMS, for ReLU stacks of 1 .. ``budget.layers`` hidden layers
    (``log_grad[depth - 1]``), each the mean over ``budget.networks`` networks drawn from ``seed``: the gradient of
    the cross-entropy on N(0, 1) input with random labels over ``CLASSES`` classes."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    with one_thread():
        for depth in range(1, budget.layers + 1):
            spec = MLP(depth=depth, width=budget.width, activation="relu", init=INITS[init])
            logs = []
            for _ in range(budget.networks):
                model, x, y = _random_task(spec, generator, budget)
                first = next(m.weight for m in model.modules() if isinstance(m, nn.Linear))
                (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), first)
                logs.append(float(grad.double().square().mean().sqrt().log10()))
            out.append(float(np.mean(logs)))
    return {"log_grad": np.array(out)}


def _random_task(spec: MLP, generator: torch.Generator, budget: InitBudget) -> tuple[nn.Module, Any, Any]:
    """A network drawn from ``spec``, standard-normal input and random labels over ``CLASSES`` classes."""
    model = spec.build((budget.width,), CLASSES, generator)
    x = torch.randn(budget.samples, budget.width, generator=generator)
    y = torch.randint(0, CLASSES, (budget.samples,), generator=generator)
    return model, x, y


def _log10_ratio(first: float, last: float) -> float:
    return math.log10(first / last) if first > 0 and last > 0 else math.nan


def gradient_flow(activation: str, init: str, seed: int, budget: InitBudget) -> dict[str, float]:
    """For a stack of ``budget.layers`` hidden layers (``activation``, ``init``) on the random-label task, means
    over ``budget.networks`` networks drawn from ``seed``: ``delta_ratio``, log10 of the RMS of the backpropagated
    gradient (``measures.backpropagated_gradients``) at the first hidden layer over that at the last; ``log_ratio``,
    the same for the first and last hidden weight matrices' gradients (which cannot show a ReLU stack's gradients
    vanishing or exploding); ``start_loss``, the cross-entropy at initialization; ``unit_spread``, the std over the
    first layer's units of log10 of their gradient norms (units with no gradient left out)."""
    generator = torch.Generator().manual_seed(seed)
    spec = MLP(depth=budget.layers, width=budget.width, activation=activation, init=SPECS[init])
    rows = []
    with one_thread():
        for _ in range(budget.networks):
            model, x, y = _random_task(spec, generator, budget)
            weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
            loss, deltas, grads = backpropagated_gradients(model, x, y, weights)
            rms = [float(g.double().square().mean().sqrt()) for g in grads]
            units = grads[0].double().norm(dim=1)
            units = units[units > 0].log10()
            # The last hidden layer, not the output layer: its 10 units would differ in scale by shape alone.
            rows.append([_log10_ratio(deltas[0], deltas[-1]), _log10_ratio(rms[0], rms[-2]), loss,
                         float(units.std()) if units.numel() > 1 else math.nan])
    delta, ratio, start, spread = np.nanmean(np.array(rows, dtype=float), axis=0)
    return {"delta_ratio": float(delta), "log_ratio": float(ratio), "start_loss": float(start),
            "unit_spread": float(spread)}


def ends_share(hist: np.ndarray) -> float:
    """Share of the values in the outer ``ENDS`` of a histogram spanning a bounded activation's output range."""
    k = round(ENDS * len(hist))
    return float((hist[:k].sum() + hist[-k:].sum()) / hist.sum())


class SymmetryProbe(Callback):
    """At the end of training, stores in ``extras``: the largest difference between two units' incoming weights
    (``row_spread``, 0 when every unit of every hidden layer is identical) and the majority-class accuracy."""

    per_replica = True

    def on_fit_end(self, trainer: Any) -> None:
        weights = [m.weight.detach() for m in trainer.model.modules() if isinstance(m, nn.Linear)]
        # The output layer is left out: its rows are the classes, which differ from the first step on.
        trainer.extras["row_spread"] = max((float((w - w.mean(0, keepdim=True)).abs().max()) for w in weights[:-1]),
                                           default=0.0)
        counts = torch.bincount(trainer.data.y_val.long())
        trainer.extras["majority_acc"] = float(counts.max() / counts.sum())


def _ratio(stats: dict[str, Any]) -> float:
    return float(stats["std"][-1] / stats["std"][0]) if stats["std"][0] > 0 else float("nan")


def claim_zeros(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]["zeros"]
    gain = [x - run.extras["majority_acc"] for x, run in zip(finals(runs, "val_acc"), runs)]
    return joint({
        "units stay identical": threshold_result([run.extras["row_spread"] for run in runs], "<", 1e-6,
                                                 "largest difference between two hidden units' weights"),
        "nothing learned": threshold_result(gain, "<", 0.05, "validation accuracy above the majority class"),
    })


def claim_normal_sigmoid(r: dict[str, Any]) -> ClaimResult:
    ends = [float(np.mean(s["ends"])) for s in r["forward"]["sigmoid"]["normal_1"]]
    return threshold_result(ends, ">", 0.5, f"share of sigmoid activations within {ENDS} of 0 or 1 (all layers)")


def claim_small_sigmoid(r: dict[str, Any]) -> ClaimResult:
    stats = r["forward"]["sigmoid"]["normal_0.01"]
    return joint({
        "collapsed": threshold_result([float(np.max(s["std"])) for s in stats], "<", COLLAPSED,
                                      "largest layer std of the sigmoid activations"),
        "at 0.5": threshold_result([float(np.max(np.abs(s["mean"] - 0.5))) for s in stats], "<", 0.05,
                                   "largest |layer mean - 0.5|"),
    })


def claim_xavier_bounded(r: dict[str, Any]) -> ClaimResult:
    parts = {}
    for act in ("sigmoid", "tanh"):
        stats = r["forward"][act]["xavier"]
        width = RANGES[act][1] - RANGES[act][0]
        parts[f"{act} not saturated"] = threshold_result([float(np.mean(s["saturated"])) for s in stats], "<", 0.05,
                                                         f"saturated share of {act} activations (all layers)")
        parts[f"{act} not collapsed"] = threshold_result([float(s["std"][-1] / width) for s in stats], ">", COLLAPSED,
                                                         f"last-layer {act} std / output range")
    return joint(parts)


def _kept(stats: list[dict[str, Any]], name: str) -> dict[str, ClaimResult]:
    ratios = [_ratio(s) for s in stats]
    what = f"last / first layer std of ReLU activations with {name}"
    return {f"{name} above {KEPT[0]}x": threshold_result(ratios, ">", KEPT[0], what),
            f"{name} below {KEPT[1]}x": threshold_result(ratios, "<", KEPT[1], what)}


def claim_he_relu(r: dict[str, Any]) -> ClaimResult:
    relu = r["forward"]["relu"]
    xavier = [_ratio(s) for s in relu["xavier"]]
    return joint({**_kept(relu["he"], "He"),
                  "Xavier shrinks": threshold_result(xavier, "<", KEPT[0],
                                                     "last / first layer std of ReLU activations with Xavier")})


def claim_he_notes(r: dict[str, Any]) -> ClaimResult:
    return joint(_kept(r["forward"]["relu"]["he_notes"], "std 2/√n"))


def claim_he_trains(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]
    return compare_result(finals(runs["he"], "val_loss"), finals(runs["xavier"], "val_loss"), "less",
                          "final validation loss of the deep ReLU MLP", ("He", "Xavier"))


def _test_acc_shortfall(he: list[Any], small: list[Any]) -> list[float]:
    return [h - s for h, s in zip(finals(he, "test_acc"), finals(small, "test_acc"))]


def claim_small_shallow(r: dict[str, Any]) -> ClaimResult:
    runs, depths = r["runs"], r["depths"]
    what = "final test accuracy, He - N(0, 0.01²)"
    return joint({
        f"works with {depths['shallow']} hidden layer(s)": threshold_result(
            _test_acc_shortfall(runs["shallow he"], runs["shallow normal_0.01"]), "<", SHORTFALL,
            f"{what}, {depths['shallow']} hidden layer(s)"),
        f"fails with {depths['deep']}": threshold_result(_test_acc_shortfall(runs["he"], runs["normal_0.01"]), ">",
                                                         SHORTFALL, f"{what}, {depths['deep']} hidden layers"),
    })


def gradient_growth(stats: list[dict[str, Any]]) -> list[float]:
    """Per seed: decades by which the first layer's gradient RMS of the deepest stack exceeds a one-layer stack's."""
    return [float(s["log_grad"][-1] - s["log_grad"][0]) for s in stats]


def claim_large_explodes(r: dict[str, Any]) -> ClaimResult:
    grads = r["gradients"]
    layers = len(grads["normal_1"][0]["log_grad"])
    what = f"log10 first-layer gradient RMS, {layers} hidden layers - 1 (ReLU)"
    large, he = gradient_growth(grads["normal_1"]), gradient_growth(grads["he"])
    return joint({
        "grows with depth": threshold_result(large, ">", EXPLODES, f"{what}, N(0, 1)"),
        "more than from He": compare_result(large, he, "greater", what, ("N(0, 1)", "He"), min_effect=EXPLODES),
    })


def claim_tanh_saturates(r: dict[str, Any]) -> ClaimResult:
    ends = [float(np.mean(s["ends"])) for s in r["forward"]["tanh"]["normal_1"]]
    return threshold_result(ends, ">", 0.5, f"share of tanh activations within {ENDS} of -1 or 1 (all layers)")


def claim_xavier_he_close(r: dict[str, Any]) -> ClaimResult:
    runs, depth = r["runs"], r["depths"]["deep"]
    diff = [h - x for h, x in zip(finals(runs["he"], "test_acc"), finals(runs["xavier"], "test_acc"))]
    what = f"final test accuracy, He - Xavier, {depth} hidden layers"
    return joint({f"above -{SIMILAR:g}": threshold_result(diff, ">", -SIMILAR, what),
                  f"below {SIMILAR:g}": threshold_result(diff, "<", SIMILAR, what)})


def claim_uniform_worse(r: dict[str, Any]) -> ClaimResult:
    runs, depth = r["runs"], r["depths"]["deep"]
    uniform = finals(runs["uniform_1"], "test_acc")
    return joint({other: compare_result(uniform, finals(runs[other], "test_acc"), "less",
                                        f"final test accuracy, {depth} hidden layers", ("U(-1, 1)", LABELS[other]),
                                        min_effect=SHORTFALL) for other in ("xavier", "he")})


def plateau_steps(runs: list[Any], total: int) -> list[int]:
    """Per run, the steps until the moving-average step loss reaches ``PLATEAU_TARGET`` x ln(10) (a miss counts
    ``total + 1``, ``measures.steps_to_target``)."""
    return [steps_to_target(smoothed_loss(run.extras["step_loss"]), PLATEAU_TARGET * math.log(10), total)
            for run in runs]


def claim_plateau_slow(r: dict[str, Any]) -> ClaimResult:
    plateau = r["plateau"]
    total = max(len(run.extras["step_loss"]) for runs in plateau.values() for run in runs)
    return compare_result(plateau_steps(plateau["normal_1"], total), plateau_steps(plateau["xavier"], total),
                          "greater", f"steps to a training loss of {PLATEAU_TARGET:g} ln(10), sigmoid, "
                                     f"{PLATEAU_DEPTH} hidden layers", ("N(0, 1)", "Xavier"),
                          min_effect=LATER * total)


def _flow(r: dict[str, Any], act: str, init: str, key: str) -> list[float]:
    return [s[key] for s in r["flow"][act][init]]


def claim_init_balances_gradients(r: dict[str, Any]) -> ClaimResult:
    what = "|log10(first / last hidden layer backpropagated gradient RMS)|"
    parts = {}
    for act, suitable in SUITABLE.items():
        parts[f"{act}: {suitable} near 1"] = threshold_result(np.abs(_flow(r, act, suitable, "delta_ratio")), "<",
                                                              NEAR_ONE, f"{what}, {act}, {LABELS[suitable]}")
        for bad in ("normal_1", "normal_0.01"):
            parts[f"{act}: {bad} far from 1"] = threshold_result(np.abs(_flow(r, act, bad, "delta_ratio")), ">",
                                                                 FAR_FROM_ONE, f"{what}, {act}, {LABELS[bad]}")
    return joint(parts)


def claim_good_init_starts_lower(r: dict[str, Any]) -> ClaimResult:
    large = _flow(r, "relu", "normal_1", "start_loss")
    return joint({good: compare_result(_flow(r, "relu", good, "start_loss"), large, "less",
                                       "cross-entropy at initialization, ReLU stack", (LABELS[good], "N(0, 1)"),
                                       min_effect=LOWER_START) for good in ("xavier", "he")})


def claim_uniform_uneven_units(r: dict[str, Any]) -> ClaimResult:
    what = "std over first-layer units of log10 gradient norm"
    return joint({act: compare_result(_flow(r, act, "uniform_1", "unit_spread"), _flow(r, act, good, "unit_spread"),
                                      "greater", f"{what}, {act}", ("U(-1, 1)", LABELS[good]), paired=False,
                                      min_effect=UNEVEN_UNITS) for act, good in SUITABLE.items()})


CLAIMS = (
    Claim("zeros", "Initializing every weight to zero keeps the units of a layer identical, so the network learns "
                   "nothing.", claim_zeros),
    Claim("normal_sigmoid", "With weights from N(0, 1), the activations of a deep sigmoid network pile up at 0 "
                            "and 1.", claim_normal_sigmoid),
    Claim("small_sigmoid", "With weights from N(0, 0.01²), the activations of a deep sigmoid network all collapse "
                           "to 0.5.", claim_small_sigmoid),
    Claim("xavier_bounded", "Xavier initialization keeps the activations of sigmoid and tanh networks spread "
                            "(neither saturated nor collapsed) through every layer.", claim_xavier_bounded),
    Claim("he_relu", "With ReLU, He initialization (std √(2/n)) keeps the activation std from layer to layer, "
                     "while Xavier shrinks it layer by layer.", claim_he_relu),
    Claim("he_notes", "He initialization as the notes write it, std 2/√n, keeps the activation std of a deep "
                      "ReLU network from layer to layer.", claim_he_notes),
    Claim("he_trains", "A deep ReLU network trains better from He initialization than from Xavier (lower "
                       "validation loss).", claim_he_trains),
    Claim("small_shallow_only", "Small random weights (N(0, 0.01²)) work in a shallow network but not in a deep "
                                "one: the test accuracy falls short of He's little with one hidden layer and by "
                                "much with six.", claim_small_shallow),
    Claim("large_explodes", "In deep networks large weights (N(0, 1)) make the gradients explode: the first "
                            "layer's gradient grows by orders of magnitude with depth, far more than from He.",
          claim_large_explodes),
    Claim("tanh_saturates", "With weights from N(0, 1), the activations of a deep tanh network pile up at -1 and "
                            "1.", claim_tanh_saturates),
    Claim("xavier_he_close", "Xavier and He differ little in practice: the deep ReLU network's test accuracies "
                             "from the two lie within 5 points.", claim_xavier_he_close),
    Claim("uniform_worse", "A uniform initialization at a common range, U(-1, 1), trains worse than Xavier and He "
                           "(lower test accuracy of the deep ReLU network).", claim_uniform_worse),
    Claim("plateau_slow", "A network started in a plateau trains slowly: a sigmoid network from N(0, 1) "
                          "(saturated) reaches a target training loss later than from Xavier.", claim_plateau_slow),
    Claim("init_balances_gradients", "A suitable initialization prevents vanishing and exploding gradients: the "
                                     "backpropagated gradient of a deep network keeps its size from the last "
                                     "hidden layer to the first from He (ReLU) or Xavier (tanh), and grows or "
                                     "shrinks by more than 10x from N(0, 1) or N(0, 0.01²).",
          claim_init_balances_gradients),
    Claim("good_init_starts_lower", "A correct initialization starts from a lower loss: Xavier and He start a deep "
                                    "ReLU network at a lower loss than N(0, 1).", claim_good_init_starts_lower),
    Claim("uniform_uneven_units", "From U(-1, 1) some units learn and others do not: the gradient norms of the "
                                  "first layer's units spread more than from the suitable init (ReLU: He, tanh: "
                                  "Xavier).", claim_uniform_uneven_units),
)


@register_study
class InitActivations(Study[InitBudget]):
    name = "init_activations"
    title = "Weight initialization and activations"
    question = ("How does the weight initialization shape the activations of every layer of a deep network "
                "(sigmoid, tanh, ReLU), and does it change what the network learns?")
    order = 1
    smoke = InitBudget(seeds=2, epochs=1, train_size=300, layers=6, samples=200, networks=2, train_depth=3)
    quick = InitBudget(seeds=10, epochs=8)
    full = InitBudget(seeds=20, epochs=30)
    claims = CLAIMS

    def base_config(self, budget: InitBudget) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": budget.train_depth, "width": budget.width, "activation": "relu"},
                "optimizer": {"name": "momentum", "lr": 0.01}, "threads": 1}

    def measure(self, ctx: StudyContext[InitBudget]) -> dict[str, Any]:
        b = ctx.budget
        forward = per_activation_and_init(ctx, "forward", "forward", ACTIVATIONS, INITS, FORWARD_VERSION,
                                          forward_stats)
        gradients: dict[str, list[dict[str, Any]]] = {init: [] for init in GRADIENT_INITS}
        with ctx.task(f"{self.name} · gradients", len(GRADIENT_INITS) * len(ctx.seeds)) as advance:
            for init in GRADIENT_INITS:
                for seed in ctx.seeds:
                    params = {"init": INITS[init], "seed": seed, "layers": b.layers, "width": b.width,
                              "samples": b.samples, "networks": b.networks, "version": GRADIENT_VERSION}
                    gradients[init].append(ctx.cached("gradients", params,
                                                      lambda i=init, s=seed: first_layer_gradients(i, s, b)))
                    advance()
        arms = {init: {"model.init": spec} for init, spec in SPECS.items()}
        arms.update({f"shallow {init}": {"model.init": INITS[init], "model.depth": b.shallow_depth}
                     for init in ("normal_0.01", "he")})
        runs = ctx.train_arms(self.base_config(b), arms, callbacks_factory=lambda arm, seed: [SymmetryProbe()])
        return {"forward": forward, "runs": runs, "gradients": gradients, "flow": self.flow(ctx),
                "plateau": self.plateau(ctx), "depths": {"shallow": b.shallow_depth, "deep": b.train_depth}}

    def flow(self, ctx: StudyContext[InitBudget]) -> dict[str, dict[str, list[dict[str, float]]]]:
        """``gradient_flow`` per activation of ``SUITABLE``, init of ``FLOW_INITS`` and seed (cached)."""
        inits = {init: SPECS[init] for init in FLOW_INITS}
        return per_activation_and_init(ctx, "flow", "gradient flow", SUITABLE, inits, FLOW_VERSION, gradient_flow)

    def plateau(self, ctx: StudyContext[InitBudget]) -> dict[str, list[Any]]:
        """The ``PLATEAU_DEPTH``-layer sigmoid net from N(0, 1) and from Xavier, with every step's loss."""
        arms = {f"sigmoid {init}": {"model.activation": "sigmoid", "model.depth": PLATEAU_DEPTH,
                                    "model.init": INITS[init], "optimizer.lr": PLATEAU_LR}
                for init in ("normal_1", "xavier")}
        runs = ctx.train_arms(self.base_config(ctx.budget), arms, callbacks_factory=lambda arm, seed: [StepLoss()])
        return {arm.removeprefix("sigmoid "): rs for arm, rs in runs.items()}

    def present(self, results: dict[str, Any], ctx: StudyContext[InitBudget]) -> tuple[list[FigureRef], list[Table]]:
        forward, runs = results["forward"], results["runs"]
        figures = [ctx.figure(_histograms(forward, act), f"histograms_{act}",
                              f"Activation histograms per layer ({act}, seed {ctx.seeds[0]}): the textbook figure. "
                              "Each row is an initialization.") for act in ACTIVATIONS]
        figures.append(ctx.figure(_per_layer(forward, "std", log=True), "std_per_layer",
                                  "Activation std per layer: mean over seeds with 95% band (log scale)."))
        figures.append(ctx.figure(_per_layer(forward, "saturated", acts=("sigmoid", "tanh")), "saturated_per_layer",
                                  "Share of saturated activations (within 2% of a bound) per layer."))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        deep = {a: rs for a, rs in runs.items() if a in SPECS}
        curves_figure({LABELS[a]: series(rs, "train_loss") for a, rs in deep.items()}, title="training loss",
                      xlabel="epoch", ylabel="loss", ax=axes[0])
        curves_figure({LABELS[a]: series(rs, "val_acc") for a, rs in deep.items()}, title="validation accuracy",
                      xlabel="epoch", ylabel="accuracy", ax=axes[1])
        figures.append(ctx.figure(fig, "training", "Deep ReLU MLP on the study's dataset, one curve per "
                                                   "initialization: mean over seeds with 95% band."))
        rows = []
        for act in ACTIVATIONS:
            for init in INITS:
                stats = forward[act][init]
                rows.append([act, LABELS[init], mean_finite([s["std"][0] for s in stats]),
                             mean_finite([s["std"][-1] for s in stats]), mean_finite([_ratio(s) for s in stats]),
                             mean_finite([np.mean(s["saturated"]) for s in stats]),
                             mean_finite([np.mean(s["dead"]) for s in stats])])
        forward_table = Table(f"Forward pass: {ctx.budget.layers} layers of {ctx.budget.width} units (means over "
                              "seeds)",
                              ["activation", "init", "first std", "last std", "last/first", "saturated", "dead"],
                              rows)
        depths = results["depths"]

        def label(arm: str) -> str:
            init = arm.removeprefix("shallow ")
            return f"{LABELS[init]}, {depths['shallow'] if arm != init else depths['deep']} hidden layer(s)"

        figures.append(ctx.figure(_gradient_figure(results["gradients"]), "gradient_by_depth",
                                  "RMS of the cross-entropy's gradient with respect to the first weight matrix "
                                  "(random labels), against depth: mean of log10 over seeds with 95% band."))
        train_rows = [[label(a), mean_finite(finals(rs, "val_loss")), mean_finite(finals(rs, "val_acc")),
                       mean_finite(finals(rs, "test_acc")), mean_finite([r.final["epochs_run"] for r in rs]),
                       "; ".join(sorted({r.final["stopped_reason"] for r in rs if r.final["stopped_reason"]}))]
                      for a, rs in runs.items()]
        train_table = Table("Training (means over seeds)",
                            ["init", "val loss", "val acc", "test acc", "epochs run", "stopped"], train_rows)
        return figures, [forward_table, train_table, *_flow_tables(results, ctx.budget)]


def _flow_tables(results: dict[str, Any], b: InitBudget) -> list[Table]:
    """The gradient-flow experiment and the plateau arms, as tables (means over seeds)."""
    flow = results["flow"]
    rows = [[act, LABELS[init], *(mean_finite([f[k] for f in flow[act][init]])
                                  for k in ("delta_ratio", "log_ratio", "start_loss", "unit_spread"))]
            for act in flow for init in flow[act]]
    flow_table = Table(f"Gradient flow at initialization: {b.layers} hidden layers of {b.width} units, random labels "
                       "(means over seeds)", ["activation", "init", "log10 first / last hidden backpropagated "
                                              "gradient RMS", "log10 first / last hidden weight gradient RMS",
                                              "starting loss", "spread of unit gradients (decades)"], rows)
    plateau = results["plateau"]
    total = max(len(run.extras["step_loss"]) for runs in plateau.values() for run in runs)
    plateau_table = Table(f"Sigmoid, {PLATEAU_DEPTH} hidden layers, momentum SGD at lr {PLATEAU_LR:g} (means over "
                          "seeds)", ["init", f"steps to {PLATEAU_TARGET:g} ln(10) (of {total})", "final train loss"],
                          [[LABELS[init], mean_finite(plateau_steps(runs, total)),
                            mean_finite(finals(runs, "train_loss"))] for init, runs in plateau.items()])
    return [flow_table, plateau_table]


def _gradient_figure(gradients: dict[str, list[dict[str, Any]]]) -> Any:
    layers = len(gradients[GRADIENT_INITS[0]][0]["log_grad"])
    return curves_figure({LABELS[i]: [g["log_grad"] for g in gradients[i]] for i in GRADIENT_INITS},
                         x=np.arange(1, layers + 1), title="first-layer gradient of ReLU stacks at initialization",
                         xlabel="hidden layers", ylabel="log10 gradient RMS")


def _histograms(forward: dict[str, Any], act: str) -> Any:
    inits = [i for i in INITS if i != "zeros"]
    depth = len(forward[act][inits[0]][0]["std"])
    cols = sorted(set(np.linspace(0, depth - 1, min(5, depth)).round().astype(int)))

    def cell(r: int, c: int) -> HistogramCell:
        stats = forward[act][inits[r]][0]
        hist = stats["hist"][cols[c]]
        return hist / max(hist.sum(), 1), tuple(stats["hist_range"][cols[c]]), ""

    return histogram_grid([LABELS[init] for init in inits], [f"layer {layer + 1}" for layer in cols], cell,
                          title=f"{act} activations", width=2.2, height=1.5)


def _per_layer(forward: dict[str, Any], key: str, log: bool = False, acts: tuple[str, ...] = ACTIVATIONS) -> Any:
    fig, axes = plt.subplots(1, len(acts), figsize=(4.6 * len(acts), 3.8), squeeze=False)
    for ax, act in zip(axes[0], acts):
        curves = {LABELS[i]: [s[key] for s in forward[act][i]] for i in INITS if not (log and i == "zeros")}
        curves_figure(curves, title=act, xlabel="layer", ylabel=key, logy=log, ax=ax)
    fig.tight_layout()
    return fig


def per_activation_and_init(ctx: StudyContext[InitBudget], name: str, label: str, activations: Sequence[str],
                            inits: Mapping[str, Any], version: int,
                            compute: Callable[[str, str, int, InitBudget], dict[str, Any]]
                            ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{activation: {init: [compute(activation, init, seed, budget) per seed]}}``, each result cached under
    ``name`` with ``inits[init]`` (the init's spec), the budget's network sizes and ``version`` in its key (a
    progress bar labelled ``label``)."""
    b = ctx.budget
    out: dict[str, dict[str, list[dict[str, Any]]]] = {act: {} for act in activations}
    with ctx.task(f"{ctx.study} · {label}", len(activations) * len(inits) * len(ctx.seeds)) as advance:
        for act in activations:
            for init, spec in inits.items():
                out[act][init] = []
                for seed in ctx.seeds:
                    params = {"activation": act, "init": spec, "seed": seed, "layers": b.layers, "width": b.width,
                              "samples": b.samples, "networks": b.networks, "version": version}
                    out[act][init].append(ctx.cached(name, params,
                                                     lambda a=act, i=init, s=seed: compute(a, i, s, b)))
                    advance()
    return out
