"""Compare two study output folders: the same claims, verdicts, numbers, tables and figures, to float tolerance.

    python bench/compare_outcomes.py BEFORE AFTER [--rtol 1e-9] [--atol 1e-12] [--skip STUDY.KEY ...]

Reads ``outcomes/*.json`` in both folders (what ``trainlab study ... --out DIR`` writes) and prints every difference:
a study or claim present in one only, a verdict, a number or a table cell that differs beyond tolerance, a changed
evidence sentence or figure list. Run times and run counts are left out (they differ between any two runs), and so
is ``order`` (a field of the outcome, not a result). ``--skip activations.sigmoid_cost`` leaves out one claim and
``--skip activations.tables`` one study's tables: what is measured in wall-clock time (the activations study times a
forward and backward pass) differs between any two runs. Exits 1 when anything differs, so a refactoring can be
checked with ``trainlab study all --smoke`` before and after it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

IGNORED = {"runtime_s", "runs_trained", "runs_cached", "order"}


def load(folder: Path) -> dict[str, dict[str, Any]]:
    outcomes = folder / "outcomes"
    if not outcomes.is_dir():
        sys.exit(f"compare_outcomes: {str(folder)!r} holds no outcomes/ folder.")
    return {p.stem: json.loads(p.read_text()) for p in sorted(outcomes.glob("*.json"))}


def close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    """Equal, with floats compared to tolerance (NaN equals NaN) and containers element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rtol, atol) for k in a)
    return a == b


def differences(before: dict[str, Any], after: dict[str, Any], rtol: float, atol: float,
                skip: frozenset[str] = frozenset()) -> list[str]:
    """Human-readable differences between two outcomes of one study; ``skip`` holds claim keys and field names."""
    out = []
    claims_a = {c["key"]: c for c in before["claims"] if c["key"] not in skip}
    claims_b = {c["key"]: c for c in after["claims"] if c["key"] not in skip}
    for key in sorted(claims_a.keys() ^ claims_b.keys()):
        out.append(f"claim {key!r} only in {'before' if key in claims_a else 'after'}")
    for key in sorted(claims_a.keys() & claims_b.keys()):
        a, b = claims_a[key], claims_b[key]
        for field in ("text", "verdict", "evidence"):
            if a[field] != b[field]:
                out.append(f"claim {key!r} {field}: {a[field]!r} -> {b[field]!r}")
        for name in sorted(a["numbers"].keys() | b["numbers"].keys()):
            x, y = a["numbers"].get(name), b["numbers"].get(name)
            if x is None or y is None or not close(x, y, rtol, atol):
                out.append(f"claim {key!r} number {name!r}: {x} -> {y}")
    for field in sorted((before.keys() | after.keys()) - IGNORED - skip - {"claims"}):
        if not close(before.get(field), after.get(field), rtol, atol):
            out.append(f"{field} differs")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-9)
    parser.add_argument("--atol", type=float, default=1e-12)
    parser.add_argument("--skip", nargs="*", default=[], metavar="STUDY.KEY",
                        help="a claim key or outcome field of one study to leave out")
    args = parser.parse_args()
    skips: dict[str, set[str]] = {}
    for item in args.skip:
        study, _, key = item.partition(".")
        if not key:
            sys.exit(f"compare_outcomes: --skip takes STUDY.KEY (a claim key or a field such as tables). Got {item!r}.")
        skips.setdefault(study, set()).add(key)
    before, after = load(args.before), load(args.after)
    problems = [f"study {name!r} only in {'before' if name in before else 'after'}"
                for name in sorted(before.keys() ^ after.keys())]
    claims = 0
    for name in sorted(before.keys() & after.keys()):
        claims += len(before[name]["claims"])
        found = differences(before[name], after[name], args.rtol, args.atol, frozenset(skips.get(name, ())))
        problems += [f"{name}: {d}" for d in found]
    for line in problems:
        print(line)
    print(f"{len(before.keys() & after.keys())} studies, {claims} claims compared: "
          f"{'identical' if not problems else f'{len(problems)} difference(s)'} (rtol {args.rtol:g}).")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
