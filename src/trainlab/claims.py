"""The claims inventory of the study notes (``docs/CLAIMS.md``): every claim, and the study claim that tests it.

The inventory is Markdown: a ``## <note file>.txt`` section per note, holding one table whose columns are
``| # | original | English | verdict by | note |``. *Verdict by* is a study claim's key in backticks
(`` `batch_norm.bn_regularizes` ``), ``untested`` (testable, no study yet) or ``not testable: REASON``.
``load_inventory`` parses it (a malformed row is a ValueError naming its line); ``coverage`` counts how many of the
testable claims a study tests (rows whose note starts with "Derived" list a study claim against the sentence it
derives from, and count in neither). Plain text only: importing this module imports no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INVENTORY_PATH = Path(__file__).parents[2] / "docs" / "CLAIMS.md"  # absent in an installed package
COLUMNS = ("#", "original", "English", "verdict by", "note")
UNTESTED = "untested"
NOT_TESTABLE = "not testable"
DERIVED = "Derived"
REASONS = ("definition", "math", "history", "remark", "opinion", "advice", "vague", "explanation")
NOTE_HEADING = re.compile(r"##\s+(\d{3}_[0-9a-f]+\.txt)\s*")
KEY = re.compile(r"`([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)`")


@dataclass(frozen=True)
class InventoryClaim:
    """One claim of a note: ``key`` is ``study.claim`` when a study tests it, else None; ``reason`` is the row's
    note for a tested claim, ``untested`` (and how it could be tested) or ``not testable: REASON`` (and why)."""

    note: str
    number: int
    original: str
    english: str
    key: str | None
    reason: str

    @property
    def testable(self) -> bool:
        return self.key is not None or self.reason.startswith(UNTESTED)

    @property
    def derived(self) -> bool:
        """A study claim that no sentence states, listed against the sentence it derives from."""
        return self.reason.startswith(DERIVED)


def load_inventory(path: str | Path | None = None) -> list[InventoryClaim]:
    """Every claim of the inventory at ``path`` (default: the repository's ``docs/CLAIMS.md``), in file order."""
    path = Path(path) if path is not None else INVENTORY_PATH
    return parse_inventory(path.read_text(encoding="utf-8"), str(path))


def parse_inventory(text: str, source: str = "CLAIMS.md") -> list[InventoryClaim]:
    """The claims of inventory ``text``; ``source`` names it in errors. Tables outside a note section are ignored."""
    claims: list[InventoryClaim] = []
    note: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{source}, line {lineno}"
        if line.startswith("## "):
            match = NOTE_HEADING.fullmatch(line)
            note = match.group(1) if match else None
        elif note is not None and line.startswith("|"):
            cells = split_row(line, where)
            if tuple(cells) == COLUMNS or all(set(c) <= set("-: ") for c in cells):
                continue  # the header and its separator
            claims.append(parse_row(note, cells, where))
            if sum(c.note == note and c.number == claims[-1].number for c in claims) > 1:
                raise ValueError(f"{where}: claim #{claims[-1].number} of {note} is listed twice.")
    return claims


def split_row(line: str, where: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` is a literal bar); a row without the five columns is an error."""
    if not line.rstrip().endswith("|"):
        raise ValueError(f"{where}: a table row must end with '|'. Got {line!r} instead.")
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
    if len(cells) != len(COLUMNS):
        raise ValueError(f"{where}: a claim row needs {len(COLUMNS)} cells ({' | '.join(COLUMNS)}). "
                         f"Got {len(cells)} instead.")
    return cells


def parse_row(note: str, cells: Sequence[str], where: str) -> InventoryClaim:
    number, original, english, verdict_by, remark = cells
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"{where}: the '#' cell must be a positive whole number. Got {number!r} instead.")
    if not original or not english:
        raise ValueError(f"{where}: the 'original' and 'English' cells must not be empty.")
    key, reason = parse_verdict_by(verdict_by, where)
    reason = f"{reason}: {remark}" if reason and remark else reason or remark
    return InventoryClaim(note, int(number), original, english, key, reason)


def parse_verdict_by(cell: str, where: str) -> tuple[str | None, str]:
    """``(key, "")`` for a study claim's key, ``(None, "untested")`` or ``(None, "not testable: REASON")``."""
    if match := KEY.fullmatch(cell):
        return f"{match.group(1)}.{match.group(2)}", ""
    if cell == UNTESTED:
        return None, UNTESTED
    reason = cell.removeprefix(f"{NOT_TESTABLE}:").strip()
    if cell.startswith(f"{NOT_TESTABLE}:") and reason in REASONS:
        return None, f"{NOT_TESTABLE}: {reason}"
    raise ValueError(f"{where}: 'verdict by' must be a study claim key in backticks (`study.claim_key`), "
                     f"'{UNTESTED}' or 'not testable: REASON' with REASON one of {', '.join(REASONS)}. "
                     f"Got {cell!r} instead.")


def study_claim_keys(studies: Mapping[str, Any]) -> set[str]:
    """``study.claim`` for every claim of ``studies`` (``trainlab.studies.STUDIES``, or anything whose values have
    ``claims`` with a ``key``, such as stored ``StudyOutcome``\\ s)."""
    return {f"{name}.{claim.key}" for name, study in studies.items() for claim in study.claims}


def coverage(inventory: Sequence[InventoryClaim], studies: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """``(tested, testable)``: how many of the notes' testable claims a study claim tests, of how many there are;
    derived rows (claims the notes do not state) count in neither.

    With ``studies`` a key counts only when it names one of their claims; without, every key counts
    (``tests/test_claims.py`` checks that each names a study claim).
    """
    stated = [c for c in inventory if not c.derived]
    known = study_claim_keys(studies) if studies is not None else None
    tested = sum(c.key is not None and (known is None or c.key in known) for c in stated)
    return tested, sum(c.testable for c in stated)
