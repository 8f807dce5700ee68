"""A whole `trainlab train` process against a hand-written PyTorch script doing the same work, from a cold start.

Run: .venv/bin/python bench/bench_cold_start.py [--rounds 5] [--epochs 1]

Each process starts Python, imports what it needs, gets MNIST-1D (the script either calls ``mnist1d``'s
``make_dataset`` as a user would, or reads the same arrays from an ``.npz`` saved beforehand, the strict
comparison; trainlab reads its on-disk cache after the first call, which this bench warms once), standardize it, train the same MLP (40 -> 64 -> 64 -> 10, ReLU, Adam lr 1e-3, batch 128, one thread) for
``--epochs`` epochs and print the test accuracy. Each round runs the two interleaved; the table gives the median
wall time of each and the medians of the per-round ratios. The target: trainlab <= 1.15x the script.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

SCRIPT = '''
import sys, numpy as np, torch
from torch import nn
torch.set_num_threads(1)
epochs = int(sys.argv[1])
if len(sys.argv) > 2:  # the arrays from an .npz file saved beforehand (no generation, no mnist1d import)
    d = np.load(sys.argv[2])
else:
    from mnist1d.data import get_dataset_args, make_dataset
    d = make_dataset(get_dataset_args())
x, y, xt, yt = (np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test"))
mean, std = x.mean(0), x.std(0) + 1e-8
x, xt = (torch.tensor((a - mean) / std, dtype=torch.float32) for a in (x, xt))
y, yt = torch.tensor(y), torch.tensor(yt)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
for _ in range(epochs):
    order = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), 128):
        idx = order[i:i + 128]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
with torch.no_grad():
    print((model(xt).argmax(1) == yt).float().mean().item())
'''

CONFIG = {"seed": 0, "threads": 1,
          "data": {"dataset": "mnist1d", "val_fraction": 0.0, "batch_size": 128, "preprocess": "standardize"},
          "model": {"name": "mlp", "depth": 2, "width": 64, "activation": "relu", "norm": "none"},
          "optimizer": {"name": "adam", "lr": 1e-3}}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    (folder / "script.py").write_text(SCRIPT)
    (folder / "run.yaml").write_text(yaml.safe_dump({**CONFIG, "epochs": args.epochs}))
    def trainlab(i: int) -> list[str]:  # a new run directory each time (trainlab train refuses to overwrite one)
        return [str(Path(sys.executable).with_name("trainlab")), "train", str(folder / "run.yaml"), "--quiet",
                "--out", str(folder / f"run-{i}")]

    from mnist1d.data import get_dataset_args, make_dataset

    arrays = make_dataset(get_dataset_args())
    np.savez(folder / "mnist1d.npz", **{k: np.asarray(arrays[k]) for k in ("x", "y", "x_test", "y_test")})
    scripts = {"script (make_dataset)": [sys.executable, str(folder / "script.py"), str(args.epochs)],
               "script (saved .npz)": [sys.executable, str(folder / "script.py"), str(args.epochs),
                                       str(folder / "mnist1d.npz")]}
    timed(trainlab(-1))  # fills trainlab's MNIST-1D cache (~/.cache/trainlab), as any earlier call has
    times: dict[str, list[float]] = {**{name: [] for name in scripts}, "trainlab train": []}
    for i in range(args.rounds):
        for name, cmd in scripts.items():
            times[name].append(timed(cmd))
        times["trainlab train"].append(timed(trainlab(i)))
    print(f"cold processes, MLP 2x64 on MNIST-1D, {args.epochs} epoch(s), one thread, {args.rounds} rounds")
    for name, ts in times.items():
        print(f"  {name:22s} median {statistics.median(ts):6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})")
    for name in scripts:
        ratio = statistics.median(t / s for t, s in zip(times["trainlab train"], times[name]))
        print(f"  trainlab / {name}: {ratio:.2f}x (median of per-round ratios)")


if __name__ == "__main__":
    main()
