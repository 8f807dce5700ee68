"""Study 11: ensembles — do bagging, boosting, averaging, voting, snapshot ensembles and SWA beat a single model,
and do they beat their own average member?

Setting: small data on which one network overfits and varies from seed to seed: an MLP (2 x 64 ReLU units, Adam
3e-3, batch 32) on 500 MNIST-1D training samples, trained for a few epochs (it fits ~90% of its training set and
~30% of the 1000 test signals). Per seed, each method of ``trainlab.ensembles.build_ensemble`` is trained with K
members from the base config with that seed s', and ``Ensemble.evaluate`` scores it on the test split:

- ``bagging``: member m on a bootstrap resample with seed s' + m, soft average (Breiman 1996);
- ``boosting``: SAMME with at most K members on reweighted samples, alpha-weighted hard vote (Zhu et al. 2009);
- ``averaging`` / ``voting``: K members with seeds s' .. s' + K - 1, mean softmax / majority of the argmax;
- ``snapshot``: one run under cosine restarts with K cycles, the model at each cycle's end, soft average
  (Huang et al. 2017);
- ``swa``: the base run with its weights averaged over its last K epochs (Izmailov et al. 2018).

Study seed s runs with the config seed s' = s x K (``run_seed``): members take the seeds s' .. s' + K - 1, so no
two study seeds share a member and the pairs over seeds are independent. The *single model* of seed s is one plain
run of the base config with seed s' (``ctx.train_arms``), the first member of the averaging ensemble: its test
accuracy and its test loss (the mean cross-entropy, i.e. the log-loss). Definitions, fixed before measuring:

- a method's *average member* is the mean over its members of each member's test accuracy (and of each member's
  log-loss -mean_i log p_m(y_i|x_i), probabilities clipped at ``LOG_LOSS_EPS`` as the ensemble's are); its *best
  member* the member with the highest test accuracy (chosen on the test split, so optimistic: shown, never tested);
- *beats* means a higher test accuracy, paired by seed (paired t-test at 5%). The notes give no size for any of
  the gains, so every claim uses ``MIN_EFFECT`` = 0: any significant gain supports it, a significant loss refutes;
- *the single run they come from*: for a snapshot ensemble, the final model of its own cosine-restarts run (its
  last snapshot); for SWA, the single model of the same seed, which is the run SWA averages (same config and
  seed; averaging only reads the weights).

Hard votes (``voting``, ``boosting``) give each class a probability that is a share of votes, often 0 for the true
class; their log-loss is bounded only by the clip and is shown, not tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainlab.config import RunConfig
from trainlab.ensembles import LOG_LOSS_EPS, METHODS, Ensemble, build_ensemble
from trainlab.figures import bars_figure, grouped_bars_figure
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint)

MIN_EFFECT = 0.0  # the notes claim gains without a size: any significant one counts
VERSION = 1  # bump when what a cached evaluation holds changes, so it is recomputed
SEED_METHODS = ("averaging", "voting")  # ensembles of independently trained networks
# What each method's claim sets its ensemble against: its average member, its last snapshot, or the single model.
REFERENCE = {"bagging": "average member", "boosting": "average member", "averaging": "single model",
             "voting": "single model", "snapshot": "last snapshot", "swa": "single model"}


@dataclass(frozen=True)
class EnsembleBudget(Budget):
    members: int = 5  # K


def run_seed(seed: int, members: int) -> int:
    """The config seed of study seed ``seed``: ``seed x members``, so that the member seeds of different study seeds
    (``run_seed .. run_seed + members - 1``) never overlap and the pairs over seeds are independent."""
    return seed * members


def member_log_losses(ensemble: Ensemble, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Each member's log-loss -mean_i log softmax(f_m(x_i))_{y_i}, probabilities clipped at ``LOG_LOSS_EPS``."""
    proba = ensemble.member_logits(x).softmax(-1)[:, torch.arange(len(y)), y]
    return [float(v) for v in -proba.clamp(min=LOG_LOSS_EPS).log().mean(1)]


