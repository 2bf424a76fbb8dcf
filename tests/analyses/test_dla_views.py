"""A folder written by the real `lens heads dla`: the dashboard's Contributions tab, both reports
(HTML, Markdown) and the findings show it, read from the files only."""

from __future__ import annotations

import numpy as np
import pytest

from tests.analyses.dla_folder import write_dla_folder


@pytest.fixture(scope="module")
def dla_folder(tmp_path_factory):
    return write_dla_folder(tmp_path_factory.mktemp("dlav"))


def test_dashboard_tab_reads_the_result(dla_folder):
    import panel as pn

    from attnlens.dashboards.app import Dashboard
    from attnlens.formats import ResultsFolder

    folder = ResultsFolder.load(dla_folder)
    dash = Dashboard(folder)
    view = dash.contributions
    res = folder.dla["dla"]
    assert view.current is res and view.position == res.positions[0]
    np.testing.assert_allclose(np.asarray(view._grid.source.data["value"], float).reshape(res.shape),
                               res.heads[0, 0], rtol=1e-6)
    view.position = 5
    np.testing.assert_allclose(np.asarray(view._grid.source.data["value"], float).reshape(res.shape),
                               res.heads[1, 0], rtol=1e-6)
    assert "at position 5" in view._grid.figure.title.text and "position 5" in view._info.object
    assert pn.panel(view).get_root() is not None


def test_both_reports_have_a_section(dla_folder, tmp_path):
    from attnlens.dashboards.report import build_report, write_report
    from attnlens.formats import ResultsFolder

    rep = build_report(dla_folder)
    res = ResultsFolder.load(dla_folder).dla["dla"]
    assert [s["target"] for s in rep.dla] == ["M", "J"]  # the targets asked for, not the top predictions
    assert ("dla", "Direct logit attribution", 0) in rep.contents
    assert any(a == "dla" and "parts sum to" in t for a, _, t in rep.findings)
    top_name, top_value = res.top(1, res.positions[0], 0)[0]
    for fmt in ("html", "md"):
        text = write_report(dla_folder, fmt, tmp_path / f"r.{fmt}").read_text()
        assert "Direct logit attribution: what each head adds to a logit" in text
        assert f"{res.logits[0, 0]:+.4f}" in text and top_name in text and f"{top_value:+.4f}" in text
        assert "final norm" in text and "frozen" in text
