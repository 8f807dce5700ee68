"""Every benchmark in one command, one at a time (never two at once: they would time each other), into one file.

    .venv/bin/python bench/run_all.py                 # all, default rounds; writes bench/latest.md
    .venv/bin/python bench/run_all.py --quick         # fewer rounds and epochs (minutes, not tens of minutes)
    .venv/bin/python bench/run_all.py --only peers batched --out /tmp/bench.md

The file starts with the machine (CPU model, cores, memory), the date, Python, torch and trainlab versions and
the load average before the run, then each benchmark's command, wall time and output. ``bench/RESULTS.md`` holds
the curated figures (ratios, what they mean) taken from such runs. The main job's wall time is the
``main_job`` entry (``trainlab study all --quick --workers N`` on a fresh folder); ``help`` times
``trainlab --help`` (the target: <= 0.5 s); ``doctor`` times ``trainlab doctor`` on every shipped example (<= 10 s).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
TRAINLAB = str(Path(PY).with_name("trainlab"))


def benches(quick: bool) -> dict[str, list[str]]:
    rounds = ["--rounds", "2"] if quick else []
    cores = str(min(os.cpu_count() or 1, 12))
    return {
        "help": [PY, str(HERE / "run_all.py"), "--time-help"],
        "trainer": [PY, str(HERE / "bench_trainer.py"), *(["--epochs", "2"] if quick else [])],
        "probes": [PY, str(HERE / "bench_probes.py"), *(["--epochs", "1", "--repeats", "2"] if quick else [])],
        "subnormal": [PY, str(HERE / "bench_subnormal.py"), *rounds],
        "precision": [PY, str(HERE / "bench_precision.py"), *rounds],
        "batched": [PY, str(HERE / "bench_batched.py"), *rounds],
        "peers": [PY, str(HERE / "bench_peers.py"), *(["--epochs", "10", "--rounds", "2"] if quick else [])],
        "cold_start": [PY, str(HERE / "bench_cold_start.py"), *(["--rounds", "3"] if quick else [])],
        "doctor": [PY, str(HERE / "bench_doctor.py"), *(["--rounds", "1"] if quick else [])],
        "main_job": [TRAINLAB, "study", "all", "--quick", "--workers", cores, "--quiet", "--out",
                     tempfile.mkdtemp(prefix="trainlab-main-job-")],
    }


def time_help(calls: int = 5) -> None:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        subprocess.run([TRAINLAB, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    print(f"trainlab --help: median {sorted(times)[calls // 2]:.3f} s over {calls} calls")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
        memory = f", {kib / 2 ** 20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}"


def header() -> str:
    import torch

    import trainlab

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"# Benchmarks, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}\n\n"
            f"- machine: {machine()}\n- Python {platform.python_version()}, torch {torch.__version__}, "
            f"trainlab {trainlab.__version__}\n- load average before: {load}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=HERE / "latest.md")
    parser.add_argument("--time-help", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_help:
        return time_help()
    todo = benches(args.quick)
    unknown = sorted(set(args.only or []) - set(todo))
    if unknown:
        raise SystemExit(f"run_all: unknown benchmark(s) {unknown}. Available: {', '.join(todo)}.")
    sections = [header()]
    for name, cmd in todo.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        output = (done.stdout + (f"\n[stderr]\n{done.stderr[-2000:]}" if done.returncode else "")).strip()
        print(output, flush=True)
        sections.append(f"## {name} ({wall:.0f} s, exit {done.returncode})\n\n`{' '.join(cmd)}`\n\n```\n{output}\n```\n")
    args.out.write_text("\n".join(sections))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
