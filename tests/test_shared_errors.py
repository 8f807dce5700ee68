"""scripts/shared_errors.py: the test samples several runs miss, counted per sample, and its figure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from trainlab.config import load_config
from trainlab.data import load_data
from trainlab.runs import train

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "shared_errors.py"


def test_shared_errors_counts_each_samples_misses_and_plots_them(tiny, tmp_path):
    tiny["epochs"] = 2  # few epochs, so the runs still miss some test samples
    runs = [train(load_config({**tiny, "seed": s}), tmp_path / f"run{s}", keep_model=True) for s in range(3)]
    data = load_data(load_config(tiny).data)
    with torch.no_grad():
        wrong = torch.stack([r.model.eval()(data.x_test).argmax(1) != data.y_test for r in runs])
    out = subprocess.run([sys.executable, str(SCRIPT), *(str(tmp_path / f"run{s}") for s in range(3)),
                          "--plot", str(tmp_path / "fig.png")], capture_output=True, text=True, check=True).stdout
    for s, run in enumerate(runs):
        assert f"run{s}: test accuracy {run.final['test_acc']:.2%}" in out
    counted = {int(i): int(k) for i, k in re.findall(r"sample (\d+): label \d+, missed by (\d+)", out)}
    expected = {i: int(wrong[:, i].sum()) for i in range(wrong.shape[1]) if wrong[:, i].any()}
    assert counted == expected and expected  # every missed sample, with how many runs missed it
    assert any(k * 2 >= 3 for k in expected.values())  # so the figure has samples to draw
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shared_errors_refuses_runs_of_other_data(tiny, tmp_path):
    train(load_config(tiny), tmp_path / "a")
    train(load_config({**tiny, "data": {**tiny["data"], "dataset": {"name": "moons", "n_samples": 200}}}),
          tmp_path / "b")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "must share one data section; 2 different ones" in done.stderr
