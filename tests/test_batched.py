"""Batched replicas equal sequential runs: weights, history, final metrics and extras, bitwise on CPU.

Every equivalence test trains the same seeds both ways (``train_sequentially`` is ``build_trainer(load_config(cfg,
{"seed": s})).fit()`` per seed) and compares with ``torch.equal`` and ``==``; only ``time_s`` (wall time) differs.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainlab.batched import ReplicaBatch, can_batch, stack_replicas, train_replicas, train_sequentially
from trainlab.callbacks import Checkpoint, History, Progress
from trainlab.config import load_config
from trainlab.optimizers import param_groups

DATA = {"dataset": {"name": "mnist1d", "num_samples": 600}, "batch_size": 32}
MLP_BN = {"data": DATA, "model": {"name": "mlp", "depth": 2, "width": 32, "norm": "batch", "dropout": 0.2},
          "epochs": 3}


def same(a, b) -> bool:
    """Equal values, NaN equal to NaN (a diverged run's metrics)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def without_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time_s"}


def assert_equal_runs(cfg: dict, seeds: list[int]) -> list:
    config = load_config(cfg)
    sequential, batched = train_sequentially(config, seeds), train_replicas(config, seeds)
    for s, b in zip(sequential, batched):
        assert b.seed == s.seed and b.config == s.config
        assert same([without_time(r) for r in b.history], [without_time(r) for r in s.history]), s.seed
        assert same(without_time(b.final), without_time(s.final)), (s.seed, s.final, b.final)
        assert same(b.extras, s.extras)
        assert type(b.model) is type(s.model)
        ref = s.model.state_dict()
        got = b.model.state_dict()
        assert got.keys() == ref.keys()
        for key in ref:  # bitwise (NaN equal to NaN for a diverged replica)
            torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0, equal_nan=True, msg=key)
    return batched


def test_mlp_with_batch_norm_and_dropout_equals_sequential_runs():
    assert_equal_runs(MLP_BN, [0, 1, 2])


@pytest.mark.parametrize("activation", ["gelu", "elu", "selu", "silu", "sigmoid", "tanh", "leaky_relu"])
def test_every_activation_with_layer_norm_after_activation_and_classic_dropout(activation):
    # 20 units x batches of 30: a replica's tensors are not a multiple of the vector width, where a kernel run once
    # over all replicas would differ in the last bit from a sequential run.
    cfg = {"data": {**DATA, "batch_size": 30}, "epochs": 1,
           "model": {"name": "mlp", "depth": 2, "width": 20, "activation": activation, "norm": "layer",
                     "norm_position": "after_activation", "dropout": 0.1, "dropout_mode": "classic"}}
    assert_equal_runs(cfg, [0, 1])


def test_cnn1d_with_batch_norm_per_feature_map_pooling_and_dropout():
    cfg = {"data": DATA, "epochs": 2,
           "model": {"name": "cnn1d", "channels": [8, 16], "head": [32], "norm": "batch", "conv_dropout": 0.1,
                     "dropout": 0.1}}
    assert_equal_runs(cfg, [0, 1])


def test_cnn1d_with_layer_norm_and_global_pooling():
    cfg = {"data": DATA, "epochs": 1,
           "model": {"name": "cnn1d", "channels": [8], "head": [], "norm": "layer", "pool": "avg",
                     "global_pool": "avg", "activation": "selu"}}
    assert_equal_runs(cfg, [0, 1])


def test_cnn2d_with_batch_norm():
    cfg = {"data": {"dataset": {"name": "digits", "image": True}, "batch_size": 64}, "epochs": 1,
           "model": {"name": "cnn2d", "channels": [4, 8], "head": [16], "kernel_size": 3, "norm": "batch",
                     "conv_dropout": 0.1, "global_pool": "max"}}
    assert_equal_runs(cfg, [0, 1])


def test_early_stopping_at_different_epochs_restores_each_replicas_best_weights():
    cfg = {"data": DATA, "model": {"name": "mlp", "depth": 1, "width": 32}, "optimizer": {"name": "adam", "lr": 0.05},
           "epochs": 12, "early_stopping": {"patience": 1}}
    batched = assert_equal_runs(cfg, [0, 1, 2])
    assert len({r.final["epochs_run"] for r in batched}) > 1  # the replicas stop at different epochs
    assert all(r.final["stopped_reason"].startswith("early stopping") for r in batched)
    assert any("restored_epoch" in r.extras for r in batched)


def test_augmentation_shift_and_input_noise():
    cfg = {"data": {**DATA, "augment": [{"name": "shift", "max_shift": 3}, {"name": "gaussian_noise", "std": 0.1}]},
           "model": {"name": "mlp", "depth": 2, "width": 32, "dropout": 0.1}, "epochs": 2}
    assert_equal_runs(cfg, [0, 1])


