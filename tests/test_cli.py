from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app

runner = CliRunner()


def write(tmp_path, cfg, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_list_every_kind_and_one_kind():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("he_normal", "leaky_relu", "cnn1d", "elastic_net", "nesterov", "one_cycle", "mnist1d", "shift"):
        assert name in result.output
    only = runner.invoke(app, ["list", "optimizer"])
    assert "adamw" in only.output and "he_normal" not in only.output
    bad = runner.invoke(app, ["list", "optimiser"])
    assert bad.exit_code == 2 and "Did you mean 'optimizer'" in bad.output


def test_train_writes_a_run_directory_and_prints_json(tmp_path, tiny):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(write(tmp_path, tiny)), "--out", str(out), "--json", "--quiet",
                                 "--set", "epochs=2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_run"] == 2 and 0 <= summary["test_acc"] <= 1
    for name in ("config.yaml", "meta.json", "history.csv", "summary.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "meta.json").read_text())
    assert {"seed", "torch", "numpy", "trainlab", "threads"} <= set(meta)
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")


def test_train_with_probes_stores_the_diagnostics_record(tmp_path, tiny):
    from trainlab.diagnostics import DiagnosticsRecord

    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(write(tmp_path, tiny)), "--out", str(out), "--quiet", "--probes"])
    assert result.exit_code == 0, result.output
    record = DiagnosticsRecord.load(out)
    assert len(record.steps) > 0 and "blocks.0.act" in record.layers


@pytest.mark.parametrize("patch,sets,message", [
    ({"optimizer": {"name": "adamx"}}, [], "Did you mean 'adam"),
    ({"optimizer": {"name": "adam", "lr": -0.1}}, [], "The 'lr' parameter of adam must be greater than 0"),
    ({}, ["model.dropout=1.0"], "The 'dropout' parameter of mlp must be less than 1"),
    ({"early_stopping": {"patience": -1}}, [], "error: early_stopping.patience: The 'patience' parameter of "
                                                "early_stopping must be greater than or equal to 0. Got -1 instead."),
    ({"epochs": "ten"}, [], "must be a valid integer"),
    ({"optimizer": {"name": "adam", "betas": 3}}, [], "error: optimizer.betas: The 'betas' parameter of adam must be "
                                                       "a valid tuple. Got 3 instead."),
    ({"colour": "blue"}, [], "RunConfig has no parameter 'colour'"),
    ({"model": {"name": "cnn2d"}}, [], "error: cnn2d needs an input shape (H, W) or (C, H, W) (batch dimension "
                                       "excluded). Got (2,) instead."),
    ({}, ["optimizer.lrr=1"], "Did you mean 'lr'"),
])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, tiny, patch, sets, message):
    args = ["train", str(write(tmp_path, {**tiny, **patch})), "--quiet", "--out", str(tmp_path / "o")]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_schedule_preview_and_plot(tmp_path):
    plot = tmp_path / "lr.png"
    result = runner.invoke(app, ["schedule", "{name: cosine, warmup_steps: 10}", "--steps", "100", "--lr", "0.1",
                                 "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # step -> lr rows: linear warmup to the peak at step 10, then cosine over the remaining 90 steps.
    lines = result.output.splitlines()
    assert lines[-1] == f"plot: {plot}"
    rows = {int(a): float(b) for a, b in (line.split() for line in lines[1:-1])}
    cosine = lambda step: 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))  # noqa: E731
    assert rows.keys() == {0, 10, 25, 50, 75, 99}
    assert rows[0] == pytest.approx(0.01) and rows[10] == pytest.approx(0.1)
    for step in (25, 50, 75, 99):
        assert rows[step] == pytest.approx(cosine(step), rel=1e-5)
    bad = runner.invoke(app, ["schedule", "cosin", "--steps", "10"])
    assert bad.exit_code == 2 and "Did you mean 'cosine'" in bad.output