def evaluate_method(config: RunConfig, method: str, members: int) -> dict[str, Any]:
    """Train ``method``'s ensemble of ``members`` from ``config`` and score it on the test split: what
    ``Ensemble.evaluate`` reports plus each member's log-loss."""
    from trainlab.data import load_data

    data = load_data(config.data)
    ensemble = build_ensemble(config, method, members, data=data)
    found = ensemble.evaluate(data, "test")
    found["member_log_losses"] = member_log_losses(ensemble, data.x_test.cpu(), data.y_test.cpu())
    return found


def summarize(evaluations: list[Mapping[str, Any]]) -> dict[str, list[float]]:
    """One method's numbers over seeds: ensemble, average, best and last member, accuracy and log-loss."""
    return {
        "accuracy": [float(e["accuracy"]) for e in evaluations],
        "log_loss": [float(e["log_loss"]) for e in evaluations],
        "mean_member_accuracy": [float(e["mean_member_accuracy"]) for e in evaluations],
        "best_member_accuracy": [float(e["best_member_accuracy"]) for e in evaluations],
        "mean_member_log_loss": [float(np.mean(e["member_log_losses"])) for e in evaluations],
        "last_member_accuracy": [float(e["member_accuracies"][-1]) for e in evaluations],
        "last_member_log_loss": [float(e["member_log_losses"][-1]) for e in evaluations],
        "members": [float(e["members"]) for e in evaluations],
    }


def reference(r: dict[str, Any], method: str, metric: str = "accuracy") -> list[float]:
    """Per seed, what ``method``'s claim compares its ensemble with (``REFERENCE``), in ``metric``."""
    found = r["ensembles"][method]
    return {"average member": found[f"mean_member_{metric}"], "last snapshot": found[f"last_member_{metric}"],
            "single model": r["single"][metric]}[REFERENCE[method]]


def beats(r: dict[str, Any], method: str) -> ClaimResult:
    """The paired test of "``method``'s ensemble has a higher test accuracy than its reference"."""
    return compare_result(r["ensembles"][method]["accuracy"], reference(r, method), "greater", "test accuracy",
                          (method, REFERENCE[method]), min_effect=MIN_EFFECT)


def claim_beats_single(r: dict[str, Any]) -> ClaimResult:
    return joint({m: beats(r, m) for m in SEED_METHODS})


def claim_bagging(r: dict[str, Any]) -> ClaimResult:
    return beats(r, "bagging")


def claim_boosting(r: dict[str, Any]) -> ClaimResult:
    return beats(r, "boosting")


def claim_snapshot_swa(r: dict[str, Any]) -> ClaimResult:
    return joint({m: beats(r, m) for m in ("snapshot", "swa")})


CLAIMS = (
    Claim("ensemble_beats_single", "An ensemble (averaging / voting of independently trained networks) beats a "
                                   "single model on held-out data.", claim_beats_single),
    Claim("bagging_beats_members", "Bagging beats its average member.", claim_bagging),
    Claim("boosting_beats_members", "Boosting (SAMME) beats its average member.", claim_boosting),
    Claim("snapshot_swa_improve", "Snapshot ensembles and SWA improve on the single run they come from.",
          claim_snapshot_swa),
)


