"""The repair target, measured: `repair` on every sick config of the pathology suite at the default budget.

Run: .venv/bin/python scripts/repair_suite.py   (one thread; a few minutes)

Prints, per sick config, the planted problem, the doctor's top finding, and the fix kept (with its effect and p),
then how many were repaired with a significant gain (the doctor issue's target: >= 90%).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_pathologies import SICK  # noqa: E402  (the suite's own cases, not a copy)

from trainlab.config import load_config  # noqa: E402
from trainlab.diagnostics import repair  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    fixed = 0
    for name, (config, steps, planted) in SICK.items():
        start = time.perf_counter()
        report = repair(load_config(config), steps)
        top = report.diagnosis.top.code if report.diagnosis.top else "none"
        kept = next((a for a in report.attempts if a.significant), None)
        fixed += bool(report.fixed)
        effect = (f"{kept.problem} -> {kept.overrides}: p = {kept.comparison.p:.2g}" if kept is not None
                  else "no significant fix")
        print(f"{name}: planted {planted}, top {top}; {effect} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"repaired with a significant gain: {fixed} of {len(SICK)}")


if __name__ == "__main__":
    main()