def test_doctor_names_the_problem_and_writes_a_page(tmp_path):
    result = runner.invoke(app, ["doctor", "examples/sick_dead_relu.yaml", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "dead_units" in result.output
    assert (tmp_path / "doctor.html").stat().st_size > 10_000


def test_cluster_without_repair_and_an_unreachable_cluster_are_refused_before_training(tmp_path):
    doctor = runner.invoke(app, ["doctor", "examples/sick_dead_relu.yaml", "--cluster", "auto", "--out", str(tmp_path)])
    assert doctor.exit_code == 2 and "--cluster and --workers train the fixes of --repair" in doctor.output
    ensemble = runner.invoke(app, ["ensemble", "examples/breast_cancer_mlp.yaml", "--method", "bagging",
                                   "--cluster", "127.0.0.1:1", "--out", str(tmp_path / "e")])
    assert ensemble.exit_code == 2 and "Could not connect to the Ray cluster at '127.0.0.1:1'" in ensemble.output
    assert not (tmp_path / "e").exists() and not (tmp_path / "doctor.html").exists()


def test_study_list_run_and_report(tmp_path):
    listed = runner.invoke(app, ["study", "list"])
    assert listed.exit_code == 0 and "init_activations" in listed.output and "batch_norm" in listed.output
    ran = runner.invoke(app, ["study", "optimizers", "--smoke", "--quiet", "--out", str(tmp_path)])
    assert ran.exit_code == 0, ran.output
    assert "optimizers:" in ran.output and (tmp_path / "index.html").is_file()
    (tmp_path / "index.html").unlink()
    again = runner.invoke(app, ["report", str(tmp_path)])
    assert again.exit_code == 0 and (tmp_path / "index.html").is_file()


def test_study_and_report_errors(tmp_path):
    bad = runner.invoke(app, ["study", "optimisers", "--quick"])
    assert bad.exit_code == 2 and "Did you mean 'optimizers'" in bad.output
    empty = runner.invoke(app, ["report", str(tmp_path)])
    assert empty.exit_code == 2 and "no study outcomes" in empty.output


def test_ablate_prints_a_ranked_table(tmp_path, tiny):
    result = runner.invoke(app, ["ablate", str(write(tmp_path, tiny)), "--seeds", "2", "--set", "epochs=1",
                                 "--quiet", "--out", str(tmp_path / "ab")])
    assert result.exit_code == 0, result.output
    assert "norm: none -> batch" in result.output and (tmp_path / "ab" / "ablation.html").is_file()


def test_lr_find_suggests_a_rate_and_plots(tmp_path, tiny):
    plot = tmp_path / "lr.png"
    result = runner.invoke(app, ["lr-find", str(write(tmp_path, tiny)), "--steps", "30", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "suggested lr:" in result.output and plot.stat().st_size > 1000
    bad = runner.invoke(app, ["lr-find", str(write(tmp_path, tiny)), "--min-lr", "1", "--max-lr", "0.1"])
    assert bad.exit_code == 2
    assert "error: The 'max_lr' parameter of lr_range_test must be greater than min_lr (1.0). Got 0.1 instead." in (
        bad.output)


def test_doctor_help_states_the_default_budget_the_doctor_uses():
    from trainlab.diagnostics import DEFAULT_STEPS

    result = runner.invoke(app, ["doctor", "--help"])
    assert result.exit_code == 0 and f"[default: {DEFAULT_STEPS}, whole" in " ".join(result.output.split())


def test_a_nproc_job_is_given_every_parsed_option_of_the_command_again():
    from pathlib import Path

    import typer

    from trainlab.cli import _command_line

    train = typer.main.get_command(app).commands["train"]
    given = ["my.yaml", "--set", "optimizer.lr=0.1", "--set", "epochs=3", "--quiet", "--probes", "--tensorboard", "tb",
             "--resume", "--nproc", "2"]
    ctx = train.make_context("train", list(given))
    args = _command_line(ctx, {"out": Path("runs/x")}, skip="nproc")
    assert args[0] == "train" and "--nproc" not in args
    again = train.make_context("train", args[1:]).params
    assert again == {**ctx.params, "out": Path("runs/x"), "nproc": 1}
