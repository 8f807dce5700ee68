"""The self-contained HTML report of a study directory, and the stored outcomes it is rendered from.

A study directory holds ``outcomes/<study>.json`` (what ``StudyOutcome.to_dict`` wrote), the figures as PNG files, and
the rendered pages: ``index.html`` (every claim with its verdict) and ``<study>.html`` (one page per study). Pages embed
their images as base64 PNG and carry their CSS inline (the page shell of ``trainlab.html``), so one file opens from
disk anywhere; every string that comes from a study or a user is escaped. ``render_report(out_dir)`` rebuilds every
page from the stored outcomes alone, so re-rendering never retrains.
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


@dataclass
class FigureRef:
    """A PNG written by a study; ``path`` is relative to the study directory."""

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
        # The name becomes a file name (<name>.html, outcomes/<name>.json), so it must be a plain identifier.
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"A study name must be lower snake_case (letters, digits, '_'). "
                             f"Got {self.name!r} instead.")

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
    path = Path(out_dir) / OUTCOMES_DIR / f"{outcome.name}.json"
    return atomic_write_text(path, json.dumps(outcome.to_dict(), indent=1, default=_json_default))


def load_outcomes(out_dir: Path) -> list[StudyOutcome]:
    """Every stored outcome in ``out_dir``, in the studies' order (then by name)."""
    folder = Path(out_dir) / OUTCOMES_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"No study outcomes in {str(out_dir)!r}: expected a folder {str(folder)!r}. "
                                f"Run `trainlab study NAME --out {out_dir}` first.")
    outcomes = [StudyOutcome.from_dict(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
    return sorted(outcomes, key=lambda o: (o.order, o.name))


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
            parts.append(f"<figure>{image_file(Path(out_dir) / fig.path)}<figcaption>{esc(fig.caption)}"
                         "</figcaption></figure>")
    if outcome.tables:
        parts.append("<h2>Results</h2>")
        parts += [table(t.header, t.rows, title=t.title) for t in outcome.tables]
    return page(f"trainlab study: {outcome.title}", "".join(parts), heading=outcome.title,
                nav=[("index.html", Markup("&larr; all studies"))])


def index_page(outcomes: Sequence[StudyOutcome]) -> str:
    """The HTML of the index: every claim of every study with its verdict, linking to it on its study page."""
    counts = {v: sum(c.verdict == v for o in outcomes for c in o.claims) for v in VERDICT_COLORS}
    summary = " &middot; ".join(f"{_verdict_badge(v)} {n}" for v, n in counts.items())
    parts = ["<p>Each claim of the notes, put to the test over several seeds: the verdict comes from the measured "
             "numbers (mean, 95% interval, a significance test and a minimum effect).</p>", f"<p>{summary}</p>"]
    for o in outcomes:
        link = f"{o.name}.html"
        parts.append(f'<h2><a href="{esc(link)}">{esc(o.title)}</a></h2><p class="muted">{esc(o.question)} '
                     f"({esc(o.mode)}, {len(o.seeds)} seeds)</p>")
        rows = [[_verdict_badge(c.verdict), Markup(f'<a href="{esc(link)}#{esc(c.key)}">{esc(c.text)}</a>')]
                for c in o.claims]
        parts.append(table(["verdict", "claim"], rows, cls="text"))
    return page("trainlab studies", "".join(parts))


def write_report(outcomes: Sequence[StudyOutcome], out_dir: Path) -> Path:
    """Write ``index.html`` and one page per outcome into ``out_dir``; returns the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for outcome in outcomes:
        atomic_write_text(out_dir / f"{outcome.name}.html", study_page(outcome, out_dir))
    return atomic_write_text(out_dir / "index.html", index_page(outcomes))


def render_report(out_dir: str | Path) -> Path:
    """Re-render every page of a study directory from its stored outcomes (no training); returns the index path."""
    return write_report(load_outcomes(Path(out_dir)), Path(out_dir))
