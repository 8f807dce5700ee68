from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainlab.activations import ACTIVATIONS, ELU, LeakyReLU
from trainlab.layers import activation_bounds, activation_modules, zero_floor_modules
from trainlab.registry import format_validation_error

X = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)

# The formula each activation must compute, written out independently of torch.nn.
FORMULAS = {
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "tanh": lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "leaky_relu": lambda x: torch.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "gelu": lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))),
    "selu": lambda x: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1)),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}


def test_formula_table_covers_the_registry():
    assert set(FORMULAS) == set(ACTIVATIONS.names())


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_module_computes_the_formula(name):
    module = ACTIVATIONS.create(name).module()
    torch.testing.assert_close(module(X), FORMULAS[name](X))


def test_fields_reach_the_module():
    x = torch.tensor([-2.0, 3.0])
    torch.testing.assert_close(LeakyReLU(negative_slope=0.2).module()(x), torch.tensor([-0.4, 3.0]))
    torch.testing.assert_close(ELU(alpha=0.5).module()(x), torch.tensor([0.5 * (math.exp(-2.0) - 1), 3.0]))


def test_module_is_a_fresh_instance():
    act = ACTIVATIONS.create("relu")
    assert act.module() is not act.module()


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_family_and_bounds(name):
    act = ACTIVATIONS.get(name)
    assert act.family in ("sigmoid", "tanh", "relu", "selu")
    y = act().module()(torch.tensor([-50.0, 0.0, 50.0]))
    if act.bounds is None:
        assert y[-1] >= 49.0  # grows without bound
    else:
        low, high = act.bounds
        assert y[0] == pytest.approx(low, abs=1e-6) and y[-1] == pytest.approx(high, abs=1e-6)
        assert low <= y.min() and y.max() <= high


def test_saturating_ones_are_sigmoid_and_tanh():
    bounded = {n: ACTIVATIONS.get(n).bounds for n in ACTIVATIONS if ACTIVATIONS.get(n).bounds is not None}
    assert bounded == {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_can_die_means_zero_output_and_gradient_for_negative_input(name):
    act = ACTIVATIONS.get(name)
    x = torch.tensor([-3.0, -0.5], requires_grad=True)
    y = act().module()(x)
    y.sum().backward()
    dead = bool((y == 0).all() and (x.grad == 0).all())
    assert dead == act.can_die
    assert act.can_die == (name == "relu")


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_layers_know_every_module_the_activations_build(name):
    act = ACTIVATIONS.create(name)
    module = act.module()
    assert isinstance(module, activation_modules())
    assert activation_bounds().get(type(module)) == act.bounds
    assert isinstance(module, zero_floor_modules()) == act.can_die


@pytest.mark.parametrize("module", [nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(), nn.Sequential(nn.ReLU())])
def test_layers_do_not_count_other_modules_as_activations(module):
    assert not isinstance(module, activation_modules())


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_round_trip(name):
    act = ACTIVATIONS.create(name)
    assert ACTIVATIONS.create(act.model_dump()) == act
    assert act.model_dump()["name"] == name


@pytest.mark.parametrize(("name", "field", "value", "allowed"), [
    ("leaky_relu", "negative_slope", -0.1, "greater than or equal to 0"),
    ("leaky_relu", "negative_slope", 1.0, "less than 1"),
    ("elu", "alpha", 0.0, "greater than 0"),
])
def test_invalid_values_are_rejected_with_the_field_named(name, field, value, allowed):
    raw = {"name": name, field: value}
    with pytest.raises(ValidationError) as err:
        ACTIVATIONS.create(raw)
    msg = format_validation_error(err.value, raw, name)
    assert f"'{field}'" in msg and allowed in msg and repr(value) in msg


def test_unknown_parameter_is_rejected():
    with pytest.raises(ValidationError, match="negative_slope"):
        ACTIVATIONS.create({"name": "relu", "negative_slope": 0.1})