@register_study
class Ensembles(Study[EnsembleBudget]):
    name = "ensembles"
    title = "Ensembles"
    question = ("Do bagging, boosting, averaging, voting, snapshot ensembles and SWA beat a single model, and do "
                "they beat their own average member?")
    order = 11
    smoke = EnsembleBudget(seeds=2, epochs=6, train_size=300, members=3)
    quick = EnsembleBudget(seeds=10, epochs=15, train_size=500)
    full = EnsembleBudget(seeds=20, epochs=20, train_size=500)
    claims = CLAIMS

    def base_config(self) -> dict[str, Any]:
        return {"model": {"name": "mlp", "depth": 2, "width": 64}, "optimizer": {"name": "adam", "lr": 3e-3},
                "data": {"batch_size": 32}, "threads": 1}

    def measure(self, ctx: StudyContext[EnsembleBudget]) -> dict[str, Any]:
        b = ctx.budget
        base = self.base_config()
        seeds = [run_seed(s, b.members) for s in ctx.seeds]
        single = ctx.train_arms(base, {"single": {}}, seeds=seeds)["single"]
        evaluations: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
        with ctx.task(f"{self.name} · ensembles", len(METHODS) * len(seeds)) as advance:
            for seed in seeds:
                config = ctx.run_config(base, {}, seed)  # the single model's config of this seed
                for method in METHODS:
                    params = {"config": config.model_dump(mode="json"), "method": method, "members": b.members,
                              "version": VERSION}
                    evaluations[method].append(ctx.cached(
                        "ensemble", params, lambda c=config, m=method: evaluate_method(c, m, b.members)))
                    advance()
        return {"single": {"accuracy": finals(single, "test_acc"), "log_loss": finals(single, "test_loss")},
                "ensembles": {m: summarize(e) for m, e in evaluations.items()}, "members": b.members}

    def present(self, results: dict[str, Any], ctx: StudyContext[EnsembleBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        ens, single, k = results["ensembles"], results["single"], results["members"]
        seeds = len(ctx.seeds)
        figures = []
        for metric, label, log in (("accuracy", "test accuracy", False), ("log_loss", "test log-loss", True)):
            fig, ax = grouped_bars_figure(_series(ens, single, metric), title=f"{label}: ensemble, its average "
                                          f"member and a single model (K = {k})", ylabel=label, figsize=(9, 4))
            if log:
                ax.set_yscale("log")  # hard votes' log-loss is an order of magnitude above the soft ones'
            figures.append(ctx.figure(fig, metric, f"Test {label} per method: mean over {seeds} seeds with 95% CI."
                                      + (" Log scale: the hard votes (voting, boosting) put probability 0 on the "
                                         "true class of every sample they get wrong." if log else "")))
        gains = {f"{m} - {REFERENCE[m]}": [a - b for a, b in zip(ens[m]["accuracy"], reference(results, m))]
                 for m in ens}
        figures.append(ctx.figure(bars_figure(gains, title="test accuracy gain over the claim's reference",
                                              ylabel="accuracy difference (paired by seed)"), "gains",
                                  f"What the claims test: each ensemble's test accuracy minus its reference's, "
                                  f"paired by seed; mean over {seeds} seeds with 95% CI."))
        return figures, [_table(results, seeds)]


def _series(ens: Mapping[str, Mapping[str, list[float]]], single: Mapping[str, list[float]], metric: str
            ) -> dict[str, dict[str, list[float]]]:
    return {"ensemble": {m: v[metric] for m, v in ens.items()},
            "average member": {m: v[f"mean_member_{metric}"] for m, v in ens.items()},
            "single model": {m: single[metric] for m in ens}}


def _table(results: dict[str, Any], seeds: int) -> Table:
    ens, single = results["ensembles"], results["single"]
    rows = []
    for m, v in ens.items():
        values = (v["members"], v["accuracy"], v["mean_member_accuracy"], v["best_member_accuracy"],
                  single["accuracy"], v["log_loss"], v["mean_member_log_loss"], single["log_loss"])
        rows.append([m, *(float(np.mean(x)) for x in values), REFERENCE[m]])
    return Table(f"Test accuracy and log-loss per method, means over {seeds} seeds (best member: picked on the "
                 f"test split, optimistic)",
                 ["method", "members", "ensemble acc", "average member acc", "best member acc", "single acc",
                  "ensemble log-loss", "average member log-loss", "single log-loss", "claim compares with"], rows)
