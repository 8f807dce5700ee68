from __future__ import annotations

import json
import math
import typing

import annotated_types as at
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainlab.activations import ACTIVATIONS
from trainlab.initializers import INITIALIZERS
from trainlab.models import CNN1d, CNN2d, MLP, MODELS, ClassicDropout, count_parameters
from trainlab.registry import Component, format_validation_error


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def output_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of the submodule called ``name`` when ``model`` runs on ``x``."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    model(x)
    handle.remove()
    return seen[0]


SMALL = {"mlp": {"width": 8}, "cnn1d": {"channels": [4, 6], "kernel_size": 3, "head": [8]},
         "cnn2d": {"channels": [4, 6], "kernel_size": 3, "head": [8]}}


@pytest.mark.parametrize(("name", "shape"), [
    ("mlp", (10,)), ("mlp", (2, 3, 4)),
    ("cnn1d", (40,)), ("cnn1d", (3, 40)), ("cnn1d", (2, 7)),
    ("cnn2d", (12, 12)), ("cnn2d", (3, 8, 16)), ("cnn2d", (1, 5, 9)),
])
@pytest.mark.parametrize("extra", [{}, {"norm": "batch", "dropout": 0.2},
                                   {"norm": "layer", "norm_position": "after_activation", "dropout_mode": "classic",
                                    "dropout": 0.5}])
def test_output_shape(name, shape, extra):
    model = MODELS.create({"name": name, **SMALL[name], **extra}).build(shape, 3, gen())
    assert model(torch.randn(4, *shape)).shape == (4, 3)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to float32 rounding measured against the tensor's scale: elementwise tolerances fail where batch
    norm's backward cancels to near zero (over 480 random inputs the worst max|diff| / max|expected| was 2.8e-6)."""
    assert (actual - expected).abs().max() <= rel * expected.abs().max()


@pytest.mark.parametrize("shape", [(40,), (3, 40)])
@pytest.mark.parametrize("extra", [{"pool": "max", "head": [8]}, {"pool": "avg", "pool_after": [1], "head": [8]},
                                   {"pool": "none", "global_pool": "max", "head": []},
                                   {"norm": "layer", "head": [8]}])
