"""Study 7: batch normalization over initial weight scales, learning rates, and its place around the activation.

As in the textbook's experiment (Saito, "Deep Learning from Scratch", §6.3.2: a 5-layer MLP of 100 ReLU units,
1000 training samples, weights from N(0, s²) for 16 scales s from 1 to 1e-4 on a log scale), a deep MLP is trained
on a small training set with and without batch norm (before the activation) for ``scales`` weight scales from the
same log range, with SGD + momentum at ``BASE_LR``. Far from the right scale a plain network does not train at all
(activations vanish for small s, explode for large s); batch norm renormalizes every layer's pre-activations, so
whether it trains should barely depend on s. Then, from He initialization, the network without BN, with BN before
and with BN after the activation is trained at each learning rate of ``lrs`` (a decade apart, up to one where the
plain network is expected to diverge). Last, at the reference, the network without and with BN (before the
activation) is trained once more with dropout (``DROPOUT`` after every hidden block).

What the claims measure (fixed before measuring; runs are paired by seed: same data order, and the same weights up
to the scale):

- speed: training accuracy after k = epochs/4 epochs, at the He-initialized reference (``BASE_LR``), and averaged
  over the init scales per seed (a run that diverged before epoch k counts with the accuracy it ended with);
- larger learning rates: final test accuracy at the highest learning rate (a diverged run is stopped and scores
  what its non-finite weights predict, about chance);
- init scale: per seed, the mean over the init scales of the *shortfall* of the final test accuracy from the best
  scale's: what a wrong guess of the scale costs. (Not the standard deviation over scales: a plain network that
  learns nothing at every scale but one sits at chance, a floor, and so has a small standard deviation although
  its result depends entirely on the scale; the standard deviations are reported alongside.)
- regularization: the generalization gap (``measures.generalization_gap``: training accuracy, eval mode, after
  training, minus test accuracy) at the reference. At a fixed budget a network that fits its training set faster
  also widens this gap, so the table gives the training and test accuracies behind it at every learning rate;
- placement: BN before the activation works better than after it when its final test accuracy at the reference is
  higher by more than ``BETTER`` (1 point);
- less need for dropout: per seed, the *gain* of dropout is the final test accuracy with dropout minus without (at
  the reference); BN reduces the need for it when dropout helps the plain network (its gain > 0) and the gain with
  BN is smaller by more than ``BETTER``. Where dropout does not help the plain network, the verdict is inconclusive:
  there is no need for BN to reduce;
- gradient flow: at initialization, for every init scale, the gradient of the cross-entropy on the training set (one
  batch, train mode) is taken with respect to the first and the last hidden layer's linear output (the
  backpropagated gradient, before BN; the weight gradients' ratio would hide the scale in a ReLU net without BN);
  per seed the mean over the init scales of |log10(first's gradient RMS / last's)| is how many decades the gradient
  changes through the net (0: it flows evenly; float64, so nothing underflows). BN eases vanishing and exploding
  gradients when this is smaller with BN by more than ``GRADIENT_DECADES`` (0.5) decades;
- drift of the hidden distributions (internal covariate shift): for the reference runs, the inputs of every linear
  layer after the first (the hidden activations the next layer sees) on the whole training set, in train mode, with
  the initial weights (rebuilt from the run's seed) and with the trained ones (its checkpoint); per layer the drift
  is mean |change of a unit's mean| + mean |change of a unit's std|, over the mean initial std; averaged over the
  layers. The distributions drift without BN when that exceeds ``MIN_DRIFT`` (0.1); BN suppresses the drift when
  its drift is smaller by more than ``MIN_DRIFT``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

import torch
from torch import Tensor, nn

from trainlab.data import load_data
from trainlab.diagnostics.probes import forward_hooks
from trainlab.figures import bars_figure, curves_figure
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, one_thread, series, threshold_result)
from trainlab.studies.measures import (TrainEval, backpropagated_gradients, generalization_gap, mean_finite,
                                       train_metric)
from trainlab.models import MLP
from trainlab.runs import RunResult
from trainlab.trainer import seeds_for

BASE_LR = 0.01  # the learning rate of the init-scale sweep and of the reference
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"model.norm": "none"},
    "bn": {"model.norm": "batch", "model.norm_position": "before_activation"},
    "bn_after": {"model.norm": "batch", "model.norm_position": "after_activation"},
}
LABELS = {"none": "without BN", "bn": "BN before activation", "bn_after": "BN after activation"}
SHORT = {"none": "no BN", "bn": "BN before act.", "bn_after": "BN after act."}
BETTER = 0.01  # test accuracy by which one network must beat another to count
DROPOUT = 0.3  # the regularization study's rate
DROPOUT_VARIANTS = ("none", "bn")
GRADIENT_DECADES = 0.5  # decades of first-to-last gradient ratio by which BN must bring it nearer to 1
GRADIENT_VERSION = 2  # bump when the gradient-flow measure changes (2: backpropagated, not weight, gradients)
MIN_DRIFT = 0.1  # drift of the hidden distributions (in initial stds) that counts as drifting, and as less drift


@dataclass(frozen=True)
class BatchNormBudget(Budget):
    scales: int = 6  # init stds, log-spaced from 1 to 1e-4 (the textbook uses 16)
    lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
    depth: int = 5
    width: int = 100


def init_scales(n: int) -> list[float]:
    """``n`` weight stds from 1 down to 1e-4, evenly spaced on a log scale (the textbook's np.logspace(0, -4, n))."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"The number of init scales must be a positive int. Got {n!r} instead.")
    return [float(f"{s:.4g}") for s in np.logspace(0, -4, n)]


def value_at_epoch(run: RunResult, key: str, epoch: int, fallback: float) -> float:
    """``key`` of the history after ``epoch`` (1-based) epochs; ``fallback`` if the run stopped before or it is
    not finite."""
    if len(run.history) >= epoch and np.isfinite(run.history[epoch - 1][key]):
        return float(run.history[epoch - 1][key])
    return float(fallback)


def acc_at(run: RunResult, epoch: int) -> float:
    """Training accuracy after ``epoch`` epochs; a run that diverged before counts with the accuracy it ended with."""
    return value_at_epoch(run, "train_acc", epoch, train_metric(run))


def claim_speed(r: dict[str, Any]) -> ClaimResult:
    k = r["k"]
    return joint({
        "He init": compare_result(r["ref_acc_k"]["bn"], r["ref_acc_k"]["none"], "greater",
                                  f"training accuracy after {k} epochs (He init)", ("BN", "no BN")),
        "over init scales": compare_result(np.mean(r["acc_k"]["bn"], axis=1), np.mean(r["acc_k"]["none"], axis=1),
                                           "greater", f"training accuracy after {k} epochs, mean over init scales",
                                           ("BN", "no BN")),
    })


def claim_high_lr(r: dict[str, Any]) -> ClaimResult:
    lr = r["lrs"][-1]
    found = compare_result(r["test_acc_lr"]["bn"][lr], r["test_acc_lr"]["none"][lr], "greater",
                           f"final test accuracy at lr {lr:g}", ("BN", "no BN"))
    diverged = {f"{LABELS[v]}: diverged runs": float(sum(r["diverged_lr"][v][lr])) for v in ("bn", "none")}
    return ClaimResult(found.verdict, found.evidence + " Diverged runs: " + ", ".join(
        f"{k.split(':')[0]} {int(n)}" for k, n in diverged.items()) + ".", {**found.numbers, **diverged})


def shortfall(acc: np.ndarray) -> np.ndarray:
    """Per seed (row), the mean over init scales (columns) of how far the accuracy falls short of the best scale's."""
    acc = np.asarray(acc, dtype=float)
    return np.mean(acc.max(axis=1, keepdims=True) - acc, axis=1)


def claim_init_scale(r: dict[str, Any]) -> ClaimResult:
    acc = r["test_acc_scales"]
    found = compare_result(shortfall(acc["bn"]), shortfall(acc["none"]), "less",
                           "mean shortfall of the final test accuracy from the best init scale's", ("BN", "no BN"))
    spread = {f"{LABELS[v]}: std over scales": float(np.mean(np.std(acc[v], axis=1))) for v in ("bn", "none")}
    return ClaimResult(found.verdict, found.evidence, {**found.numbers, **spread})


def claim_regularizes(r: dict[str, Any]) -> ClaimResult:
    return compare_result(r["gap"]["bn"], r["gap"]["none"], "less",
                          "train accuracy - test accuracy (He init)", ("BN", "no BN"))


def claim_placement(r: dict[str, Any]) -> ClaimResult:
    return compare_result(r["test_acc_lr"]["bn"][BASE_LR], r["test_acc_lr"]["bn_after"][BASE_LR], "greater",
                          f"final test accuracy (He init, lr {BASE_LR:g})", ("BN before", "BN after"),
                          min_effect=BETTER)


def dropout_gain(r: dict[str, Any], variant: str) -> list[float]:
    """Per seed: final test accuracy of ``variant`` with dropout minus without, at the reference."""
    return [float(d - p) for d, p in zip(r["test_acc_dropout"][variant], r["test_acc_lr"][variant][BASE_LR])]


def claim_less_dropout(r: dict[str, Any]) -> ClaimResult:
    what = f"test accuracy gained by dropout {DROPOUT:g} (He init, lr {BASE_LR:g})"
    found = joint({
        "dropout helps the plain net": threshold_result(dropout_gain(r, "none"), ">", 0.0, f"{what}, no BN"),
        "BN gains less": compare_result(dropout_gain(r, "bn"), dropout_gain(r, "none"), "less", what,
                                        ("BN", "no BN"), min_effect=BETTER),
    })
    if found.parts["dropout helps the plain net"].verdict != "supported":
        # Where dropout does not help the plain net either, there is no need of it for BN to reduce.
        return ClaimResult("inconclusive", "Dropout does not help the network without BN here, so this setting "
                                           "cannot show BN reducing the need for it.\n" + found.evidence,
                           found.numbers, found.parts)
    return found


def gradient_decades(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """|log10| of the ratio of the first to the last hidden layer's backpropagated gradient RMS of the cross-entropy
    on (x, y) (``measures.backpropagated_gradients``)."""
    _, rms, _ = backpropagated_gradients(model, x, y)
    return abs(math.log10(rms[0] / rms[-1]))


def init_gradients(budget: BatchNormBudget, config: Any, scales: list[float], seeds: list[int]) -> dict[str, Any]:
    """``{variant: seeds x scales array}`` of ``gradient_decades`` at initialization, for no BN and BN before the
    activation, on the training set of ``config`` (float64, one thread)."""
    data = load_data(config.data)
    x, y = data.x_train.double(), data.y_train
    out: dict[str, Any] = {}
    with one_thread():
        for v, norm in (("none", "none"), ("bn", "batch")):
            rows = []
            for seed in seeds:
                generator = torch.Generator().manual_seed(seeds_for(seed)["init"])
                specs = [MLP(depth=budget.depth, width=budget.width, activation="relu", norm=norm,
                             init={"name": "normal", "std": s}) for s in scales]
                rows.append([gradient_decades(spec.build(data.input_shape, data.num_outputs, generator).double(), x, y)
                             for spec in specs])
            out[v] = np.array(rows)
    return out


def layer_input_stats(model: nn.Module, x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per-unit (mean, std) over ``x`` of the input of every linear layer after the first (one forward in train
    mode, no grad; the model is left in train mode)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][1:]
    seen: list[tuple[Tensor, Tensor]] = []
    model.train()
    with forward_hooks({m: lambda _, inputs, out: seen.append((inputs[0].mean(0), inputs[0].std(0)))
                        for m in linears}), torch.no_grad():
        model(x)
    return seen


def drift(before: list[tuple[Tensor, Tensor]], after: list[tuple[Tensor, Tensor]]) -> float:
    """Mean over layers of (mean |change of the unit means| + mean |change of the unit stds|) / mean initial std."""
    return float(np.mean([float(((m1 - m0).abs().mean() + (s1 - s0).abs().mean()) / s0.mean())
                          for (m0, s0), (m1, s1) in zip(before, after)]))


def run_drift(run: RunResult) -> float:
    """``drift`` of a stored run's hidden distributions from its initial weights to its trained ones."""
    from trainlab.config import load_config

    config = load_config(run.config)
    data = load_data(config.data)
    initial = config.model.build(data.input_shape, data.num_outputs,
                                 torch.Generator().manual_seed(seeds_for(config.seed)["init"]))
    trained = run.load_model()
    return drift(layer_input_stats(initial, data.x_train), layer_input_stats(trained, data.x_train))


def claim_gradient_flow(r: dict[str, Any]) -> ClaimResult:
    g = r["gradient_decades"]
    return compare_result(np.mean(g["bn"], axis=1), np.mean(g["none"], axis=1), "less",
                          "|log10 first / last hidden layer's backpropagated gradient RMS| at init, mean over init "
                          "scales",
                          ("BN", "no BN"), min_effect=GRADIENT_DECADES)


def claim_drift(r: dict[str, Any]) -> ClaimResult:
    d = r["drift"]
    return joint({
        "the distributions drift without BN": threshold_result(d["none"], ">", MIN_DRIFT,
                                                               "drift of the hidden distributions, no BN"),
        "BN suppresses the drift": compare_result(d["bn"], d["none"], "less", "drift of the hidden distributions",
                                                  ("BN", "no BN"), min_effect=MIN_DRIFT),
    })


CLAIMS = (
    Claim("bn_speeds", "Batch normalization speeds up training: a higher training accuracy after a few epochs.",
          claim_speed),
    Claim("bn_larger_lr", "Batch normalization tolerates larger learning rates: at a learning rate where the plain "
                          "network diverges or degrades, the network with BN still trains (higher test accuracy).",
          claim_high_lr),
    Claim("bn_init_scale", "Batch normalization makes results depend less on the initial weight scale: away from "
                           "the best scale, the final test accuracy falls short of the best scale's by less.",
          claim_init_scale),
    Claim("bn_regularizes", "Batch normalization regularizes a little: a smaller gap between training and test "
                            "accuracy.", claim_regularizes),
    Claim("bn_before_activation", "Batch normalization works better after the linear map and before the "
                                  "nonlinearity than after the nonlinearity: a higher test accuracy.",
          claim_placement),
    Claim("bn_less_dropout", "Batch normalization reduces the need for dropout: adding dropout to a network with BN "
                             "gains less test accuracy than adding it to the plain network.", claim_less_dropout),
    Claim("bn_gradient_flow", "Batch normalization eases vanishing and exploding gradients: at initialization the "
                              "gradient changes by fewer decades from the last layer to the first, over the init "
                              "scales.", claim_gradient_flow),
    Claim("bn_less_drift", "Even with normalized input, the hidden layers' input distributions drift in training "
                           "as the weights change (internal covariate shift), and batch normalization suppresses "
                           "that drift.", claim_drift),
)


@register_study
class BatchNorm(Study[BatchNormBudget]):
    name = "batch_norm"
    title = "Batch normalization"
    question = ("Does batch normalization make a deep network train faster, at larger learning rates and from any "
                "initial weight scale, and does it regularize? Does it matter whether it comes before or after the "
                "activation?")
    order = 7
    smoke = BatchNormBudget(seeds=2, epochs=2, train_size=200, scales=2, lrs=(0.01, 1.0), depth=3, width=32)
    quick = BatchNormBudget(seeds=10, epochs=20, train_size=1000)
    full = BatchNormBudget(seeds=20, epochs=30, train_size=1000, scales=16)
    claims = CLAIMS

    def base_config(self, budget: BatchNormBudget) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": budget.depth, "width": budget.width, "activation": "relu"},
                "optimizer": {"name": "momentum", "lr": BASE_LR, "momentum": 0.9}, "threads": 1}

    def measure(self, ctx: StudyContext[BatchNormBudget]) -> dict[str, Any]:
        b = ctx.budget
        scales = init_scales(b.scales)
        lrs = sorted({*b.lrs, BASE_LR})
        k = max(1, b.epochs // 4)
        arms = {f"{v}@std={s:g}": {**VARIANTS[v], "model.init": {"name": "normal", "std": s}}
                for v in ("none", "bn") for s in scales}
        arms.update({f"{v}@lr={lr:g}": {**VARIANTS[v], "optimizer.lr": lr} for v in VARIANTS for lr in lrs})
        arms.update({f"{v}+dropout": {**VARIANTS[v], "model.dropout": DROPOUT} for v in DROPOUT_VARIANTS})
        runs = ctx.train_arms(self.base_config(b), arms, callbacks_factory=lambda arm, seed: [TrainEval()])
        by_scale = {v: [runs[f"{v}@std={s:g}"] for s in scales] for v in ("none", "bn")}
        by_lr = {v: {lr: runs[f"{v}@lr={lr:g}"] for lr in lrs} for v in VARIANTS}

        config = ctx.run_config(self.base_config(b), {}, ctx.seeds[0])
        gradients = ctx.cached("gradients", {"version": GRADIENT_VERSION, "scales": scales, "seeds": ctx.seeds,
                                             "depth": b.depth,
                                             "width": b.width, "data": config.data.model_dump(mode="json")},
                               lambda: init_gradients(b, config, scales, ctx.seeds))
        reference = {v: by_lr[v][BASE_LR] for v in DROPOUT_VARIANTS}
        drifts = ctx.cached("drift", {v: [r.config for r in rs] for v, rs in reference.items()},
                            lambda: {v: np.array([run_drift(r) for r in rs]) for v, rs in reference.items()})

        def per_seed(table: list[list[RunResult]], value: Any) -> np.ndarray:
            return np.array([[value(run) for run in rs] for rs in table]).T  # seeds x scales

        return {
            "scales": scales, "lrs": lrs, "k": k, "by_scale": by_scale, "by_lr": by_lr,
            "acc_k": {v: per_seed(t, lambda run: acc_at(run, k)) for v, t in by_scale.items()},
            "test_acc_scales": {v: per_seed(t, lambda run: run.final["test_acc"]) for v, t in by_scale.items()},
            "ref_acc_k": {v: [acc_at(run, k) for run in by_lr[v][BASE_LR]] for v in VARIANTS},
            "gap": {v: [generalization_gap(run) for run in by_lr[v][BASE_LR]] for v in VARIANTS},
            "test_acc_lr": {v: {lr: finals(rs, "test_acc") for lr, rs in t.items()} for v, t in by_lr.items()},
            "test_acc_dropout": {v: finals(runs[f"{v}+dropout"], "test_acc") for v in DROPOUT_VARIANTS},
            "diverged_lr": {v: {lr: [bool(run.extras.get("diverged")) for run in rs] for lr, rs in t.items()}
                            for v, t in by_lr.items()},
            "gradient_decades": {v: np.asarray(gradients[v]) for v in ("none", "bn")},
            "drift": {v: [float(x) for x in drifts[v]] for v in DROPOUT_VARIANTS},
        }

    def present(self, results: dict[str, Any], ctx: StudyContext[BatchNormBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        scales, lrs, k = results["scales"], results["lrs"], results["k"]
        by_scale, by_lr = results["by_scale"], results["by_lr"]
        figures = [
            ctx.figure(_scale_panels(scales, by_scale), "training_by_scale",
                       f"The textbook figure: training accuracy per epoch with and without batch norm, one panel per "
                       f"initial weight std (lr {BASE_LR:g}); mean over seeds with 95% band."),
        ]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        curves_figure({LABELS[v]: results["test_acc_scales"][v] for v in ("none", "bn")}, x=scales,
                      title="final test accuracy against the initial weight scale", xlabel="weight std s",
                      ylabel="test accuracy", ax=ax)
        ax.set_xscale("log")
        ax.invert_xaxis()
        _markers(ax)
        figures.append(ctx.figure(fig, "accuracy_by_scale", "Final test accuracy per init scale: mean over seeds "
                                                            "with 95% band."))
        fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.6), sharey=True, squeeze=False)
        for ax, lr in zip(axes[0], lrs):
            curves_figure({LABELS[v]: series(by_lr[v][lr], "train_loss") for v in VARIANTS}, title=f"lr {lr:g}",
                          xlabel="epoch", ylabel="training loss", logy=True, ax=ax)
            _note_diverged(ax, {LABELS[v]: by_lr[v][lr] for v in VARIANTS})
        fig.tight_layout()
        figures.append(ctx.figure(fig, "learning_rates", "Training loss from He initialization at each learning rate "
                                                         "(SGD + momentum 0.9); a diverged run's curve ends where it "
                                                         "was stopped. Mean over seeds with 95% band."))
        fig, ax = plt.subplots(figsize=(6.4, 4))
        curves_figure({LABELS[v]: np.array([results["test_acc_lr"][v][lr] for lr in lrs]).T for v in VARIANTS},
                      x=lrs, title="final test accuracy against the learning rate", xlabel="learning rate",
                      ylabel="test accuracy", ax=ax)
        ax.set_xscale("log")
        _markers(ax)
        figures.append(ctx.figure(fig, "accuracy_by_lr", "Final test accuracy per learning rate (He init): mean over "
                                                         "seeds with 95% band."))
        figures.append(ctx.figure(bars_figure({SHORT[v]: results["gap"][v] for v in VARIANTS},
                                              title=f"train - test accuracy (He init, lr {BASE_LR:g})",
                                              ylabel="accuracy gap"), "gap",
                                  "Generalization gap after training: mean and 95% CI over seeds."))
        figures.append(ctx.figure(bars_figure({SHORT[v]: dropout_gain(results, v) for v in DROPOUT_VARIANTS},
                                              title=f"test accuracy gained by dropout {DROPOUT:g}",
                                              ylabel="with dropout - without"), "dropout_gain",
                                  f"What dropout adds to the test accuracy with and without BN (He init, lr "
                                  f"{BASE_LR:g}): mean and 95% CI over seeds of the paired difference."))
        scale_rows = [[s, *(mean_finite(results["acc_k"][v][:, i]) for v in ("none", "bn")),
                       *(mean_finite(results["test_acc_scales"][v][:, i]) for v in ("none", "bn")),
                       *(_diverged(by_scale[v][i]) for v in ("none", "bn"))] for i, s in enumerate(scales)]
        lr_rows = [[lr, LABELS[v], mean_finite([acc_at(r, k) for r in rs]), mean_finite(finals(rs, "train_loss")),
                    mean_finite([train_metric(r) for r in rs]), mean_finite(finals(rs, "test_acc")),
                    mean_finite([generalization_gap(r) for r in rs]), _diverged(rs)]
                   for lr in lrs for v, rs in ((v, by_lr[v][lr]) for v in VARIANTS)]
        return figures, [
            Table(f"Init scales (lr {BASE_LR:g}; means over seeds)",
                  ["weight std", f"train acc @{k} no BN", f"train acc @{k} BN", "test acc no BN", "test acc BN",
                   "diverged no BN", "diverged BN"], scale_rows),
            Table("Learning rates from He init (means over seeds; diverged runs excluded from the loss)",
                  ["lr", "network", f"train acc @{k}", "final train loss", "train acc (eval)", "test acc", "gap",
                   "diverged"], lr_rows),
            _dropout_table(results), _flow_table(results),
        ]


def _dropout_table(results: dict[str, Any]) -> Table:
    return Table(f"Dropout {DROPOUT:g} at the reference (He init, lr {BASE_LR:g}; means over seeds)",
                 ["network", "test acc", "test acc with dropout", "gain"],
                 [[LABELS[v], mean_finite(results["test_acc_lr"][v][BASE_LR]),
                   mean_finite(results["test_acc_dropout"][v]), mean_finite(dropout_gain(results, v))]
                  for v in DROPOUT_VARIANTS])


def _flow_table(results: dict[str, Any]) -> Table:
    g, d = results["gradient_decades"], results["drift"]
    rows = [[f"{s:g}", mean_finite(g["none"][:, i]), mean_finite(g["bn"][:, i])]
            for i, s in enumerate(results["scales"])]
    rows.append([f"drift of the hidden distributions (He init, lr {BASE_LR:g})", mean_finite(d["none"]),
                 mean_finite(d["bn"])])
    return Table("Gradient flow at init: |log10 first / last hidden layer's backpropagated gradient RMS| per init "
                 "scale, and the drift of the hidden layers' input distributions from init to the end (means over "
                 "seeds)",
                 ["init std", "no BN", "BN"], rows)


def _diverged(runs: list[RunResult]) -> str:
    return f"{sum(bool(r.extras.get('diverged')) for r in runs)}/{len(runs)}"


def _markers(ax: Any) -> None:
    for line in ax.get_lines():
        line.set_marker("o")
        line.set_markersize(4)


def _note_diverged(ax: Any, groups: dict[str, list[RunResult]]) -> None:
    """Write in the panel which groups had diverged (stopped) runs, whose curves end early or are absent."""
    notes = [f"{label}: {n}/{len(runs)} diverged" for label, runs in groups.items()
             if (n := sum(bool(r.extras.get("diverged")) for r in runs))]
    if notes:
        ax.text(0.97, 0.05, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="#cf222e")


def _scale_panels(scales: list[float], by_scale: dict[str, list[list[RunResult]]]) -> Any:
    cols = min(4, len(scales)) if len(scales) != 6 else 3
    rows = -(-len(scales) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), sharex=True, sharey=True, squeeze=False)
    for i, (ax, s) in enumerate(zip(axes.flat, scales)):
        curves_figure({"with BN": series(by_scale["bn"][i], "train_acc"),
                       "without BN": series(by_scale["none"][i], "train_acc")},
                      title=f"W ~ N(0, {s:.3g}²)", xlabel="epoch" if i // cols == rows - 1 else "",
                      ylabel="train accuracy" if i % cols == 0 else "", ax=ax)
        ax.set_ylim(0, 1)
        ax.title.set_fontsize(9)
        _note_diverged(ax, {"with BN": by_scale["bn"][i], "without BN": by_scale["none"][i]})
        if i:
            ax.get_legend().remove()
    for ax in list(axes.flat)[len(scales):]:
        ax.axis("off")
    # Fixed margins: tight_layout over 16 small axes costs seconds.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.93, wspace=0.12, hspace=0.35)
    return fig
