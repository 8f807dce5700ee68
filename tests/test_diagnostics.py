"""Diagnostics: probe statistics against hand computations, the callback against a manual loop, the record's
round trip, the rules on synthetic records, and the report's table and page."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F

from trainlab.callbacks import Callback
from trainlab.data import Data
from trainlab.diagnostics import (
    LAYER_FIELDS,
    PARAM_FIELDS,
    SATURATION_MARGIN,
    SYMMETRY_TOL,
    Diagnostics,
    DiagnosisReport,
    DiagnosticsRecord,
    Finding,
    diagnose,
    find_problems,
    probe_forward,
)
from trainlab.diagnostics.figures import plot_activation_histograms, record_figures
from trainlab.trainer import Trainer


# --- probes ---------------------------------------------------------------------------------------------------------

def test_probe_forward_matches_hand_computation():
    lin = nn.Linear(3, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[4.0, 0, 0], [0, 1, 0], [0, 0, -1], [-9, -9, -9]]))
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.Sigmoid())
    x = torch.tensor([[1.0, 0.5, -0.5], [2.0, -1.0, 0.5]])
    stats = probe_forward(model, x, bins=4)
    assert list(stats) == ["1"]
    s = stats["1"]
    y = torch.sigmoid(x @ lin.weight.T).detach().numpy()
    assert s.kind == "Sigmoid" and s.units == 4 and s.dead is None
    assert s.mean == pytest.approx(y.mean(), rel=1e-6)
    assert s.std == pytest.approx(y.std(), rel=1e-5)
    near = (y <= SATURATION_MARGIN) | (y >= 1 - SATURATION_MARGIN)
    assert s.saturated == pytest.approx(near.mean())
    assert s.hist_range == (0.0, 1.0)
    np.testing.assert_array_equal(s.hist, np.histogram(y, bins=4, range=(0, 1))[0])


def test_unbounded_histogram_spans_the_batch_and_counts_every_value():
    model = nn.Sequential(nn.Linear(5, 7), nn.GELU())
    x = torch.randn(11, 5, generator=torch.Generator().manual_seed(0))
    s = probe_forward(model, x, bins=6)["1"]
    y = model(x).detach().numpy()
    assert s.saturated is None and s.dead is None
    assert s.hist_range[0] == pytest.approx(y.min()) and s.hist_range[1] == pytest.approx(y.max())
    assert s.hist.sum() == y.size
    np.testing.assert_array_equal(s.hist, np.histogram(y, bins=6, range=(y.min(), y.max()))[0])


def test_dead_units_are_counted_per_unit_not_per_value():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        # unit 0: always negative (dead); unit 1: positive for one sample only (alive); unit 2: always positive.
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-2.0, 0.0]])
    s = probe_forward(nn.Sequential(lin, nn.ReLU()), x)["1"]
    assert (s.dead, s.units) == (1, 3)
    assert s.dead_fraction == pytest.approx(1 / 3)


def test_dead_channels_of_a_conv_output_need_zero_at_every_position():
    conv = nn.Conv1d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0]], [[0.0]]]))
        conv.bias.copy_(torch.tensor([0.0, -1.0]))
    x = torch.tensor([[[-1.0, -2.0, 3.0]], [[-1.0, -1.0, -1.0]]])  # channel 0 is positive at one position only
    s = probe_forward(nn.Sequential(conv, nn.ReLU()), x)["1"]
    assert (s.dead, s.units) == (1, 2)


def test_a_reused_module_and_a_model_without_activations():
    act = nn.Tanh()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(3, 3), nn.Linear(3, 2), act

        def forward(self, x):
            return self.b(self.act(self.act(self.a(x))))

    assert list(probe_forward(Twice(), torch.randn(4, 3))) == ["act", "act#2"]

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(self.a(x).clamp(min=0))  # no activation module or function: the layers are probed

    stats = probe_forward(Linear(), torch.randn(4, 3))
    assert list(stats) == ["a", "b"] and stats["a"].kind == "Linear" and stats["a"].units == 5


class _Functional(nn.Module):
    """Linear layers with the activations applied as functions, in every spelling torch offers."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(6))

    def forward(self, x):
        a, b, c, d, e, f = self.layers
        h = torch.sigmoid(a(x))
        h = F.relu(b(h))  # F.relu calls torch.relu inside: one call, not two
        h = c(h).tanh()
        h = F.leaky_relu(d(h), 0.1)
        h = e(h).relu()
        return F.gelu(f(h))


