"""Ensembles of classifiers trained from one validated ``RunConfig``: bagging, boosting (SAMME), averaging, voting,
snapshot ensembles and stochastic weight averaging.

Every method trains through ``build_trainer`` (the one training loop) and returns an ``Ensemble``, whose
``evaluate`` sets the ensemble against its average and best member on a held-out split.

- ``bagging``: member m trains on a bootstrap resample of the training split (n draws with replacement; about
  1 - 1/e = 63% of the samples appear) and with seed ``seed + m``; soft average. Breiman, "Bagging predictors", 1996.
- ``boosting``: SAMME, multi-class AdaBoost with sample weights in the loss; hard votes weighted by alpha_m.
  Zhu, Zou, Rosset & Hastie, "Multi-class AdaBoost", 2009.
- ``averaging`` (soft: mean of the members' softmax probabilities) and ``voting`` (hard: majority of the argmax,
  ties to the lowest class index) over members that differ only in their seed, trained as one batch
  (``batched.train_replicas``) where ``can_batch`` allows. Lakshminarayanan et al., "Simple and scalable predictive
  uncertainty estimation using deep ensembles", 2017.
- ``snapshot``: one run under ``cosine_restarts`` with K cycles, a member saved at the end of each cycle, soft
  average. Huang et al., "Snapshot ensembles: train 1, get M for free", ICLR 2017.
- ``swa``: one run whose weights are averaged over its last K epochs (``torch.optim.swa_utils.AveragedModel``),
  batch-norm statistics recomputed with ``update_bn``. Izmailov et al., "Averaging weights leads to wider optima
  and better generalization", UAI 2018.

``cluster=`` (a Ray cluster's address, ``executors.run_jobs``) trains there and returns the members to this process:
bagging's members as one task each, all at once; every other method as one task (averaging's and voting's seeds
stay one batch, boosting's members depend on each other, snapshot and SWA are one run).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.callbacks import Callback
from trainlab.checkpoints import atomic_write_text
from trainlab.config import RunConfig, load_config, require_config
from trainlab.registry import suggest

from trainlab.data import with_sample_weights

if TYPE_CHECKING:
    from trainlab.data import ArraysLike, Data
    from trainlab.trainer import Trainer

#: Probabilities are clipped to [LOG_LOSS_EPS, 1] in the log-loss, so a hard vote of 0 costs -log(1e-7) = 16, not inf.
LOG_LOSS_EPS = 1e-7

Combine = Literal["soft", "hard"]


@dataclass
class Ensemble:
    """Members (trained ``nn.Module``s giving logits), their weights w_m (summing to 1) and how they combine.

    ``soft``: p(k|x) = sum_m w_m softmax(f_m(x))_k. ``hard``: p(k|x) = sum_m w_m [argmax f_m(x) = k], the weighted
    share of votes. Inputs are tensors already preprocessed as the training data was (``Data.fitted``).
    """

    members: list[nn.Module]
    weights: Tensor
    method: str
    combine: Combine = "soft"

    @torch.no_grad()
    def member_logits(self, x: Tensor) -> Tensor:
        """Each member's logits, shape (M, N, C), in eval mode."""
        out = []
        for member in self.members:
            member.eval()
            device = next(member.parameters()).device
            out.append(member(x.to(device)).float().cpu())
        return torch.stack(out)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities (N, C); each row sums to 1."""
        logits = self.member_logits(x)
        if self.combine == "soft":
            per_member = logits.softmax(-1)
        else:
            per_member = nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        return torch.einsum("m,mnc->nc", self.weights.float(), per_member)

    def predict(self, x: Tensor) -> Tensor:
        """The most probable class; ties go to the lowest class index (``torch.argmax`` returns the first max)."""
        return self.predict_proba(x).argmax(1)

    def evaluate(self, data: Data, split: Literal["train", "val", "test"] = "test") -> dict[str, Any]:
        """Accuracy and log-loss -mean_i log p(y_i|x_i) of the ensemble on a split, and each member's accuracy."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"The 'split' argument must be 'train', 'val' or 'test'. Got {split!r} instead.")
        x, y = getattr(data, f"x_{split}").cpu(), getattr(data, f"y_{split}").cpu()
        if not len(y):
            raise ValueError(f"The {split!r} split is empty; choose a split with samples.")
        logits = self.member_logits(x)
        proba = self.predict_proba(x)
        member_acc = [float((m.argmax(1) == y).float().mean()) for m in logits]
        picked = proba[torch.arange(len(y)), y].clamp(min=LOG_LOSS_EPS)
        return {"method": self.method, "members": len(self.members), "split": split,
                "accuracy": float((proba.argmax(1) == y).float().mean()), "log_loss": float(-picked.log().mean()),
                "member_accuracies": member_acc, "mean_member_accuracy": float(np.mean(member_acc)),
                "best_member_accuracy": float(max(member_acc)), "weights": self.weights.tolist()}