def test_cnn1d_channels_last_computes_the_same_function(shape, extra):
    """Built from the same generator, the channels-last cnn1d (2-D layers over one-row images) has the same weights
    (conv kernels (out, in, 1, k) instead of (out, in, k)) and outputs as the contiguous one, up to rounding."""
    spec = {"name": "cnn1d", "channels": [4, 6, 6], "kernel_size": 3, "norm": "batch", **extra}
    plain = MODELS.create(spec).build(shape, 3, gen(5))
    fast = MODELS.create({**spec, "memory_format": "channels_last"}).build(shape, 3, gen(5))
    assert isinstance(fast.conv_blocks[0].conv, nn.Conv2d) and fast.conv_blocks[0].conv.kernel_size == (1, 3)
    a, b = plain.state_dict(), fast.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key].flatten(), b[key].flatten()), key
    x = torch.randn(16, *shape, generator=gen(7))
    assert_close_to_scale(fast(x), plain(x))
    seen: list[bool] = []
    fast.conv_blocks[1].conv.register_forward_hook(
        lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    fast(x)
    assert seen == [True]  # the layout holds through the blocks, not just at the input
    grads = [torch.autograd.grad(m(x).square().sum(), m.conv_blocks[0].conv.weight)[0].flatten()
             for m in (plain, fast)]
    assert_close_to_scale(grads[1], grads[0])


def test_cnn2d_channels_last_keeps_its_weights_and_function():
    spec = {"name": "cnn2d", "channels": [4, 6], "kernel_size": 3, "head": [8]}
    plain = MODELS.create(spec).build((2, 8, 8), 3, gen(1))
    fast = MODELS.create({**spec, "memory_format": "channels_last"}).build((2, 8, 8), 3, gen(1))
    assert [k for k, _ in fast.named_children()][:1] == ["channels_last"]
    x = torch.randn(4, 2, 8, 8, generator=gen(7))
    assert_close_to_scale(fast(x), plain(x))


def test_pool_after_pools_only_the_named_blocks():
    model = CNN1d(channels=[4, 4, 4], kernel_size=3, pool="max", pool_after=[0, 2], head=[]).build((16,), 2, gen())
    assert [hasattr(block, "pool") for block in model.conv_blocks] == [True, False, True]
    assert model.head.out.in_features == 4 * 4  # 16 halved twice
    assert model(torch.randn(3, 16)).shape == (3, 2)


@pytest.mark.parametrize(("extra", "match"), [
    ({"pool": "none", "pool_after": [0]}, r"'pool_after' .* needs pool='max' or 'avg'\. Got pool_after=\[0\] "
                                          r"with pool='none'"),
    ({"pool_after": [2]}, r"distinct block indices from 0 to 1 .*Got pool_after=\[2\]"),
    ({"pool_after": [1, 1]}, r"distinct block indices .*Got pool_after=\[1, 1\]"),
])
def test_pool_after_errors_name_the_field_and_value(extra, match):
    with pytest.raises(ValidationError, match=match):
        CNN1d(channels=[4, 4], **extra)


def test_cnn_without_pooling_keeps_the_length():
    model = CNN1d(channels=[4, 4, 4], kernel_size=5, pool="none", head=[]).build((3,), 2, gen())
    assert model.head.out.in_features == 4 * 3
    assert model(torch.randn(5, 3)).shape == (5, 2)


@pytest.mark.parametrize("cls,shape", [(CNN1d, (2, 16)), (CNN2d, (2, 8, 8))])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_global_pool_is_one_value_per_feature_map_and_ignores_position(cls, shape, kind):
    model = cls(channels=[4, 6], kernel_size=3, pool="none", head=[], global_pool=kind).build(shape, 3, gen()).eval()
    assert model.head.out.in_features == 6
    x = torch.zeros(1, *shape)
    x[..., 3] = 1.0  # a single spike: moving it away from the edges moves the features, not their pooled values
    moved = torch.roll(x, 1, dims=-1)
    torch.testing.assert_close(model(x), model(moved))


def test_module_names():
    names = set(dict(MLP(depth=2, width=8, norm="batch", dropout=0.1).build((5,), 2).named_modules()))
    assert {"flatten", "blocks.0.linear", "blocks.0.norm", "blocks.0.act", "blocks.0.dropout", "blocks.1.linear",
            "head.out"} <= names
    names = set(dict(CNN2d(channels=[4], head=[8], norm="batch", conv_dropout=0.1).build((6, 6), 2).named_modules()))
    assert {"to_channels", "conv_blocks.0.conv", "conv_blocks.0.norm", "conv_blocks.0.act", "conv_blocks.0.pool",
            "conv_blocks.0.dropout", "flatten", "blocks.0.linear", "head.out"} <= names


@pytest.mark.parametrize(("position", "order"), [
    ("before_activation", ["linear", "norm", "act", "dropout"]),
    ("after_activation", ["linear", "act", "norm", "dropout"]),
])
def test_norm_placement_dense(position, order):
    model = MLP(depth=1, width=8, norm="batch", norm_position=position, dropout=0.1).build((5,), 2)
    assert [n for n, _ in model.blocks[0].named_children()] == order


@pytest.mark.parametrize(("position", "order"), [
    ("before_activation", ["conv", "norm", "act", "pool", "dropout"]),
    ("after_activation", ["conv", "act", "norm", "pool", "dropout"]),
])
def test_norm_placement_conv(position, order):
    model = CNN1d(channels=[4], head=[], norm="layer", norm_position=position, conv_dropout=0.1).build((8,), 2)
    assert [n for n, _ in model.conv_blocks[0].named_children()] == order


def test_no_norm_no_dropout_no_pool_leaves_them_out():
    model = CNN1d(channels=[4], head=[8], pool="none").build((8,), 2)
    assert [n for n, _ in model.conv_blocks[0].named_children()] == ["conv", "act"]
    assert [n for n, _ in model.blocks[0].named_children()] == ["linear", "act"]


@pytest.mark.parametrize(("spec", "shape", "conv_norm", "dense_norm"), [
    (CNN1d(channels=[4], head=[8], norm="batch"), (3, 8), nn.BatchNorm1d, nn.BatchNorm1d),
    (CNN2d(channels=[4], head=[8], norm="batch"), (3, 8, 8), nn.BatchNorm2d, nn.BatchNorm1d),
    (CNN1d(channels=[4], head=[8], norm="layer"), (3, 8), nn.GroupNorm, nn.LayerNorm),
    (CNN2d(channels=[4], head=[8], norm="layer"), (3, 8, 8), nn.GroupNorm, nn.LayerNorm),
])
def test_norm_kinds(spec, shape, conv_norm, dense_norm):
    model = spec.build(shape, 2)
    norm = model.conv_blocks[0].norm
    assert type(norm) is conv_norm and type(model.blocks[0].norm) is dense_norm
    if isinstance(norm, nn.GroupNorm):
        assert norm.num_groups == 1 and norm.num_channels == 4


@pytest.mark.parametrize("position", ["before_activation", "after_activation"])
def test_batch_norm_dense_normalizes_each_unit(position):
    model = MLP(depth=2, width=16, norm="batch", norm_position=position).build((10,), 3, gen()).train()
    out = output_of(model, "blocks.1.norm", 3.0 * torch.randn(256, 10, generator=gen(1)) + 2.0)
    torch.testing.assert_close(out.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("spec", "shape"), [(CNN1d(channels=[6], head=[], norm="batch"), (2, 12)),
                                             (CNN2d(channels=[6], head=[], norm="batch"), (2, 6, 6))])
def test_batch_norm_conv_normalizes_each_feature_map(spec, shape):
    model = spec.build(shape, 3, gen()).train()
    out = output_of(model, "conv_blocks.0.norm", 5.0 * torch.randn(32, *shape, generator=gen(1)) - 1.0)
    dims = [0] + list(range(2, out.ndim))  # batch and positions: one statistic per feature map
    torch.testing.assert_close(out.mean(dims), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dims, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)


def test_layer_norm_conv_normalizes_each_sample():
    model = CNN1d(channels=[6], head=[], norm="layer").build((2, 12), 3, gen())
    out = output_of(model, "conv_blocks.0.norm", 5.0 * torch.randn(8, 2, 12, generator=gen(1)) - 1.0)
    torch.testing.assert_close(out.mean((1, 2)), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var((1, 2), unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("norm", "position", "bias"), [
    ("batch", "before_activation", False), ("batch", "after_activation", True),
    ("layer", "before_activation", True), ("none", "before_activation", True),
])
def test_bias_dropped_only_with_batch_norm_before_the_activation(norm, position, bias):
    mlp = MLP(depth=1, width=8, norm=norm, norm_position=position).build((5,), 2)
    cnn = CNN2d(channels=[4], head=[8], norm=norm, norm_position=position).build((4, 4), 2)
    for layer in (mlp.blocks[0].linear, cnn.conv_blocks[0].conv, cnn.blocks[0].linear):
        assert (layer.bias is not None) == bias
    assert mlp.head.out.bias is not None


def test_dropout_modes_build_their_modules():
    inverted = MLP(depth=1, width=8, dropout=0.3).build((5,), 2)
    classic = CNN1d(channels=[4], head=[8], dropout=0.3, conv_dropout=0.2, dropout_mode="classic").build((8,), 2)
    assert type(inverted.blocks[0].dropout) is nn.Dropout and inverted.blocks[0].dropout.p == 0.3
    assert type(classic.blocks[0].dropout) is ClassicDropout and classic.blocks[0].dropout.p == 0.3
    assert type(classic.conv_blocks[0].dropout) is ClassicDropout and classic.conv_blocks[0].dropout.p == 0.2


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_modes_exactly(p):
    x = torch.randn(1000)
    inverted, classic = nn.Dropout(p), ClassicDropout(p)
    torch.manual_seed(0)
    y_inverted = inverted.train()(x)
    torch.manual_seed(0)
    y_classic = classic.train()(x)
    # Same units dropped; classic keeps the survivors unscaled, inverted scales them by 1 / (1 - p).
    torch.testing.assert_close(y_classic, y_inverted * (1 - p))
    assert torch.equal(y_classic == 0, y_inverted == 0)
    torch.testing.assert_close(classic.eval()(x), x * (1 - p), rtol=0, atol=0)
    assert torch.equal(inverted.eval()(x), x)


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_dropout_training_output_has_the_test_time_expectation(mode):
    p = 0.4
    module = nn.Dropout(p) if mode == "inverted" else ClassicDropout(p)
    x = torch.full((200_000,), 2.0)
    torch.manual_seed(1)
    train_mean = module.train()(x).mean().item()
    test_value = module.eval()(x)[0].item()
    assert test_value == pytest.approx(2.0 if mode == "inverted" else 2.0 * (1 - p))
    assert train_mean == pytest.approx(test_value, rel=0.01)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_classic_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"'p' parameter of ClassicDropout must be a float in \[0, 1\)"):
        ClassicDropout(p)


def test_init_is_applied_with_the_generator():
    model = MLP(depth=1, width=400, init="he_normal").build((500,), 2, gen())
    assert model.blocks[0].linear.weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.02)
    assert torch.equal(model.blocks[0].linear.bias, torch.zeros(400))
    expected = INITIALIZERS.create("he_normal").init_(torch.empty(400, 500), gen())
    assert torch.equal(model.blocks[0].linear.weight, expected)


