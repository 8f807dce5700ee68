"""The pathology suite: configs built to have one known problem each, and healthy ones.

The doctor's top finding must name the planted problem in every sick config, and nothing of severity warning or
above may appear on a healthy one. The example sick configs in ``examples/`` must be cured by the fix they name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainlab.config import load_config
from trainlab.data import DataConfig, load_data
from trainlab.diagnostics import diagnose, doctor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def mlp(depth: int, width: int, activation: str = "relu", init: object = "auto") -> dict:
    return {"name": "mlp", "depth": depth, "width": width, "activation": activation, "init": init}


DIGITS = {"dataset": "digits", "batch_size": 64}

# name: (config, steps, the problem planted in it)
SICK = {
    "zero_init": ({"data": DIGITS, "model": mlp(3, 32, "tanh", "zeros")}, 300, "symmetric_units"),
    "constant_init": ({"data": DIGITS, "model": mlp(3, 32, "relu", {"name": "constant", "value": 0.05})}, 300,
                      "symmetric_units"),
    # N(0, 1) weights on 100 inputs: pre-activations of std ~5 pin the sigmoids at 0 and 1.
    "sigmoid_normal_init": ({"data": DIGITS, "model": mlp(6, 100, "sigmoid", {"name": "normal", "std": 1.0})}, 300,
                            "saturation"),
    # N(0, 0.01) weights on 100 inputs scale the signal by ~0.1 per tanh layer.
    "tiny_init": ({"data": DIGITS, "model": mlp(6, 100, "tanh", {"name": "normal", "std": 0.01}),
                   "optimizer": {"name": "sgd", "lr": 0.05}}, 300, "activation_collapse"),
    "huge_lr": ({"data": DIGITS, "model": mlp(3, 64), "optimizer": {"name": "sgd", "lr": 20.0}}, 300, "divergence"),
    "tiny_lr": ({"data": DIGITS, "model": mlp(3, 64), "optimizer": {"name": "adamw", "lr": 1e-7}}, 300, "lr_too_low"),
    # N(0, 1) weights with ReLU grow the signal by ~sqrt(100 / 2) per layer: 8 layers reach ~1e7.
    "relu_normal_init": ({"data": DIGITS, "model": mlp(8, 100, "relu", {"name": "normal", "std": 1.0}),
                          "optimizer": {"name": "sgd", "lr": 0.01}}, 300, "exploding_gradients"),
    "adam_lr_0.1_relu": ({"data": DIGITS, "model": mlp(2, 64), "optimizer": {"name": "adam", "lr": 0.1}}, 300,
                         "dead_units"),
    "tiny_train_set": ({"data": {**DIGITS, "train_size": 60, "batch_size": 30}, "model": mlp(2, 256),
                        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}}, 400, "overfitting"),
    "raw_breast_cancer": ({"data": {"dataset": "breast_cancer", "preprocess": "none", "batch_size": 32},
                           "model": mlp(2, 64)}, 300, "unscaled_inputs"),
    # sigmoid' <= 1/4: through 10 layers the gradient shrinks by ~0.25^10 even with Xavier init.
    "deep_sigmoid": ({"data": DIGITS, "model": mlp(10, 64, "sigmoid", "xavier_normal")}, 300,
                     "vanishing_gradients"),
    "linear_model_on_spirals": ({"data": {"dataset": "spirals", "batch_size": 64}, "model": mlp(0, 8),
                                 "optimizer": {"name": "adamw", "lr": 0.03}}, 400, "underfitting"),
}

HEALTHY = {
    "digits_relu": ({"data": DIGITS, "model": mlp(2, 64)}, 300),
    "breast_cancer_tanh": ({"data": {"dataset": "breast_cancer", "batch_size": 32}, "model": mlp(2, 32, "tanh")}, 300),
    "spirals_relu": ({"data": {"dataset": "spirals", "batch_size": 64}, "model": mlp(2, 64)}, 400),
    "mnist1d_relu": ({"data": {"dataset": "mnist1d", "batch_size": 128}, "model": mlp(2, 128)}, 300),
}


def _describe(report) -> str:
    return "\n".join(f"{f.severity} {f.code} {f.layer}: {f.evidence}" for f in report.findings) or "no findings"


@pytest.mark.parametrize("name", list(SICK))
def test_top_finding_names_the_planted_problem(name):
    config, steps, expected = SICK[name]
    report = doctor(load_config(config), steps=steps)
    assert report.top is not None and report.top.code == expected, _describe(report)


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_configs_have_no_warnings(name):
    config, steps = HEALTHY[name]
    report = doctor(load_config(config), steps=steps)
    assert all(f.severity == "info" for f in report.findings), _describe(report)


def test_diagnose_finds_dead_units_in_a_users_own_model():
    # A hand-written torch model whose hidden biases start at -3: most units never fire.
    data = load_data(DataConfig(dataset="digits"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].bias.fill_(-3.0)
        model[2].bias.fill_(-3.0)
    report = diagnose(model, data, steps=300)
    assert report.top.code == "dead_units", _describe(report)


class FunctionalMLP(nn.Module):
    """A user's MLP that applies its activation as a function (``torch.sigmoid``, ``F.relu``) or, with
    ``module=True``, through activation modules; otherwise the same network."""

    def __init__(self, sizes: list[int], activation, module: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = activation
        self.acts = nn.ModuleList(_MODULES[activation]() for _ in sizes[2:]) if module else None

    def forward(self, x):
        for i, layer in enumerate(self.layers[:-1]):
            x = self.acts[i](layer(x)) if self.acts is not None else self.activation(layer(x))
        return self.layers[-1](x)


_MODULES = {torch.sigmoid: nn.Sigmoid, F.relu: nn.ReLU}


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_data(DataConfig(dataset="digits"))
    return data.x_train, data.y_train


def _sigmoid_normal_init(module: bool) -> FunctionalMLP:
    torch.manual_seed(0)
    model = FunctionalMLP([64] + [100] * 6 + [10], torch.sigmoid, module)
    for layer in model.layers:
        nn.init.normal_(layer.weight, 0.0, 1.0)
    return model


def test_diagnose_finds_saturation_in_a_functional_sigmoid_model():
    # 7 Linear layers with N(0, 1) weights and torch.sigmoid between them: the same problem as sigmoid_normal_init.
    report = diagnose(_sigmoid_normal_init(module=False), _digits())
    assert report.top.code == "saturation" and report.top.layer.startswith("sigmoid#"), _describe(report)
    assert report.record.meta["probed"] == "functional"
    # The same network with nn.Sigmoid modules sees the same numbers under the modules' names.
    with_modules = diagnose(_sigmoid_normal_init(module=True), _digits()).record
    assert with_modules.layers == [f"acts.{i}" for i in range(6)]
    assert report.record.layers == [f"sigmoid#{i}" for i in range(1, 7)]
    np.testing.assert_array_equal(report.record.layer_stats, with_modules.layer_stats)
    np.testing.assert_array_equal(report.record.hists, with_modules.hists)


def test_diagnose_finds_dead_units_in_a_functional_relu_model():
    torch.manual_seed(0)
    model = FunctionalMLP([64, 64, 64, 10], F.relu)
    with torch.no_grad():
        model.layers[0].bias.fill_(-3.0)
        model.layers[1].bias.fill_(-3.0)
    report = diagnose(model, _digits(), steps=300)
    assert report.top.code == "dead_units" and report.top.layer.startswith("relu#"), _describe(report)


# example file: (planted problem, the override its comment names as the fix)
EXAMPLE_FIXES = {
    "sick_saturation.yaml": ("saturation", "model.init.name=xavier_normal"),
    "sick_unscaled.yaml": ("unscaled_inputs", "data.preprocess.name=standardize"),
    "sick_dead_relu.yaml": ("dead_units", "optimizer.lr=0.001"),
}


@pytest.mark.parametrize("file", list(EXAMPLE_FIXES))
def test_example_sick_configs_are_cured_by_their_fix(file):
    problem, fix = EXAMPLE_FIXES[file]
    assert fix in (EXAMPLES / file).read_text()
    sick = doctor(load_config(EXAMPLES / file))
    assert sick.top.code == problem, _describe(sick)
    cured = doctor(load_config(EXAMPLES / file, [fix]))
    assert all(f.severity == "info" for f in cured.findings), _describe(cured)
    assert cured.final["test_acc"] > sick.final["test_acc"]
