"""Repair: the fixes each problem tries, the paired decision, and repairs end to end on tiny budgets."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.config import load_config
from trainlab.diagnostics import FIXES, PRIORITY, fixes_for, repair
from trainlab.diagnostics.repair import DEFAULT_SEEDS

DIGITS = {"dataset": "digits", "batch_size": 64}


def test_every_fixable_problem_is_a_known_one_and_fixes_are_valid_overrides():
    assert set(FIXES) <= set(PRIORITY)
    config = load_config({"data": DIGITS, "model": {"name": "mlp", "depth": 2, "width": 32, "init": "zeros"},
                          "optimizer": {"name": "adam", "lr": 0.1}})
    for code in FIXES:
        for overrides in fixes_for(code, config):
            assert load_config(config, overrides) != config  # each one validates and changes something
    assert fixes_for("dead_units", config)[0] == {"optimizer.lr": 0.01}
    assert fixes_for("symmetric_units", config) == [{"model.init.name": "auto"}]
    for code in ("loss_mismatch", "linear_stack", "labels_no_signal", "unscaled_targets"):
        assert fixes_for(code, config) == []  # a user's code or data: no config override fixes it


def test_repair_rejects_bad_arguments():
    with pytest.raises(TypeError, match="must be a RunConfig"):
        repair({"data": DIGITS})
    config = load_config({"data": DIGITS})
    with pytest.raises(ValueError, match="The 'seeds' parameter of repair must be an int >= 3. "):
        repair(config, seeds=2)
    with pytest.raises(ValueError, match="The 'steps' parameter of doctor must be an int >= 1. Got 0 instead."):
        repair(config, steps=0)


# config, steps, the problem, the override the repair must keep
REPAIRS = {
    "dead_relu": ({"data": DIGITS, "model": {"name": "mlp", "depth": 2, "width": 64},
                   "optimizer": {"name": "adam", "lr": 0.1}}, 150, "dead_units", {"optimizer.lr": 0.01}),
    "zero_init": ({"data": DIGITS, "model": {"name": "mlp", "depth": 2, "width": 32, "activation": "tanh",
                                             "init": "zeros"}}, 150, "symmetric_units", {"model.init.name": "auto"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REPAIRS))
def test_repair_keeps_the_fix_with_a_significant_gain_and_writes_the_repaired_config(name, tmp_path):
    raw, steps, problem, kept = REPAIRS[name]
    config = load_config(raw)
    report = repair(config, steps, out_dir=tmp_path)
    assert report.diagnosis.top.code == problem
    first = next(a for a in report.attempts if a.problem == problem)
    assert first.significant and first.overrides == kept, report.lines()
    assert first.comparison.a.n == DEFAULT_SEEDS and first.comparison.test == "paired t"
    assert first.comparison.ci_high < 0 and first.comparison.p < 0.05  # log val_loss fell, CI excludes 0
    assert report.fixed and report.overrides.items() >= kept.items()
    repaired = load_config(tmp_path / "repaired.yaml")
    assert repaired == load_config(config, report.overrides) and repaired.epochs == config.epochs
    page = (tmp_path / "doctor.html").read_text()
    assert "<h2>Repair</h2>" in page and "kept" in page and page.count("data:image/png;base64,") >= 2
    line = next(line for line in report.lines() if line.startswith(f"{problem} -> "))
    assert "geometric means" in line and "[" in line and "p = " in line


@pytest.mark.slow
def test_cli_doctor_repair_prints_problem_fix_effect_and_writes_repaired_yaml(tmp_path):
    from trainlab.cli import app

    result = CliRunner().invoke(app, ["doctor", "examples/sick_dead_relu.yaml", "--repair", "--steps", "150",
                                      "--seeds", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "dead_units -> optimizer.lr=0.01" in result.output and "paired seeds" in result.output
    repaired = yaml.safe_load((tmp_path / "repaired.yaml").read_text())
    assert repaired["optimizer"]["lr"] == 0.01
    bad = CliRunner().invoke(app, ["doctor", "examples/sick_dead_relu.yaml", "--steps", "10", "--full"])
    assert bad.exit_code == 2 and "exclude each other" in bad.output
