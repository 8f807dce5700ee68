"""The verdict of every claim at two budgets, side by side, as a Markdown table (for the README).

    .venv/bin/python scripts/verdicts.py quick=reports full=reports/full > verdicts.md

Each argument is a report folder (``trainlab study all --out DIR``), optionally ``LABEL=FOLDER`` for its column's
title (else the folder's name); its ``outcomes/*.json`` are read. A cell is
the verdict, the number of seeds n (the smallest over a claim's parts) and the effect sizes (Cohen's d, or d_z for
paired tests, one per part); an inconclusive cell adds the smallest difference its test would have detected 80% of
the time at that n. Exit status 1 when a claim is supported at one budget and refuted at the other.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _effects(numbers: dict[str, float]) -> tuple[int, list[float], list[float]]:
    """(n, effect sizes, detectable differences) of one claim, over its parts."""
    ns = [v for k, v in numbers.items() if k == "n" or k.endswith(": n")]
    effects = [v for k, v in numbers.items() if k.split(": ")[-1] in ("d", "d_z")]
    detectable = [v for k, v in numbers.items() if k.split(": ")[-1] == "detectable diff"]
    return int(min(ns)) if ns else 0, effects, detectable


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2g}"


def cell(claim: dict) -> str:
    n, effects, detectable = _effects(claim["numbers"])
    text = f"{claim['verdict']} (n = {n}" + (f", d = {'/'.join(_fmt(e) for e in effects)}" if effects else "")
    if claim["verdict"] == "inconclusive" and detectable:
        text += f"; detects {'/'.join(_fmt(d) for d in detectable)}"
    return text + ")"


def load(folder: Path) -> dict[tuple[int, str, str], dict]:
    claims = {}
    for path in sorted((folder / "outcomes").glob("*.json")):
        outcome = json.loads(path.read_text())
        for claim in outcome["claims"]:
            claims[(outcome.get("order", 0), outcome["name"], claim["key"])] = claim
    if not claims:
        raise SystemExit(f"verdicts: no outcomes in {str(folder / 'outcomes')!r}; run 'trainlab study all --out "
                         f"{folder}' first.")
    return claims


def main(arguments: list[str]) -> int:
    labels = [a.split("=", 1)[0] if "=" in a else Path(a).name for a in arguments]
    folders = [a.split("=", 1)[1] if "=" in a else a for a in arguments]
    budgets = [load(Path(f)) for f in folders]
    keys = sorted(set().union(*budgets))
    print("| study | claim | " + " | ".join(labels) + " |")
    print("|---" * (2 + len(folders)) + "|")
    conflicts = []
    for key in keys:
        cells = [cell(b[key]) if key in b else "not run" for b in budgets]
        verdicts = {b[key]["verdict"] for b in budgets if key in b}
        if {"supported", "refuted"} <= verdicts:
            conflicts.append(key)
        print(f"| {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    counts = [{v: sum(c["verdict"] == v for c in b.values()) for v in ("supported", "refuted", "inconclusive")}
              for b in budgets]
    print()
    for label, count in zip(labels, counts):
        print(f"- {label}: " + ", ".join(f"{n} {v}" for v, n in count.items()))
    if conflicts:
        print(f"\nSupported at one budget and refuted at the other: {', '.join(f'{s}.{c}' for _, s, c in conflicts)}")
    return 1 if conflicts else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1:]))
