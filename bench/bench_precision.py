"""Mixed precision on this machine: an epoch of trainlab's trainer in fp32 against the same epoch in bf16 (and fp16).

Run: .venv/bin/python bench/bench_precision.py [--rounds 5] [--fp16] [--device cpu|cuda]

Each shipped config (augmentation and schedule as shipped) is built once per precision from the same seed; every
round trains one epoch of each, interleaved, so the ratios compare like with like on a noisy machine. Prints the
median epoch time per precision, its ratio to fp32 (ratio of medians, and the median of per-round ratios) and the
CPU's bf16 instructions (AVX-512 BF16 / AMX) as /proc/cpuinfo lists them.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

from trainlab.config import load_config
from trainlab.trainer import build_trainer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = ["mnist1d_cnn_fast.yaml", "mnist1d_cnn.yaml", "mnist1d_mlp.yaml"]


def cpu_bf16() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(found) if found else "none found"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fp16", action="store_true", help="also fp16 (slow on CPUs without float16 arithmetic)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    precisions = ["fp32", "bf16", *(["fp16"] if args.fp16 else [])]
    print(f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}, CPU bf16: {cpu_bf16()}")
    print(f"{'config':26s} {'precision':9s} {'ms/epoch':>9s} {'vs fp32':>8s} {'per-round':>9s}")
    for name in CONFIGS:
        trainers = {}
        for precision in precisions:
            config = load_config(EXAMPLES / name, [f"precision={precision}", f"device={args.device}",
                                                   f"threads={args.threads}", "epochs=1000"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fp16 on the CPU warns that it is slow: that is what is measured
                trainers[precision] = build_trainer(config)
            trainers[precision]._epoch()  # warm-up: first-call allocations, oneDNN primitive creation
        times: dict[str, list[float]] = {p: [] for p in precisions}
        for _ in range(args.rounds):
            for precision, trainer in trainers.items():
                start = time.perf_counter()
                trainer._epoch()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[precision].append(time.perf_counter() - start)
        base = statistics.median(times["fp32"])
        for precision, values in times.items():
            per_round = statistics.median(v / b for v, b in zip(values, times["fp32"]))
            print(f"{name:26s} {precision:9s} {statistics.median(values) * 1e3:9.1f} "
                  f"{statistics.median(values) / base:7.2f}x {per_round:8.2f}x")


if __name__ == "__main__":
    main()
