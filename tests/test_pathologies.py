"""The pathology suite: configs built to have one known problem each, user mistakes written as plain PyTorch, and
healthy cases.

The doctor's top finding must name the planted problem in every sick case, and nothing of severity warning or
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

# name: (config, steps (None: the doctor's default budget), the problem planted in it)
SICK = {
    "zero_init": ({"data": DIGITS, "model": mlp(3, 32, "tanh", "zeros")}, None, "symmetric_units"),
    "constant_init": ({"data": DIGITS, "model": mlp(3, 32, "relu", {"name": "constant", "value": 0.05})}, None,
                      "symmetric_units"),
    # N(0, 1) weights on 100 inputs: pre-activations of std ~5 pin the sigmoids at 0 and 1.
    "sigmoid_normal_init": ({"data": DIGITS, "model": mlp(6, 100, "sigmoid", {"name": "normal", "std": 1.0})}, None,
                            "saturation"),
    # N(0, 0.01) weights on 100 inputs scale the signal by ~0.1 per tanh layer.
    "tiny_init": ({"data": DIGITS, "model": mlp(6, 100, "tanh", {"name": "normal", "std": 0.01}),
                   "optimizer": {"name": "sgd", "lr": 0.05}}, None, "activation_collapse"),
    "huge_lr": ({"data": DIGITS, "model": mlp(3, 64), "optimizer": {"name": "sgd", "lr": 20.0}}, None, "divergence"),
    "tiny_lr": ({"data": DIGITS, "model": mlp(3, 64), "optimizer": {"name": "adamw", "lr": 1e-7}}, None, "lr_too_low"),
    # N(0, 1) weights with ReLU grow the signal by ~sqrt(100 / 2) per layer: 8 layers reach ~1e7.
    "relu_normal_init": ({"data": DIGITS, "model": mlp(8, 100, "relu", {"name": "normal", "std": 1.0}),
                          "optimizer": {"name": "sgd", "lr": 0.01}}, None, "exploding_gradients"),
    "adam_lr_0.1_relu": ({"data": DIGITS, "model": mlp(2, 64), "optimizer": {"name": "adam", "lr": 0.1}}, None,
                         "dead_units"),
    "tiny_train_set": ({"data": {**DIGITS, "train_size": 60, "batch_size": 30}, "model": mlp(2, 256),
                        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}}, 400, "overfitting"),
    "raw_breast_cancer": ({"data": {"dataset": "breast_cancer", "preprocess": "none", "batch_size": 32},
                           "model": mlp(2, 64)}, None, "unscaled_inputs"),
    # sigmoid' <= 1/4: through 10 layers the gradient shrinks by ~0.25^10 even with Xavier init.
    "deep_sigmoid": ({"data": DIGITS, "model": mlp(10, 64, "sigmoid", "xavier_normal")}, None,
                     "vanishing_gradients"),
    "linear_model_on_spirals": ({"data": {"dataset": "spirals", "batch_size": 64}, "model": mlp(0, 8),
                                 "optimizer": {"name": "adamw", "lr": 0.03}}, 400, "underfitting"),
    # Momentum 0.99 at lr 0.02: the loss swings up and down by more than half its start, again and again.
    "heavy_momentum": ({"data": DIGITS, "model": mlp(2, 64, "leaky_relu"),
                        "optimizer": {"name": "momentum", "lr": 0.02, "momentum": 0.99}}, None, "oscillating_loss"),
    # Adam at 30x its usual lr: the loss still falls, but every step moves the weights by ~2% of their norm.
    "adam_lr_0.03": ({"data": DIGITS, "model": mlp(2, 64, "leaky_relu"), "optimizer": {"name": "adam", "lr": 0.03}},
                     None, "lr_too_high"),
    "dropout_0.8": ({"data": DIGITS, "model": {**mlp(2, 64), "dropout": 0.8}}, None, "dropout_too_high"),
}

HEALTHY = {
    "digits_relu": ({"data": DIGITS, "model": mlp(2, 64)}, None),
    "digits_tanh_xavier": ({"data": DIGITS, "model": mlp(2, 64, "tanh", "xavier_normal")}, None),
    "digits_dropout_0.2": ({"data": DIGITS, "model": {**mlp(2, 128), "dropout": 0.2}}, None),
    # Smoothed targets keep the training loss above 1.18 (their entropy), 55% of chance at 99% training accuracy:
    # underfitting is measured from that floor, not from 0.
    "digits_label_smoothing_0.3": ({"data": DIGITS, "model": mlp(2, 64), "label_smoothing": 0.3}, None),
    "digits_cnn2d": ({"data": {"dataset": {"name": "digits", "image": True}, "batch_size": 64},
                      "model": {"name": "cnn2d", "channels": [8, 16], "kernel_size": 3, "head": [32]}}, None),
    "breast_cancer_tanh": ({"data": {"dataset": "breast_cancer", "batch_size": 32}, "model": mlp(2, 32, "tanh")}, None),
    "spirals_relu": ({"data": {"dataset": "spirals", "batch_size": 64}, "model": mlp(2, 64)}, 400),
    "mnist1d_relu": ({"data": {"dataset": "mnist1d", "batch_size": 128}, "model": mlp(2, 128)}, None),
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
    report = diagnose(model, data)
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
    report = diagnose(model, _digits())
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
    # At the config's own 15 epochs: the default budget (250 steps) gives breast cancer 20, and the cured net
    # then starts to overfit, which is a finding of its own.
    cured = doctor(load_config(EXAMPLES / file, [fix]), full=True)
    assert all(f.severity == "info" for f in cured.findings), _describe(cured)
    assert cured.final["test_acc"] > sick.final["test_acc"]


# --- the rules added for the doctor issue: the config side ---------------------------------------------------------

def test_a_non_finite_loss_is_located_at_the_layer_and_step_where_it_appears():
    report = doctor(load_config(SICK["huge_lr"][0]))
    top = report.top
    assert top.code == "divergence" and top.layer is not None and top.step is not None, _describe(report)
    where = report.record.meta["nonfinite"]
    assert where["step"] == top.step and (where.get("layer") == top.layer or top.layer in where["params"])
    assert f"step {top.step}" in top.evidence
    # The run stopped there: the budget was not spent on NaNs.
    assert len(report.record.losses) == top.step + 1


def test_symmetric_units_end_the_run_as_soon_as_they_are_certain():
    report = doctor(load_config(SICK["zero_init"][0]), steps=3000)
    assert report.top.code == "symmetric_units"
    assert "stopped_early" in report.record.meta and len(report.record.losses) < 3000 // 10


def _digits_arrays():
    raw = load_data(DataConfig(dataset="digits", val_fraction=0.0, test_fraction=0.0, preprocess="none"))
    return raw.x_train.numpy(), raw.y_train.numpy()


def test_labels_that_carry_no_signal_are_found():
    x, y = _digits_arrays()
    shuffled = np.random.default_rng(0).permutation(y)
    config = load_config({"data": {"batch_size": 64, "val_fraction": 0.2}, "model": mlp(2, 256),
                          "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}})
    report = doctor(config, steps=400, data=(x, shuffled))
    assert report.top.code == "labels_no_signal", _describe(report)
    assert "labels_no_signal" not in [f.code for f in doctor(config, steps=400, data=(x, y)).findings]


def _regression(scale: float, offset: float, n: int = 600):
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 8)).astype(np.float32)
    y = np.tanh(x @ g.normal(size=8)) + 0.5 * x[:, 0] + 0.1 * g.normal(size=n)
    return x, (y * scale + offset).astype(np.float32)


def test_regression_targets_far_from_unit_scale_are_found_and_unit_scale_ones_are_healthy():
    config = load_config({"data": {"batch_size": 32}, "model": mlp(2, 64)})
    sick = doctor(config, data=_regression(300.0, 2000.0))
    assert sick.top.code == "unscaled_targets", _describe(sick)
    healthy = doctor(config, data=_regression(1.0, 0.0))
    assert all(f.severity == "info" for f in healthy.findings), _describe(healthy)


# --- user mistakes written as plain PyTorch, through diagnose ------------------------------------------------------

def _mlp_torch(*tail: nn.Module, hidden: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10), *tail)


class SoftmaxNet(nn.Module):
    """A user's classifier that returns probabilities (torch.softmax in forward) and is trained with CrossEntropyLoss."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=1)


