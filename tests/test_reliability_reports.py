"""Hostile strings in reports: every page trainlab writes escapes them, and no report file lands outside its folder.

Run names, labels, study names, claim texts, captions and config values can hold HTML (``<script>``), quotes or path
tricks (``../../x``). Pages are parsed back with ``html.parser``: only trainlab's own tags and attributes may appear
(no ``<script>``, no ``on*=`` handler, no ``javascript:`` link) and each hostile string must come back as text.
What becomes a file name (a study name, a figure path) is refused with a ValueError that names it.
"""

from __future__ import annotations

import json
import os
import types
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.diagnostics.doctor import DiagnosisReport
from trainlab.diagnostics.rules import Finding
from trainlab.html import badge, esc, image, image_file, page, table
from trainlab.report import (ClaimOutcome, FigureRef, StudyOutcome, Table, index_page, load_outcomes, save_outcome,
                             study_page, write_report)

HOSTILE = ['<script>alert(1)</script>', '../../x', '"quoted" and \'single\'', '"><img src=x onerror=alert(1)>',
           "</td></tr></table><svg/onload=alert(1)>", "javascript:alert(1)", "&amp; &lt;b&gt;", "`${x}`<!--"]
EVIL = " | ".join(HOSTILE)
TAGS = {"html", "head", "meta", "title", "style", "body", "main", "nav", "a", "h1", "h2", "h3", "p", "strong", "span",
        "div", "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption"}
ATTRIBUTES = {"lang", "charset", "name", "content", "class", "id", "href", "style", "alt", "src"}
PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


class Parsed(HTMLParser):
    """The tags, attributes and text of a page, as a browser would read them."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def assert_safe(markup: str, *shown: str) -> None:
    """Only trainlab's tags and attributes, no script, handler or script link; every ``shown`` string as text."""
    assert "<script" not in markup.lower() and "<svg" not in markup.lower()
    parsed = Parsed(markup)
    assert set(parsed.tags) <= TAGS, set(parsed.tags) - TAGS
    assert {name for name, _ in parsed.attrs} <= ATTRIBUTES, parsed.attrs
    for name, value in parsed.attrs:
        if name == "href":
            assert not value.strip().lower().startswith("javascript:"), value
        if name == "src":
            assert value.startswith("data:image/png;base64,"), value
        if name == "style":
            assert all(c not in value for c in "\"'<>();"), value
    text = "".join(parsed.text)
    for s in shown:
        assert s in text, s


def figure_file(folder: Path, name: str = "line") -> str:
    path = folder / "figures" / "hostile" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG)
    return f"figures/hostile/{name}.png"


def hostile_outcome(folder: Path, text: str = EVIL, name: str = "hostile") -> StudyOutcome:
    """An outcome whose every string a user or a study can set holds ``text``."""
    claims = [ClaimOutcome(f"key {text}", f"claim {text}", "supported", f"evidence {text}", {f"n {text}": 1.5}),
              ClaimOutcome("k2", "plain", text, "because", {})]
    return StudyOutcome(name, f"title {text}", f"question {text}", f"mode {text}", [0, 1],
                        claims, [FigureRef(figure_file(folder), f"caption {text}")],
                        [Table(f"table {text}", ["arm", text], [[text, 1.0], ["run", text]])])


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def outside(out: Path, tmp_path: Path) -> list[str]:
    """Everything in tmp_path's parent (other tests' folders included) except ``out`` and pytest's own
    ``*current`` links: what a report must never add to."""
    found = []
    for root, dirs, files in os.walk(tmp_path.parent):
        for name in dirs + files:
            path = Path(root) / name
            if not path.is_relative_to(out) and not name.endswith("current"):
                found.append(str(path))
    return sorted(found)


# ------------------------------------------------------------------------------------------------- study pages

def test_study_and_index_pages_escape_every_hostile_string(tmp_path):
    outcome = hostile_outcome(tmp_path)
    assert_safe(study_page(outcome, tmp_path), *HOSTILE, f"caption {EVIL}", f"claim {EVIL}")
    assert_safe(index_page([outcome]), *HOSTILE, f"title {EVIL}")


def test_written_report_stays_in_its_folder_and_escapes(tmp_path):
    out = tmp_path / "report"
    outcome = hostile_outcome(out)
    before = outside(out, tmp_path)
    save_outcome(outcome, out)
    index = write_report(load_outcomes(out), out)
    assert index == out / "index.html"
    assert set(listing(out)) == {"figures", "figures/hostile", "figures/hostile/line.png", "outcomes",
                                 "outcomes/hostile.json", "hostile.html", "index.html"}
    assert outside(out, tmp_path) == before
    for page_file in ("index.html", "hostile.html"):
        assert_safe((out / page_file).read_text(), *HOSTILE)


TEXT = st.text(st.one_of(st.sampled_from(list("<>&\"'/=;`!-")), st.characters(exclude_categories=("Cs", "Cc"))),
               max_size=24)


@settings(max_examples=40, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TEXT)
def test_any_text_is_shown_as_text_and_adds_no_tag(tmp_path, text):
    outcome = hostile_outcome(tmp_path, text)
    assert_safe(study_page(outcome, tmp_path), f"claim {text}", f"caption {text}", f"table {text}")
    assert_safe(index_page([outcome]), f"title {text}", f"question {text}")


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "x.html", "<script>", "", "Study", 3])
def test_a_study_name_that_would_be_a_path_is_refused_naming_it(tmp_path, name):
    with pytest.raises(ValueError, match="lower snake_case") as err:
        hostile_outcome(tmp_path, name=name)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["../../evil", "../outside", "/tmp/evil"])
