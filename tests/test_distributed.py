"""Data-parallel training under torchrun: ``trainlab train --nproc 2`` (two real processes, gloo on the CPU) gives the
one-process result with the same global batch to float tolerance, resumes a run killed mid-way bit for bit, stops
every rank together when the loss diverges, and refuses what cannot shard before starting any process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainlab.checkpoints import ResumeWarning, load_checkpoint
from trainlab.config import load_config
from trainlab.data import split_sizes
from trainlab.distributed import Ranks, check_config, rank_seed, ranks_from
from trainlab.registry import ConfigError
from trainlab.runs import train

from test_reliability_files import kill_resume  # final_state / differences: the kill harness's comparison

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the launcher's workers die with it through prctl")

# Every piece whose randomness or state a rank must share: augmentation (input noise, drawn on the global batch),
# weight decay, a warmup + cosine schedule, gradient clipping, and early stopping that ends the run before its last
# epoch and restores its best weights. 310 moons give 223 training samples: 6 batches of 32 (16 per process) and a
# last one of 31, which does not split in two and is computed whole by both processes.
CONFIG = {
    "seed": 3,
    "data": {"dataset": {"name": "moons", "n_samples": 310}, "batch_size": 32,
             "augment": [{"name": "gaussian_noise", "std": 0.05}]},
    "model": {"name": "mlp", "depth": 2, "width": 16},
    "optimizer": {"name": "adamw", "lr": 0.02, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_steps": 5},
    "grad_clip": 1.0,
    "early_stopping": {"patience": 3},
    "epochs": 30,
    "threads": 1,
}

# float32 sums taken in another order (two means of 16 averaged by DDP instead of one mean of 32; the epoch's loss
# summed per process) differ in the last bits, about 1e-7 relative; 100 Adam steps carry that to about 1e-6 in the
# weights (measured: see test_two_processes_train_as_one_with_the_same_global_batch). The tolerance leaves a margin
# of ~30x; any real difference (another batch order, a lost slice, gradients summed instead of averaged) shows as
# 1e-2 or more.
RTOL, ATOL = 1e-4, 1e-5


def trainlab_command() -> list[str]:
    entry = Path(sys.executable).with_name("trainlab")  # the installed command; else the module
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "trainlab.cli"]


def train_command(config: Path, out: Path, *extra: str) -> list[str]:
    return [*trainlab_command(), "train", str(config), "--out", str(out), "--quiet", "--nproc", "2", *extra]


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The config trained in this process, and by ``trainlab train --nproc 2``."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    train(load_config(CONFIG), root / "one")
    done = run_cli(train_command(root / "run.yaml", root / "two"))
    assert done.returncode == 0, done.stderr
    return root


@pytest.mark.slow
@linux_only
def test_two_processes_train_as_one_with_the_same_global_batch(runs):
    one, two = (load_checkpoint(runs / name / "checkpoint.pt")["trainer"] for name in ("one", "two"))
    summaries = [json.loads((runs / name / "summary.json").read_text()) for name in ("one", "two")]
    assert all(s["final"]["stopped_reason"].startswith("early stopping") for s in summaries)  # ranks stopped together
    assert one["epoch"] == two["epoch"] < CONFIG["epochs"] and one["step"] == two["step"]
    assert two["extras"] == one["extras"]  # best and restored epoch
    worst = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in one["model"])
    print(f"largest weight difference: {worst:.2e}")
    for key, weights in one["model"].items():
        torch.testing.assert_close(two["model"][key], weights, rtol=RTOL, atol=ATOL)
    for row_one, row_two in zip(one["history"], two["history"], strict=True):
        for metric in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert row_two[metric] == pytest.approx(row_one[metric], rel=RTOL, abs=ATOL), metric
    for metric in ("val_loss", "val_acc", "test_loss", "test_acc"):
        assert summaries[1]["final"][metric] == pytest.approx(summaries[0]["final"][metric], rel=RTOL, abs=ATOL)
    meta = json.loads((runs / "two" / "meta.json").read_text())
    assert meta["processes"] == 2 and json.loads((runs / "one" / "meta.json").read_text())["processes"] == 1


def kill_group_after_first_checkpoint(args: list[str], out: Path) -> int:
    """Start ``args`` in a process group of its own, SIGKILL the group once ``out`` holds a checkpoint; the
    launcher's exit code."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGKILL)
    return process.wait(timeout=60)


