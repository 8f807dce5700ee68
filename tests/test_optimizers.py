"""Optimizer specs against raw torch.optim, parameter groups, validation and the registry round-trip."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainlab.optimizers import OPTIMIZERS, Adam, AdamW, Momentum, OptimizerSpec, implementation, param_groups
from trainlab.registry import format_validation_error

STEPS = 20


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(STEPS)]


def train(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    for x, y in batches():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def split_by_ndim(model: nn.Module) -> list[dict]:
    return [{"params": [p for p in model.parameters() if p.ndim > 1]},
            {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}]


# name -> (spec fields, torch class, torch kwargs): the same hyperparameters written twice, independently.
REFERENCES = {
    "sgd": ({"lr": 0.1, "weight_decay": 0.01}, torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.01}),
    "momentum": ({"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.01}, torch.optim.SGD,
                 {"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.01}),
    "nesterov": ({"lr": 0.05, "momentum": 0.85, "weight_decay": 0.01}, torch.optim.SGD,
                 {"lr": 0.05, "momentum": 0.85, "nesterov": True, "weight_decay": 0.01}),
    "adagrad": ({"lr": 0.05, "eps": 1e-9, "initial_accumulator_value": 0.1, "weight_decay": 0.01},
                torch.optim.Adagrad, {"lr": 0.05, "eps": 1e-9, "initial_accumulator_value": 0.1,
                                      "weight_decay": 0.01}),
    "rmsprop": ({"lr": 0.01, "alpha": 0.9, "eps": 1e-7, "momentum": 0.5, "weight_decay": 0.01},
                torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9, "eps": 1e-7, "momentum": 0.5, "weight_decay": 0.01}),
    "adam": ({"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.01}, torch.optim.Adam,
             {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.01}),
    "adamw": ({"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.05}, torch.optim.AdamW,
              {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.05}),
}


def test_every_minibatch_optimizer_has_a_torch_reference():
    # The full-batch ones (newton ... lbfgs) are checked against closed forms and scipy in test_second_order.py.
    assert set(REFERENCES) == {n for n in OPTIMIZERS.names() if not OPTIMIZERS.get(n).full_batch}


@pytest.mark.parametrize("decay_all", [True, False])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_matches_raw_torch_optimizer(name, decay_all):
    fields, torch_class, torch_kwargs = REFERENCES[name]
    ours = make_mlp()
    got = train(ours, OPTIMIZERS.create({"name": name, **fields, "decay_all": decay_all}).build(ours))
    ref = make_mlp()
    params = ref.parameters() if decay_all else split_by_ndim(ref)
    want = train(ref, torch_class(params, **torch_kwargs))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(g, p) for g, p in zip(got, make_mlp().parameters())), "training changed nothing"


def test_adam_couples_weight_decay_and_adamw_decouples_it():
    a, b = make_mlp(), make_mlp()
    coupled = train(a, Adam(lr=0.01, weight_decay=0.1).build(a))
    decoupled = train(b, AdamW(lr=0.01, weight_decay=0.1).build(b))
    assert not all(torch.allclose(g, w) for g, w in zip(coupled, decoupled)), "coupled decay should differ"
    with pytest.raises(ValidationError, match="adam has no parameter 'decoupled'"):
        Adam(decoupled=True)


def test_no_decay_group_holds_exactly_the_1d_params():
    model = make_mlp()
    opt = AdamW(lr=0.02, weight_decay=0.1).build(model)
    assert len(opt.param_groups) == 2
    decayed, undecayed = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and undecayed["weight_decay"] == 0.0
    one_d = {id(p) for p in model.parameters() if p.ndim <= 1}
    assert {id(p) for p in undecayed["params"]} == one_d
    assert len(one_d) == 4  # two Linear biases, LayerNorm weight and bias
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.parameters()} - one_d
    assert all(g["lr"] == 0.02 for g in opt.param_groups)
    assert opt.defaults["lr"] == 0.02


@pytest.mark.parametrize("spec", [Momentum(lr=0.1), AdamW(lr=0.1, weight_decay=0.1, decay_all=True)])
def test_one_group_without_decay_or_with_decay_all(spec):
    model = make_mlp()
    opt = spec.build(model)
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == spec.weight_decay
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_frozen_params_are_left_out_and_no_trainable_params_is_an_error():
    model = make_mlp()
    model[0].requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) - 2
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        AdamW().build(model)


def test_build_rejects_non_modules():
    with pytest.raises(TypeError, match="expects a torch.nn.Module. Got list instead"):
        AdamW().build(list(make_mlp().parameters()))


def test_implementation_prefers_fused_then_foreach():
    cpu = [torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)]
    assert implementation(torch.optim.AdamW, cpu) == {"fused": True}
    assert implementation(torch.optim.SGD, cpu) == {"fused": True}
    assert implementation(torch.optim.RMSprop, cpu) == {"foreach": True}
    assert implementation(torch.optim.Adam, [torch.zeros(3, dtype=torch.int64)]) == {"foreach": True}
    assert implementation(torch.optim.Adam, [torch.zeros(3, device="meta")]) == {}
    # Only device and dtype matter, so stand-ins play CUDA tensors on a machine without CUDA.
    cuda = [SimpleNamespace(device=torch.device("cuda"), is_floating_point=lambda: True)]
    assert implementation(torch.optim.Adam, cuda) == {"fused": True}
    assert implementation(torch.optim.Adagrad, cuda) == {"foreach": True}  # fused Adagrad is CPU-only
    assert implementation(torch.optim.RMSprop, cuda) == {"foreach": True}
    assert AdamW().build(make_mlp()).defaults["fused"] is True


@pytest.mark.parametrize(("name", "field", "value", "expected"), [
    ("sgd", "lr", -0.1, "The 'lr' parameter of sgd must be greater than 0. Got -0.1 instead."),
    ("adam", "lr", 0.0, "The 'lr' parameter of adam must be greater than 0. Got 0.0 instead."),
    ("momentum", "momentum", -0.5, "The 'momentum' parameter of momentum must be greater than or equal to 0. "
                                   "Got -0.5 instead."),
    ("momentum", "momentum", 1.0, "The 'momentum' parameter of momentum must be less than 1. Got 1.0 instead."),
    ("nesterov", "momentum", 0.0, "The 'momentum' parameter of nesterov must be greater than 0. Got 0.0 instead."),
    ("rmsprop", "alpha", 1.0, "The 'alpha' parameter of rmsprop must be less than 1. Got 1.0 instead."),
    ("adagrad", "eps", 0.0, "The 'eps' parameter of adagrad must be greater than 0. Got 0.0 instead."),
    ("adamw", "weight_decay", -1e-4, "The 'weight_decay' parameter of adamw must be greater than or equal to 0. "
                                     "Got -0.0001 instead."),
    ("adam", "betas", (0.9, 1.0), "The 'betas' parameter of adam must be two floats in [0, 1). "
                                  "Got (0.9, 1.0) instead."),
    ("adamw", "betas", (-0.1, 0.999), "The 'betas' parameter of adamw must be two floats in [0, 1). "
                                      "Got (-0.1, 0.999) instead."),
    ("sgd", "momentum", 0.9, "sgd has no parameter 'momentum'. Available: lr, weight_decay, decay_all."),
])
def test_invalid_values_are_rejected_with_clear_messages(name, field, value, expected):
    raw = {"name": name, field: value}
    with pytest.raises(ValidationError) as info:
        OPTIMIZERS.create(raw)
    assert format_validation_error(info.value, raw, name).endswith(expected)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_registry_round_trip(name):
    spec = OPTIMIZERS.create(name)
    assert isinstance(spec, OptimizerSpec) and OPTIMIZERS.get(name) is type(spec)
    dumped = spec.model_dump()
    assert dumped["name"] == name
    assert OPTIMIZERS.create(dumped) == spec
    assert OPTIMIZERS.create(json.loads(spec.model_dump_json())) == spec
    assert OPTIMIZERS.describe()[name]
    assert spec.build(make_mlp()).defaults["lr"] == spec.lr
