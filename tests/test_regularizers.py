from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainlab.regularizers import (
    REGULARIZERS,
    ActivityPenalty,
    ElasticNet,
    KernelPenalty,
    L1,
    L2,
    sparsity,
)


def tiny_mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def weights(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.ndim >= 2]


# --- kernel values against hand formulas ---------------------------------------------------------------------------

def test_kernel_values_match_formulas():
    model = tiny_mlp()
    ws = [w.detach() for w in weights(model)]
    abs_sum = sum(float(w.abs().sum()) for w in ws)
    sq_sum = sum(float((w * w).sum()) for w in ws)
    assert L1(strength=0.3).attach(model).value().item() == pytest.approx(0.3 * abs_sum, rel=1e-6)
    assert L2(strength=0.3).attach(model).value().item() == pytest.approx(0.15 * sq_sum, rel=1e-6)
    enet = ElasticNet(l1=0.2, l2=0.5).attach(model)
    assert enet.value().item() == pytest.approx(0.2 * abs_sum + 0.25 * sq_sum, rel=1e-6)
    assert ElasticNet(l1=0.0, l2=0.5).attach(model).value().item() == pytest.approx(0.25 * sq_sum, rel=1e-6)


def test_biases_excluded_by_default_and_included_on_request():
    model = tiny_mlp()
    default = L1(strength=1.0).attach(model)
    assert isinstance(default, KernelPenalty)
    assert default.selected == ("0.weight", "2.weight")
    with_bias = L1(strength=1.0, include_bias=True).attach(model)
    assert with_bias.selected == ("0.weight", "0.bias", "2.weight", "2.bias")
    expected = sum(float(p.detach().abs().sum()) for p in model.parameters())
    assert with_bias.value().item() == pytest.approx(expected, rel=1e-6)


def test_normalization_parameters_are_excluded_by_default():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    assert L2().attach(model).selected == ("0.weight", "2.weight")


def test_l2_gradient_equals_sgd_weight_decay():
    lam, lr = 0.1, 0.5
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)
    a, b = tiny_mlp(), tiny_mlp()
    penalty = L2(strength=lam).attach(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=lr)
    # The default L2 selection leaves biases out, so weight decay goes on the weights only.
    opt_b = torch.optim.SGD([{"params": weights(b), "weight_decay": lam},
                             {"params": [p for p in b.parameters() if p.ndim < 2], "weight_decay": 0.0}], lr=lr)
    (nn.functional.mse_loss(a(x), y) + penalty.value()).backward()
    nn.functional.mse_loss(b(x), y).backward()
    opt_a.step()
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_l1_gradient_is_strength_times_sign():
    model = tiny_mlp()
    L1(strength=0.7).attach(model).value().backward()
    for w in weights(model):
        torch.testing.assert_close(w.grad, 0.7 * torch.sign(w.detach()))


@pytest.mark.parametrize("reg", [L1(strength=0.3), L2(strength=0.3), ElasticNet(l1=0.2, l2=0.4)])
def test_penalty_gradcheck_in_weights(reg):
    # Entries bounded away from 0, where |w| is differentiable.
    w = (torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1)
    w = (w * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(reg.penalty, (w,))


@pytest.mark.parametrize("reg", [L1(strength=0.3, target="activity"), L2(strength=0.3, target="activity"),
                                 ElasticNet(l1=0.2, l2=0.4, target="activity")])
def test_activity_penalty_gradcheck_in_input(reg):
    model = tiny_mlp(torch.float64)
    penalty = reg.attach(model)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)

    def f(inp: torch.Tensor) -> torch.Tensor:
        model(inp)
        return penalty.value()

    assert torch.autograd.gradcheck(f, (x,))


# --- activity ------------------------------------------------------------------------------------------------------

def test_activity_value_is_batch_sum_over_batch_size():
    model = tiny_mlp()
    penalty = L2(strength=0.4, target="activity").attach(model)
    assert isinstance(penalty, ActivityPenalty)
    assert penalty.selected == ("1",)
    x = torch.randn(6, 3)
    model(x)
    h = torch.tanh(model[0](x)).detach()
    assert penalty.value().item() == pytest.approx(0.4 * 0.5 * float((h * h).sum()) / 6, rel=1e-6)
    l1 = L1(strength=0.4, target="activity").attach(model)
    model(x)
    assert l1.value().item() == pytest.approx(0.4 * float(h.abs().sum()) / 6, rel=1e-6)