class _Modules(nn.Module):
    """The same network as _Functional with activation modules."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(6))
        self.acts = nn.ModuleList([nn.Sigmoid(), nn.ReLU(), nn.Tanh(), nn.LeakyReLU(0.1), nn.ReLU(), nn.GELU()])

    def forward(self, x):
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return x


def test_probe_forward_on_a_functional_model_returns_the_activation_outputs():
    torch.manual_seed(0)
    functional, modules = _Functional(), _Modules()
    with torch.no_grad():
        functional.layers[1].bias.fill_(-5.0)  # most units of relu#1 die
    modules.layers.load_state_dict(functional.layers.state_dict())
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    got, want = probe_forward(functional, x, bins=8), probe_forward(modules, x, bins=8)
    assert list(got) == ["sigmoid#1", "relu#1", "tanh#1", "leaky_relu#1", "relu#2", "gelu#1"]
    assert [s.kind for s in got.values()] == ["Sigmoid", "ReLU", "Tanh", "LeakyReLU", "ReLU", "GELU"]
    for g, w in zip(got.values(), want.values()):
        assert (g.kind, g.mean, g.std, g.saturated, g.dead, g.units, g.hist_range) == \
            (w.kind, w.mean, w.std, w.saturated, w.dead, w.units, w.hist_range)
        np.testing.assert_array_equal(g.hist, w.hist)
    h = torch.sigmoid(functional.layers[0](x)).detach().numpy()
    assert got["sigmoid#1"].mean == pytest.approx(h.mean(), rel=1e-6)
    near = (h <= SATURATION_MARGIN) | (h >= 1 - SATURATION_MARGIN)
    assert got["sigmoid#1"].saturated == pytest.approx(near.mean())
    r = F.relu(functional.layers[1](torch.tensor(h))).detach().numpy()
    assert got["relu#1"].dead == int((r.max(0) <= 0).sum()) > 0


def test_activation_modules_are_probed_and_functional_calls_beside_them_are_not_counted_again():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

        def forward(self, x):
            return torch.sigmoid(self.net(x))

    assert list(probe_forward(Mixed(), torch.randn(5, 3))) == ["net.1"]


def test_probe_forward_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'bins'"):
        probe_forward(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), torch.randn(3, 2), bins=1)
    with pytest.raises(ValueError, match="nothing to probe"):
        probe_forward(nn.Sequential(nn.Flatten()), torch.randn(3, 2))


# --- the callback ---------------------------------------------------------------------------------------------------

def _data(n: int = 48, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return Data(x, y, x[:8], y[:8], x[:0], y[:0], "classification", 2)


class _WeightLog(Callback):
    """Keeps each step's weights before and after the optimizer step, and the gradients."""

    def __init__(self):
        self.before, self.after, self.grads = [], [], []

    def on_step_start(self, trainer):
        self.before.append([p.detach().clone() for p in trainer.model.parameters()])

    def after_backward(self, trainer):
        self.grads.append([p.grad.detach().clone() for p in trainer.model.parameters()])

    def on_step_end(self, trainer):
        self.after.append([p.detach().clone() for p in trainer.model.parameters()])


