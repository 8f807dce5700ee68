"""Killed runs resume to the uninterrupted result bit for bit; a run that diverges stops at its step and keeps its
last good checkpoint; the same config and seed give the same numbers; a resume says when it cannot be exact."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from trainlab.callbacks import Callback
from trainlab.checkpoints import ResumeWarning, checksum_problem, load_checkpoint
from trainlab.config import load_config
from trainlab.data import steps_per_epoch
from trainlab.registry import ConfigError
from trainlab.runs import load_model, train

from test_reliability_files import kill_resume  # the kill harness (python scripts/kill_resume.py --kills 200)
from test_trainer import Interrupt

CONFIG = kill_resume.CONFIG
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the kill harness forks and reads /proc")


@pytest.mark.slow
@linux_only
def test_runs_killed_at_random_moments_resume_bit_identically(tmp_path):
    """SIGKILL real ``trainlab train`` processes 22 times (some inside checkpoint writes), resume each run to its
    end with ``--resume``: weights, optimizer, schedule, RNG, early stopping and history equal an uninterrupted
    run's."""
    report = kill_resume.kill_and_resume(22, tmp_path, seed=11)
    print(report.summary())
    assert report.mismatches == [], report.summary()
    assert report.kills >= 20 and report.trials >= 3
    # Where kills land depends on the disk's speed (a save takes ms on a disk, us on tmpfs): aim some at saves.
    assert report.plans["in a save"] >= 5, report.summary()


def kill_when_started(run_dir: Path):
    """Kill a child as soon as it has written its run directory's meta.json (before its first checkpoint)."""

    def kill(pid: int) -> None:
        deadline = time.monotonic() + 120
        while not (run_dir / "meta.json").exists() and kill_resume.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.0002)
        kill_resume.kill_after(0)(pid)

    return kill


@pytest.mark.slow
@linux_only
def test_a_run_killed_before_its_first_checkpoint_starts_over_and_says_so(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    log = tmp_path / "child.log"
    with kill_resume.Launcher(fresh=True) as launcher:  # new interpreters: python -m trainlab.cli ...
        for attempt in range(3):  # the kill must land before the first checkpoint: again if the child was quicker
            out = tmp_path / f"run{attempt}"
            code = launcher.run(kill_resume.command(config, out, resume=False), log, kill_when_started(out))
            if not (out / "checkpoint.pt").exists():
                break
    assert code == -9 and (out / "meta.json").is_file() and not (out / "checkpoint.pt").exists()
    entry = Path(sys.executable).with_name("trainlab")  # the installed command; else the module
    trainlab = [str(entry)] if entry.is_file() else [sys.executable, "-m", "trainlab.cli"]
    resumed = subprocess.run([*trainlab, *kill_resume.command(config, out, resume=True)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "holds no checkpoint: the run stopped before its first one" in resumed.stderr
    assert "Starting it over" in resumed.stderr and "Traceback" not in resumed.stderr
    train(load_config(CONFIG), tmp_path / "whole")  # in this process: the API and the CLI agree bit for bit
    assert kill_resume.differences(kill_resume.final_state(tmp_path / "whole"), kill_resume.final_state(out)) == []


def test_a_resume_before_the_first_checkpoint_starts_over_with_the_same_config_only(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(load_config(CONFIG), tmp_path / "run", callbacks=[Interrupt(at_epoch=1)])
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match=r"was started with a different config .*config\.yaml"):
        train(load_config({**CONFIG, "seed": 5}), tmp_path / "run", resume=True)
    with pytest.warns(ResumeWarning, match="holds no checkpoint.*Starting it over"):
        resumed = train(load_config(CONFIG), tmp_path / "run", resume=True)
    whole = train(load_config(CONFIG), tmp_path / "whole")
    assert kill_resume.differences(whole.history, resumed.history) == []


class NaNAt(Callback):
    """Makes the loss of step ``step`` NaN (a loss_fn wrapper for that one step)."""

    def __init__(self, step: int):
        self.step, self._loss_fn = step, None

    def on_step_start(self, trainer):
        if trainer.step == self.step:
            self._loss_fn = trainer.loss_fn
            trainer.loss_fn = lambda out, y: self._loss_fn(out, y) * math.nan

    def after_backward(self, trainer):
        if self._loss_fn is not None:
            trainer.loss_fn, self._loss_fn = self._loss_fn, None


def test_a_nan_loss_stops_the_run_at_its_step_as_failed_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = load_config({**CONFIG, "early_stopping": None, "epochs": 10})
    per_epoch, k = steps_per_epoch(cfg.data), 37
    result = train(cfg, tmp_path / "run", callbacks=[NaNAt(k)], keep_model=True)
    assert result.final["steps"] == k and result.final["epochs_run"] == k // per_epoch
    assert result.final["stopped_reason"] == f"non-finite loss (nan) at step {k}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == f"non-finite loss (nan) at step {k}"
    assert summary["extras"]["diverged"] is True
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert checksum_problem(checkpoint) == ""
    state = load_checkpoint(checkpoint)
    assert state["trainer"]["epoch"] == k // per_epoch and state["finished"] is False
    assert state["trainer"]["history"] == summary["history"]  # the epochs before the one that diverged
    assert all(torch.isfinite(w).all() for w in state["trainer"]["model"].values())
    assert not all(torch.isfinite(w).all() for w in result.model.state_dict().values())  # step k's NaN update
    assert all(torch.isfinite(w).all() for w in load_model(tmp_path / "run").state_dict().values())


def test_a_run_that_finishes_is_recorded_as_finished(tmp_path):
    train(load_config({**CONFIG, "epochs": 2}), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["reason"] == ""


def test_the_same_config_and_seed_twice_give_identical_metrics_and_weights(tmp_path):
    first = train(load_config(CONFIG), tmp_path / "a")
    train(load_config(CONFIG), tmp_path / "b")
    assert first.final["epochs_run"] == 12 and first.final["stopped_reason"].startswith("early stopping")
    assert kill_resume.differences(kill_resume.final_state(tmp_path / "a"), kill_resume.final_state(tmp_path / "b")) \
        == []
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["torch"] == torch.__version__ and meta["threads"] == torch.get_num_threads() == 1
    assert meta["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()


def test_resuming_under_another_torch_or_thread_count_warns_naming_both(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(load_config(CONFIG), run, callbacks=[Interrupt(at_epoch=3)])
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "torch": "2.6.0", "threads": 7}))
    message = (rf"recorded with torch='2\.6\.0', threads=7 \(meta\.json\) and resumes with "
               rf"torch='{torch.__version__.replace('+', '[+]')}', threads=1")
    with pytest.warns(ResumeWarning, match=message):
        train(load_config(CONFIG), run, resume=True)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["started_with"] == {"torch": "2.6.0", "threads": 7} and meta["threads"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)  # the same environment again: no warning
        train(load_config(CONFIG), run, resume=True)
    assert json.loads((run / "meta.json").read_text())["started_with"] == {"torch": "2.6.0", "threads": 7}


def test_a_diverged_cli_run_exits_1_naming_the_step(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from trainlab.cli import app

    diverging = {"seed": 0, "data": {"dataset": {"name": "moons", "n_samples": 200}, "batch_size": 32},
                 "model": {"name": "mlp", "depth": 2, "width": 8, "init": {"name": "normal", "std": 1e19}},
                 "optimizer": {"name": "sgd", "lr": 1.0}, "epochs": 3}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(diverging))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: the run failed: non-finite loss (nan) at step 0. It diverged before its first checkpoint." \
        in result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
