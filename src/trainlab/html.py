"""The one HTML page shell and stylesheet of trainlab's pages (study pages, the index, the doctor page).

Pages are self-contained: the CSS is inline and images are embedded as base64 PNG, so one file opens from disk
anywhere. Every value that comes from a study, a model or a user goes through ``esc``; only ``Markup`` (what the
functions here return) is inserted as it is, so a cell or a caption can never smuggle in a tag. What goes into an
attribute that is not plain text is checked instead: a colour must be a CSS colour, image data base64, and a link
relative or http(s) (never ``javascript:``).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#fff;
line-height:1.5}
main{max-width:980px;margin:0 auto;padding:1.2rem 1.4rem 3rem}
h1{font-size:1.6rem;margin:.4rem 0}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
a{color:#0969da}.muted{color:#57606a;font-size:.9rem}
.badge{display:inline-block;padding:.05rem .55rem;border-radius:1rem;color:#fff;font-size:.8rem;font-weight:600;
text-transform:uppercase;letter-spacing:.03em;white-space:nowrap}
.claim{border:1px solid #d0d7de;border-radius:6px;padding:.7rem .9rem;margin:.7rem 0}
.claim p{margin:.3rem 0}.evidence{white-space:pre-line}
.note{border-left:4px solid #0969da;padding-left:8px}
.numbers{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;color:#57606a;overflow-wrap:anywhere}
figure{margin:1.2rem 0}img{max-width:100%;height:auto}figure img{border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:right}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}.text td,.text th{text-align:left;vertical-align:top}
.text td{min-width:5em}
nav{font-size:.9rem}
"""


class Markup(str):
    """Text that is already HTML: ``esc`` leaves it as it is, so nothing is escaped twice."""


def esc(value: Any) -> Markup:
    """Any value as escaped HTML text (quotes included, so it is safe in attributes too); Markup unchanged."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def fmt(value: Any) -> str:
    """Numbers with 4 significant digits; text (Markup included) as it is; other values as ``str``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return str(v) if math.isnan(v) or math.isinf(v) else f"{v:.4g}"
    return str(value)


def css_color(color: str) -> str:
    """``color`` if it is a CSS colour (``#1a7f37`` or a name such as ``red``); otherwise a ValueError."""
    if not isinstance(color, str) or not re.fullmatch(r"#[0-9a-fA-F]{3,8}|[a-zA-Z]{1,30}", color):
        raise ValueError(f"A colour must be '#' and 3 to 8 hex digits or a CSS colour name. Got {color!r} instead.")
    return color


def safe_href(href: str) -> str:
    """``href`` if it is a relative link or an http(s) address; a ``javascript:`` (or any other scheme) link is a
    ValueError, since it would run in the reader's browser."""
    scheme = re.match(r"\s*([a-zA-Z][a-zA-Z0-9+.-]*):", str(href))
    if scheme and scheme.group(1).lower() not in ("http", "https"):
        raise ValueError(f"A link must be relative or http(s). Got {href!r} instead.")
    return str(href)


def badge(label: str, color: str) -> Markup:
    """A rounded label on a ``color`` background (a verdict)."""
    return Markup(f'<span class="badge" style="background:{css_color(color)}">{esc(label)}</span>')


def image(png_base64: str, alt: str) -> Markup:
    """An ``<img>`` with the PNG embedded as data (``trainlab.figures.png_base64`` makes one from a figure)."""
    if not isinstance(png_base64, str) or not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", png_base64):
        raise ValueError(f"The image data must be base64 text. Got {str(png_base64)[:40]!r} instead.")
    return Markup(f'<img alt="{esc(alt)}" src="data:image/png;base64,{png_base64}">')


def image_file(path: Path) -> Markup:
    """A PNG file embedded as an ``<img>``, its file name (without suffix) as the alt text."""
    return image(base64.b64encode(Path(path).read_bytes()).decode("ascii"), Path(path).stem)


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, title: str = "", cls: str = "") -> Markup:
    """A table (cells through ``fmt`` and ``esc``) that scrolls in its own box when wider than the page.

    ``cls="text"`` aligns every column left and top, for tables of sentences rather than numbers.
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    caption = f"<h3>{esc(title)}</h3>" if title else ""
    attr = f' class="{esc(cls)}"' if cls else ""
    return Markup(f'{caption}<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                  "</table></div>")


def page(title: str, body: str, *, heading: str | None = None, nav: Sequence[tuple[str, str]] = ()) -> str:
    """A complete page: ``nav`` links ``(href, label)`` above the ``heading`` (default: the title), then ``body``.

    The viewport line makes phones and narrow windows lay the page out at their own width instead of zooming out.
    """
    links = " &middot; ".join(f'<a href="{esc(safe_href(href))}">{esc(label)}</a>' for href, label in nav)
    top = f"<nav>{links}</nav>" if nav else ""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{top}"
            f"<h1>{esc(heading if heading is not None else title)}</h1>{body}</main></body></html>\n")