def test_callback_samples_every_n_steps_and_matches_a_manual_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    log, probes = _WeightLog(), Diagnostics(every=3)
    trainer = Trainer(model, _data(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[log, probes],
                      epochs=2, batch_size=8)
    trainer.fit()
    r = probes.record()
    assert trainer.step == 12
    assert r.steps.tolist() == [0, 3, 6, 9]
    assert r.loss_steps.tolist() == list(range(12)) and np.isfinite(r.losses).all()
    assert r.params == ["0.weight", "0.bias", "2.weight", "2.bias"] and r.layers == ["1"]
    assert r.layer_stats.shape == (4, 1, len(LAYER_FIELDS)) and r.param_stats.shape == (4, 4, len(PARAM_FIELDS))
    for i, step in enumerate(r.steps):
        for j, name in enumerate(r.params):
            w0, w1, g = log.before[step][j], log.after[step][j], log.grads[step][j]
            assert r.param(name, "grad_norm")[i] == pytest.approx(g.norm().item(), rel=1e-5)
            assert r.param(name, "grad_std")[i] == pytest.approx(g.std(correction=0).item(), rel=1e-4, abs=1e-7)
            assert r.param(name, "weight_norm")[i] == pytest.approx(w1.norm().item(), rel=1e-5)
            assert r.param(name, "update_ratio")[i] == pytest.approx(((w1 - w0).norm() / w0.norm()).item(), rel=1e-4)
    assert np.isnan(r.param("0.bias", "row_spread")).all()
    assert len(r.history) == 2 and r.history[-1]["epoch"] == 2
    assert r.meta["task"] == "classification" and r.meta["num_classes"] == 2 and r.meta["probed"] == "activations"
    assert r.input_scales.shape == (4,)


class _Watched(nn.Module):
    """Sigmoid then ``relus`` ReLUs (a function of the step: a forward whose calls vary), applied as functions;
    notes at every forward (training or not) whether a TorchFunctionMode was active."""

    def __init__(self, relus=lambda step: 1):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
        self.relus, self.calls, self.mode_active = relus, 0, []

    def forward(self, x):
        self.mode_active.append((self.training, torch.overrides._is_torch_function_mode_enabled()))
        h = torch.sigmoid(self.a(x))
        for _ in range(self.relus(self.calls)):
            h = torch.relu(h)
        self.calls += self.training  # training forwards: the structure probe's one eval forward is not a step
        return self.b(h)


def test_functional_calls_are_captured_in_the_sampled_forwards_only_under_stable_names():
    torch.manual_seed(0)
    model, probes = _Watched(), Diagnostics(every=3)
    # A loss that calls an activation function: it is not part of the model and must not be probed.
    trainer = Trainer(model, _data(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[probes], epochs=2,
                      batch_size=8, loss_fn=lambda out, y: F.cross_entropy(torch.sigmoid(out), y))
    trainer.fit()
    r = probes.record()
    training = [active for train, active in model.mode_active if train]
    assert training == [step % 3 == 0 for step in range(12)]
    # The one forward that reads the model's structure (eval mode, step 0) captures calls; validation never does.
    assert model.mode_active[0] == (False, True)
    assert not any(active for train, active in model.mode_active[1:] if not train)
    assert r.meta["probed"] == "functional" and "notes" not in r.meta
    assert r.layers == ["sigmoid#1", "relu#1"] and r.layer_kinds == ["Sigmoid", "ReLU"]
    assert np.isfinite(r.layer_stats[:, :, LAYER_FIELDS.index("mean")]).all()
    assert r.layer("relu#1", "units").tolist() == [6] * 4


def test_a_forward_whose_activation_calls_vary_gets_a_note_not_a_crash():
    torch.manual_seed(0)
    model, probes = _Watched(relus=lambda step: 2 if step == 3 else 1), Diagnostics(every=3)
    Trainer(model, _data(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[probes], epochs=2,
            batch_size=8).fit()
    r = probes.record()
    assert r.layers == ["sigmoid#1", "relu#1"] and r.steps.tolist() == [0, 3, 6, 9]
    means = r.layer_stats[:, :, LAYER_FIELDS.index("mean")]
    assert np.isnan(means[1]).all() and np.isfinite(means[[0, 2, 3]]).all()
    assert np.isfinite(r.param_stats[1, :, PARAM_FIELDS.index("grad_norm")]).all()
    (note,) = r.meta["notes"]
    assert "1 of 4 sampled steps (the first at step 3)" in note and "relu#2" in note
    report = DiagnosisReport(find_problems(r), r)
    console = Console(record=True, width=400)
    report.render(console)
    assert "relu#2" in console.export_text()
    assert "relu#2 (6 units)" in report.to_html()


def test_record_round_trips_through_npz_and_json(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    probes = Diagnostics(every=2, out_dir=tmp_path)
    Trainer(model, _data(), torch.optim.Adam(model.parameters()), callbacks=[probes], epochs=1, batch_size=8).fit()
    loaded = DiagnosticsRecord.load(tmp_path)
    r = probes.record()
    for key in ("steps", "layer_stats", "hists", "hist_ranges", "param_stats", "losses", "input_scales"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(r, key))
    assert (loaded.layers, loaded.params, loaded.param_shapes) == (r.layers, r.params, r.param_shapes)
    assert loaded.history == r.history and loaded.meta == r.meta
    assert loaded.stats_at(2)["1"].saturated == r.stats_at(2)["1"].saturated
    with pytest.raises(ValueError, match="not sampled"):
        r.stats_at(1)
    with pytest.raises(ValueError, match="No diagnostics record"):
        DiagnosticsRecord.load(tmp_path / "missing")


def test_zero_init_rows_stay_identical_and_are_found():
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 2))
    for p in model.parameters():
        nn.init.zeros_(p)
    report = diagnose(model, (torch.randn(40, 4), torch.randint(0, 2, (40,))), steps=20, batch_size=8)
    assert report.top.code == "symmetric_units" and report.top.layer == "0.weight"
    assert report.record.param("0.weight", "row_spread").max() < SYMMETRY_TOL


def test_diagnostics_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'every'"):
        Diagnostics(every=0)
    with pytest.raises(ValueError, match="'margin'"):
        Diagnostics(margin=0.7)


def test_tensorboard_export_needs_tensorboard(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
            Diagnostics(tensorboard_dir=tmp_path)
        return
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    Trainer(model, _data(), torch.optim.Adam(model.parameters()), callbacks=[Diagnostics(2, tensorboard_dir=tmp_path)],
            epochs=1, batch_size=8).fit()
    assert any(tmp_path.iterdir())


# --- rules on synthetic records -------------------------------------------------------------------------------------

def _record(losses=(), history=(), scales=(1.0,), num_classes=10) -> DiagnosticsRecord:
    n = len(losses)
    return DiagnosticsRecord(
        layers=[], layer_kinds=[], params=[], param_shapes=[], steps=np.zeros(0, dtype=np.int64),
        layer_stats=np.zeros((0, 0, len(LAYER_FIELDS))), hists=np.zeros((0, 0, 4)), hist_ranges=np.zeros((0, 0, 2)),
        param_stats=np.zeros((0, 0, len(PARAM_FIELDS))), loss_steps=np.arange(n), losses=np.asarray(losses, float),
        input_scales=np.asarray(scales, float), history=list(history),
        meta={"task": "classification", "num_classes": num_classes})


def _codes(record: DiagnosticsRecord) -> list[str]:
    return [f.code for f in find_problems(record)]


def test_loss_rules():
    t = np.arange(200)
    assert _codes(_record(2.3 * np.exp(-t / 50))) == []
    assert _codes(_record(2.3 - 0.0003 * t)) == ["lr_too_low"]
    assert _codes(_record(2.3 * np.exp(-t / 20) + 0.02 * np.maximum(t - 100, 0))) == ["lr_too_high"]
    assert _codes(_record(2.3 * np.exp(t / 50))) == ["divergence"]
    nan = _record(np.where(t < 120, 2.0, np.nan))
    assert _codes(nan) == ["divergence"] and find_problems(nan)[0].step == 120


def _epochs(train, val):
    return [{"epoch": i + 1, "step": 10 * (i + 1), "train_loss": a, "val_loss": b}
            for i, (a, b) in enumerate(zip(train, val))]


def test_overfitting_and_underfitting_rules():
    falling = 2.3 * np.exp(-np.arange(200) / 40)
    overfit = _epochs([1.0, 0.5, 0.3, 0.2, 0.1, 0.05], [1.0, 0.7, 0.6, 0.65, 0.75, 0.9])
    found = find_problems(_record(falling, overfit))
    assert [f.code for f in found] == ["overfitting"] and found[0].step == 30
    healthy = _epochs([1.0, 0.5, 0.3, 0.2, 0.1, 0.05], [1.0, 0.6, 0.5, 0.45, 0.44, 0.44])
    assert _codes(_record(falling, healthy)) == []
    plateau = _epochs([2.0, 1.9, 1.8, 1.8, 1.8, 1.8], [2.0, 1.9, 1.8, 1.8, 1.8, 1.8])
    assert _codes(_record(2.3 - 0.5 * (1 - np.exp(-np.arange(200) / 20)), plateau)) == ["underfitting"]
    # A high loss that climbs back up is no plateau: "train longer" would be the wrong advice.
    climbing = _epochs([2.0, 1.5, 1.2, 1.3, 1.45, 1.6], [2.0, 1.5, 1.2, 1.3, 1.45, 1.6])
    assert "underfitting" not in _codes(_record(2.3 - 0.5 * (1 - np.exp(-np.arange(200) / 20)), climbing))


def test_unscaled_inputs_and_sorting_by_severity():
    t = np.arange(200)
    assert _codes(_record(2.3 * np.exp(-t / 50), scales=[1.0, 0.5, 20.0])) == ["unscaled_inputs"]
    found = find_problems(_record(2.3 - 0.0003 * t, scales=[1.0, 500.0]))
    assert [(f.code, f.severity) for f in found] == [("unscaled_inputs", "error"), ("lr_too_low", "warning")]


# --- report ---------------------------------------------------------------------------------------------------------

def test_report_renders_a_table_and_an_escaped_self_contained_page(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    report = diagnose(model, _data(64), steps=24, batch_size=8)
    report.findings.insert(0, Finding("divergence", "<script>alert(1)</script>", 3, "error", "a < b & c", "lower lr"))
    console = Console(record=True, width=160)
    report.render(console)
    text = console.export_text()
    assert "divergence" in text and "lower lr" in text
    page = report.write_html(tmp_path / "doctor.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &lt; b &amp; c" in page
    assert page.count("data:image/png;base64,") == len(record_figures(report.record)) == 5
    assert "src='http" not in page
    # Readable at laptop width: the page scales to the screen and the wide findings table scrolls in its own box.
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert '<div class="scroll"><table class="text">' in page and ".scroll{overflow-x:auto}" in page
    empty = DiagnosisReport([], report.record)
    console = Console(record=True, width=120)
    empty.render(console)
    assert "No problems found" in console.export_text()


def test_probe_histogram_figure_has_one_panel_per_layer():
    model = nn.Sequential(*(m for _ in range(5) for m in (nn.Linear(100, 100), nn.Sigmoid())))
    stats = probe_forward(model, torch.randn(256, 100, generator=torch.Generator().manual_seed(0)))
    fig = plot_activation_histograms({"N(0,1) input": stats})
    assert sum(ax.has_data() for ax in fig.axes) == 5


def test_diagnose_takes_arrays_and_rejects_other_data():
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    report = diagnose(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)), (x, x[:, :1] * 2), steps=12,
                      batch_size=8, val_fraction=0.2)
    assert report.record.meta["task"] == "regression" and len(report.record.losses) == 12
    with pytest.raises(TypeError, match="'data' argument"):
        diagnose(nn.Linear(3, 1), [x, x])
    with pytest.raises(ValueError, match="'steps'"):
        diagnose(nn.Linear(3, 1), (x, x), steps=0)
    assert math.isfinite(report.final["train_loss"])


def test_an_unused_parameter_is_not_an_exploding_gradient():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.spare = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 6)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    report = diagnose(Unused(), _data(64), steps=24, batch_size=8)
    assert np.isnan(report.record.param("spare.weight", "grad_norm")).all()
    assert "exploding_gradients" not in [f.code for f in report.findings]


def test_a_model_without_probed_layers_still_gets_a_page_and_a_parameterless_one_a_clear_error(tmp_path):
    class Raw(nn.Module):
        # Weights used through matmul, a ReLU written as a clamp: nothing to hook or capture.
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(4, 6) * 0.5)
            self.w2 = nn.Parameter(torch.randn(6, 2) * 0.5)

        def forward(self, x):
            return (x @ self.w1).clamp(min=0) @ self.w2

    torch.manual_seed(0)
    report = diagnose(Raw(), _data(64), steps=24, batch_size=8)
    assert report.record.layers == [] and len(report.record.steps) > 0
    assert set(record_figures(report.record)) == {"Loss", "Gradient norms", "Update ratios"}
    page = report.write_html(tmp_path / "doctor.html").read_text()
    assert page.count("data:image/png;base64,") == 3

    class NoParams(nn.Module):
        def forward(self, x):
            return x[:, :2]

    with pytest.raises(ValueError, match="must have parameters"):
        diagnose(NoParams(), _data(64), steps=4)


def test_diagnose_rejects_a_regression_output_that_would_broadcast_against_the_targets():
    class Squeezed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 1)

        def forward(self, x):
            return self.a(x).squeeze(1)  # (N,) against (N, 1) targets: MSE would broadcast to (N, N)

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"outputs of shape \(2,\)"):
        diagnose(Squeezed(), (x, x[:, 0] * 2), steps=4, batch_size=8)
    # With its own loss the user decides what the shapes mean.
    report = diagnose(Squeezed(), (x, x[:, 0] * 2), lambda out, y: ((out - y[:, 0]) ** 2).mean(), steps=4,
                      batch_size=8, val_fraction=0.2)
    assert len(report.record.losses) == 4  # one epoch: 32 training samples, 8 per batch