def test_auto_init_follows_the_activation():
    model = MLP(depth=1, width=300, activation="tanh").build((500,), 2, gen())
    assert model.blocks[0].linear.weight.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.02)


def test_build_is_deterministic_and_leaves_the_global_rng_alone():
    spec = CNN1d(channels=[4], head=[8], norm="batch")
    state = torch.random.get_rng_state()
    a, b, c = spec.build((8,), 2, gen(1)), spec.build((8,), 2, gen(1)), spec.build((8,), 2, gen(2))
    assert torch.equal(state, torch.random.get_rng_state())
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.conv_blocks[0].conv.weight, c.conv_blocks[0].conv.weight)


@pytest.mark.parametrize(("spec", "shape", "match"), [
    (CNN2d(), (40,), r"cnn2d needs an input shape \(H, W\) or \(C, H, W\) .*Got \(40,\)"),
    (CNN2d(), (1, 2, 8, 8), r"cnn2d needs an input shape .*Got \(1, 2, 8, 8\)"),
    (CNN1d(), (2, 3, 40), r"cnn1d needs an input shape \(L,\) or \(C, L\) .*Got \(2, 3, 40\)"),
    (CNN1d(channels=[4, 4, 4, 4]), (10,), r"cnn1d halves each spatial size 4 times .*at least 16\. "
                                          r"Got input shape \(10,\)"),
    (CNN2d(channels=[4, 4]), (3, 16, 3), r"cnn2d .* at least 4\. Got input shape \(3, 16, 3\)"),
    (MLP(), (), r"input shape of mlp must be a non-empty tuple of positive ints"),
    (MLP(), (3, 0), r"input shape of mlp .*Got \(3, 0\)"),
    (MLP(), 10, r"input shape of mlp .*Got 10 instead"),
])
def test_shape_errors(spec, shape, match):
    with pytest.raises(ValueError, match=match):
        spec.build(shape, 2)


