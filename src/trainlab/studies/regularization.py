"""Study 6: regularization on small data: penalties, dropout, early stopping, augmentation and noise.

A network far larger than its data (an MLP of 3 x 256 units, ~144k weights, on 500 MNIST-1D training samples) is
trained long enough to fit the training set perfectly with Adam; each arm adds one technique to that overfitting
baseline (``none``): L1, L2 and elastic-net penalties on the weights, an L2 and an L1 penalty on the hidden
activations (``activity``, ``activity_l1``), dropout (inverted, and classic with test-time scaling), early stopping
on the validation loss with the best weights restored, random shifts of the signal (augmentation), Gaussian input
noise, and decoupled weight decay (AdamW). Every arm shares the seed's initial weights and batch order, so the
comparisons with ``none`` are paired by seed.

At the end of each run, with the final weights (the restored ones for early stopping), ``measures.TrainEval``
records the train metrics in eval mode (no dropout, no augmentation: the *clean* train accuracy) and a probe the
fraction of weights with
|w| < 1e-3 (``trainlab.regularizers.sparsity``) and < 1e-6, the RMS and the largest |w|, quantiles and a histogram
of the first layer's weights, and, for dropout nets, the test accuracy of Monte-Carlo averages of thinned networks
(the softmax averaged over 1, 2, 4, ... random dropout masks) against the single deterministic pass.

Definitions, fixed before measuring:

- the *gap* is ``measures.generalization_gap``: clean train accuracy minus test accuracy (not validation accuracy,
  which early stopping selects its weights by); a technique reduces it when its gap is smaller than ``none``'s
  (paired t-test over seeds);
- *sparse* is the fraction of weights with |w| < 1e-3; L2's weights are *uniformly small* when their RMS and their
  largest |w| are below ``none``'s;
- dropout *works like an ensemble* when averaging the predictions of many thinned networks beats one thinned network
  and the weight-scaled deterministic net is within ``EQUIVALENT`` (1 point) of accuracy of that average;
- early stopping stops *near* the validation minimum when the epoch it restores is within ``NEAR_EPOCHS`` epochs of
  the minimum of the validation loss of the un-stopped ``none`` run with the same seed (the two runs follow the same
  trajectory until the stop, so this checks that the minimum does not come after the patience ran out);
- one penalty *fits better* than another on the same target (kernel or activity) when its final test accuracy is
  higher by more than ``FITS_BETTER`` (1 point), paired by seed, each at the strength its pilot chose;
- dropout *lengthens training* when a dropout net needs more than ``LONGER_EPOCHS`` (5) epochs more than ``none`` to
  bring its training loss (the loop's, in train mode: the loss being minimized) to ``TARGET_LOSS``, half the loss of
  a uniform guess over 10 classes; a run that never gets there counts as one epoch more than the budget
  (``measures.steps_to_target``), a lower bound;
- the dropout *rate matters* when, over the sweep ``DROPOUT_RATES`` (0.1 to 0.7, the sweep's arms trained besides
  ``ARMS``), the rate with the best mean validation accuracy beats the one with the worst on *test* accuracy by more
  than ``RATE_MATTERS`` (1 point), paired by seed (picking the two by validation accuracy keeps the selection from
  biasing the test comparison);
- a *weaker penalty lets the weights grow and widens the gap* when, at each step down the L2 path ``L2_PATH``
  (3e-2, 3e-3, then none; the sweep's arms record only the weights and the clean train metrics, so their seeds train
  as one batch), the RMS of the weights grows by more than the factor ``WEIGHTS_GROW`` (1.1; compared as
  log RMS) and the gap by more than ``WIDER_GAP`` (1 point), paired by seed;
- *overfit networks have large weights* when, per seed, the rank (Spearman) correlation across every trained arm
  (``ARMS`` and the sweep) of the weights' RMS with the gap is above ``MIN_CORRELATION`` (0.3), as a mean over seeds
  (whole 95% interval above it);
- L1 *selects the informative features* when, trained on the study's data with as many pure-noise input features
  appended (N(0, 1) scaled to the inputs' std, drawn once, ``NOISE_SEED``), its first layer's mean |w| on the noise
  features is below ``SELECTS`` (half) of its mean |w| on the real ones, and that ratio is below L2's by more than the
  factor ``1 / SELECTS`` too (compared as log ratios, paired by seed), each at the study's strength; these two arms
  (``NOISE_ARMS``) record only what they need, so their seeds train as one batch;
- *training longer overfits* (the variance grows more than the bias falls) when, in the un-stopped ``none`` runs,
  the validation loss ends more than ``LOSS_CHANGE`` (0.1 nats) above its minimum while the training loss ends more
  than ``LOSS_CHANGE`` below its value at that minimum's epoch: val = train + gap, so a rising val loss over a
  falling train loss means the gap (variance) grew by more than the train loss (bias) fell.

Strengths were chosen once, in a pilot (seeds 0 and 1, 80 epochs), as the best mean validation accuracy of a small
grid per technique: L1 {1e-4, 3e-4, 1e-3, 3e-3}, L2 {1e-3, 1e-2, 3e-2, 1e-1}, elastic net (l1, l2) {(1e-3, 1e-2),
(3e-4, 3e-2), (1e-3, 3e-2)}, activity {1e-3, 1e-2, 1e-1}, L1 activity {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1}
(1e-2 won, at a mean validation accuracy of 0.360 against the L2 activity penalty's 0.356), dropout {0.3, 0.5},
input noise std {0.5, 1.0} and AdamW's weight decay {1, 3, 10, 30} (decoupled decay shrinks each weight by
lr x decay = 1% per step at 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from trainlab.callbacks import Callback
from trainlab.checkpoints import atomic_write
from trainlab.data import RawData
from trainlab.models import ClassicDropout
from trainlab.regularizers import sparsity
from trainlab.figures import bars_figure, curves_figure, grouped_bars_figure
from trainlab.runs import RunResult
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, params_hash, series, threshold_result)
from trainlab.studies.measures import (TrainEval, epochs_to_loss, generalization_gap, mean_finite, rank_correlation,
                                       train_metric)

ARMS: dict[str, dict[str, Any]] = {
    "none": {},
    "l1": {"regularizers": [{"name": "l1", "strength": 3e-3}]},
    "l2": {"regularizers": [{"name": "l2", "strength": 3e-2}]},
    "elastic_net": {"regularizers": [{"name": "elastic_net", "l1": 3e-4, "l2": 3e-2}]},
    "activity": {"regularizers": [{"name": "l2", "strength": 1e-2, "target": "activity"}]},
    "activity_l1": {"regularizers": [{"name": "l1", "strength": 1e-2, "target": "activity"}]},
    "dropout": {"model.dropout": 0.3},
    "dropout_classic": {"model.dropout": 0.3, "model.dropout_mode": "classic"},
    "early_stopping": {"early_stopping": {"patience": 10}},
    "augmentation": {"data.augment": [{"name": "shift", "max_shift": 3}]},
    "input_noise": {"data.augment": [{"name": "gaussian_noise", "std": 0.5}]},
    "weight_decay": {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 10.0}},
}
SWEEP: dict[str, dict[str, Any]] = {
    "dropout@0.1": {"model.dropout": 0.1},
    "dropout@0.5": {"model.dropout": 0.5},
    "dropout@0.7": {"model.dropout": 0.7},
    "l2@0.003": {"regularizers": [{"name": "l2", "strength": 3e-3}]},
}
DROPOUT_RATES = {0.1: "dropout@0.1", 0.3: "dropout", 0.5: "dropout@0.5", 0.7: "dropout@0.7"}  # rate -> arm
L2_PATH = ((3e-2, "l2"), (3e-3, "l2@0.003"), (0.0, "none"))  # (strength, arm), strongest first
NOISE_ARMS = {"l1+noise": ARMS["l1"], "l2+noise": ARMS["l2"]}
NOISE_SEED = 0  # the appended noise features
DROPOUT_ARMS = ("dropout", "dropout_classic")
SPARSE = 1e-3  # |w| below this counts as (near) zero
ZERO = 1e-6  # |w| below this counts as exactly zero, up to float noise
HIST_EDGES = np.linspace(-1.0, 1.0, 101)  # first-layer weight histogram; values outside are clipped into the ends
QUANTILES = (0.5, 0.9, 0.99)
EQUIVALENT = 0.01  # accuracy difference within which the scaled net "matches" the Monte-Carlo average
NEAR_EPOCHS = 2
MC_SEED = 0  # the dropout masks of the Monte-Carlo average (the global generator is restored afterwards)
CURVE_ARMS = ("none", "l2", "dropout", "early_stopping", "augmentation", "weight_decay")
FITS_BETTER = 0.01  # test accuracy by which one penalty must beat another to "fit better"
TARGET_LOSS = 0.5 * math.log(10)  # half the cross-entropy of a uniform guess over MNIST-1D's 10 classes
LONGER_EPOCHS = 5  # extra epochs to the target loss that count as "training takes longer"
RATE_MATTERS = 0.01  # test accuracy by which the best dropout rate must beat the worst for the rate to "matter"
WEIGHTS_GROW = 1.1  # factor by which the weights' RMS must grow one step down the L2 path
WIDER_GAP = 0.01  # accuracy by which the gap must widen one step down the L2 path
MIN_CORRELATION = 0.3  # rank correlation of weight RMS with the gap, across arms, for "overfit nets have large weights"
SELECTS = 0.5  # noise features' mean |w| / the real ones' below which a net has "selected" the real features
LOSS_CHANGE = 0.1  # nats by which the validation loss must rise, and the training loss fall, after the val minimum


@dataclass(frozen=True)
class RegularizationBudget(Budget):
    width: int = 256
    depth: int = 3
    mc_samples: int = 32  # dropout masks averaged for the Monte-Carlo ensemble


def weight_stats(model: nn.Module) -> dict[str, Any]:
    """Sparsity, RMS and largest |w| of all weights (ndim >= 2), and |w| quantiles and a histogram of the first."""
    weights = [p.detach().flatten().cpu() for p in model.parameters() if p.ndim >= 2]
    every = torch.cat(weights)
    first = weights[0]
    clipped = first.clamp(float(HIST_EDGES[0]), float(HIST_EDGES[-1])).numpy()
    return {
        "sparsity": sparsity(model, SPARSE),
        "zeros": sparsity(model, ZERO),
        "rms": float(every.square().mean().sqrt()),
        "max": float(every.abs().max()),
        "first_sparsity": float((first.abs() < SPARSE).float().mean()),
        "first_rms": float(first.square().mean().sqrt()),
        "first_quantiles": [float(q) for q in torch.quantile(first.abs(), torch.tensor(QUANTILES))],
        "first_hist": np.histogram(clipped, HIST_EDGES)[0].tolist(),
    }


@torch.no_grad()
def mc_dropout(model: nn.Module, x: Tensor, y: Tensor, samples: int, seed: int = MC_SEED) -> dict[str, Any]:
    """Test accuracy of the deterministic (eval-mode) net, of single thinned nets, and of the average of the softmax
    of the first k thinned nets for k = 1 .. ``samples`` (``ensemble[k - 1]``)."""
    was_training = model.training
    try:
        model.eval()
        deterministic = float((model(x).argmax(1) == y).float().mean())
        model.train()
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            probs = torch.stack([model(x).softmax(1) for _ in range(samples)])
    finally:
        model.train(was_training)
    single = (probs.argmax(2) == y).float().mean(1)
    running = probs.cumsum(0) / torch.arange(1, samples + 1, device=probs.device).view(-1, 1, 1)
    ensemble = (running.argmax(2) == y).float().mean(1)
    return {"deterministic": deterministic, "single": float(single.mean()), "ensemble": ensemble.tolist()}


class RegularizationProbe(Callback):
    """At fit end (after early stopping restored its best weights) stores in ``extras``: ``weights``
    (``weight_stats``) and, for nets with dropout, ``mc_dropout``."""

    def __init__(self, mc_samples: int):
        self.mc_samples = mc_samples

    def on_fit_end(self, trainer: Any) -> None:
        trainer.extras["weights"] = weight_stats(trainer.model)
        if any(isinstance(m, (nn.Dropout, ClassicDropout)) for m in trainer.model.modules()):
            trainer.extras["mc_dropout"] = mc_dropout(trainer.model, trainer.data.x_test, trainer.data.y_test,
                                                      self.mc_samples)


class WeightProbe(Callback):
    """At fit end stores ``weight_stats`` in ``extras["weights"]``: all the sweep arms need, read from one replica's
    model only, so their seeds train as one batch (``RegularizationProbe``'s Monte-Carlo dropout does not)."""

    per_replica = True

    def on_fit_end(self, trainer: Any) -> None:
        trainer.extras["weights"] = weight_stats(trainer.model)


class FeatureProbe(Callback):
    """At fit end stores in ``extras["noise_weight_ratio"]`` the first layer's mean |w| on the input features from
    index ``informative`` on (the appended noise) over its mean |w| on the ones before."""

    per_replica = True

    def __init__(self, informative: int):
        self.informative = informative

    def on_fit_end(self, trainer: Any) -> None:
        first = next(m.weight for m in trainer.model.modules() if isinstance(m, nn.Linear)).detach().abs()
        ratio = first[:, self.informative:].mean() / first[:, :self.informative].mean()
        trainer.extras["noise_weight_ratio"] = float(ratio)


def with_noise_features(raw: RawData, seed: int = NOISE_SEED) -> dict[str, np.ndarray]:
    """The arrays of an npz dataset: ``raw``'s inputs (flattened) with as many N(0, s²) features appended, s the
    inputs' std; the labels as they are."""
    rng = np.random.default_rng(seed)
    parts = [("x_train", raw.x_train, "y_train", raw.y_train)]
    if raw.x_test is not None:
        parts.append(("x_test", raw.x_test, "y_test", raw.y_test))
    flat = [x.reshape(len(x), -1).astype(np.float32) for _, x, _, _ in parts]
    scale = float(np.concatenate(flat).std()) or 1.0  # constant inputs: unit noise
    out = {}
    for (kx, _, ky, y), x in zip(parts, flat):
        out[kx] = np.concatenate([x, (scale * rng.standard_normal(x.shape)).astype(np.float32)], axis=1)
        out[ky] = y
    if raw.x_test is None:
        out = {"x": out["x_train"], "y": out["y_train"]}
    return out


def noise_dataset(ctx: StudyContext[Any], base: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(the ``data.dataset`` of the study's data with noise features appended, written once under the output
    folder's cache; the number of real features)."""
    dataset = ctx.run_config(base, {}, ctx.seeds[0]).data.dataset
    raw = dataset.load()
    informative = int(np.prod(raw.x_train.shape[1:]))
    params = {"dataset": dataset.model_dump(mode="json"), "seed": NOISE_SEED}
    path = ctx.out / "cache" / ctx.study / f"noise_features-{params_hash(params)}.npz"
    if not path.exists():
        arrays = with_noise_features(raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, **arrays))
    return {"name": "npz", "path": str(path)}, informative


def val_min_epoch(run: RunResult) -> int:
    """The (1-based) epoch of the lowest validation loss."""
    return int(np.argmin(run.metric("val_loss"))) + 1


def _weights(runs: list[RunResult], key: str) -> list[float]:
    return [float(r.extras["weights"][key]) for r in runs]


def within(values: list[float], tolerance: float, what: str) -> ClaimResult:
    """"|mean of ``what``| < tolerance": supported when the whole 95% interval lies in (-tolerance, tolerance)."""
    return joint({f"above -{tolerance:g}": threshold_result(values, ">", -tolerance, what),
                  f"below {tolerance:g}": threshold_result(values, "<", tolerance, what)})


def claim_sparse(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]
    what = f"fraction of weights with |w| < {SPARSE:g}"
    return joint({
        "L1 sparser than L2": compare_result(_weights(runs["l1"], "sparsity"), _weights(runs["l2"], "sparsity"),
                                             "greater", what, ("l1", "l2")),
        "L1 sparser than none": compare_result(_weights(runs["l1"], "sparsity"), _weights(runs["none"], "sparsity"),
                                               "greater", what, ("l1", "none")),
        "L2 smaller RMS": compare_result(_weights(runs["l2"], "rms"), _weights(runs["none"], "rms"), "less",
                                         "RMS of the weights", ("l2", "none")),
        "L2 smaller max": compare_result(_weights(runs["l2"], "max"), _weights(runs["none"], "max"), "less",
                                         "largest |w|", ("l2", "none")),
    })


def claim_gap(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]
    base = [generalization_gap(run) for run in runs["none"]]
    return joint({arm: compare_result([generalization_gap(run) for run in runs[arm]], base, "less",
                                      "clean train accuracy - test accuracy", (arm, "none"))
                  for arm in ARMS if arm != "none"})


def claim_augment_noise(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]
    return joint({arm: compare_result(finals(runs[arm], "test_acc"), finals(runs["none"], "test_acc"), "greater",
                                      "test accuracy", (arm, "none"))
                  for arm in ("augmentation", "input_noise")})


def claim_dropout_ensemble(r: dict[str, Any]) -> ClaimResult:
    parts = {}
    for arm in DROPOUT_ARMS:
        mc = [run.extras["mc_dropout"] for run in r["runs"][arm]]
        k = len(mc[0]["ensemble"])
        averaged = [m["ensemble"][-1] for m in mc]
        parts[f"{arm}: average beats one"] = compare_result(averaged, [m["single"] for m in mc], "greater",
                                                            "test accuracy", (f"{k}-mask average", "one mask"))
        parts[f"{arm}: scaled net matches average"] = within(
            [m["deterministic"] - a for m, a in zip(mc, averaged)], EQUIVALENT,
            f"test accuracy, scaled net - {k}-mask average")
    return joint(parts)


def claim_early_stopping(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]
    distance = [abs(es.extras["best_epoch"] - val_min_epoch(none))
                for es, none in zip(runs["early_stopping"], runs["none"])]
    return threshold_result(distance, "<", NEAR_EPOCHS,
                            "epochs between the restored epoch and the un-stopped run's validation-loss minimum")


def claim_fits_better(better: str, worse: str, target: str) -> Callable[[dict[str, Any]], ClaimResult]:
    """The test of "on the ``target``, the penalty of arm ``better`` fits better than that of ``worse``"."""
    def test(r: dict[str, Any]) -> ClaimResult:
        runs = r["runs"]
        return compare_result(finals(runs[better], "test_acc"), finals(runs[worse], "test_acc"), "greater",
                              f"test accuracy ({target} penalties)", (better, worse), min_effect=FITS_BETTER)

    return test


def epochs_to_target_loss(run: RunResult) -> int:
    """The first epoch whose training loss (train mode) is at or below ``TARGET_LOSS``; a miss counts as the
    run's epochs + 1."""
    return epochs_to_loss(run, TARGET_LOSS, int(run.config["epochs"]))


def claim_dropout_slower(r: dict[str, Any]) -> ClaimResult:
    runs = r["runs"]
    base = [epochs_to_target_loss(run) for run in runs["none"]]
    return joint({arm: compare_result([epochs_to_target_loss(run) for run in runs[arm]], base, "greater",
                                      f"epochs until the training loss is <= {TARGET_LOSS:.3g}", (arm, "none"),
                                      min_effect=LONGER_EPOCHS)
                  for arm in DROPOUT_ARMS})


def claim_rate_matters(r: dict[str, Any]) -> ClaimResult:
    arms = {rate: r["all"][arm] for rate, arm in DROPOUT_RATES.items()}
    by_val = sorted(arms, key=lambda rate: float(np.mean(finals(arms[rate], "val_acc"))))
    worst, best = by_val[0], by_val[-1]
    found = compare_result(finals(arms[best], "test_acc"), finals(arms[worst], "test_acc"), "greater",
                           "test accuracy", (f"rate {best:g} (best val)", f"rate {worst:g} (worst val)"),
                           min_effect=RATE_MATTERS)
    means = {f"rate {rate:g}: test acc": float(np.mean(finals(rs, "test_acc"))) for rate, rs in arms.items()}
    return ClaimResult(found.verdict, found.evidence, {**found.numbers, **means})


def claim_weaker_penalty(r: dict[str, Any]) -> ClaimResult:
    parts = {}
    for (strong, strong_arm), (weak, weak_arm) in zip(L2_PATH, L2_PATH[1:]):
        stronger, weaker = r["all"][strong_arm], r["all"][weak_arm]
        names = (f"L2 {weak:g}", f"L2 {strong:g}")
        parts[f"{weak:g} vs {strong:g}: weights grow"] = compare_result(
            np.log(_weights(weaker, "rms")), np.log(_weights(stronger, "rms")), "greater", "log RMS of the weights",
            names, min_effect=math.log(WEIGHTS_GROW))
        parts[f"{weak:g} vs {strong:g}: gap widens"] = compare_result(
            [generalization_gap(run) for run in weaker], [generalization_gap(run) for run in stronger], "greater",
            "clean train accuracy - test accuracy", names, min_effect=WIDER_GAP)
    return joint(parts)


def claim_large_weights(r: dict[str, Any]) -> ClaimResult:
    arms = list(r["all"].values())
    correlations = [rank_correlation([float(rs[i].extras["weights"]["rms"]) for rs in arms],
                                     [generalization_gap(rs[i]) for rs in arms]) for i in range(len(arms[0]))]
    return threshold_result(correlations, ">", MIN_CORRELATION,
                            f"per seed, rank correlation across {len(arms)} arms of the weights' RMS with the gap")


def after_val_minimum(run: RunResult) -> tuple[float, float]:
    """(how far the validation loss ends above its minimum, how far the training loss ends below its value at the
    minimum's epoch)."""
    val, train = run.metric("val_loss"), run.metric("train_loss")
    best = val_min_epoch(run) - 1
    return float(val[-1] - val[best]), float(train[best] - train[-1])


def claim_selects_features(r: dict[str, Any]) -> ClaimResult:
    ratio = {arm: [float(run.extras["noise_weight_ratio"]) for run in r["noise"][arm]] for arm in NOISE_ARMS}
    what = "first layer's mean |w| on noise features / on real ones"
    return joint({
        "L1 leaves the noise features": threshold_result(ratio["l1+noise"], "<", SELECTS, f"{what}, L1"),
        "more than L2": compare_result(np.log(ratio["l1+noise"]), np.log(ratio["l2+noise"]), "less",
                                       f"log of the {what}", ("L1", "L2"), min_effect=math.log(1 / SELECTS)),
    })


def claim_longer_overfits(r: dict[str, Any]) -> ClaimResult:
    changes = [after_val_minimum(run) for run in r["runs"]["none"]]
    return joint({
        "validation loss rises": threshold_result([v for v, _ in changes], ">", LOSS_CHANGE,
                                                  "final - minimum validation loss ('none')"),
        "training loss keeps falling": threshold_result([t for _, t in changes], ">", LOSS_CHANGE,
                                                        "training loss at the validation minimum - final ('none')"),
    })


CLAIMS = (
    Claim("l1_sparse_l2_small", "L1 gives sparse weights (many exactly or nearly zero), L2 uniformly small ones.",
          claim_sparse),
    Claim("reduce_gap", "All of them (L1, L2, elastic net, L2 and L1 activity penalties, dropout in both modes, "
                        "early stopping, augmentation, input noise, weight decay) reduce the gap between training "
                        "and held-out (test) accuracy on small data.",
          claim_gap),
    Claim("augment_noise", "Augmentation and input noise reduce overfitting: a higher test accuracy than the "
                           "unregularized network.", claim_augment_noise),
    Claim("dropout_ensemble", "Dropout works like an ensemble: averaging many thinned networks beats one, and the "
                              "single weight-scaled network at test time matches that average.",
          claim_dropout_ensemble),
    Claim("early_stopping_minimum", "Early stopping stops near the validation minimum.", claim_early_stopping),
    Claim("kernel_l2_fits_better", "On the kernel (a penalty on the layers' weights) L2 fits better than L1: a "
                                   "higher test accuracy.", claim_fits_better("l2", "l1", "kernel")),
    Claim("activity_l1_fits_better", "On the activity (a penalty on the layers' outputs) L1 fits better than L2: "
                                     "a higher test accuracy.", claim_fits_better("activity_l1", "activity",
                                                                                  "activity")),
    Claim("dropout_slower", "Dropout makes training take longer: the network needs more epochs to bring its "
                            "training loss down to the same value.", claim_dropout_slower),
    Claim("dropout_rate_matters", "The dropout rate matters: over rates from 0.1 to 0.7 the best rate (by "
                                  "validation accuracy) beats the worst on test accuracy.", claim_rate_matters),
    Claim("weaker_penalty_grows", "A weaker penalty regularizes less: the weights grow and the train-test gap "
                                  "widens (L2 from 3e-2 to 3e-3 to none).", claim_weaker_penalty),
    Claim("overfit_large_weights", "Overfitting mostly happens when the weights are large: across the arms, the "
                                   "larger the weights, the larger the train-test gap.", claim_large_weights),
    Claim("l1_selects_features", "L1 picks only the important features by itself: with pure-noise input features "
                                 "added, it drives their first-layer weights toward 0, far more than the real "
                                 "features' and more than L2 does.", claim_selects_features),
    Claim("longer_overfits", "The longer training goes, the more the variance grows compared with the bias's "
                             "decrease: after its minimum the validation loss rises while the training loss keeps "
                             "falling.", claim_longer_overfits),
)


@register_study
class Regularization(Study[RegularizationBudget]):
    name = "regularization"
    title = "Regularization on small data"
    question = ("On 500 training samples a large MLP overfits: which of L1, L2, elastic net, activity penalties, "
                "dropout, early stopping, augmentation, input noise and weight decay close the train/validation "
                "gap, and what do they do to the weights?")
    order = 6
    smoke = RegularizationBudget(seeds=2, epochs=3, train_size=200, width=32, mc_samples=4)
    quick = RegularizationBudget(seeds=10, epochs=80, train_size=500)
    full = RegularizationBudget(seeds=20, epochs=120, train_size=500)
    claims = CLAIMS

    def base_config(self, budget: RegularizationBudget) -> dict[str, Any]:
        # One checkpoint at the end: writing ~1.7 MB of state every epoch would cost more than the epoch.
        return {"model": {"name": "mlp", "depth": budget.depth, "width": budget.width},
                "optimizer": {"name": "adam", "lr": 1e-3}, "threads": 1, "checkpoint_every_epochs": budget.epochs}

    def measure(self, ctx: StudyContext[RegularizationBudget]) -> dict[str, Any]:
        b = ctx.budget
        runs = ctx.train_arms(self.base_config(b), ARMS,
                              callbacks_factory=lambda arm, seed: [TrainEval(), RegularizationProbe(b.mc_samples)])
        every = {**runs, **ctx.train_arms(self.base_config(b), SWEEP,
                                          callbacks_factory=lambda arm, seed: [TrainEval(), WeightProbe()])}
        dataset, informative = noise_dataset(ctx, self.base_config(b))
        noise = ctx.train_arms(self.base_config(b),
                               {arm: {**o, "data.dataset": dataset} for arm, o in NOISE_ARMS.items()},
                               callbacks_factory=lambda arm, seed: [TrainEval(), FeatureProbe(informative)])
        return {"runs": runs, "all": every, "noise": noise}

    def present(self, results: dict[str, Any], ctx: StudyContext[RegularizationBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        runs: dict[str, list[RunResult]] = results["runs"]
        figures = [ctx.figure(_histograms(runs), "first_layer_weights",
                              "Histogram of the first layer's weights per arm (all seeds; log scale; the grey "
                              "outline is 'none'): sparse weights show as a spike at 0, uniformly small ones as a "
                              "narrower bell.")]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        curves_figure({a: series(runs[a], "train_loss") for a in CURVE_ARMS}, title="training loss (train mode)",
                      xlabel="epoch", ylabel="loss", logy=True, ax=axes[0])
        axes[0].axhline(TARGET_LOSS, color="black", lw=0.8, ls="--")
        curves_figure({a: series(runs[a], "val_loss") for a in CURVE_ARMS}, title="validation loss",
                      xlabel="epoch", ylabel="loss", ax=axes[1])
        figures.append(ctx.figure(fig, "curves", "Loss curves of some arms: mean over seeds with 95% band. Without "
                                                 "regularization the training loss goes to zero while the validation "
                                                 "loss climbs after a few epochs; early stopping follows 'none' until "
                                                 "it stops, its patience after the validation minimum. The dashed "
                                                 "line is the target loss of the claim that dropout lengthens "
                                                 "training."))
        figures.append(ctx.figure(_accuracy_bars(runs), "accuracy",
                                  "Clean train, validation and test accuracy per arm: mean and 95% CI over seeds. "
                                  "The gap is the distance between the train and the test bar."))
        figures.append(ctx.figure(bars_figure({a: _weights(rs, "sparsity") for a, rs in runs.items()},
                                              title=f"fraction of weights with |w| < {SPARSE:g}", ylabel="fraction"),
                                  "sparsity", "Near-zero weights per arm (all layers): mean and 95% CI."))
        figures.append(ctx.figure(_mc_figure(runs), "dropout_ensemble",
                                  "Test accuracy of the average of k thinned networks (random dropout masks) against "
                                  "k, and of the single weight-scaled network (dashed): mean and 95% band."))
        return figures, [*_tables(runs), _sweep_table(results["all"])]


def _arm_columns() -> dict[str, Callable[[RunResult], float]]:
    """The columns of the per-arm table: header -> the value of one run (the table shows the mean over seeds)."""
    def final(key: str) -> Callable[[RunResult], float]:
        return lambda run: float(run.final[key])

    def weights(key: str) -> Callable[[RunResult], float]:
        return lambda run: float(run.extras["weights"][key])

    return {"train acc": train_metric, "val acc": final("val_acc"), "train - test acc": generalization_gap,
            "test - train loss": lambda run: generalization_gap(run, "loss"), "test acc": final("test_acc"),
            f"|w| < {SPARSE:g}": weights("sparsity"), f"|w| < {ZERO:g}": weights("zeros"), "RMS w": weights("rms"),
            "max |w|": weights("max"), "epochs run": final("epochs_run"),
            f"epochs to train loss <= {TARGET_LOSS:.3g}": epochs_to_target_loss}


def _tables(runs: dict[str, list[RunResult]]) -> list[Table]:
    columns = _arm_columns()
    rows = [[arm, *(mean_finite([value(r) for r in rs]) for value in columns.values())] for arm, rs in runs.items()]
    first = [[arm, mean_finite(_weights(rs, "first_sparsity")), mean_finite(_weights(rs, "first_rms")),
              *(mean_finite([r.extras["weights"]["first_quantiles"][i] for r in rs]) for i in range(len(QUANTILES)))]
             for arm, rs in runs.items()]
    mc_rows = []
    for arm in DROPOUT_ARMS:
        mc = [r.extras["mc_dropout"] for r in runs[arm]]
        mc_rows.append([arm, mean_finite([m["single"] for m in mc]), mean_finite([m["ensemble"][-1] for m in mc]),
                        mean_finite([m["deterministic"] for m in mc])])
    es_rows = [[r.config["seed"], r.extras["best_epoch"], r.final["epochs_run"], val_min_epoch(none),
                none.final["test_acc"], r.final["test_acc"]]
               for r, none in zip(runs["early_stopping"], runs["none"])]
    k = len(runs[DROPOUT_ARMS[0]][0].extras["mc_dropout"]["ensemble"])
    return [
        Table("Per arm (means over seeds; accuracies with the final weights, train in eval mode)",
              ["arm", *columns], rows),
        Table("First layer's weights (means over seeds)",
              ["arm", f"|w| < {SPARSE:g}", "RMS w", *(f"|w| q{q:g}" for q in QUANTILES)], first),
        Table("Dropout as an ensemble: test accuracy (means over seeds)",
              ["arm", "one thinned net", f"average of {k}", "weight-scaled net"], mc_rows),
        Table("Early stopping against the un-stopped run of the same seed",
              ["seed", "restored epoch", "stopped after", "validation minimum of 'none'", "test acc 'none'",
               "test acc early stopping"], es_rows),
    ]


def _sweep_table(every: dict[str, list[RunResult]]) -> Table:
    """The dropout-rate sweep and the L2 path: accuracies, gap and weight RMS per arm (means over seeds)."""
    rows = [[f"dropout {rate:g}", arm] for rate, arm in DROPOUT_RATES.items()]
    rows += [[f"L2 {strength:g}", arm] for strength, arm in L2_PATH]
    return Table("Sweeps: the dropout rate and the L2 strength (means over seeds)",
                 ["setting", "arm", "val acc", "test acc", "train - test acc", "RMS w"],
                 [[name, arm, mean_finite(finals(every[arm], "val_acc")), mean_finite(finals(every[arm], "test_acc")),
                   mean_finite([generalization_gap(r) for r in every[arm]]), mean_finite(_weights(every[arm], "rms"))]
                  for name, arm in rows])


def _histograms(runs: dict[str, list[RunResult]]) -> Any:
    counts = {arm: np.sum([r.extras["weights"]["first_hist"] for r in rs], axis=0) for arm, rs in runs.items()}
    cols = 4
    rows = -(-len(counts) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.6 * rows), sharex=True, sharey=True)
    # A log axis cannot show 0: bars start at the floor, so an empty bin is drawn with no height.
    floor = 0.8
    for ax, (arm, c) in zip(axes.flat, counts.items()):
        ax.stairs(np.maximum(c, floor), HIST_EDGES, fill=True, baseline=floor, color="#4c72b0", alpha=0.85)
        ax.stairs(np.maximum(counts["none"], floor), HIST_EDGES, baseline=None, color="#888888", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(floor, 2 * max(float(v.max()) for v in counts.values()))
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
        ax.set_title(arm, fontsize=10)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(counts):]:
        ax.axis("off")
    fig.supxlabel("first-layer weight w")
    fig.supylabel("count")
    fig.tight_layout()
    return fig


def _accuracy_bars(runs: dict[str, list[RunResult]]) -> Any:
    series = {"train (clean)": {a: [train_metric(r) for r in rs] for a, rs in runs.items()},
              "validation": {a: finals(rs, "val_acc") for a, rs in runs.items()},
              "test": {a: finals(rs, "test_acc") for a, rs in runs.items()}}
    fig, ax = grouped_bars_figure(series, title="accuracy per arm", ylabel="accuracy", figsize=(12, 4), rotate=True)
    ax.set_ylim(0, 1.05)
    return fig


def _mc_figure(runs: dict[str, list[RunResult]]) -> Any:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    k = len(runs[DROPOUT_ARMS[0]][0].extras["mc_dropout"]["ensemble"])
    curves_figure({arm: [r.extras["mc_dropout"]["ensemble"] for r in runs[arm]] for arm in DROPOUT_ARMS},
                  title="dropout: averaging thinned networks", xlabel="masks averaged (k)",
                  ylabel="test accuracy", x=np.arange(1, k + 1), ax=ax)
    for line, arm in zip(ax.get_lines(), DROPOUT_ARMS):
        deterministic = mean_finite([r.extras["mc_dropout"]["deterministic"] for r in runs[arm]])
        ax.axhline(deterministic, color=line.get_color(), ls="--", lw=1, label=f"{arm}: weight-scaled net")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    return fig
