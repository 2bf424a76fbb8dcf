"""Views without a browser: set parameters, read the panes (Panel's own testing style)."""

from __future__ import annotations

import shutil

import numpy as np
import panel as pn
import pytest

from dashboards.app import Dashboard
from dashboards.atlas import HeadAtlas
from dashboards.data import ResultsFolder
from dashboards.explorer import MAX_CELLS, AttentionExplorer
from dashboards.maps import HeadMap, QKMap
from dashboards.sweeps import SweepsView
from dashboards.vision import VisionOverlay, patch_attention


@pytest.fixture(scope="module")
def folder(synth):
    return ResultsFolder.load(synth)


def test_atlas_switches_metric_and_shows_its_scores(folder):
    atlas = HeadAtlas(folder)
    assert atlas.param.metric.objects == folder.names
    atlas.metric = "summary.entropy"
    np.testing.assert_allclose(atlas._source.data["value"], folder.by_name["summary.entropy"].scores.ravel())
    assert "summary.entropy" in atlas._fig.title.text
    assert atlas._mapper.high == pytest.approx(np.max(folder.by_name["summary.entropy"].scores))


def test_atlas_hover_says_not_scored_for_nan(folder):
    folder = ResultsFolder.load(folder.path)
    folder.by_name["summary.entropy"].scores[1, 2] = np.nan
    atlas = HeadAtlas(folder, metric="summary.entropy")
    assert atlas._source.data["label"][1 * 6 + 2] == "not scored"


def test_atlas_click_selects_the_head(folder):
    atlas = HeadAtlas(folder)
    atlas._source.selected.indices = [2 * 6 + 5]  # what a click on L2H5 sends
    assert atlas.selected == (2, 5)
    assert atlas._mark.data == {"layer": [2], "head": [5]}
    assert "L2H5" in atlas._info.object


def test_clicking_a_head_changes_the_pattern_view(folder):
    dash = Dashboard(folder, map_method="pca")
    before = dash.explorer.cells["value"]
    dash.atlas._source.selected.indices = [3 * 6 + 4]
    assert dash.selected == (3, 4)
    assert (dash.explorer.layer, dash.explorer.head) == (3, 4)
    assert (dash.qk_map.layer, dash.qk_map.head) == (3, 4)
    assert dash.explorer.cells["value"] != before
    expected = folder.captures[0].pattern(3, 4)
    w = dash.explorer.window
    np.testing.assert_allclose(w.values, expected[w.q_start:w.q_end], rtol=1e-6)
    assert "L3H4" in dash.explorer._stats.object


def test_explorer_text_view_follows_the_query(folder):
    ex = AttentionExplorer(folder, layer=1, head=0)  # a previous-token head in the synthetic data
    ex.query = 10
    html = ex._text.object
    assert "data-pos='10'" in html and "outline" in html.split("data-pos='10'")[1].split("</span>")[0]
    # the previous token is the brightest key
    assert "rgba(30, 100, 220, 1.000)" in html.split("data-pos='9'")[1].split("</span>")[0]
    ex._source.selected.indices = [ex.cells["y"].index(5)]  # click a cell in row 5
    assert ex.query == 5


def test_explorer_stats_rank_the_head_in_every_result(folder):
    ex = AttentionExplorer(folder, layer=0, head=0)
    for name in folder.names:
        assert name in ex._stats.object
    assert "capture 000: entropy" in ex._stats.object and "of 24" in ex._stats.object


def test_long_captures_are_windowed(long_synth):
    f = ResultsFolder.load(long_synth)
    ex = AttentionExplorer(f, window_size=256, window_start=300)
    assert len(ex.cells["x"]) <= MAX_CELLS
    assert ex.window.q_start == 300 and ex.window.q_end == 556
    assert "queries 300-555 of 700" in ex._message.object
    assert ex.query == 555  # starts on the last row shown
    assert "300 earlier tokens hold" in ex._text.object
    assert ex._text.object.count("class='tok'") == 256
    ex.window_start = 10_000  # past the end: clamped
    assert ex.window.q_end == 700