@pytest.mark.parametrize("num_outputs", [0, 2.0])
def test_num_outputs_error(num_outputs):
    with pytest.raises(ValueError, match=r"'num_outputs' of mlp must be a positive int"):
        MLP().build((3,), num_outputs)


def test_mlp_widths():
    model = MLP(widths=[32, 16]).build((5,), 2)
    assert [b.linear.out_features for b in model.blocks] == [32, 16]
    assert MLP(depth=0).build((5,), 2).head.out.in_features == 5
    assert MLP(depth=3, width=7).hidden_widths == [7, 7, 7]


@pytest.mark.parametrize("extra", [{"depth": 3}, {"width": 64}])
def test_mlp_widths_with_depth_or_width_is_an_error(extra):
    with pytest.raises(ValidationError, match=r"either 'widths' or 'depth' and 'width'.*Got widths=\[32\]"):
        MLP(widths=[32], **extra)


def test_count_parameters():
    assert count_parameters(MLP(depth=1, width=5).build((10,), 3)) == 10 * 5 + 5 + 5 * 3 + 3
    # batch norm before the activation: no linear bias, plus the norm's scale and shift
    assert count_parameters(MLP(depth=1, width=5, norm="batch").build((10,), 3)) == 10 * 5 + 2 * 5 + 5 * 3 + 3
    assert count_parameters(CNN1d(channels=[4], kernel_size=3, head=[]).build((8,), 2)) == 3 * 4 + 4 + 4 * 4 * 2 + 2


