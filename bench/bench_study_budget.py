"""Wall and CPU time of each study in one ``run_studies`` call, from a fresh output folder (nothing cached).

    python bench/bench_study_budget.py [NAME ...] [--mode quick] [--seeds N] [--out DIR]

Runs ``trainlab.studies.run_studies(names, mode=...)`` once (all studies by default) into a new temporary folder, or
into ``--out`` if it is given and empty, and marks the clock after each study through ``on_outcome``, so every
study is charged exactly what it costs inside the real main job: the first study to use a dataset pays for
generating it, and the final report rendering is a row of its own. CPU time is ``time.process_time`` (user + system
of every thread of this process), the figure to trust on a busy machine; wall time is what the budget is about on a
quiet one. The job's budget is 15 minutes on a 2-core CPU machine: 80 s per study (9 studies plus the report);
rows over it are marked.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trainlab.studies import STUDIES, run_studies
from trainlab.studies.base import StudyOutcome

TOTAL_BUDGET_S = 15 * 60
STUDY_BUDGET_S = 80.0


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def measure(names: list[str] | str, mode: str, seeds: int | None, out: Path) -> list[tuple[str, float, float, str]]:
    """Rows (name, wall s, CPU s, note) for each study of one ``run_studies`` call, then the report rendering."""
    rows: list[tuple[str, float, float, str]] = []
    mark = clock()

    def on_outcome(outcome: StudyOutcome) -> None:
        nonlocal mark
        now = clock()
        rows.append((outcome.name, now[0] - mark[0], now[1] - mark[1],
                     f"{outcome.runs_trained} runs trained, {outcome.runs_cached} cached"))
        mark = now

    run_studies(names, mode=mode, seeds=seeds, out=out, progress=False, on_outcome=on_outcome)
    now = clock()
    rows.append(("(report pages)", now[0] - mark[0], now[1] - mark[1], ""))
    return rows


def print_table(rows: list[tuple[str, float, float, str]], mode: str) -> None:
    width = max(len(r[0]) for r in rows + [("total", 0.0, 0.0, "")])
    print(f"{'study':<{width}}  {'wall s':>8}  {'CPU s':>8}  note")
    for name, wall, cpu, note in rows:
        over = f"  over {STUDY_BUDGET_S:.0f} s" if mode == "quick" and max(wall, cpu) > STUDY_BUDGET_S else ""
        print(f"{name:<{width}}  {wall:8.1f}  {cpu:8.1f}  {note}{over}")
    wall, cpu = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'total':<{width}}  {wall:8.1f}  {cpu:8.1f}", end="")
    if mode == "quick":
        verdict = "within" if wall <= TOTAL_BUDGET_S else "OVER"
        print(f"  {verdict} the {TOTAL_BUDGET_S // 60} min budget of `trainlab study all --quick` (wall time)")
    else:
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"studies to run (default: all of {', '.join(STUDIES)})")
    parser.add_argument("--mode", choices=("smoke", "quick", "full"), default="quick")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the budget's)")
    parser.add_argument("--out", type=Path, default=None, help="an empty folder to keep the report in")
    args = parser.parse_args()
    names = args.names or "all"
    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            parser.error(f"--out {args.out} is not empty: cached runs would make the timings meaningless.")
        print_table(measure(names, args.mode, args.seeds, args.out), args.mode)
        return
    with tempfile.TemporaryDirectory(prefix="trainlab-bench-") as out:
        print_table(measure(names, args.mode, args.seeds, Path(out)), args.mode)


if __name__ == "__main__":
    main()