def test_explorer_without_captures_says_how_to_get_them(tmp_path, synth):
    shutil.copytree(synth, tmp_path / "f", ignore=shutil.ignore_patterns("captures"))
    ex = AttentionExplorer(ResultsFolder.load(tmp_path / "f"))
    assert "No saved captures" in ex._message.object and "lens capture" in ex._message.object
    assert ex.cells["x"] == []


def test_head_map_colours_heads_by_type_and_click_selects(folder):
    hm = HeadMap(folder, method="pca")
    xy, names, types = hm.embedding()
    assert xy.shape == (24, 2) and names[7] == "L1H1" and types[0] == "sink"
    pane = hm.plot()
    hm._source.selected.indices = [7]
    assert hm.selected == (1, 1)
    assert isinstance(pane, pn.pane.Bokeh)


def test_qk_map_has_queries_and_keys_of_the_head(folder):
    qk = QKMap(folder, layer=2, head=3, method="pca")
    pts = qk.points()
    assert pts["role"].count("query") == 40 and pts["role"].count("key") == 40
    qk.max_points = 10
    assert len(qk.points()["x"]) == 20


def test_qk_map_explains_a_capture_without_q_and_k(long_synth):
    qk = QKMap(ResultsFolder.load(long_synth), method="pca")
    assert "No capture with queries and keys" in qk.points()


def test_sweeps_and_circuit_views(folder):
    view = SweepsView(folder)
    (fig,) = view.sweep_plots()
    assert len([r for r in fig.renderers if r.glyph.__class__.__name__ == "Line"]) == 3
    assert [h.title.text for h in view.ablation_heatmaps()] == ["ablation.loss_increase"]
    pane = view.circuit_plot()
    seg = next(r for r in pane.object.renderers if r.glyph.__class__.__name__ == "Segment")
    assert len(seg.data_source.data["x0"]) == len(folder.circuits[0].edges)


def test_vision_overlay_per_head(folder):
    view = VisionOverlay(folder)
    assert view.capture == "002" and view.param.head.objects == ["all", 0, 1, 2, 3, 4, 5]
    pane = view.plot()
    assert isinstance(pane, pn.pane.PNG) and pane.object[:4] == b"\x89PNG"
    att = patch_attention(view._cap(), layer=0, head=1)  # head 1 of layer 0 looks at patch (2, 4)
    assert np.unravel_index(att.argmax(), att.shape) == (2, 4)
    view.head = 1
    assert isinstance(view.plot(), pn.pane.PNG)


def test_vision_view_without_vision_captures(long_synth):
    assert "No vision captures" in VisionOverlay(ResultsFolder.load(long_synth)).plot().object


def test_dashboard_names_broken_files_and_stays_usable(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "f")
    (tmp_path / "f" / "summary.entropy.safetensors").write_bytes(b"garbage")
    dash = Dashboard(tmp_path / "f", map_method="pca")
    alert = dash.problems_pane()
    assert "summary.entropy.json" in alert.object and "is truncated" in alert.object
    assert "summary.entropy" not in dash.atlas.param.metric.objects
    dash.atlas.metric = "summary.sink_mass"
    dash.atlas._source.selected.indices = [0]
    assert dash.explorer.cells["x"]


def test_dashboard_export_button_gives_the_html_report(folder):
    dash = Dashboard(folder, map_method="pca")
    html = dash._export_html().getvalue().decode()
    assert html.startswith("<!DOCTYPE html>") and "synthetic-model" in html and "data:image/png;base64," in html


def test_views_render_as_panel_objects_for_jupyter(folder):
    pn.extension()
    dash = Dashboard(folder, map_method="pca")
    root = pn.panel(dash).get_root()  # what a notebook cell displays
    assert root is not None
    for view in (dash.atlas, dash.explorer, dash.head_map, dash.qk_map, dash.sweeps, dash.vision):
        assert pn.panel(view).get_root() is not None
