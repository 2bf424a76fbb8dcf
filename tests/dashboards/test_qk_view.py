"""The QK attribution view, report section and `dashboards.show`, on a folder the real `lens heads qk` wrote."""

from __future__ import annotations

import html

import numpy as np
import pytest

from attnlens.dashboards import show
from attnlens.dashboards._bokeh import trigger_click
from attnlens.dashboards.app import Dashboard
from attnlens.dashboards.qk import OTHER, QKView, qk_table
from attnlens.dashboards.report import build_report, render_html, render_markdown
from attnlens.formats import ResultsFolder
from tests.analyses.qk_folder import PROMPT, write_qk_folder


@pytest.fixture(scope="module")
def qk_folder(tmp_path_factory):
    return write_qk_folder(tmp_path_factory.mktemp("qkview"), head=2)


@pytest.fixture(scope="module")
def res(qk_folder):
    return next(iter(ResultsFolder.load(qk_folder).qk.values()))


def test_table_keeps_the_score_with_other_folded_in(res):
    for k in (0, res.key_pos, res.query_pos):
        rows, cols, m = qk_table(res, k, 5)
        assert m.shape == (6, 6) and rows[-1] == OTHER and cols[-1] == OTHER
        assert m.sum() == pytest.approx(float(res.scores[k]), abs=1e-4)
        q_side, _ = res.sides(k)
        strongest = res.names(res.query_pos)[int(np.argmax(np.abs(q_side)))]
        assert strongest in rows


def test_clicking_a_key_shows_its_decomposition(res):
    view = QKView({"qk/a": res})
    assert view.key() == res.key_pos
    assert f"→ key {res.key_pos}" in view._info.object and "terms sum to" in view._info.object
    trigger_click(view.row_figure, 4.2, 0.1)  # the cell of key 4
    assert view.key_pos == 4 and view.key() == 4
    assert "score terms at key 4" in view.heat_figure.title.text
    assert view._heat_mapper.palette[-1] == "#67001f"  # positive terms red, as in the report's RdBu_r
    assert "→ key 4 " in view._info.object and f"{float(res.scores[4]):+.4f}" in view._info.object
    name, value = res.top(1, 4)[0]
    assert html.escape(name) in view._top.object and f"{value:+.4f}" in view._top.object
    trigger_click(view.row_figure, 400.0, 0.0)  # outside the row: nothing changes
    assert view.key_pos == 4
    assert "OV (what the head writes" in view._info.object and "&#x27;M&#x27;" in view._info.object


def test_empty_view_says_how_to_make_one():
    view = QKView({})
    assert "lens heads qk MODEL" in view._info.object


def test_dashboard_has_the_tab(qk_folder):
    dash = Dashboard(qk_folder, map_method="pca")
    assert "QK attribution" in dash.tabs()._names and dash.model == "tiny-llama"
    assert list(dash.qk.results) == list(ResultsFolder.load(qk_folder).qk)


def test_report_sections_html_and_markdown(qk_folder, res):
    report = build_report(ResultsFolder.load(qk_folder))
    (s,) = report.qk
    assert s["figure"] in report.figures() and s["figure"].png.startswith(b"\x89PNG")
    text = render_html(report)
    assert "QK attribution: why heads attend where they do" in text and "terms sum to" in text
    first = res.top(1)[0][0]
    assert first.split(" x ")[1].split("[")[0] in text
    md = render_markdown(report, "figs")
    assert "## QK attribution" in md and f"(figs/{s['figure'].name}.png)" in md
    assert "| query side x key side | term | of score |" in md
    assert "norm scales frozen" in md


def test_show_inline_from_memory_path_and_result(tiny_lm, qk_folder, res):
    from attnlens.analyses.qk_attribution import qk_attribution

    a = qk_attribution(tiny_lm, tiny_lm.encode(PROMPT), 3, 2)
    v = show(a)
    assert isinstance(v, QKView)
    np.testing.assert_allclose(v.current.terms, res.terms, atol=1e-6)
    assert v.current.provenance.model == "tiny-llama"
    path = next(qk_folder.glob("*.qk.json"))
    assert isinstance(show(path), QKView) and isinstance(show(res), QKView)
