from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainlab.activations import ACTIVATIONS, LeakyReLU
from trainlab.initializers import (
    INITIALIZERS,
    Auto,
    Constant,
    HeNormal,
    LecunNormal,
    Orthogonal,
    VarianceScaling,
    XavierNormal,
    Zeros,
    compute_fans,
    initialize,
)

# fan_in = 128 * 3 = 384, fan_out = 256 * 3 = 768, fan_avg = 576; ~98k entries, so the sample std is within ~1%.
SHAPE = (256, 128, 3)
FANS = {"fan_in": 384, "fan_out": 768, "fan_avg": 576}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("shape", "fans"), [
    ((3, 4), (4, 3)),  # Linear(4, 3)
    ((8, 3, 5), (15, 40)),  # Conv1d(3, 8, 5)
    ((16, 8, 3, 3), (72, 144)),  # Conv2d(8, 16, 3)
    ((4, 2, 3, 5, 7), (210, 420)),  # Conv3d(2, 4, (3, 5, 7))
])
def test_compute_fans_follows_the_torch_layout(shape, fans):
    assert compute_fans(shape) == fans


def test_compute_fans_matches_torch_layers():
    conv = nn.Conv2d(8, 16, (3, 5))
    assert compute_fans(conv.weight.shape) == (8 * 15, 16 * 15)