# --- pure pieces ---------------------------------------------------------------------------------------------------

def bootstrap_indices(n: int, generator: torch.Generator) -> Tensor:
    """n indices drawn uniformly from [0, n) with replacement: a bootstrap resample (Efron 1979)."""
    if n < 1:
        raise ValueError(f"The 'n' argument of bootstrap_indices must be an int >= 1. Got {n} instead.")
    return torch.randint(0, n, (n,), generator=generator)


def samme_update(weights: Tensor, wrong: Tensor, num_classes: int) -> tuple[float, float, Tensor]:
    """One SAMME round: ``(err, alpha, new_weights)`` from sample weights w and the member's mistakes.

    err = sum_i w_i [wrong_i] / sum_i w_i; alpha = log((1 - err) / err) + log(K - 1);
    w_i <- w_i exp(alpha [wrong_i]), renormalised to sum 1. (Zhu et al. 2009, Algorithm 2.) err is clipped to
    [1e-10, 1] so a perfect member gets a large finite alpha.
    """
    if num_classes < 2:
        raise ValueError(f"The 'num_classes' argument of samme_update must be >= 2. Got {num_classes} instead.")
    w = weights.double() / weights.double().sum()
    wrong = wrong.bool()
    err = float(w[wrong].sum().clamp(min=1e-10, max=1.0))
    alpha = math.log((1 - err) / err) + math.log(num_classes - 1) if err < 1 else -math.inf
    new = w * torch.exp(alpha * wrong.double()) if err < 1 else w
    return err, alpha, new / new.sum()


def resample_train(data: Data, index: Tensor) -> Data:
    """``data`` whose training split is the samples at ``index`` (repeats allowed); val and test unchanged."""
    kept = {"x_train": data.x_train[index], "y_train": data.y_train[index]}
    if data.train_index is not None:
        kept["train_index"] = data.train_index[index]
    return dataclasses.replace(data, **kept)


class SWA(Callback):
    """Stochastic weight averaging: from epoch ``start_epoch`` on, fold the model's weights into a running mean
    theta_swa <- (n theta_swa + theta) / (n + 1) at each epoch's end (``AveragedModel``); at the end of training,
    recompute batch-norm statistics for the averaged weights (``update_bn``). Izmailov et al. 2018."""

    def __init__(self, start_epoch: int):
        if start_epoch < 1:
            raise ValueError(f"The 'start_epoch' parameter of SWA must be an int >= 1. Got {start_epoch} instead.")
        self.start_epoch = start_epoch
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.averaged = torch.optim.swa_utils.AveragedModel(trainer.model)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch >= self.start_epoch:
            self.averaged.update_parameters(trainer.model)

    def on_fit_end(self, trainer: Trainer) -> None:
        if int(self.averaged.n_averaged) == 0:
            raise ValueError(f"SWA averaged no epochs: training ended at epoch {trainer.epoch}, before the "
                             f"'start_epoch' {self.start_epoch}.")
        batches = (x for x, _ in trainer.data.eval_batches("train", trainer.batch_size))
        torch.optim.swa_utils.update_bn(batches, self.averaged)


class Snapshots(Callback):
    """Keeps a copy of the model at the end of every ``every_epochs``-th epoch (the end of each cosine cycle), at
    most ``limit`` of them: the members of a snapshot ensemble (Huang et al. 2017)."""

    def __init__(self, every_epochs: int, limit: int):
        self.every_epochs, self.limit = every_epochs, limit
        self.models: list[nn.Module] = []
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch % self.every_epochs == 0 and len(self.models) < self.limit:
            self.models.append(copy.deepcopy(trainer.model).eval())
            self.epochs.append(trainer.epoch)