def test_diverging_replicas_stop_alone_mid_epoch_or_at_its_end():
    # lr 0.8 with N(0, 0.3^2) weights: seed 1 diverges at step 25 (inside epoch 2 of 14 steps each), seeds 3 and 4
    # at steps 29 and 37 (inside epoch 3; on the CPU the guard checks every step), and the others train on.
    cfg = {"data": DATA, "model": {"name": "mlp", "depth": 2, "width": 32, "activation": "leaky_relu",
                                   "init": {"name": "normal", "std": 0.3}},
           "optimizer": {"name": "momentum", "lr": 0.8}, "epochs": 3}
    batched = assert_equal_runs(cfg, list(range(6)))
    diverged = {r.seed: r.final["stopped_reason"] for r in batched if r.extras.get("diverged")}
    assert set(diverged) == {1, 3, 4}
    assert diverged == {1: "non-finite loss (nan) at step 25", 3: "non-finite loss (nan) at step 29",
                        4: "non-finite loss (nan) at step 37"}
    assert [len(r.history) for r in batched] == [3, 1, 3, 2, 2, 3]
    assert [r.final["steps"] for r in batched] == [42, 25, 42, 29, 37, 42]


def test_clipping_noise_penalties_schedule_and_label_smoothing():
    cfg = {"data": DATA, "model": {"name": "mlp", "depth": 2, "width": 32}, "epochs": 2, "label_smoothing": 0.1,
           "optimizer": {"name": "momentum", "lr": 0.05, "weight_decay": 1e-3}, "grad_clip": 0.5,
           "gradient_noise": 0.01, "weight_noise": 0.01, "schedule": {"name": "cosine", "warmup_steps": 5},
           "regularizers": [{"name": "l2", "strength": 1e-3}, {"name": "l1", "strength": 1e-4, "include_bias": True},
                            {"name": "l1", "target": "activity", "strength": 1e-4}]}
    assert_equal_runs(cfg, [0, 1])


def test_factory_callbacks_run_per_replica(tmp_path):
    config = load_config({**MLP_BN, "epochs": 2})
    results = train_replicas(config, [3, 4], lambda seed: [History(tmp_path / f"{seed}.csv")])
    for r in results:
        lines = (tmp_path / f"{r.seed}.csv").read_text().splitlines()
        assert len(lines) == 3 and lines[0].startswith("epoch,step,train_loss")


def test_the_studies_recorders_record_per_replica_what_they_record_sequentially():
    from trainlab.studies.measures import STEP_LOSS, TRAIN_EVAL, StepLoss, TrainEval

    config = load_config({**MLP_BN, "epochs": 2})
    recorders = lambda seed: [StepLoss(), TrainEval()]  # noqa: E731
    sequential, batched = train_sequentially(config, [0, 1], recorders), train_replicas(config, [0, 1], recorders)
    for s, b in zip(sequential, batched):
        assert len(b.extras[STEP_LOSS]) == 2 * 14  # 432 training samples in batches of 32
        assert b.extras[STEP_LOSS] == s.extras[STEP_LOSS] and b.extras[TRAIN_EVAL] == s.extras[TRAIN_EVAL]


def test_replica_models_are_ordinary_independent_modules():
    config = load_config({**MLP_BN, "epochs": 1})
    a, b = train_replicas(config, [0, 1])
    fresh = config.model.build((40,), 10)
    fresh.load_state_dict(a.model.state_dict())
    with torch.no_grad():
        next(a.model.parameters()).zero_()
    assert next(b.model.parameters()).abs().sum() > 0
    assert all(p.untyped_storage().nbytes() == p.numel() * 4 for p in b.model.parameters())


# --- optimizers: one optimizer over K replicas' parameters is K optimizers ------------------------------------------

def replica_models(k: int) -> list[nn.Module]:
    spec = load_config({"model": {"name": "mlp", "depth": 1, "width": 7, "norm": "batch"}}).model
    return [spec.build((5,), 3, torch.Generator().manual_seed(s)) for s in range(k)]


@pytest.mark.parametrize("spec", [{"name": "adamw", "weight_decay": 0.1}, {"name": "adam", "weight_decay": 0.1},
                                  {"name": "momentum", "weight_decay": 0.1}, {"name": "nesterov"},
                                  {"name": "adagrad", "weight_decay": 0.1}, {"name": "rmsprop", "momentum": 0.5},
                                  {"name": "sgd"}])
def test_one_optimizer_over_replica_views_of_the_stack_equals_k_optimizers(spec):
    optimizer_spec = load_config({"optimizer": spec}).optimizer
    models = replica_models(3)
    separate = [copy.deepcopy(m) for m in models]
    stack_replicas(models, [torch.Generator() for _ in models])  # the models' tensors become views of the stack
    joint = optimizer_spec.build(nn.ModuleList(models))
    alone = [optimizer_spec.build(m) for m in separate]
    assert [len(g["params"]) for g in joint.param_groups] == [3 * len(g["params"]) for g in alone[0].param_groups]
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        for m, s in zip(models, separate):
            for p, q in zip(m.parameters(), s.parameters()):
                p.grad = torch.randn(p.shape, generator=gen)
                q.grad = p.grad.clone()
        joint.step()
        for opt in alone:
            opt.step()
    for m, s in zip(models, separate):
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), s.parameters()))


