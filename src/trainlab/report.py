"""The self-contained HTML report of a study directory, and the stored outcomes it is rendered from.

A study directory holds ``outcomes/<study>.json`` (what ``StudyOutcome.to_dict`` wrote), the figures as PNG files, and
the rendered pages: ``index.html`` (every claim with its verdict, then the notes' claims inventory of
``docs/CLAIMS.md`` when it is there) and ``<study>.html`` (one page per study). Pages embed their images as base64
PNG and carry their CSS inline (the page shell of ``trainlab.html``), so one file opens from disk anywhere; every
string that comes from a study or a user is escaped. ``render_report(out_dir)`` rebuilds every page from the stored
outcomes alone, so re-rendering never retrains.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainlab.checkpoints import atomic_write_text
from trainlab.claims import INVENTORY_PATH, InventoryClaim, coverage, load_inventory
from trainlab.html import Markup, badge, esc, fmt, image_file, page, table

OUTCOMES_DIR = "outcomes"
VERDICT_COLORS = {"supported": "#1a7f37", "refuted": "#cf222e", "inconclusive": "#7d6608"}
MUTED_COLOR = "#57606a"


@dataclass
class ClaimOutcome:
    """A claim with its verdict, as stored and reported."""

    key: str
    text: str
    verdict: str
    evidence: str
    numbers: dict[str, float]


def check_study_name(name: Any) -> str:
    """``name`` if it can name the files of a study (``<name>.html``, ``outcomes/<name>.json``): lower snake_case,
    so never a path (no '/', '..' or '.'); otherwise a ValueError."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"A study name must be lower snake_case (letters, digits, '_'). Got {name!r} instead.")
    return name


def check_figure_path(path: Any) -> str:
    """``path`` if it names a PNG inside the study directory: relative, '/'-separated, with no '..', '.' or empty
    part and no backslash or drive; otherwise a ValueError (a report never reads or writes outside its folder)."""
    parts = path.split("/") if isinstance(path, str) else []
    if (not parts or any(p in ("", ".", "..") for p in parts) or "\\" in path or ":" in path
            or not path.endswith(".png")):
        raise ValueError(f"A figure path must be a relative '/'-separated path to a .png file inside the study "
                         f"directory, without '..'. Got {path!r} instead.")
    return path


@dataclass
class FigureRef:
    """A PNG written by a study; ``path`` is relative to the study directory (``check_figure_path``)."""

    path: str
    caption: str


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Any]]


@dataclass
class StudyOutcome:
    """Everything a study page shows; JSON round-trips through ``to_dict`` / ``from_dict``."""

    name: str
    title: str
    question: str
    mode: str
    seeds: list[int]
    claims: list[ClaimOutcome]
    figures: list[FigureRef]
    tables: list[Table]
    runtime_s: float = 0.0
    runs_trained: int = 0
    runs_cached: int = 0
    order: int = 1000  # position in the index: a study's ``order``; other outcomes (an ablation) come last

    def __post_init__(self) -> None:
        check_study_name(self.name)  # the name becomes file names: <name>.html, outcomes/<name>.json
        for figure in self.figures:
            check_figure_path(figure.path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StudyOutcome:
        raw = dict(raw)
        raw["claims"] = [ClaimOutcome(**c) for c in raw["claims"]]
        raw["figures"] = [FigureRef(**f) for f in raw["figures"]]
        raw["tables"] = [Table(**t) for t in raw["tables"]]
        return cls(**raw)


def save_outcome(outcome: StudyOutcome, out_dir: Path) -> Path:
    """Store an outcome as JSON under ``out_dir/outcomes``; figure paths are kept relative to ``out_dir``."""
    path = Path(out_dir) / OUTCOMES_DIR / f"{check_study_name(outcome.name)}.json"
    return atomic_write_text(path, json.dumps(outcome.to_dict(), indent=1, default=_json_default))


def load_outcomes(out_dir: Path) -> list[StudyOutcome]:
    """Every stored outcome in ``out_dir``, in the studies' order (then by name)."""
    folder = Path(out_dir) / OUTCOMES_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"No study outcomes in {str(out_dir)!r}: expected a folder {str(folder)!r}. "
                                f"Run `trainlab study NAME --out {out_dir}` first.")
    outcomes = [_read_outcome(p) for p in sorted(folder.glob("*.json"))]
    return sorted(outcomes, key=lambda o: (o.order, o.name))


def _read_outcome(path: Path) -> StudyOutcome:
    """One stored outcome; a file that is not one (bad JSON, missing or unknown keys) is a ValueError naming it."""
    try:
        return StudyOutcome.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"The stored outcome {str(path)!r} is not a study outcome: {type(e).__name__}: {e}. "
                         f"Run the study again to rewrite it.") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot store {type(value).__name__} {value!r} in a study outcome.")


# -------------------------------------------------------------------------------------------------------------- HTML

def _verdict_badge(verdict: str) -> Markup:
    return badge(verdict, VERDICT_COLORS.get(verdict, MUTED_COLOR))


def _claim_block(claim: ClaimOutcome) -> str:
    numbers = ", ".join(f"{esc(k)} = {esc(fmt(v))}" for k, v in claim.numbers.items())
    return (f'<div class="claim" id="{esc(claim.key)}"><p>{_verdict_badge(claim.verdict)} '
            f'<strong>{esc(claim.text)}</strong></p><p class="evidence">{esc(claim.evidence)}</p>'
            + (f'<p class="numbers">{numbers}</p>' if numbers else "") + "</div>")


