"""The report opens from disk in headless Chromium (Debian's ``chromium`` package) with its images and styles.

Each page is copied with a small script appended that, once the page has loaded, writes into the DOM what it sees
(every image's decoded width, the styled badges, whether the page is wider than a laptop window); Chromium's
``--dump-dom`` prints that DOM.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from trainlab.figures import bars_figure, curves_figure, save_figure
from trainlab.report import ClaimOutcome, FigureRef, StudyOutcome, Table, write_report

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                               "(apt-get install -y chromium)")

PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images].map(i => i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0);
  const badges = [...document.querySelectorAll(".badge")].map(b => getComputedStyle(b).backgroundColor);
  const wide = document.documentElement.scrollWidth > window.innerWidth;
  document.body.setAttribute("data-probe", JSON.stringify({images, badges, wide}));
});</script>"""


def _report(out: Path) -> None:
    curves = save_figure(curves_figure({"adam": [[2.0, 1.0, 0.5], [2.1, 1.1, 0.4]], "sgd": [[2.0, 1.8, 1.6]]},
                                       title="loss", xlabel="epoch", ylabel="loss"), out / "figures/demo/curves.png")
    bars = save_figure(bars_figure({"adam": [10, 12, 11], "sgd": [30, 28, 35]}, title="steps", ylabel="steps"),
                       out / "figures/demo/bars.png")
    plt.close("all")
    claims = [ClaimOutcome("fast", "Adam converges fastest.", "supported", "10 vs 30 steps.", {"p": 0.001}),
              ClaimOutcome("notes", "He's std is 2/√n.", "refuted", "ratio 22 > 2.", {"ratio": 22.0}),
              ClaimOutcome("few", "A <b>claim</b> with two seeds.", "inconclusive", "n = 2.", {})]
    outcome = StudyOutcome("demo", "Demo study", "Which optimizer is fastest?", "quick", [0, 1, 2], claims,
                           [FigureRef(str(p.relative_to(out)), p.stem) for p in (curves, bars)],
                           [Table("results", ["optimizer", "steps"], [["adam", 11.0], ["sgd", 31.0]])])
    write_report([outcome], out)


def _probe(page: Path, tmp_path: Path) -> dict:
    import json

    probed = page.with_name(f"probed-{page.name}")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,800", "--dump-dom",
         probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, f"the page did not finish loading: {result.stdout[:500]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_index_and_study_page_render_with_their_images(tmp_path):
    out = tmp_path / "report"
    _report(out)
    study = _probe(out / "demo.html", tmp_path)
    assert len(study["images"]) == 2 and all(width > 100 for width in study["images"])
    assert len(study["badges"]) == 3 and len(set(study["badges"])) == 3  # one colour per verdict
    assert not study["wide"]
    index = _probe(out / "index.html", tmp_path)
    assert index["images"] == []
    assert len(index["badges"]) == 3 + 3 and "rgba(0, 0, 0, 0)" not in index["badges"]
    assert not index["wide"]


def test_the_report_still_renders_when_moved(tmp_path):
    out = tmp_path / "report"
    _report(out)
    moved = tmp_path / "elsewhere"
    shutil.copy(out / "demo.html", moved.with_suffix(".html"))
    assert all(width > 100 for width in _probe(moved.with_suffix(".html"), tmp_path)["images"])
