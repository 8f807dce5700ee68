"""Overhead of the diagnostics probes at their default sampling interval, against the same run without probes.

    python bench/bench_probes.py [--model mlp|cnn1d] [--epochs 3] [--repeats 3] [--threads 1]

Trains the same config (MNIST-1D) without probes, with ``Diagnostics()`` (default interval) and with
``Diagnostics(every=1)`` (every step sampled), alternating, and prints the best wall time of each. The direct ratio
is the overhead at the default interval (the target is <= 1.05); the every-step run measures the cost of one sampled
step, from which the overhead at the default interval follows with 50x less timing noise. The best of several
repeats filters out noise from other processes.
"""

from __future__ import annotations

import argparse
import time

import torch

from trainlab.config import RunConfig, load_config
from trainlab.data import steps_per_epoch
from trainlab.diagnostics import DEFAULT_EVERY, Diagnostics
from trainlab.trainer import build_trainer

MODELS = {
    "mlp": {"name": "mlp", "depth": 3, "width": 256},
    "cnn1d": {"name": "cnn1d", "channels": [32, 64], "head": [128]},
}


def timed_fit(config: RunConfig, every: int | None) -> float:
    callbacks = [Diagnostics(every)] if every is not None else []
    trainer = build_trainer(config, callbacks)
    start = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - start
    if callbacks:
        callbacks[0].record()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config({"data": {"dataset": "mnist1d", "batch_size": 128}, "model": MODELS[args.model],
                          "epochs": args.epochs})
    timed_fit(config, DEFAULT_EVERY)  # warm-up: data cache, allocator, kernels
    times: dict[int | None, list[float]] = {None: [], DEFAULT_EVERY: [], 1: []}
    for _ in range(args.repeats):
        for every, runs in times.items():
            runs.append(timed_fit(config, every))
    steps = steps_per_epoch(config.data) * args.epochs
    print(f"model={args.model} steps={steps} every={DEFAULT_EVERY} threads={args.threads}")
    for every, label in ((None, "no probes"), (DEFAULT_EVERY, f"every={DEFAULT_EVERY}"), (1, "every=1")):
        print(f"{label:>10}: best {min(times[every]):.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times[every])})")
    plain = min(times[None])
    per_sample = (min(times[1]) - plain) / steps
    print(f"one sampled step costs {per_sample * 1e3:.2f} ms extra; a plain step takes {plain / steps * 1e3:.2f} ms")
    print(f"overhead at every={DEFAULT_EVERY}: measured {min(times[DEFAULT_EVERY]) / plain:.3f}, "
          f"from the per-sample cost {1 + per_sample / DEFAULT_EVERY / (plain / steps):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