# --- training members -----------------------------------------------------------------------------------------------

def _fit(config: RunConfig, data: Data, callbacks: Sequence[Callback] = (),
         sample_weights: Tensor | None = None) -> nn.Module:
    """Train one member; ``sample_weights`` (one per training sample) make the loss their weighted mean."""
    from trainlab.trainer import build_trainer

    if sample_weights is not None:
        data = with_sample_weights(data, sample_weights)
    trainer = build_trainer(config, callbacks, data=data)
    trainer.fit()
    return trainer.model.eval()


def seed_members(config: RunConfig, data: Data, k: int) -> list[nn.Module]:
    """K members that differ only in their seed (seed, seed + 1, ...): one batch where ``can_batch`` allows."""
    from trainlab.batched import can_batch, train_replicas

    seeds = [config.seed + m for m in range(k)]
    if can_batch(config)[0]:
        return [r.model.eval() for r in train_replicas(config, seeds, data=data)]
    return [_fit(load_config(config, {"seed": s}), data) for s in seeds]


def _uniform(k: int) -> Tensor:
    return torch.full((k,), 1.0 / k, dtype=torch.float64)


def averaging(config: RunConfig, data: Data, k: int) -> Ensemble:
    """Soft averaging of K seeds: p = (1/K) sum_m softmax(f_m(x))."""
    return Ensemble(seed_members(config, data, k), _uniform(k), "averaging", "soft")


def voting(config: RunConfig, data: Data, k: int) -> Ensemble:
    """Hard majority vote of K seeds: argmax_c sum_m [argmax f_m(x) = c], ties to the lowest c."""
    return Ensemble(seed_members(config, data, k), _uniform(k), "voting", "hard")


def bagging(config: RunConfig, data: Data, k: int, cluster: str | None = None, workers: int = 1) -> Ensemble:
    """K members, member m trained with seed ``seed + m`` on a bootstrap resample drawn from ``bootstrap_generator``;
    each member one job (``executors.run_jobs``: here, in ``workers`` local processes, or all at once on
    ``cluster``)."""
    from trainlab.executors import Job, run_jobs

    jobs = [Job(f"bagging member {m}", _bagged_member, (config, data, m)) for m in range(k)]
    return Ensemble(run_jobs(jobs, workers, cluster), _uniform(k), "bagging", "soft")


def _bagged_member(config: RunConfig, data: Data, m: int, progress: Any = None) -> nn.Module:
    index = bootstrap_indices(len(data.y_train), bootstrap_generator(config.seed, m))
    return _fit(load_config(config, {"seed": config.seed + m}), resample_train(data, index))


def bootstrap_generator(seed: int, member: int) -> torch.Generator:
    """The generator of member ``member``'s resample: its own stream of ``SeedSequence([seed, member])``."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, member]).generate_state(1)[0]))


def boosting(config: RunConfig, data: Data, k: int) -> Ensemble:
    """SAMME with at most K members: member m trains with seed ``seed + m`` on the loss
    sum_i w_i CE_i / sum_i w_i; its training error err_m gives alpha_m (``samme_update``); stops early once
    err_m >= 1 - 1/C (no better than chance over C classes) or err_m = 0. Prediction: argmax_c sum_m alpha_m
    [h_m(x) = c]."""
    classes = data.num_classes
    weights = torch.full((len(data.y_train),), 1.0 / len(data.y_train), dtype=torch.float64)
    members, alphas = [], []
    for m in range(k):
        member = _fit(load_config(config, {"seed": config.seed + m}), data, sample_weights=weights * len(weights))
        with torch.no_grad():
            wrong = member(data.x_train).argmax(1).cpu() != data.y_train.cpu()
        err, alpha, weights = samme_update(weights, wrong, classes)
        if err >= 1 - 1 / classes:
            break
        members.append(member)
        alphas.append(alpha)
        if not wrong.any():
            break
    if not members:
        raise ValueError(f"boosting: the first member's weighted training error {err:.3f} is no better than "
                         f"chance (1 - 1/{classes}); train longer or use a larger model.")
    a = torch.tensor(alphas, dtype=torch.float64)
    return Ensemble(members, a / a.sum(), "boosting", "hard")


def snapshot(config: RunConfig, data: Data, k: int) -> Ensemble:
    """One run under cosine_restarts with K equal cycles of epochs // K epochs; the model at each cycle's end."""
    if config.epochs < k:
        raise ValueError(f"snapshot needs at least one epoch per member: the 'epochs' parameter is {config.epochs} "
                         f"and --members is {k}. Raise epochs to >= {k}.")
    cycle = config.epochs // k
    schedule = {"name": "cosine_restarts", "first_cycle_epochs": cycle, "cycle_mult": 1}
    snaps = Snapshots(cycle, k)
    _fit(load_config(config, {"schedule": schedule}), data, [snaps])
    return Ensemble(snaps.models, _uniform(len(snaps.models)), "snapshot", "soft")