def _frozen() -> nn.Module:
    model = _mlp_torch()
    model[0].weight.requires_grad_(False)
    return model


def _regression_with_sigmoid_head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())


# name: (model, data, diagnose keyword arguments (a callable gets the model), the problem planted in it)
USER_MISTAKES = {
    "softmax_module_before_cross_entropy": (lambda: _mlp_torch(nn.Softmax(dim=1)), "digits", {}, "loss_mismatch"),
    "functional_softmax_before_cross_entropy": (SoftmaxNet, "digits", {}, "loss_mismatch"),
    "nll_loss_on_logits": (_mlp_torch, "digits", {"loss_fn": nn.NLLLoss()}, "loss_mismatch"),
    "regression_through_a_sigmoid": (_regression_with_sigmoid_head, "regression", {}, "loss_mismatch"),
    "frozen_first_layer": (_frozen, "digits", {}, "frozen_parameters"),
    "optimizer_misses_a_layer": (_mlp_torch, "digits",
                                 {"optimizer": lambda m: torch.optim.Adam(m[2].parameters(), lr=1e-3)},
                                 "missing_from_optimizer"),
    "linear_linear_without_activation": (
        lambda: nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), "digits", {},
        "linear_stack"),
}


def _user_data(kind: str):
    if kind == "digits":
        return _digits()
    x, y = _regression(1.0, 0.0)
    return x, y.reshape(-1, 1) * 2


@pytest.mark.parametrize("name", list(USER_MISTAKES))
def test_diagnose_names_a_users_plain_pytorch_mistake(name):
    build, data, kwargs, expected = USER_MISTAKES[name]
    model = build()
    kwargs = {k: v(model) if callable(v) and k == "optimizer" else v for k, v in kwargs.items()}
    report = diagnose(model, _user_data(data), **kwargs)
    assert report.top is not None and report.top.code == expected, _describe(report)
    assert report.top.fix
    assert any(ch.isdigit() for ch in report.top.evidence) or expected == "linear_stack"


class UsersNet(nn.Module):
    """A user's own healthy classifier: two hidden ReLU layers, logits out."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_a_users_healthy_module_and_a_healthy_regression_have_no_warnings():
    torch.manual_seed(0)
    report = diagnose(UsersNet(), _digits())
    assert all(f.severity == "info" for f in report.findings), _describe(report)
    torch.manual_seed(0)
    regression = diagnose(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1)), _user_data("regression"))
    assert all(f.severity == "info" for f in regression.findings), _describe(regression)