def test_activity_does_not_accumulate_and_ignores_eval():
    model = tiny_mlp()
    penalty = L1(strength=1.0, target="activity").attach(model)
    assert penalty.value().item() == 0.0
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    model(x1)
    model(x2)
    expected = float(torch.tanh(model[0](x2)).detach().abs().sum()) / 4
    assert len(penalty.outputs) == 1
    assert penalty.value().item() == pytest.approx(expected, rel=1e-6)
    model.eval()
    model(x1)  # a validation pass neither records nor erases the training batch
    assert len(penalty.outputs) == 1
    assert penalty.value().item() == pytest.approx(expected, rel=1e-6)
    fresh = L1(strength=1.0, target="activity").attach(model)
    model(x1)
    assert fresh.outputs == []


def test_activity_default_falls_back_to_linear_layers_except_last():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 1))
    assert L2(target="activity").attach(model).selected == ("0", "1")
    with pytest.raises(ValueError, match="name them in 'layers'"):
        L2(target="activity").attach(nn.Sequential(nn.Linear(3, 1)))


def test_remove_detaches_hooks():
    model = tiny_mlp()
    penalty = L1(target="activity").attach(model)
    penalty.remove()
    model(torch.randn(2, 3))
    assert penalty.outputs == []
    assert not model._forward_pre_hooks and not model[1]._forward_hooks
    with pytest.raises(RuntimeError, match="removed"):
        penalty.value()
    kernel = L1().attach(model)
    kernel.remove()
    with pytest.raises(RuntimeError, match="removed"):
        kernel.value()


# --- selection, helpers, validation --------------------------------------------------------------------------------

def test_layers_selection():
    model = tiny_mlp()
    assert L1(layers=["2"]).attach(model).selected == ("2.weight",)
    assert L1(layers=["2"], include_bias=True).attach(model).selected == ("2.weight", "2.bias")
    act = L1(layers=["0", "2"], target="activity").attach(model)
    model(torch.randn(3, 3))
    assert act.selected == ("0", "2") and [o.shape[1] for o in act.outputs] == [4, 2]


def test_unknown_layer_lists_available_names():
    with pytest.raises(ValueError, match=r"\['fc9'\]. Available: 0, 1, 2"):
        L1(layers=["fc9"]).attach(tiny_mlp())
    with pytest.raises(ValueError, match="selects no parameters"):
        L1(layers=["1"]).attach(tiny_mlp())


def test_sparsity():
    model = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1e-4, 0.5, -2e-3], [-5e-4, 1.0, 0.0, 0.0]]))
        model[1].weight.copy_(torch.tensor([[0.0, 3.0]]))
        model[0].bias.zero_()  # biases are not weights: they must not count
    assert sparsity(model) == pytest.approx(6 / 10)
    assert sparsity(model, threshold=1e-2) == pytest.approx(7 / 10)
    with pytest.raises(ValueError, match="'threshold'"):
        sparsity(model, threshold=0.0)


@pytest.mark.parametrize("name, fields", [
    ("l1", {"strength": 0.0}), ("l1", {"strength": -1.0}), ("l2", {"strength": float("nan")}),
    ("l2", {"target": "bias"}), ("l1", {"layers": []}), ("l2", {"include_bias": True, "target": "activity"}),
    ("elastic_net", {"l1": 0.0, "l2": 0.0}), ("elastic_net", {"l1": -0.1}), ("l1", {"lambda": 0.1}),
])
def test_invalid_values_fail_at_validation(name, fields):
    with pytest.raises(ValidationError):
        REGULARIZERS.create({"name": name, **fields})


def test_elastic_net_error_message():
    with pytest.raises(ValidationError, match="'l1' and 'l2' parameters of ElasticNet must not both be 0"):
        ElasticNet(l1=0.0, l2=0.0)


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_registry_round_trip(name):
    reg = REGULARIZERS.create({"name": name, "target": "activity", "layers": ["1"]})
    dumped = reg.model_dump()
    assert dumped["name"] == name
    assert REGULARIZERS.create(dumped) == reg
    assert REGULARIZERS.get(name).describe()


def test_nested_layer_selection_counts_each_parameter_once():
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 1))
    penalty = L1(strength=1.0, layers=["0", "0.0"]).attach(model)
    assert penalty.selected == ("0.0.weight",)
    assert penalty.value().item() == pytest.approx(model[0][0].weight.detach().abs().sum().item())