# --- the report's repr, notebook HTML and page shell ----------------------------------------------------------------

def _report_with_findings() -> DiagnosisReport:
    r = _record(2.3 - 0.0003 * np.arange(200), scales=[1.0, 500.0])
    findings = find_problems(r) + [Finding("saturation", "net.1", 7, "warning",
                                           "most outputs sit at a bound. Second sentence\nwith a line break", "fix")]
    return DiagnosisReport(findings, r)


def test_repr_is_one_line_per_finding_and_never_the_arrays():
    report = _report_with_findings()
    lines = repr(report).splitlines()
    assert len(report.findings) == 3 and len(lines) == 1 + 3
    assert lines[0] == "3 finding(s) in 200 steps (trainlab doctor):"
    assert lines[1].split()[:2] == ["error", "unscaled_inputs"]
    assert lines[3] == "  warning saturation at net.1, step 7: most outputs sit at a bound."
    assert "[" not in repr(report) and "array(" not in repr(report)
    assert "Second sentence" not in repr(report)
    empty = DiagnosisReport([], report.record)
    assert repr(empty) == "No problems found in 200 steps (trainlab doctor)."


def test_repr_html_is_the_escaped_findings_table_without_figures():
    report = _report_with_findings()
    report.findings.append(Finding("divergence", "<b>x</b>", 3, "error", "<script>alert(1)</script>", "lower lr"))
    fragment = report._repr_html_()
    assert "<script>" not in fragment and "&lt;script&gt;alert(1)&lt;/script&gt;" in fragment
    assert "&lt;b&gt;x&lt;/b&gt;" in fragment
    assert fragment.count("<tr>") == 1 + 4  # the header and one row per finding
    assert "data:image" not in fragment and "<html" not in fragment and "<style" not in fragment
    assert "3 finding(s)" not in fragment and "4 finding(s) in 200 steps" in fragment


