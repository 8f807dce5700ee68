"""The claims inventory (docs/CLAIMS.md): its keys name study claims, every study claim is in it, its rows parse,
and the index page shows its coverage."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from trainlab.claims import INVENTORY_PATH, InventoryClaim, coverage, load_inventory, parse_inventory
from trainlab.report import ClaimOutcome, StudyOutcome, index_page
from trainlab.studies import STUDIES

HEADER = "| # | original | English | verdict by | note |\n|---|---|---|---|---|\n"


def inventory_text(*rows: str, note: str = "000_abc.txt") -> str:
    return f"# Claims\n\n## {note}\n\nSome text.\n\n{HEADER}" + "".join(f"{r}\n" for r in rows)


def fake_studies(**claims: list[str]) -> dict[str, SimpleNamespace]:
    return {name: SimpleNamespace(claims=[SimpleNamespace(key=k) for k in keys]) for name, keys in claims.items()}


@pytest.fixture(scope="module")
def inventory() -> list[InventoryClaim]:
    return load_inventory()


def test_every_key_in_the_inventory_names_a_study_claim(inventory):
    wrong = []
    for claim in (c for c in inventory if c.key is not None):
        study, _, key = claim.key.partition(".")
        if study not in STUDIES:
            wrong.append(f"{claim.note} #{claim.number}: no study {study!r} (studies: {', '.join(STUDIES)})")
        elif key not in {c.key for c in STUDIES[study].claims}:
            wrong.append(f"{claim.note} #{claim.number}: study {study!r} has no claim {key!r}")
    assert not wrong, "\n".join(wrong)


def test_every_study_claim_is_in_the_inventory(inventory):
    listed = {c.key for c in inventory}
    missing = [f"{name}.{c.key}" for name, s in STUDIES.items() for c in s.claims if f"{name}.{c.key}" not in listed]
    assert not missing, f"study claims missing from {INVENTORY_PATH}: {', '.join(missing)}"


def test_the_inventory_covers_the_five_notes_numbered_in_order(inventory):
    notes = sorted({c.note for c in inventory})
    assert [n[:3] for n in notes] == ["000", "001", "002", "003", "004"]
    for note in notes:
        assert [c.number for c in inventory if c.note == note] == list(range(1, sum(c.note == note
                                                                                    for c in inventory) + 1))
    tested, testable = coverage(inventory, STUDIES)
    # Every testable row may be tested (issue 12 gave each a verdict); some rows are not testable.
    assert (tested, testable) == coverage(inventory) and 0 < tested <= testable < len(inventory)


def test_a_row_parses_into_its_claim():
    text = inventory_text("| 1 | 원문 | English | `bn.speeds` | how |", "| 2 | 원문 \\| 둘 | two | untested | as X |",
                          "| 3 | 정의 | a definition | not testable: definition | |")
    first, second, third = parse_inventory(text)
    assert first == InventoryClaim("000_abc.txt", 1, "원문", "English", "bn.speeds", "how")
    assert second.original == "원문 | 둘" and second.key is None and second.reason == "untested: as X"
    assert second.testable and not third.testable and third.reason == "not testable: definition"


def test_tables_outside_a_note_section_are_ignored():
    text = "## Other\n\n| a | b |\n|---|---|\n| x | y |\n" + inventory_text("| 1 | o | e | untested | |")
    assert len(parse_inventory(text)) == 1


@pytest.mark.parametrize("row, message", [
    ("| 1 | o | e | untested |", "needs 5 cells"),
    ("| 1 | o | e | untested | n | extra |", "needs 5 cells"),
    ("| one | o | e | untested | |", "positive whole number"),
    ("| 0 | o | e | untested | |", "positive whole number"),
    ("| 1 |  | e | untested | |", "must not be empty"),
    ("| 1 | o | e | bn.speeds | |", "in backticks"),
    ("| 1 | o | e | `BN.speeds` | |", "verdict by"),
    ("| 1 | o | e | not testable: boring | |", "REASON one of"),
    ("| 1 | o | e | tested | |", "verdict by"),
    ("| 1 | o | e | untested | no end", "must end with"),
])
def test_a_malformed_row_is_an_error_naming_its_line(row, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_inventory(inventory_text(row), "CLAIMS.md")
    assert "CLAIMS.md, line 9:" in str(info.value)


def test_a_number_listed_twice_in_a_note_is_an_error():
    with pytest.raises(ValueError, match="line 10: claim #1 of 000_abc.txt is listed twice"):
        parse_inventory(inventory_text("| 1 | o | e | untested | |", "| 1 | p | f | untested | |"))


def test_coverage_counts_tested_of_testable_claims():
    text = inventory_text("| 1 | o | e | `a.x` | |", "| 2 | o | e | `a.gone` | |", "| 3 | o | e | `b.y` | |",
                          "| 4 | o | e | untested | |", "| 5 | o | e | not testable: opinion | |",
                          "| 6 | o | e | `a.x` | Derived: from row 1 |")
    claims = parse_inventory(text)
    assert claims[-1].derived and claims[-1].testable and not claims[0].derived
    assert coverage(claims) == (3, 4)  # the derived row counts in neither
    assert coverage(claims, fake_studies(a=["x"], b=["y"])) == (2, 4)  # a.gone names no claim of study a
    assert coverage(claims, {}) == (0, 4)
    assert coverage([], STUDIES) == (0, 0)


def test_importing_the_inventory_parser_does_not_import_torch():
    code = "import sys, trainlab.claims; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def _outcome(verdict: str = "supported") -> StudyOutcome:
    return StudyOutcome("bn", "Batch norm", "q", "quick", [0], [ClaimOutcome("speeds", "BN speeds", verdict, "e", {})],
                        [], [])


def test_the_index_shows_the_coverage_and_links_each_tested_claim(tmp_path):
    path = tmp_path / "CLAIMS.md"
    path.write_text(inventory_text("| 1 | 원문 | <b>bold</b> | `bn.speeds` | |", "| 2 | o | other | `bn.later` | |",
                                   "| 3 | o | e | untested | |", "| 4 | o | e | not testable: remark | |"))
    page = index_page([_outcome("refuted")], inventory_path=path)
    assert "2 of 3 testable claims in the notes have a study (1 untested)." in page
    assert '<a href="bn.html#speeds">bn.speeds</a>' in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert page.count(">refuted<") == 3  # the verdict counts, the study's own list, and the inventory's row
    assert "bn.later" in page and 'href="bn.html#later"' not in page and "not in this report" in page


def test_the_index_omits_the_inventory_when_the_file_is_missing(tmp_path):
    page = index_page([_outcome()], inventory_path=tmp_path / "absent.md")
    assert "testable claims" not in page and 'id="notes"' not in page
    assert "BN speeds" in page


def test_the_index_shows_the_repository_inventory_by_default():
    tested, testable = coverage(load_inventory())
    assert f"{tested} of {testable} testable claims in the notes have a study" in index_page([])


def test_the_grouped_list_of_untested_claims_names_exactly_the_untested_rows(inventory):
    grouped = INVENTORY_PATH.read_text(encoding="utf-8").split("## Untested claims, grouped", 1)[1]
    listed = set()
    for group in re.findall(r"\((\d{3}: [0-9;:, ]+)\)", grouped):
        for part in group.split(";"):
            note, numbers = part.split(":")
            listed |= {(note.strip(), int(n)) for n in numbers.split(",")}
    untested = {(c.note[:3], c.number) for c in inventory if c.testable and c.key is None}
    assert listed == untested, f"only listed: {sorted(listed - untested)}; not listed: {sorted(untested - listed)}"


def test_each_notes_section_states_how_many_rows_it_has():
    sections = re.split(r"^## ", INVENTORY_PATH.read_text(encoding="utf-8"), flags=re.M)[1:]
    notes = [s for s in sections if not s.startswith("Untested")]
    assert len(notes) == 5
    for section in notes:
        stated = re.search(r"(\d+) rows below", section)
        rows = re.findall(r"^\| *\d+ *\|", section, flags=re.M)
        assert stated is not None and int(stated.group(1)) == len(rows), section.splitlines()[0]