def test_a_name_changed_after_creation_is_refused_before_anything_is_written(tmp_path, name):
    out = tmp_path / "report"
    outcome = hostile_outcome(out)
    outcome.name = name
    before, inside = outside(out, tmp_path), listing(out)
    for write in (lambda: save_outcome(outcome, out), lambda: write_report([outcome], out)):
        with pytest.raises(ValueError, match="lower snake_case"):
            write()
    assert outside(out, tmp_path) == before and listing(out) == inside


@pytest.mark.parametrize("path", ["../../etc/passwd.png", "/etc/x.png", "figures/../../x.png", "figures\\..\\x.png",
                                  "C:/x.png", "figures/./x.png", "figures//x.png", "figures/x.txt", "", 3])
def test_a_figure_path_that_leaves_the_folder_is_refused_naming_it(tmp_path, path):
    outcome = hostile_outcome(tmp_path)
    with pytest.raises(ValueError, match="figure path") as err:
        StudyOutcome(**{**outcome.to_dict(), "claims": outcome.claims, "tables": outcome.tables,
                        "figures": [FigureRef(path, "c")]})
    assert repr(path) in str(err.value)
    outcome.figures[0].path = path
    with pytest.raises(ValueError, match="figure path"):
        study_page(outcome, tmp_path)


def test_a_figure_linked_to_a_file_outside_is_refused(tmp_path):
    out = tmp_path / "report"
    outcome = hostile_outcome(out)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    link = out / "figures" / "hostile" / "link.png"
    os.symlink(secret, link)
    outcome.figures[0].path = "figures/hostile/link.png"
    with pytest.raises(ValueError, match="outside the study directory"):
        study_page(outcome, out)


def test_a_hostile_stored_outcome_is_refused_and_the_cli_exits_2(tmp_path):
    out = tmp_path / "report"
    (out / "outcomes").mkdir(parents=True)
    stored = hostile_outcome(out).to_dict()
    before = outside(out, tmp_path)
    for raw in ({**stored, "name": "../../evil"}, {"name": "x"}, "[1, 2", {**stored, "figures": [{"path": "../x.png",
                                                                                                  "caption": ""}]}):
        (out / "outcomes" / "bad.json").write_text(raw if isinstance(raw, str) else json.dumps(raw))
        with pytest.raises(ValueError, match="bad.json"):
            load_outcomes(out)
        result = CliRunner().invoke(app, ["report", str(out)])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert "Traceback" not in result.output and "bad.json" in result.output
    assert outside(out, tmp_path) == before and "index.html" not in listing(out)


# ------------------------------------------------------------------------------------------------- html helpers

def test_html_helpers_escape_text_and_attributes(tmp_path):
    assert esc(EVIL) == EVIL.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        '"', "&quot;").replace("'", "&#x27;")
    cells = table(HOSTILE, [HOSTILE, [1.5, EVIL]], title=EVIL, cls=EVIL)
    weird = tmp_path / '"><script>alert(1)<.png'
    weird.write_bytes(PNG)
    body = cells + badge(EVIL, "#1a7f37") + image_file(weird) + image("QUJD", EVIL)
    markup = page(EVIL, body, heading=EVIL, nav=[("index.html", EVIL), ("https://example.org/?q=<x>", "ok")])
    assert_safe(markup, *HOSTILE)
    assert Parsed(markup).attrs.count(("alt", weird.stem)) == 1


@pytest.mark.parametrize("call,message", [
    (lambda: badge("x", "red;background:url(javascript:alert(1))"), "colour"),
    (lambda: badge("x", '#fff" onmouseover="alert(1)'), "colour"),
    (lambda: image('x" onerror="alert(1)', "alt"), "base64"),
    (lambda: page("t", "", nav=[("javascript:alert(1)", "x")]), "relative or http"),
    (lambda: page("t", "", nav=[(" JavaScript:alert(1)", "x")]), "relative or http"),
    (lambda: page("t", "", nav=[("data:text/html,<script>", "x")]), "relative or http"),
])
def test_html_helpers_refuse_what_would_run_code(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------------- doctor page

def test_the_doctor_page_escapes_hostile_layer_names_notes_and_titles(monkeypatch):
    import trainlab.diagnostics.figures as doctor_figures

    def figures(record):
        fig, ax = plt.subplots(figsize=(1, 1))
        return {f"figure {EVIL}": fig}

    monkeypatch.setattr(doctor_figures, "record_figures", figures)
    record = types.SimpleNamespace(meta={"notes": [f"note {EVIL}"]}, losses=[1.0, 0.5])
    findings = [Finding(f"code {EVIL}", f"layer {EVIL}", 3, "error", f"evidence {EVIL}", f"fix {EVIL}")]
    report = DiagnosisReport(findings, record, {f"metric {EVIL}": 0.5}, title=f"title {EVIL}")
    for markup in (report.to_html(), report._repr_html_()):
        assert_safe(markup, f"layer {EVIL}", f"note {EVIL}", f"fix {EVIL}")
    assert_safe(report.to_html(), f"figure {EVIL}", f"metric {EVIL}", f"title {EVIL}")