def study_page(outcome: StudyOutcome, out_dir: Path) -> str:
    """The HTML of one study's page."""
    meta = (f"{esc(outcome.mode)} budget &middot; seeds {esc(', '.join(map(str, outcome.seeds)))} &middot; "
            f"{esc(fmt(outcome.runtime_s))} s")
    parts = [f'<p class="muted">{meta}</p><p>{esc(outcome.question)}</p>', "<h2>Claims</h2>"]
    parts += [_claim_block(c) for c in outcome.claims]
    if outcome.figures:
        parts.append("<h2>Figures</h2>")
        for fig in outcome.figures:
            parts.append(f"<figure>{image_file(_inside(out_dir, fig.path))}<figcaption>{esc(fig.caption)}"
                         "</figcaption></figure>")
    if outcome.tables:
        parts.append("<h2>Results</h2>")
        parts += [table(t.header, t.rows, title=t.title) for t in outcome.tables]
    return page(f"trainlab study: {outcome.title}", "".join(parts), heading=outcome.title,
                nav=[("index.html", Markup("&larr; all studies"))])


def _inside(out_dir: Path, relative: str) -> Path:
    """``out_dir / relative``, refused when it leaves ``out_dir`` (a '..' part, or a link pointing outside)."""
    path = Path(out_dir) / check_figure_path(relative)
    if not path.resolve().is_relative_to(Path(out_dir).resolve()):
        raise ValueError(f"The figure {relative!r} lies outside the study directory {str(out_dir)!r} "
                         f"(it resolves to {str(path.resolve())!r}).")
    return path


def index_page(outcomes: Sequence[StudyOutcome], inventory_path: str | Path | None = None) -> str:
    """The HTML of the index: every claim of every study with its verdict, linking to it on its study page; then
    the claims inventory of the notes (``docs/CLAIMS.md``, or ``inventory_path``) when that file exists."""
    counts = {v: sum(c.verdict == v for o in outcomes for c in o.claims) for v in VERDICT_COLORS}
    summary = " &middot; ".join(f"{_verdict_badge(v)} {n}" for v, n in counts.items())
    path = Path(inventory_path) if inventory_path is not None else INVENTORY_PATH
    inventory = load_inventory(path) if path.is_file() else None
    parts = ["<p>Each claim of the notes, put to the test over several seeds: the verdict comes from the measured "
             "numbers (mean, 95% interval, a significance test and a minimum effect).</p>", f"<p>{summary}</p>"]
    if inventory is not None:
        parts.append(f'<p>{_coverage_sentence(inventory)} (<a href="#notes">the list</a>)</p>')
    for o in outcomes:
        link = f"{o.name}.html"
        parts.append(f'<h2><a href="{esc(link)}">{esc(o.title)}</a></h2><p class="muted">{esc(o.question)} '
                     f"({esc(o.mode)}, {len(o.seeds)} seeds)</p>")
        rows = [[_verdict_badge(c.verdict), Markup(f'<a href="{esc(link)}#{esc(c.key)}">{esc(c.text)}</a>')]
                for c in o.claims]
        parts.append(table(["verdict", "claim"], rows, cls="text"))
    if inventory is not None:
        parts.append(_inventory_section(inventory, outcomes))
    return page("trainlab studies", "".join(parts))


def _coverage_sentence(inventory: Sequence[InventoryClaim]) -> Markup:
    tested, testable = coverage(inventory)
    untested = sum(c.testable and c.key is None for c in inventory)
    return esc(f"{tested} of {testable} testable claims in the notes have a study ({untested} untested).")


def _inventory_section(inventory: Sequence[InventoryClaim], outcomes: Sequence[StudyOutcome]) -> str:
    """The notes' tested claims, each with the study claim that tests it: a link to its anchor on the study page
    and its verdict when this report holds that study's outcome (plain text otherwise, so no link is dead)."""
    stored = {f"{o.name}.{c.key}": c for o in outcomes for c in o.claims}
    rows = []
    for claim in (c for c in inventory if c.key is not None):
        study, _, key = claim.key.partition(".")
        by: Any = claim.key
        verdict: Any = Markup('<span class="muted">not in this report</span>')
        if claim.key in stored:
            by = Markup(f'<a href="{esc(study)}.html#{esc(key)}">{esc(claim.key)}</a>')
            verdict = _verdict_badge(stored[claim.key].verdict)
        rows.append([claim.note.partition("_")[0], claim.number, claim.english, by, verdict])
    return (f'<h2 id="notes">The notes\' claims</h2><p>{_coverage_sentence(inventory)} docs/CLAIMS.md lists each '
            "claim of the notes with what tests it or why nothing can; here are those a study tests:</p>"
            + table(["note", "#", "claim in the notes", "tested by", "verdict"], rows, cls="text"))


def write_report(outcomes: Sequence[StudyOutcome], out_dir: Path) -> Path:
    """Write ``index.html`` and one page per outcome into ``out_dir``; returns the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for outcome in outcomes:
        atomic_write_text(out_dir / f"{check_study_name(outcome.name)}.html", study_page(outcome, out_dir))
    return atomic_write_text(out_dir / "index.html", index_page(outcomes))


def render_report(out_dir: str | Path) -> Path:
    """Re-render every page of a study directory from its stored outcomes (no training); returns the index path."""
    return write_report(load_outcomes(Path(out_dir)), Path(out_dir))
