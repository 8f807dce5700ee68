from __future__ import annotations

import base64
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats as sps

from trainlab.figures import bars_figure, curves_figure, mean_band, stack_ragged
from trainlab.report import (
    ClaimOutcome,
    FigureRef,
    StudyOutcome,
    Table,
    index_page,
    load_outcomes,
    render_report,
    save_outcome,
    study_page,
    write_report,
)

EVIL = '<script>alert("x")</script>&'


def _outcome(tmp_path, name="fake", text=EVIL) -> StudyOutcome:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    path = tmp_path / "figures" / name / "line.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    claims = [ClaimOutcome("c1", text, "supported", f"evidence {text}", {f"n {text}": 3.0}),
              ClaimOutcome("c2", "plain claim", "refuted", "because", {"ratio": 22.4})]
    return StudyOutcome(name, f"title {text}", f"question {text}", "quick", [0, 1, 2], claims,
                        [FigureRef(f"figures/{name}/line.png", f"caption {text}")],
                        [Table(f"table {text}", ["arm", text], [[text, 1.5]])], runtime_s=1.0)


def test_mean_band_matches_the_t_interval_per_point():
    values = np.array([[1.0, 2.0], [2.0, 4.0], [4.0, 9.0]])
    mean, low, high = mean_band(values)
    for j in range(2):
        col = values[:, j]
        half = sps.t.ppf(0.975, 2) * col.std(ddof=1) / np.sqrt(3)
        assert mean[j] == pytest.approx(col.mean())
        assert (low[j], high[j]) == pytest.approx((col.mean() - half, col.mean() + half))


def test_mean_band_ignores_missing_points_and_has_no_width_with_one_value():
    values = stack_ragged([[1.0, 2.0, 3.0], [3.0, 4.0]])
    assert np.isnan(values[1, 2])
    mean, low, high = mean_band(values)
    assert mean.tolist() == [2.0, 3.0, 3.0]
    assert low[2] == high[2] == 3.0
    assert low[0] < 2.0 < high[0]
    with pytest.raises(ValueError, match="2-D"):
        mean_band(np.zeros(3))


def test_figure_helpers_draw_one_line_or_bar_per_label():
    fig = curves_figure({"a": [[1, 2, 3], [1, 2]], "b": [[3, 2, 1]]}, title="t", xlabel="x", ylabel="y")
    assert len(fig.axes[0].get_lines()) == 2
    plt.close(fig)
    fig = bars_figure({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0]}, title="t", ylabel="y")
    assert len(fig.axes[0].patches) == 2
    plt.close(fig)


def test_pages_escape_every_string(tmp_path):
    outcome = _outcome(tmp_path)
    for page in (study_page(outcome, tmp_path), index_page([outcome])):
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page


def test_study_page_embeds_its_images_as_png_data(tmp_path):
    page = study_page(_outcome(tmp_path), tmp_path)
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) == 1
    assert sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # Self-contained: nothing is fetched from elsewhere.
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_index_lists_every_claim_with_its_verdict_and_links_the_study_page(tmp_path):
    page = index_page([_outcome(tmp_path)])
    assert page.count('class="badge"') == 2 + 3  # two claims, plus the three verdict counts
    assert 'href="fake.html#c2"' in page
    assert ">refuted<" in page and ">supported<" in page


def test_render_report_rebuilds_the_pages_from_the_stored_outcomes(tmp_path):
    outcome = _outcome(tmp_path)
    save_outcome(outcome, tmp_path)
    first = write_report([outcome], tmp_path)
    html = first.read_text()
    (tmp_path / "fake.html").unlink()
    index = render_report(tmp_path)
    assert index.read_text() == html
    assert (tmp_path / "fake.html").read_text() == study_page(outcome, tmp_path)
    stored = json.loads((tmp_path / "outcomes" / "fake.json").read_text())
    assert StudyOutcome.from_dict(stored) == outcome
    assert load_outcomes(tmp_path) == [outcome]


def test_render_report_without_outcomes_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainlab study"):
        render_report(tmp_path)


def test_a_study_name_that_is_not_a_plain_identifier_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="snake_case"):
        _outcome(tmp_path, name="../evil")


def test_mean_band_leaves_a_gap_where_every_run_is_missing():
    # Every seed diverged (NaN) at the first point: the mean there is NaN, not a flattering 0.
    mean, low, high = mean_band(np.array([[np.nan, 1.0], [np.nan, 3.0]]))
    assert np.isnan([mean[0], low[0], high[0]]).all()
    assert mean[1] == 2.0