@pytest.mark.parametrize("shape", [(), (5,)])
def test_compute_fans_rejects_tensors_without_fans(shape):
    with pytest.raises(ValueError, match=r"at least 2 dimensions\. Got shape"):
        compute_fans(shape)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["normal", "truncated_normal", "uniform"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_variance_scaling_std_and_bounds_follow_the_formula(mode, distribution, scale):
    init = VarianceScaling(scale=scale, mode=mode, distribution=distribution)
    w = init.init_(torch.empty(SHAPE), gen())
    std = math.sqrt(scale / FANS[mode])
    assert init.std(SHAPE) == pytest.approx(std)
    assert w.std().item() == pytest.approx(std, rel=0.02)
    assert w.mean().item() == pytest.approx(0.0, abs=0.02 * std)
    largest = w.abs().max().item()
    if distribution == "uniform":
        limit = math.sqrt(3 * scale / FANS[mode])
        assert 0.99 * limit < largest <= limit
    elif distribution == "truncated_normal":
        cut = 2 * std / 0.87962566103423978
        assert 0.99 * cut < largest <= cut
    else:
        assert largest > 3 * std  # an untruncated normal over ~98k samples goes past 3 std


def test_notes_he_formula_is_scale_four():
    # The notes' std 2/sqrt(n) is variance 4/n: variance_scaling(scale=4, fan_in), not He's sqrt(2/n).
    w = VarianceScaling(scale=4.0, mode="fan_in", distribution="normal").init_(torch.empty(SHAPE), gen())
    assert w.std().item() == pytest.approx(2 / math.sqrt(FANS["fan_in"]), rel=0.02)


@pytest.mark.parametrize(("name", "std"), [
    ("xavier_normal", math.sqrt(2 / (384 + 768))),
    ("xavier_uniform", math.sqrt(2 / (384 + 768))),
    ("lecun_normal", math.sqrt(1 / 384)),
    ("lecun_uniform", math.sqrt(1 / 384)),
    ("he_normal", math.sqrt(2 / 384)),
    ("he_uniform", math.sqrt(2 / 384)),
])
def test_presets_std(name, std):
    init = INITIALIZERS.create(name)
    assert isinstance(init, VarianceScaling)
    assert init.std(SHAPE) == pytest.approx(std)
    assert init.init_(torch.empty(SHAPE), gen()).std().item() == pytest.approx(std, rel=0.02)


# Same generator seed -> the same tensor as torch.nn.init.
TORCH_REFERENCES = [
    ("xavier_normal", lambda t, g: nn.init.xavier_normal_(t, generator=g)),
    ("xavier_uniform", lambda t, g: nn.init.xavier_uniform_(t, generator=g)),
    ("he_normal", lambda t, g: nn.init.kaiming_normal_(t, nonlinearity="relu", generator=g)),
    ("he_uniform", lambda t, g: nn.init.kaiming_uniform_(t, nonlinearity="relu", generator=g)),
    ("lecun_normal", lambda t, g: nn.init.kaiming_normal_(t, nonlinearity="linear", generator=g)),
    ({"name": "orthogonal", "gain": 2.0}, lambda t, g: nn.init.orthogonal_(t, gain=2.0, generator=g)),
    ({"name": "normal", "mean": 1.0, "std": 0.5}, lambda t, g: nn.init.normal_(t, 1.0, 0.5, generator=g)),
    ({"name": "uniform", "a": 0.3}, lambda t, g: nn.init.uniform_(t, -0.3, 0.3, generator=g)),
]


@pytest.mark.parametrize(("spec", "reference"), TORCH_REFERENCES)
@pytest.mark.parametrize("shape", [(30, 20), (8, 4, 3, 3)])
def test_equal_to_torch_nn_init(spec, reference, shape):
    ours = INITIALIZERS.create(spec).init_(torch.empty(shape), gen(7))
    theirs = reference(torch.empty(shape), gen(7))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_auto_for_leaky_relu_equals_torch_kaiming_with_its_slope():
    init = Auto().resolve(LeakyReLU(negative_slope=0.2))
    ours = init.init_(torch.empty(64, 32), gen(3))
    theirs = nn.init.kaiming_normal_(torch.empty(64, 32), a=0.2, nonlinearity="leaky_relu", generator=gen(3))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (16, 8, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal(shape, gain):
    w = Orthogonal(gain=gain).init_(torch.empty(shape, dtype=torch.float64), gen()).reshape(shape[0], -1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, gain ** 2 * torch.eye(gram.shape[0], dtype=torch.float64))


def test_zeros_and_constant():
    assert torch.equal(Zeros().init_(torch.ones(3, 4)), torch.zeros(3, 4))
    assert torch.equal(Constant(value=0.25).init_(torch.ones(5)), torch.full((5,), 0.25))


def test_init_does_not_record_gradients_and_returns_the_tensor():
    p = nn.Parameter(torch.empty(10, 10))
    out = HeNormal().init_(p, gen())
    assert out is p and p.grad_fn is None and p.is_leaf


def test_init_draws_from_the_generator_only():
    state = torch.random.get_rng_state()
    a = HeNormal().init_(torch.empty(10, 10), gen(1))
    b = HeNormal().init_(torch.empty(10, 10), gen(1))
    c = HeNormal().init_(torch.empty(10, 10), gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(state, torch.random.get_rng_state())


AUTO_CHOICE = {
    "sigmoid": XavierNormal(),
    "tanh": XavierNormal(),
    "relu": HeNormal(),
    "leaky_relu": VarianceScaling(scale=2 / (1 + 0.01 ** 2), mode="fan_in", distribution="normal"),
    "elu": HeNormal(),
    "gelu": HeNormal(),
    "silu": HeNormal(),
    "selu": LecunNormal(),
}


def test_auto_choice_table_covers_the_registry():
    assert set(AUTO_CHOICE) == set(ACTIVATIONS.names())


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_auto_choice_per_activation(name):
    assert Auto().resolve(ACTIVATIONS.create(name)) == AUTO_CHOICE[name]


def test_auto_for_linear_is_xavier():
    assert Auto().resolve(None) == XavierNormal()


def test_auto_cannot_be_used_unresolved():
    with pytest.raises(TypeError, match=r"resolve\(activation\)"):
        Auto().init_(torch.empty(3, 3))


def test_presets_round_trip_without_fields():
    assert HeNormal().model_dump() == {"name": "he_normal"}
    assert INITIALIZERS.create({"name": "he_normal"}) == HeNormal()
    assert HeNormal().scale == 2.0 and HeNormal().mode == "fan_in" and HeNormal().distribution == "normal"


@pytest.mark.parametrize("name", ["xavier_normal", "xavier_uniform", "lecun_normal", "lecun_uniform", "he_normal",
                                  "he_uniform"])
def test_presets_reject_fields(name):
    with pytest.raises(ValidationError, match=r"takes no parameters\. Got \{'scale': 3\.0\}.*variance_scaling"):
        INITIALIZERS.create({"name": name, "scale": 3.0})


@pytest.mark.parametrize("name", INITIALIZERS.names())
def test_round_trip(name):
    init = INITIALIZERS.create(name)
    assert INITIALIZERS.create(init.model_dump()) == init


@pytest.mark.parametrize(("spec", "field"), [
    ({"name": "normal", "std": 0.0}, "std"),
    ({"name": "uniform", "a": -1.0}, "a"),
    ({"name": "orthogonal", "gain": 0.0}, "gain"),
    ({"name": "variance_scaling", "scale": 0.0}, "scale"),
    ({"name": "variance_scaling", "mode": "fan_max"}, "mode"),
    ({"name": "variance_scaling", "distribution": "laplace"}, "distribution"),
])
def test_invalid_values_are_rejected(spec, field):
    with pytest.raises(ValidationError, match=field):
        INITIALIZERS.create(spec)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(200, 300)
        self.ln = nn.LayerNorm(300)


def test_initialize_sets_weights_zeroes_biases_and_leaves_norms():
    net = _Net()
    with torch.no_grad():
        net.ln.weight.fill_(3.0)  # initialize must not touch norm layers
    initialize(net, HeNormal(), generator=gen())
    assert net.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 200), rel=0.03)
    assert torch.equal(net.conv.weight, HeNormal().init_(torch.empty(8, 3, 3, 3), gen()))
    for layer in (net.conv, net.fc):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert torch.equal(net.bn.weight, torch.ones(8)) and torch.equal(net.bn.bias, torch.zeros(8))
    assert torch.equal(net.ln.weight, torch.full((300,), 3.0))


def test_initialize_resolves_auto_with_the_activation():
    a, b = _Net(), _Net()
    initialize(a, Auto(), ACTIVATIONS.create("tanh"), generator=gen(5))
    initialize(b, XavierNormal(), generator=gen(5))
    assert torch.equal(a.fc.weight, b.fc.weight) and torch.equal(a.conv.weight, b.conv.weight)
