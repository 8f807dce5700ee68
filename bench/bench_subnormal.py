"""The cost of subnormal floats on this CPU, and what flushing them (as ``Trainer.fit`` does) saves.

    python bench/bench_subnormal.py [--rounds 5] [--threads 1]

A collapsing network's activations and gradients can shrink into float32's subnormal range (below 1.2e-38); many
x86 CPUs compute on those far slower (an Intel session measured a ReLU MLP at 9 s an epoch instead of 0.36 s).
``Trainer.fit`` runs inside ``trainlab.trainer.flush_subnormals()``. This bench times what training does most (a
matmul, a bias add and ReLU, an elementwise update) on normal and on subnormal inputs, with subnormals kept and
flushed, interleaved over several rounds; it prints the median times and the ratios, so it answers for the CPU it
runs on. (On the AMD EPYC this project's machines had on 2026-12-01, subnormals cost nothing extra: ratios near 1.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def step(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
    y = torch.relu(x @ w + b)
    y.mul_(0.9).add_(y * y, alpha=0.1)


def timed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, flush: bool, repeats: int = 100) -> float:
    torch.set_flush_denormal(flush)
    start = time.perf_counter()
    for _ in range(repeats):
        step(x, w, b)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, generator=gen) / 16
    inputs = {"normal": torch.randn(128, 256, generator=gen),
              "subnormal": torch.randn(128, 256, generator=gen) * 1e-39}
    bias = {"normal": torch.randn(256, generator=gen), "subnormal": torch.randn(256, generator=gen) * 1e-39}
    times: dict[tuple[str, bool], list[float]] = {(k, f): [] for k in inputs for f in (False, True)}
    try:
        for _ in range(args.rounds):
            for (kind, flush), runs in times.items():
                runs.append(timed(inputs[kind], w, bias[kind], flush))
    finally:
        torch.set_flush_denormal(False)
    median = {key: statistics.median(runs) for key, runs in times.items()}
    print(f"{'inputs':>10} {'kept s':>8} {'flushed s':>10} {'kept / flushed':>15}")
    for kind in inputs:
        kept, flushed = median[(kind, False)], median[(kind, True)]
        print(f"{kind:>10} {kept:>8.4f} {flushed:>10.4f} {kept / flushed:>15.2f}")
    print(f"subnormal / normal, kept: {median[('subnormal', False)] / median[('normal', False)]:.2f}x")


if __name__ == "__main__":
    main()
