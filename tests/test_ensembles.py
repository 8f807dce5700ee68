from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config import load_config
from trainlab.data import load_data
from trainlab.ensembles import (METHODS, SWA, Ensemble, bootstrap_generator, bootstrap_indices, build_ensemble,
                                samme_update)

SMALL = {"seed": 0, "data": {"dataset": {"name": "moons", "n_samples": 300, "noise": 0.3}, "batch_size": 32},
         "model": {"name": "mlp", "depth": 1, "width": 16}, "optimizer": {"name": "adam", "lr": 0.02}, "epochs": 6}


class Fixed(nn.Module):
    """A 'member' whose logits are given."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_runs_and_gives_probabilities(method):
    config = load_config(SMALL)
    data = load_data(config.data)
    result = build_ensemble(config, method, 3, data=data)
    proba = result.predict_proba(data.x_test)
    assert proba.shape == (len(data.y_test), 2)
    assert torch.allclose(proba.sum(1), torch.ones(len(proba)), atol=1e-5)
    summary = result.evaluate(data, "test")
    assert 0.5 < summary["accuracy"] <= 1 and math.isfinite(summary["log_loss"])
    assert len(summary["member_accuracies"]) == len(result.members)
    assert summary["best_member_accuracy"] >= summary["mean_member_accuracy"]


def test_cnn1d_members_on_mnist1d():
    config = load_config({"data": {"dataset": {"name": "mnist1d", "num_samples": 600}},
                          "model": {"name": "cnn1d"}, "epochs": 1})
    result = build_ensemble(config, "averaging", 2)
    assert len(result.members) == 2


def test_bootstrap_draws_with_replacement_and_is_reproducible():
    n = 2000
    index = bootstrap_indices(n, bootstrap_generator(0, 0))
    assert len(index) == n and 0 <= int(index.min()) and int(index.max()) < n
    unique = len(torch.unique(index)) / n
    assert abs(unique - (1 - 1 / math.e)) < 0.03  # duplicates: about 63% of the samples appear
    assert torch.equal(index, bootstrap_indices(n, bootstrap_generator(0, 0)))
    assert not torch.equal(index, bootstrap_indices(n, bootstrap_generator(0, 1)))


def test_samme_alpha_and_weight_update_follow_the_formula():
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    wrong = torch.tensor([True, False, False, False])
    err, alpha, new = samme_update(weights, wrong, num_classes=3)
    assert err == pytest.approx(0.1)
    assert alpha == pytest.approx(math.log(0.9 / 0.1) + math.log(2))
    expected = torch.tensor([0.1 * math.exp(alpha), 0.2, 0.3, 0.4], dtype=torch.float64)
    assert torch.allclose(new, expected / expected.sum())
    # At err = 1 - 1/K a member is no better than chance: alpha = 0 and the weights stay.
    err, alpha, new = samme_update(torch.ones(3), torch.tensor([True, True, False]), num_classes=3)
    assert alpha == pytest.approx(0.0, abs=1e-12) and torch.allclose(new, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_hard_voting_ties_go_to_the_lowest_class():
    members = [Fixed([0.0, 1.0, 0.0]), Fixed([0.0, 0.0, 1.0]), Fixed([1.0, 0.0, 0.0]), Fixed([0.0, 1.0, 0.0]),
               Fixed([0.0, 0.0, 1.0]), Fixed([1.0, 0.0, 0.0])]
    voting = Ensemble(members, torch.full((6,), 1 / 6, dtype=torch.float64), "voting", "hard")
    assert voting.predict(torch.zeros(4, 2)).tolist() == [0, 0, 0, 0]
    two = Ensemble(members[:2], torch.full((2,), 0.5, dtype=torch.float64), "voting", "hard")
    assert two.predict(torch.zeros(1, 2)).tolist() == [1]


def test_averaging_is_the_mean_of_member_probabilities():
    config = load_config(SMALL)
    data = load_data(config.data)
    result = build_ensemble(config, "averaging", 3, data=data)
    with torch.no_grad():
        mean = torch.stack([m(data.x_test).softmax(1) for m in result.members]).mean(0)
    assert torch.allclose(result.predict_proba(data.x_test), mean, atol=1e-6)


def test_snapshot_keeps_one_member_per_restart_cycle():
    config = load_config({**SMALL, "epochs": 9})
    result = build_ensemble(config, "snapshot", 3)
    assert len(result.members) == 3
    first = [p.detach().clone() for p in result.members[0].parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(first, result.members[1].parameters()))


def test_swa_weights_are_the_mean_of_the_snapshots_it_was_fed():
    from types import SimpleNamespace

    models = [nn.Linear(3, 2) for _ in range(4)]
    callback = SWA(start_epoch=2)
    callback.on_fit_start(SimpleNamespace(model=models[0]))
    for epoch, model in enumerate(models, start=1):
        callback.on_epoch_end(SimpleNamespace(model=model, epoch=epoch))
    assert int(callback.averaged.n_averaged) == 3
    for name, value in callback.averaged.module.named_parameters():
        mean = torch.stack([dict(m.named_parameters())[name] for m in models[1:]]).mean(0)
        assert torch.allclose(value, mean, atol=1e-6)


def test_bagging_beats_its_average_member_on_held_out_data():
    # Small, noisy training sets: each member overfits its own bootstrap, the average does not.
    config = load_config({"seed": 1, "data": {"dataset": {"name": "moons", "n_samples": 1000, "noise": 0.4},
                                              "train_size": 120, "batch_size": 32, "test_fraction": 0.5},
                          "model": {"name": "mlp", "depth": 2, "width": 64}, "optimizer": {"name": "adam", "lr": 0.01},
                          "epochs": 40})
    data = load_data(config.data)
    summary = build_ensemble(config, "bagging", 7, data=data).evaluate(data, "test")
    assert summary["accuracy"] > summary["mean_member_accuracy"]


@pytest.mark.parametrize("method,members,message", [
    ("bagginG", 3, "Did you mean 'bagging'"),
    ("bagging", 1, "The 'members' parameter must be an int >= 2"),
    ("bagging", True, "The 'members' parameter must be an int >= 2"),
])
def test_build_ensemble_rejects_bad_input(method, members, message):
    with pytest.raises(ValueError, match=message):
        build_ensemble(load_config(SMALL), method, members)


def test_regression_data_is_refused_naming_the_task():
    x = torch.randn(60, 3)
    y = x.sum(1, keepdim=True)
    from trainlab.data import data_from_arrays

    config = load_config(SMALL)
    data = data_from_arrays(x, y, config.data, task="regression")
    with pytest.raises(ValueError, match="regression task"):
        build_ensemble(config, "averaging", 2, data=data)


runner = CliRunner()


def test_cli_prints_a_table_and_writes_the_summary(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "ens"
    result = runner.invoke(app, ["ensemble", str(path), "--method", "averaging", "--members", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "average member" in result.output and "best member" in result.output
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["method"] == "averaging" and summary["members"] == 3
    as_json = runner.invoke(app, ["ensemble", str(path), "--method", "voting", "--members", "2", "--json",
                                  "--set", "epochs=2", "--out", str(tmp_path / "v")])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["method"] == "voting"


@pytest.mark.parametrize("args,regression,message", [
    (["--method", "baging"], False, "Did you mean 'bagging'"),
    (["--method", "bagging", "--members", "1"], False, "'members' parameter must be an int >= 2"),
    (["--method", "bagging"], True, "is a regression task"),
])
def test_cli_bad_input_exits_2_with_one_message(tmp_path, args, regression, message):
    config = dict(SMALL)
    if regression:
        rows = [f"{i % 7},{i % 5},{(i % 7) * 0.5 + 0.25}" for i in range(60)]
        (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
        config["data"] = {"dataset": {"name": "csv", "path": str(tmp_path / "t.csv"), "task": "regression"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["ensemble", str(path), *args, "--out", str(tmp_path / "e")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert result.output.count("error:") == 1
