"""Whole `trainlab doctor EXAMPLE` processes on the shipped examples, as a user runs them: default budget, default
threads (the config's ``threads``, else torch's), the page written to a fresh folder.

Run: .venv/bin/python bench/bench_doctor.py [--rounds 3] [--only mnist1d_mlp mnist1d_cnn]

Each round runs every example once, in turn (interleaved, so drift on a shared machine spreads over all); the table
gives the median wall time per example and how many are within the target (<= 10 s each on the project's machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TRAINLAB = str(Path(sys.executable).with_name("trainlab"))
TARGET_S = 10.0


def time_doctor(example: Path, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    subprocess.run([TRAINLAB, "doctor", str(example), "--out", str(out)], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="example names without .yaml (default: all)")
    args = parser.parse_args()
    examples = sorted(EXAMPLES.glob("*.yaml"))
    if args.only:
        examples = [e for e in examples if e.stem in args.only]
    times: dict[str, list[float]] = {e.stem: [] for e in examples}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for e in examples:
                times[e.stem].append(time_doctor(e, Path(tmp) / f"{e.stem}-{r}"))
    print(f"load average before the last round: {os.getloadavg()[0]:.2f}")
    print("| example | median wall (s) | rounds (s) |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")
    within = sum(statistics.median(ts) <= TARGET_S for ts in times.values())
    print(f"{within} of {len(times)} within {TARGET_S:.0f} s")


if __name__ == "__main__":
    main()