def test_an_optimizer_over_stacked_tensors_is_k_optimizers_up_to_fused_kernels_tails():
    # Over (K, ...) tensors the fused SGD kernel computes a replica's elements with its vector body where a
    # replica alone would use its scalar tail: equal to a few ulp, not bitwise (Adam's kernel is bitwise here).
    # This is why the batch steps one optimizer over each replica's own (view) tensors instead.
    shapes = [(3, 5), (3,)]
    gen = torch.Generator().manual_seed(0)
    stacked = [torch.randn(4, *s, generator=gen).requires_grad_() for s in shapes]
    alone = [[t[k].detach().clone().requires_grad_() for t in stacked] for k in range(4)]
    for cls, kwargs in [(torch.optim.AdamW, {"fused": True}), (torch.optim.SGD, {"momentum": 0.9, "fused": True})]:
        opt, opts = cls(stacked, lr=0.1, **kwargs), [cls(ps, lr=0.1, **kwargs) for ps in alone]
        for _ in range(3):
            for t in stacked:
                t.grad = torch.randn(t.shape, generator=gen)
            for k, ps in enumerate(alone):
                for p, t in zip(ps, stacked):
                    p.grad = t.grad[k].clone()
            opt.step()
            for o in opts:
                o.step()
        for k, ps in enumerate(alone):
            for p, t in zip(ps, stacked):
                torch.testing.assert_close(t[k], p, rtol=1e-6, atol=1e-6)


def test_decay_groups_hold_each_replicas_weights_and_not_its_biases():
    models = replica_models(2)
    stack_replicas(models, [torch.Generator() for _ in models])
    groups = param_groups(nn.ModuleList(models), weight_decay=0.1)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0


# --- what cannot be batched --------------------------------------------------------------------------------------------

def test_can_batch_accepts_the_supported_configs():
    assert can_batch(load_config(MLP_BN)) == (True, "")


@pytest.mark.parametrize(("overrides", "kwargs", "why"), [
    ({"schedule": {"name": "plateau"}}, {}, "'plateau' cuts each run's lr on that run's own metric"),
    ({}, {"model": nn.Linear(40, 10)}, "a user's own nn.Module (Linear) has no stacked form"),
    ({}, {"callbacks": [Checkpoint("unused.pt")]}, "the callback Checkpoint does not declare per_replica"),
    ({}, {"callbacks": [Progress()]}, "the callback Progress does not declare per_replica"),
    ({"device": "cuda"}, {}, "the 'device' 'cuda' means CUDA"),
    ({"optimizer": {"name": "bfgs"}, "model.norm": "none", "model.dropout": 0.0}, {},
     "the 'optimizer' 'bfgs' takes one full-batch step per epoch"),
    ({"model": {"name": "cnn1d", "channels": [4], "memory_format": "channels_last"}}, {},
     "'memory_format' 'channels_last' has no stacked form"),
])
def test_can_batch_refuses_and_names_why(overrides, kwargs, why):
    ok, reason = can_batch(load_config(MLP_BN, overrides), **kwargs)
    assert not ok and why in reason


def test_train_replicas_raises_with_the_reason():
    with pytest.raises(ValueError, match="cannot be batched: the 'schedule' 'plateau'.*train_sequentially"):
        train_replicas(load_config(MLP_BN, {"schedule": {"name": "plateau"}}), [0, 1])
    with pytest.raises(ValueError, match=r"The 'seeds' argument must be a non-empty sequence of ints >= 0\. Got \[\]"):
        train_replicas(load_config(MLP_BN), [])


def test_a_layer_without_a_stacked_form_is_named():
    models = [nn.Sequential(nn.Linear(3, 3), nn.PReLU()) for _ in range(2)]
    with pytest.raises(ValueError, match=r"no stacked form of the layer PReLU"):
        stack_replicas(models, [torch.Generator(), torch.Generator()])


def test_a_stop_where_a_batch_cannot_honour_it_is_an_error():
    from trainlab.callbacks import Callback, StopTraining
    from trainlab.data import load_data
    from trainlab.trainer import build_trainer

    class StopAtStepStart(Callback):
        def on_step_start(self, trainer):
            raise StopTraining("no")

    configs = [load_config(MLP_BN, {"epochs": 1, "seed": s}) for s in (0, 1)]
    data = load_data(configs[0].data)
    trainers = [build_trainer(c, [StopAtStepStart()], data=data) for c in configs]
    with pytest.raises(RuntimeError, match="stopped replica 0 at on_step_start"):
        ReplicaBatch(configs, trainers).fit()