def workers_of(out: Path) -> list[str]:
    """The command lines of live processes training into ``out``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in words and b"train" in words:
            found.append(b" ".join(words).decode())
    return found


@pytest.mark.slow
@linux_only
def test_a_run_killed_mid_way_resumes_under_two_processes_bit_for_bit(runs):
    """SIGKILL the launcher's process group after the first checkpoint: its workers (which torchrun starts in
    sessions of their own) die with it; ``--resume --nproc 2`` then ends where the uninterrupted run ended, and a
    resume in one process (which warns) ends where the one-process run ended, to float tolerance."""
    for attempt in range(3):  # the kill must land before the run ends: again if it was quicker
        out = runs / f"cut{attempt}"
        code = kill_group_after_first_checkpoint(train_command(runs / "run.yaml", out), out)
        time.sleep(0.5)  # the system delivers the workers' death signal
        assert workers_of(out) == []
        if not (out / "summary.json").exists():
            break
    assert code == -signal.SIGKILL and (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()
    shutil.copytree(out, runs / "cut-one")
    resumed = run_cli(train_command(runs / "run.yaml", out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert kill_resume.differences(kill_resume.final_state(runs / "two"), kill_resume.final_state(out)) == []
    with pytest.warns(ResumeWarning, match=r"recorded with processes=2 \(meta\.json\) and resumes with processes=1"):
        train(load_config(CONFIG), runs / "cut-one", resume=True)
    one, cut = (load_checkpoint(runs / name / "checkpoint.pt")["trainer"] for name in ("one", "cut-one"))
    assert cut["step"] == one["step"]
    for key, weights in one["model"].items():
        torch.testing.assert_close(cut["model"][key], weights, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
@linux_only
def test_a_diverging_run_stops_every_process_at_the_same_step(tmp_path):
    diverging = {"seed": 0, "data": {"dataset": {"name": "moons", "n_samples": 200}, "batch_size": 32},
                 "model": {"name": "mlp", "depth": 2, "width": 8, "init": {"name": "normal", "std": 1e19}},
                 "optimizer": {"name": "sgd", "lr": 1.0}, "epochs": 3}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(diverging))
    done = run_cli(train_command(tmp_path / "run.yaml", tmp_path / "run"), timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("error: the run failed: non-finite loss (nan) at step 0.") == 1  # rank 0 alone says it
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["final"]["steps"] == 0


def test_a_batch_size_that_does_not_split_is_refused_before_any_process_starts(tmp_path):
    from typer.testing import CliRunner

    from trainlab.cli import app

    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "batch_size": 33}}))
    done = CliRunner().invoke(app, train_command(tmp_path / "run.yaml", tmp_path / "run")[len(trainlab_command()):])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert "The 'data.batch_size' parameter (33) must be divisible by the number of processes (--nproc 2)" in \
        " ".join(done.output.split())
    assert not (tmp_path / "run").exists()


def test_nproc_refuses_a_directory_holding_a_run_and_a_job_already_under_torchrun(tmp_path):
    from typer.testing import CliRunner

    from trainlab.cli import app

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    args = train_command(tmp_path / "run.yaml", tmp_path / "run")[len(trainlab_command()):]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "already holds a run. Use --resume" in done.output
    done = CliRunner().invoke(app, args, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert done.exit_code == 2 and "already runs under torchrun (rank 0 of 2). Leave --nproc out." in done.output


def test_what_cannot_shard_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"'data.batch_size' parameter \(32\) must be divisible .* \(--nproc 3\)"):
        check_config(load_config(CONFIG), 3)
    with pytest.raises(ConfigError, match=r"full-batch optimizer lbfgs.*\(--nproc 1\)"):
        check_config(load_config({**CONFIG, "optimizer": {"name": "lbfgs"}, "schedule": "constant",
                                  "grad_clip": None}), 2)
    with pytest.raises(ValueError, match=r"--nproc\) must be an integer >= 1. Got 0"):
        check_config(load_config(CONFIG), 0)
    check_config(load_config(CONFIG), 4)


def test_the_torchrun_environment_is_read_and_a_job_of_one_is_the_plain_path():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert ranks_from(env) == Ranks(rank=1, world_size=4, local_rank=1, local_world_size=2)
    assert ranks_from({}) is None
    assert ranks_from({"RANK": "0", "WORLD_SIZE": "1"}) is None
    with pytest.raises(ValueError, match="rank 4 of 4 processes"):
        ranks_from({**env, "RANK": "4"})
    with pytest.raises(ValueError, match="LOCAL_RANK must be a non-negative integer. Got 'x'"):
        ranks_from({**env, "LOCAL_RANK": "x"})


def test_each_rank_draws_its_own_stream_and_rank_0_the_runs():
    seeds = [rank_seed(7, rank) for rank in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4 and seeds == [rank_seed(7, rank) for rank in range(4)]


def test_the_config_gives_the_batches_its_comment_says():
    assert split_sizes(load_config(CONFIG).data)["train"] == 6 * 32 + 31