def test_the_doctor_page_and_the_study_pages_share_one_page_shell(tmp_path):
    from trainlab import html
    from trainlab.report import StudyOutcome, index_page, study_page

    doctor_page = _report_with_findings().to_html()
    outcome = StudyOutcome("demo", "Demo", "Which?", "quick", [0], [], [], [])
    for page in (doctor_page, study_page(outcome, tmp_path), index_page([outcome])):
        assert page.startswith("<!DOCTYPE html>") and page.count(html.CSS) == 1
    assert doctor_page.count("data:image/png;base64,") == 1  # only the loss: the record sampled no step


# --- defaults, step counting and structure --------------------------------------------------------------------------

def test_diagnose_batches_and_splits_with_the_data_config_defaults():
    import inspect

    from trainlab.data import DataConfig

    parameters = inspect.signature(diagnose).parameters
    for name in ("batch_size", "val_fraction"):
        assert parameters[name].default == DataConfig.model_fields[name].default


def test_doctor_takes_a_run_config_counts_steps_from_the_config_and_loads_the_data_once(monkeypatch, tiny):
    import trainlab.data
    from trainlab.config import load_config
    from trainlab.diagnostics import doctor

    loads = []
    real = trainlab.data.load_data
    monkeypatch.setattr(trainlab.data, "load_data", lambda cfg: loads.append(cfg) or real(cfg))
    config = load_config(tiny)
    per_epoch = trainlab.data.steps_per_epoch(config.data)
    report = doctor(config, steps=2 * per_epoch + 1)
    assert len(loads) == 1  # by the trainer; the steps were counted from the dataset's size
    assert len(report.record.losses) == 3 * per_epoch and report.record.meta["every"] == max(1, 3 * per_epoch // 50)
    with pytest.raises(TypeError, match="must be a RunConfig"):
        doctor(tiny)


def test_functional_activations_are_the_registered_ones_with_their_modules():
    from trainlab.activations import ACTIVATIONS
    from trainlab.diagnostics import FUNCTIONAL_ACTIVATIONS, probed_modules

    assert {name for name, _ in FUNCTIONAL_ACTIVATIONS.values()} == set(ACTIVATIONS)
    assert all(cls is ACTIVATIONS.get(name).torch_module for name, cls in FUNCTIONAL_ACTIVATIONS.values())
    # ReLU6 is not a registered activation: a model that uses it is probed at its Linear layers.
    assert F.relu6 not in FUNCTIONAL_ACTIVATIONS
    assert probed_modules(nn.Sequential(nn.Linear(2, 3), nn.ReLU6(), nn.Linear(3, 1)))[0] == "layers"


def _imports(path, package: str) -> set[str]:
    """Every trainlab module a source file imports, at any depth, except under ``if TYPE_CHECKING:``."""
    import ast

    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m.split(".")[0] == "trainlab"}