# Registry-wide checks: every registered component round-trips and rejects a bad value for each constrained field.

REGISTRIES = [ACTIVATIONS, INITIALIZERS, MODELS]
NON_DEFAULT_MODELS = [
    MLP(widths=[16, 8], activation={"name": "leaky_relu", "negative_slope": 0.2}, init="he_uniform", norm="layer",
        norm_position="after_activation", dropout=0.3, dropout_mode="classic"),
    CNN1d(channels=[8], kernel_size=3, pool="avg", head=[], conv_dropout=0.1, init={"name": "normal", "std": 0.1}),
    CNN2d(activation="selu", init={"name": "variance_scaling", "scale": 4.0, "mode": "fan_out"}, norm="batch"),
]


def _components():
    for registry in REGISTRIES:
        for name in registry:
            yield registry, registry.create(name)
    for spec in NON_DEFAULT_MODELS:
        yield MODELS, spec


@pytest.mark.parametrize(("registry", "component"), list(_components()), ids=lambda v: getattr(v, "name", None))
def test_round_trip(registry, component):
    raw = json.loads(json.dumps(component.model_dump()))  # as a YAML or JSON file would hold it
    again = registry.create(raw)
    assert again == component and type(again) is type(component)


def _bad_values(cls):
    """(field, value) pairs that break each constraint the field declares."""
    for field, info in cls.model_fields.items():
        for m in info.metadata:
            if isinstance(m, at.Gt):
                yield field, m.gt
            elif isinstance(m, at.Ge):
                yield field, m.ge - 1
            elif isinstance(m, at.Lt):
                yield field, m.lt
            elif isinstance(m, at.MinLen):
                yield field, []
        annotation = str(info.annotation)
        if typing.get_origin(info.annotation) is typing.Literal:
            yield field, "not_a_choice"
        if "list[" in annotation:  # lists of positive (or, pool_after, non-negative) ints
            yield field, [-1]
        if isinstance(info.annotation, type) and issubclass(info.annotation, Component):  # a registry field
            yield field, "no_such_component"


CASES = [(registry, registry.get(name), field, value)
         for registry in REGISTRIES for name in registry for field, value in _bad_values(registry.get(name))]


def test_bad_value_cases_cover_the_constrained_fields():
    covered = {(cls.name, field) for _, cls, field, _ in CASES}
    expected = {("leaky_relu", "negative_slope"), ("elu", "alpha"), ("normal", "std"), ("uniform", "a"),
                ("orthogonal", "gain"), ("variance_scaling", "scale"), ("variance_scaling", "mode"),
                ("variance_scaling", "distribution"), ("mlp", "depth"), ("mlp", "width"), ("mlp", "widths")}
    expected |= {(m, f) for m in ("mlp", "cnn1d", "cnn2d") for f in ("activation", "init", "norm", "norm_position",
                                                                    "dropout", "dropout_mode")}
    expected |= {(m, f) for m in ("cnn1d", "cnn2d") for f in ("channels", "kernel_size", "pool", "head",
                                                              "conv_dropout", "global_pool",
                                                              "pool_after", "memory_format")}
    assert covered == expected


@pytest.mark.parametrize(("registry", "cls", "field", "value"), CASES,
                         ids=[f"{c.name}.{f}={v!r}" for _, c, f, v in CASES])
def test_invalid_value_is_rejected_naming_the_field(registry, cls, field, value):
    raw = {"name": cls.name, field: value}
    with pytest.raises(ValidationError) as err:
        registry.create(raw)
    msg = format_validation_error(err.value, raw, cls.name)
    shown = repr(value[0]) if isinstance(value, list) and value else repr(value)[:20]  # a list: its bad element
    assert msg.startswith(field) and shown in msg