def swa(config: RunConfig, data: Data, k: int) -> Ensemble:
    """One run whose weights are averaged over its last K epochs; the ensemble's one member is the averaged model."""
    if config.epochs < k:
        raise ValueError(f"swa averages the last K epochs: the 'epochs' parameter is {config.epochs} and --members "
                         f"is {k}. Raise epochs to >= {k}.")
    callback = SWA(config.epochs - k + 1)
    _fit(config, data, [callback])
    return Ensemble([callback.averaged.module.eval()], _uniform(1), "swa", "soft")


METHODS: dict[str, Callable[[RunConfig, Data, int], Ensemble]] = {
    "bagging": bagging, "boosting": boosting, "averaging": averaging, "voting": voting,
    "snapshot": snapshot, "swa": swa}


def build_ensemble(config: RunConfig, method: str, members: int, *,
                   data: Data | ArraysLike | None = None, cluster: str | None = None,
                   workers: int = 1) -> Ensemble:
    """Train an ensemble of ``members`` (K >= 2) by ``method`` from a validated config; ``data`` replaces loading
    ``config.data`` (arrays ``(x, y)`` / ``(x, y, x_test, y_test)`` or a ``Data``). Classification only.
    ``cluster``: train on that Ray cluster (see the module's docstring) and bring the members back here;
    ``workers`` > 1: bagging's members train in that many local processes (the other methods are one job)."""
    from trainlab.data import as_data
    from trainlab.executors import Job, run_jobs

    require_config(config, "build_ensemble")
    if method not in METHODS:
        raise ValueError(f"The 'method' parameter must be one of {', '.join(METHODS)}. Got {method!r} instead. "
                         f"{suggest(method, list(METHODS))}".rstrip())
    if isinstance(members, bool) or not isinstance(members, int) or members < 2:
        raise ValueError(f"The 'members' parameter must be an int >= 2 (an ensemble of one is a single run). "
                         f"Got {members!r} instead.")
    data = as_data(data, config.data, "build_ensemble")
    if data.task != "classification":
        raise ValueError(f"Ensembles here combine class probabilities, so they need a classification task; "
                         f"the dataset {config.data.dataset.name!r} is a {data.task} task.")
    if method == "bagging":
        return bagging(config, data, members, cluster, workers)
    return run_jobs([Job(f"{method} ensemble", _method_job, (method, config, data, members))],
                    cluster=cluster)[0]


def _method_job(method: str, config: RunConfig, data: Data, k: int, progress: Any = None) -> Ensemble:
    return METHODS[method](config, data, k)


def run_ensemble(config: RunConfig, method: str, members: int, out: str | Path | None = None, *,
                 data: Data | ArraysLike | None = None, cluster: str | None = None,
                 workers: int = 1) -> dict[str, Any]:
    """Train, evaluate on the test split and (with ``out``) write ``OUT/ensemble.json``; the summary. ``data``
    (arrays ``(x, y)`` / ``(x, y, x_test, y_test)`` or a ``Data``) replaces the config's dataset; ``cluster``
    trains on that Ray cluster and ``workers`` in local processes (``build_ensemble``)."""
    from trainlab.data import as_data
    from trainlab.runs import config_hash

    require_config(config, "run_ensemble")
    data = as_data(data, config.data, "run_ensemble")
    result = build_ensemble(config, method, members, data=data, cluster=cluster, workers=workers)
    summary = {**result.evaluate(data, "test"), "requested_members": members, "config_hash": config_hash(config),
               "config": config.model_dump(mode="json")}
    if out is not None:
        atomic_write_text(Path(out) / "ensemble.json", json.dumps(summary, indent=2, sort_keys=True))
    return summary