def test_the_diagnostics_package_has_no_import_cycle():
    from pathlib import Path

    import trainlab

    root = Path(trainlab.__file__).parent
    files = {".".join(("trainlab", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    graph = {m: _imports(p, m if p.name == "__init__.py" else m.rpartition(".")[0]) & set(files)
             for m, p in files.items()}

    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    mine = [m for m in graph if m.startswith("trainlab.diagnostics") or m in ("trainlab.html", "trainlab.report")]
    assert {"trainlab.diagnostics.probes", "trainlab.diagnostics.figures", "trainlab.html"} <= set(mine)
    assert [m for m in mine if reaches(m, m, set())] == []
    assert "trainlab.diagnostics.doctor" not in graph["trainlab.diagnostics.figures"]


# --- the rules added for the doctor issue, on synthetic records ------------------------------------------------------

def _with(record: DiagnosticsRecord, **meta) -> DiagnosticsRecord:
    record.meta.update(meta)
    return record


def _event(name, kind, weight=False, affine=True, dropout=None):
    return {"name": name, "kind": kind, "weight": weight, "affine": affine, "dropout": dropout}


def test_oscillating_loss_needs_repeated_large_swings():
    t = np.arange(400)
    falling = 2.3 * np.exp(-t / 60)
    assert "oscillating_loss" not in _codes(_record(falling))
    # Small late wiggles (a few percent of the start) are noise, not oscillation.
    assert "oscillating_loss" not in _codes(_record(falling + 0.03 * np.sin(t / 6)))
    swinging = 1.0 + 0.8 * np.sign(np.sin(t / 12))
    found = find_problems(_record(swinging))
    assert "oscillating_loss" in [f.code for f in found]
    assert "reversed direction" in next(f for f in found if f.code == "oscillating_loss").evidence


def test_setup_rules_name_frozen_and_missing_parameters():
    r = _with(_record(2.3 * np.exp(-np.arange(50) / 20)), frozen=["0.weight"], not_in_optimizer=["2.weight"],
              param_sizes={"0.weight": 640, "0.bias": 10, "2.weight": 100})
    found = {f.code: f for f in find_problems(r)}
    assert found["missing_from_optimizer"].severity == "error" and found["missing_from_optimizer"].layer == "2.weight"
    assert "100 of 750" in found["missing_from_optimizer"].evidence
    assert found["frozen_parameters"].severity == "warning" and "640 of 750" in found["frozen_parameters"].evidence
    assert find_problems(r)[0].code == "missing_from_optimizer"


def test_output_rules_match_the_output_to_the_loss():
    probs = {"min": 0.01, "max": 0.9, "columns": 10, "row_sum_error": 1e-7, "logsumexp_error": 2.0}
    logits = {"min": -3.0, "max": 4.0, "columns": 10, "row_sum_error": 5.0, "logsumexp_error": 3.0}
    seq = [_event("0", "Linear", weight=True), _event("1", "Softmax", affine=False)]
    r = _with(_record(), loss="CrossEntropyLoss", output=probs, sequence=seq)
    assert _codes(r) == ["loss_mismatch"] and find_problems(r)[0].layer == "1"
    assert _codes(_with(_record(), loss="CrossEntropyLoss", output=logits, sequence=seq[:1])) == []
    assert _codes(_with(_record(), loss="NLLLoss", output=logits, sequence=seq[:1])) == ["loss_mismatch"]
    # Zero outputs (a zero-initialized net) are not probabilities.
    zeros = dict(probs, min=0.0, max=0.0, row_sum_error=1.0)
    assert _codes(_with(_record(), loss="CrossEntropyLoss", output=zeros, sequence=seq[:1])) == []
    squashed = _with(_record(), task="regression", loss="MSELoss", output=dict(probs, columns=1),
                     sequence=[_event("0", "Linear", weight=True), _event("1", "Sigmoid", affine=False)],
                     target_min=[-2.0], target_max=[3.0], target_mean=[0.0], target_std=[1.0])
    assert _codes(squashed) == ["loss_mismatch"] and "cannot output" in find_problems(squashed)[0].evidence


def test_linear_stack_needs_weight_layers_with_only_affine_modules_between():
    stacked = [_event("a", "Linear", True), _event("d", "Dropout", dropout=0.1), _event("b", "Linear", True)]
    assert _codes(_with(_record(), sequence=stacked)) == ["linear_stack"]
    separated = [_event("a", "Linear", True), _event("relu()", "ReLU", affine=False), _event("b", "Linear", True)]
    assert _codes(_with(_record(), sequence=separated)) == []


def test_target_label_dropout_and_update_ratio_rules():
    regression = dict(task="regression", target_mean=[2000.0], target_std=[300.0])
    found = find_problems(_with(_record(), **regression))
    assert [(f.code, f.severity) for f in found] == [("unscaled_targets", "error")]
    assert _codes(_with(_record(), task="regression", target_mean=[0.1], target_std=[1.2])) == []
    rows = [{"epoch": i + 1, "step": 10 * (i + 1), "train_loss": 2.3 - 0.2 * i, "val_loss": 2.4 + 0.05 * i,
             "train_acc": 0.1 + 0.08 * i, "val_acc": 0.1 + 0.005 * (i % 2)} for i in range(6)]
    noise = _with(_record(history=rows), majority_share=0.1, val_size=300)
    assert "labels_no_signal" in _codes(noise)
    learned = [dict(h, val_acc=0.1 + 0.08 * i) for i, h in enumerate(rows)]
    assert "labels_no_signal" not in _codes(_with(_record(history=learned), majority_share=0.1, val_size=300))
    heavy = [{"epoch": 1, "step": 10, "train_loss": 2.8, "val_loss": 2.1}]
    seq = [_event("d", "Dropout", dropout=0.8)]
    assert _codes(_with(_record(history=heavy), sequence=seq)) == ["dropout_too_high"]
    assert _codes(_with(_record(history=heavy), sequence=[_event("d", "Dropout", dropout=0.3)])) == []


def test_large_update_ratios_mean_the_lr_is_too_high():
    def record(ratio):
        r = _record(2.3 * np.exp(-np.arange(100) / 30))
        stats = np.zeros((5, 1, len(PARAM_FIELDS)))
        stats[:, 0, PARAM_FIELDS.index("update_ratio")] = ratio
        stats[:, 0, PARAM_FIELDS.index("row_spread")] = 1.0  # distinct rows
        return DiagnosticsRecord(**{**r.__dict__, "params": ["w"], "param_shapes": [(4, 4)],
                                    "steps": np.arange(5) * 20, "param_stats": stats})

    assert _codes(record(1e-3)) == []
    found = find_problems(record(3e-2))
    assert [f.code for f in found] == ["lr_too_high"] and "30x too large" in found[0].evidence


def test_doctor_budget_defaults_to_a_few_hundred_steps_and_full_keeps_the_config_epochs(tiny):
    from trainlab.config import load_config
    from trainlab.data import steps_per_epoch
    from trainlab.diagnostics import DEFAULT_STEPS
    from trainlab.diagnostics.doctor import doctor_epochs

    config = load_config({**tiny, "epochs": 500})
    per_epoch = steps_per_epoch(config.data)
    assert doctor_epochs(config) == math.ceil(DEFAULT_STEPS / per_epoch)
    assert doctor_epochs(config, full=True) == 500 and doctor_epochs(config, 1) == 1
    with pytest.raises(ValueError, match="The 'steps' parameter of doctor must be an int >= 1. Got 0 instead."):
        doctor_epochs(config, 0)
    with pytest.raises(ValueError, match="exclude each other"):
        doctor_epochs(config, 10, full=True)


def test_the_structure_probe_sees_modules_and_functional_calls_in_order():
    from trainlab.diagnostics.probes import describe_model, locate_nonfinite

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return torch.softmax(self.b(F.relu(self.a(x))), dim=1)

    net = Net()
    seen = describe_model(net, torch.randn(5, 3))
    assert [e["name"] for e in seen["sequence"]] == ["a", "relu()", "b", "softmax()"]
    assert seen["output"]["row_sum_error"] < 1e-5 and net.training
    with torch.no_grad():
        net.b.weight[0, 0] = float("inf")
    where = locate_nonfinite(net, torch.ones(5, 3))
    assert where["params"] == ["b.weight"] and where["layer"] == "b" and where["input_finite"]


def test_png_base64_crops_to_the_drawing_only_when_asked():
    import base64
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from trainlab.figures import png_base64

    def size(tight: bool) -> tuple[int, int]:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot([0, 1], [0, 1])
        fig.tight_layout()
        return Image.open(io.BytesIO(base64.b64decode(png_base64(fig, tight=tight)))).size

    assert size(tight=False) == (650, 400)  # the whole canvas at 100 dpi
    width, height = size(tight=True)
    assert width < 650 and height < 400  # the canvas's empty margins cropped


def test_page_imports_run_beside_the_block_and_a_failing_one_is_left_to_the_page(monkeypatch):
    import sys

    from trainlab.diagnostics.doctor import _importing_in_background

    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    ran = []
    with _importing_in_background("colorsys"):
        ran.append(True)
    assert ran and "colorsys" in sys.modules  # imported, and waited for, by the end of the block
    with _importing_in_background("trainlab_no_such_module"):
        ran.append(True)
    assert len(ran) == 2 and "trainlab_no_such_module" not in sys.modules


@pytest.mark.parametrize("eps,classes", [(0.1, 10), (0.3, 3), (0.05, 2)])
def test_smoothing_floor_is_the_least_loss_torch_gives_against_smoothed_targets(eps, classes):
    from trainlab.diagnostics.rules import smoothing_floor

    loss = nn.CrossEntropyLoss(label_smoothing=eps)
    target = torch.tensor([0])
    best = torch.full((1, classes), eps / classes)
    best[0, 0] += 1 - eps
    # The loss is smallest at logits = log of the smoothed target, and equal there to its entropy.
    assert loss(best.log(), target).item() == pytest.approx(smoothing_floor(eps, classes), rel=1e-6)
    for logits in torch.randn(20, 1, classes, generator=torch.Generator().manual_seed(0)) * 3:
        assert loss(logits, target).item() >= smoothing_floor(eps, classes) - 1e-6
    assert smoothing_floor(0.0, classes) == 0.0
