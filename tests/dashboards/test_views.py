"""Views without a browser: set parameters, deliver figure events, read the panes (Panel's own
testing style). Folders come from tests/dashboards/synthetic.py (through the formats writers)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import panel as pn
import pytest
from bokeh import events
from bokeh.models import Arrow, ColorBar, HoverTool, LabelSet, Legend

from attnlens.dashboards._bokeh import trigger_click
from attnlens.dashboards.ablations import AblationsView
from attnlens.dashboards.app import Dashboard
from attnlens.dashboards.atlas import HeadAtlas
from attnlens.dashboards.circuits import CircuitView, circuit_figure
from attnlens.dashboards.compute import ColorScale, stripe_visibility
from attnlens.dashboards.explorer import MAX_CELLS, AttentionExplorer
from attnlens.dashboards.heads_grid import HeadsGrid
from attnlens.dashboards.maps import HeadMap, QKMap
from attnlens.dashboards.overlay import patch_attention
from attnlens.dashboards.selection import ModelResults
from attnlens.dashboards.stats_view import StatsRunView, head_means
from attnlens.dashboards.tokens import decode_weights
from attnlens.dashboards.vision import VisionOverlay
from attnlens.formats import ResultsFolder
from tests.dashboards.synthetic import big_circuit, head_kind, make_results_folder, vision_capture

N_HEADS = 6


@pytest.fixture(scope="module")
def folder(synth):
    return ResultsFolder.load(synth)


@pytest.fixture(scope="module")
def sel(folder):
    return ModelResults.of(folder)


def _figure_of(pane):
    return pane.object if isinstance(pane, pn.pane.Bokeh) else pane


# ---- atlas and clicks ---------------------------------------------------------------------------
def test_atlas_lists_the_models_results_and_shows_their_scores(sel):
    atlas = HeadAtlas(sel)
    assert atlas.metric == "scan/summary.sink_mass"
    assert set(atlas.param.metric.objects) == set(sel.results)
    atlas.metric = "scan/summary.entropy"
    np.testing.assert_allclose(atlas.grid.source.data["value"], sel.results["scan/summary.entropy"].scores.ravel())
    assert atlas.grid.mapper.high == pytest.approx(np.max(sel.results["scan/summary.entropy"].scores))
    assert any(isinstance(x, ColorBar) for x in atlas.grid.figure.right)


def test_every_click_kind_selects_the_cell_under_it(sel):
    atlas = HeadAtlas(sel)
    fig = atlas.grid.figure
    for i, (kind, x, y, want) in enumerate([(events.Tap, 5, 2, (2, 5)), (events.DoubleTap, 1, 3, (3, 1)),
                                            (events.PressUp, 0, 0, (0, 0)), (events.Tap, 3.49, 1.51, (2, 3)),
                                            (events.DoubleTap, 3.2, 2.2, (2, 3))]):  # the last two: cell borders, re-click
        trigger_click(fig, x, y, kind)
        assert atlas.selected == want and atlas.clicks == i + 1
        assert atlas.grid.mark.data == {"layer": [want[0]], "head": [want[1]], "n": [i + 1]}
    trigger_click(fig, 40, 2)  # outside the grid: not a cell, nothing changes
    assert atlas.clicks == 5 and "L2H3" in atlas._info.object


def test_a_click_in_the_atlas_changes_the_pattern_view(folder):
    dash = Dashboard(folder, map_method="pca")
    before = dash.explorer.cells["value"]
    trigger_click(dash.atlas.grid.figure, 4, 3)
    assert dash.selected == (3, 4)
    assert (dash.explorer.layer, dash.explorer.head) == (3, 4) and (dash.qk_map.layer, dash.qk_map.head) == (3, 4)
    assert dash.explorer.cells["value"] != before
    label, cap = dash.sel.capture_for(3, 4, dash.atlas.metric)
    assert dash.explorer.capture == label
    w = dash.explorer.window
    np.testing.assert_allclose(w.values, cap.pattern(3, 4)[w.q_start:w.q_end], rtol=1e-6)
    assert "L3H4 statistics" in dash.explorer._stats.object
    # the grid, the head map and the stats view select too, and everything follows
    trigger_click(dash.grid.plot().object, 0.5, 0.5)
    assert dash.selected == (0, 0) and dash.explorer.layer == 0


def test_the_explorer_shows_each_result_on_its_own_inputs(folder):
    dash = Dashboard(folder, map_method="pca")
    dash.atlas.metric = "scan/taxonomy.induction"
    assert dash.explorer.capture == "scan/captures/repeated-tokens"
    dash.atlas.metric = "scan/summary.entropy"
    assert dash.explorer.capture.startswith("scan/captures/prose")


# ---- explorer ---------------------------------------------------------------------------------
def _induction_head(sel):
    return next((la, h) for la in range(4) for h in range(N_HEADS) if head_kind(la, h) == "induction")


def test_sink_excluded_scale_shows_the_induction_stripe(sel):
    layer, head = _induction_head(sel)
    ex = AttentionExplorer(sel, capture="scan/captures/repeated-tokens", layer=layer, head=head, window_size=256)
    cap = sel.captures["scan/captures/repeated-tokens"]
    r = (len(cap.tokens) - 1) // 2
    q = np.arange(r + 1, len(cap.tokens))
    p = cap.pattern(layer, head)
    assert p[:, 0].mean() > 0.5  # the synthetic model is sink-dominated, like SmolLM2
    assert ex.scale is ColorScale.NO_SINK
    vis = stripe_visibility(ex.window.values, q, q - r + 1, ex.color_high)
    assert vis > 0.5, vis  # the stripe is drawn dark
    ex.scale = ColorScale.LINEAR
    assert stripe_visibility(ex.window.values, q, q - r + 1, ex.color_high) < vis / 2  # linear hides it
    ex.scale = ColorScale.LOG
    assert ex._mapper.__class__.__name__ == "LogColorMapper" and ex._bar.color_mapper is ex._mapper


def test_row_clicks_pin_the_query_of_the_token_view(sel):
    ex = AttentionExplorer(sel, capture="scan/captures/prose-000", layer=1, head=0)  # a previous-token head
    for i, (kind, y) in enumerate([(events.Tap, 10), (events.DoubleTap, 5.4), (events.PressUp, 5.2)]):
        trigger_click(ex._fig, 3, y, kind)
        assert ex.query == round(y) and ex.clicks == i + 1
        assert ex._qmark.data["n"] == [i + 1]
    tv = ex.tokens
    assert tv.query == 5 and tv.offset == 0 and tv.tokens == sel.captures["scan/captures/prose-000"].tokens
    w = decode_weights(tv.weights, len(tv.tokens))
    p = sel.captures["scan/captures/prose-000"].pattern(1, 0)
    np.testing.assert_allclose(w, p, atol=1e-4)
    assert int(np.argmax(w[10, 1:])) + 1 == 9  # previous-token head: query 10 looks at 9


def test_long_captures_are_windowed(long_synth):
    sel = ModelResults.of(ResultsFolder.load(long_synth))
    ex = AttentionExplorer(sel, capture="scan/captures/prose-000", window_size=256, window_start=300)
    assert len(ex.cells["x"]) <= MAX_CELLS
    assert ex.window.q_start == 300 and ex.window.q_end == 556
    assert "queries 300-555 of 700" in ex._message.object
    assert ex.query == 555  # starts on the last row shown
    assert ex.tokens.offset == 300 and len(ex.tokens.tokens) == 256 and "attention to earlier tokens" in ex.tokens.note
    ex.window_start = 10_000  # past the end: clamped
    assert ex.window.q_end == 700


def test_explorer_without_captures_says_how_to_get_them(tmp_path, synth):
    shutil.copytree(synth, tmp_path / "f", ignore=shutil.ignore_patterns("captures", "image"))
    ex = AttentionExplorer(ModelResults.of(ResultsFolder.load(tmp_path / "f")))
    assert "No saved captures" in ex._message.object and "lens capture" in ex._message.object
    assert ex.cells["x"] == []


# ---- all heads, maps ----------------------------------------------------------------------------
def test_all_heads_grid_draws_every_head_and_clicks_select(sel):
    grid = HeadsGrid(sel)
    fig = grid.plot().object
    layers, heads, s = grid.layout()
    img = fig.renderers[0].data_source.data["image"][0]
    assert img.shape == (4 * (s + 1), N_HEADS * (s + 1))
    trigger_click(fig, 2 * (s + 1) + 1, 3 * (s + 1) + 1, events.DoubleTap)
    assert grid.selected == (3, 2) and grid._mark.data["n"] == [1]
    grid.layers = 2
    assert grid.layout()[0] == [2]


def test_head_map_colours_by_taxonomy_with_the_legend_beside_the_plot(sel):
    hm = HeadMap(sel, method="pca")
    xy, prof = hm.embedding(timeout=60)
    assert xy.shape == (24, 2) and prof.types[1] == head_kind(0, 1)
    hm._show()
    fig = hm._area.objects[0].object
    (legend,) = [x for x in fig.right if isinstance(x, Legend)]
    assert legend.title == "taxonomy type" and not [x for x in fig.center if isinstance(x, Legend)]
    assert "induction, duplicate-token and previous-token" in hm._colour_note.object
    x, y = hm._source.data["x"][7], hm._source.data["y"][7]
    trigger_click(fig, x, y, events.PressUp)
    assert hm.selected == (1, 1)


def test_qk_map_has_queries_and_keys_of_the_head(sel):
    qk = QKMap(sel, layer=2, head=3)
    pts = qk.points()
    assert pts["role"].count("query") == 40 and pts["role"].count("key") == 40
    qk.max_points = 10
    assert len(qk.points()["x"]) == 20


def test_qk_map_explains_a_capture_without_q_and_k(long_synth):
    qk = QKMap(ModelResults.of(ResultsFolder.load(long_synth)))
    assert "No capture with queries and keys" in qk.points()


# ---- stats, ablations, circuits, vision -------------------------------------------------------------
def test_stats_view_means_curves_and_received_mass(folder):
    run = folder.stats_runs["stats"]
    view = StatsRunView(folder.stats_runs)
    np.testing.assert_allclose(np.asarray(view._grid.source.data["value"]), run.head_means("entropy").ravel())
    assert view.param.statistic.names["span 2:6 mass"] == "span_mass:0"  # named by its range, as --span takes it
    view.statistic = "span_mass:0"
    assert np.isfinite(view._grid.source.data["value"]).all()
    span = run.read(2, "span_mass")[0, 4, :, 0]  # the mass is averaged over queries that see the span (q >= 2)
    np.testing.assert_allclose(head_means(run, "span_mass:0")[2, 4], span[2:].mean(), rtol=1e-6)
    assert head_means(run, "span_mass:0")[2, 4] > span[1:].mean()
    trigger_click(view._grid.figure, 4, 2)
    assert view.selected == (2, 4)
    curves, rec = (p.object for p in view._curves.objects)
    src = curves.renderers[0].data_source.data
    np.testing.assert_allclose(src["entropy"], run.read(2, "entropy")[0, 4], rtol=1e-6)
    assert src["top"][5].count("(") == 3  # the top-3 keys of query 5, with weights
    np.testing.assert_allclose(rec.renderers[0].data_source.data["sum"], run.read(2, "received_sum")[0, 4], rtol=1e-6)
    shown = {r.glyph.y if isinstance(r.glyph.y, str) else r.glyph.y.field: r.visible for r in curves.renderers}
    assert shown == {"sink_mass": True, "span0": True, "window_mass": False, "max_weight": False, "entropy": False}
    assert np.isnan(src["span0"][:2]).all() and np.isfinite(src["span0"][2:]).all()  # no point before the span
    view.series = [*view.series, "entropy (right axis)"]  # a toggle
    curves = view._curves.objects[0].object
    assert [r.visible for r in curves.renderers if r.glyph.y in ("entropy", {"field": "entropy"})] == [True]
    view.keys = "without sink tokens"
    rec = view._curves.objects[1].object
    sink = run.settings["sink_tokens"]
    assert rec.renderers[0].data_source.data["k"][0] == sink and "the sink left out" in rec.title.text
    np.testing.assert_allclose(rec.renderers[0].data_source.data["sum"], run.read(2, "received_sum")[0, 4, sink:],
                               rtol=1e-6)
    view.keys = "log scale"
    rec = view._curves.objects[1].object
    assert rec.y_scale.__class__.__name__ == "LogScale" and min(rec.renderers[0].data_source.data["sum"]) > 0


def test_ablations_view_curves_with_seed_spread_and_random_sets(folder):
    view = AblationsView(folder)
    (curves,) = view.curve_figures()
    assert curves.xaxis[0].axis_label == "layer" and curves.yaxis[0].axis_label == "Δ logit-diff"
    glyphs = [r.glyph.__class__.__name__ for r in curves.renderers]
    assert glyphs.count("VArea") == 1 and glyphs.count("Line") == 3 + 1 + 1  # 3 runs + mean, and MLP
    (abl,) = view.ablation_figures()
    quads = next(r for r in abl.renderers if r.glyph.__class__.__name__ == "Quad")
    assert sum(quads.data_source.data["top"]) == 20
    assert [h.title.text for h in view.heatmaps()] == ["sweep-heads/ablation.mean_logit-diff"]
    assert isinstance(pn.panel(view).get_root(), object)


def test_circuit_graph_readable_at_64_nodes(folder):
    c = big_circuit(32, 32, next(iter(folder.results.values())).provenance, np.random.default_rng(0))
    assert len(c.nodes) >= 64
    fig = circuit_figure(c)
    (arrow,) = [x for x in fig.center if isinstance(x, Arrow)]
    pairs = list(zip(arrow.source.data["x0"], arrow.source.data["y0"], arrow.source.data["x1"], arrow.source.data["y1"]))
    assert len(pairs) == len(set(pairs)) > 60  # one arrow per sender and head, whatever inputs it reaches
    assert set(arrow.source.data["letters"]) >= {"q", "k", "v"}  # the input written on the edge
    assert max(arrow.source.data["w"]) > 3 * min(arrow.source.data["w"])  # width follows the weight
    assert min(arrow.source.data["x0"]) == -1  # the embeddings sit left of layer 0
    labels = {x.name: x for x in fig.center if isinstance(x, LabelSet)}
    shown = labels["node_labels"].source.data["text"]
    assert len(shown) == 40 and all(" " in t or t in ("embed", "logits") for t in shown)  # strongest 40: name, score
    legend = {i.label.value for x in fig.right if isinstance(x, Legend) for i in x.items}
    assert {"attention head", "MLP", "embeddings", "logits", "edge score > 0 (helps)", "edge score < 0 (hurts)"} <= legend
    view = CircuitView({"big": c})
    hovers = [t for t in fig.tools if isinstance(t, HoverTool)]
    assert sorted(h.name for h in hovers) == ["edge_hover", "node_hover"]  # edges hover at one point, not a line
    view.min_score = 1.0  # the threshold keeps the strong edges only
    strong = [x for x in view.figure().center if isinstance(x, Arrow)][0].source.data["label"]
    assert 0 < len(strong) < len(pairs)
    assert "faithfulness" in CircuitView(folder.circuits).plot().objects[-1].object
    assert "low faithfulness: this" in view.plot().objects[0].object  # 0.78 < 0.8
    table = view.plot().objects[1].objects[1].object
    cells = [float(x) for x in re.findall(r"<td style='text-align:right;color:[^']*'>([^<]+)</td>", table)]
    assert cells == sorted(cells, key=lambda v: -abs(v)) and min(cells) < 0  # by |score|, negatives included
    trigger_click(view._fig, *[view._fig.select_one({"name": "circuit_nodes"}).data[k][5] for k in ("x", "y")])
    node = view._fig.select_one({"name": "circuit_nodes"}).data
    assert view.clicks == 1 and view.selected == (node["layer"][5], node["head"][5])


def test_head_map_refuses_fewer_than_three_scores_and_colours_sink_heads(folder):
    sel = ModelResults.of(folder)
    two = dict(list(sel.results.items())[:2])
    few = HeadMap(ModelResults(sel.folder, sel.model, sel.shape, two, {}, {}), method="pca")
    few._show()
    (msg,) = few._area.objects
    assert msg.name == "head_map_refused" and "at least 3 scores" in msg.object and "this model has 2" in msg.object
    from attnlens.dashboards.profiles import SINK, taxonomy_types

    types = taxonomy_types(sel)
    assert types is not None and SINK in types  # the synthetic folder's sink heads are typed, not grey


def test_vision_overlays_for_vit_and_vlm_layouts(folder, tmp_path):
    view = VisionOverlay(folder)
    assert view.capture == "image/000" and view.param.head.objects == ["all", 0, 1, 2, 3, 4, 5]
    pane = view.plot()
    assert pane.objects[1][0].object[:4] == b"\x89PNG" and "query 0 &#x27;CLS&#x27;" in pane.objects[0].object
    att = patch_attention(view._cap(), layer=0, head=1, query=0)  # head 1 of layer 0 looks at patch (2, 4)
    assert np.unravel_index(att.argmax(), att.shape) == (2, 4)
    # the patch map beside the overlays: a click on patch (3, 5) makes it the query, outlined there
    view.param.update(layer=0, head=1)
    pane = view.plot()
    fig = pane.objects[1][1].object
    assert fig.name == "vision_patches" and "click a patch on the map to make it the query" in pane.objects[0].object
    cells = fig.select_one({"name": "vision_patch_cells"}).data
    np.testing.assert_allclose(np.reshape(cells["w"], att.shape), att)  # query 0 on head 1's patches
    lay = view._cap().layout
    rows, cols = lay.grid
    trigger_click(fig, 5.5, 3.2)
    assert view.query == lay.patch_span[0] + 3 * cols + 5
    fig = view.plot().objects[1][1].object
    assert f"query {view.query} " in fig.title.text
    (mark,) = [r for r in fig.renderers if r.name == "vision_query"]
    assert (mark.data_source.data["x"][0], mark.data_source.data["y"][0]) == (5.5, 3.5)
    np.testing.assert_allclose(np.reshape(fig.select_one({"name": "vision_patch_cells"}).data["w"], att.shape),
                               patch_attention(view._cap(), 0, 1, view.query))
    trigger_click(fig, cols + 2, 1)  # off the image: the query stays
    assert view.query == lay.patch_span[0] + 3 * cols + 5
    vision_capture(tmp_path / "vlm", start=5, text_before=3)
    f = ResultsFolder.load(tmp_path)
    vlm = VisionOverlay(f)
    cap = vlm._cap()
    assert cap.layout.start == 5 and vlm.query_position() == len(cap.tokens) - 1  # a VLM's text query
    assert np.unravel_index(patch_attention(cap, 0, 1, vlm.query_position()).argmax(), (7, 7)) == (2, 4)
    assert "no image saved" not in vlm.plot().objects[0].object


def test_vision_view_without_vision_captures(long_synth):
    assert "No captures with an image layout" in VisionOverlay(ResultsFolder.load(long_synth)).plot().object


# ---- the dashboard ---------------------------------------------------------------------------------
def test_several_models_in_one_folder_show_one_model_at_a_time(tmp_path):
    make_results_folder(tmp_path / "a", n_layers=3, n_heads=4, model="model-a", curves=False, circuit=False,
                        stats=False, ablation=False)
    make_results_folder(tmp_path / "b", n_layers=5, n_heads=2, model="model-b", curves=False, circuit=False,
                        stats=False, ablation=False)
    dash = Dashboard(tmp_path, map_method="pca")
    assert set(dash.param.model.objects) == {"model-a", "model-b"}
    for model, shape in (("model-a", (3, 4)), ("model-b", (5, 2))):
        dash.model = model
        assert dash.sel.shape == shape and all(r.provenance.model == model for r in dash.sel.results.values())
        assert dash.atlas.grid.shape == shape and dash.explorer.capture.startswith(model[-1])
        trigger_click(dash.atlas.grid.figure, shape[1] - 1, shape[0] - 1)
        assert dash.explorer.cells["x"] and dash.explorer.layer == shape[0] - 1


def test_dashboard_names_broken_files_and_stays_usable(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "f")
    (tmp_path / "f" / "scan" / "summary.entropy.safetensors").write_bytes(b"garbage")
    dash = Dashboard(tmp_path / "f", map_method="pca")
    alert = dash.problems_pane()
    assert "scan/summary.entropy.json" in alert.object
    assert "scan/summary.entropy" not in dash.atlas.param.metric.objects
    trigger_click(dash.atlas.grid.figure, 0, 0)
    assert dash.explorer.cells["x"]


def test_dashboard_export_button_gives_the_html_report(folder):
    dash = Dashboard(folder, map_method="pca")
    text = dash._export_html().getvalue().decode()
    assert text.startswith("<!DOCTYPE html>") and "synthetic-model" in text and "data:image/png;base64," in text


def test_views_render_as_panel_objects_for_jupyter(folder):
    dash = Dashboard(folder, map_method="pca")
    assert pn.panel(dash).get_root() is not None  # what a notebook cell displays
    for view in (dash.atlas, dash.explorer, dash.grid, dash.head_map, dash.qk_map, dash.stats, dash.ablations,
                 dash.circuits, dash.vision, dash.contributions):
        assert pn.panel(view).get_root() is not None


def test_head_map_shows_progress_until_its_embedding_is_ready(sel, monkeypatch):
    from concurrent.futures import Future

    import attnlens.dashboards.maps as maps

    job = Future()
    real = maps.embedding_job
    monkeypatch.setattr(maps, "embedding_job", lambda s, m: (job, real(s, "pca")[1]))
    hm = HeadMap(sel, method="umap")
    hm._show()
    spinner, text = hm._area.objects[0].objects
    assert isinstance(spinner, pn.indicators.LoadingSpinner) and spinner.value
    assert "computing the UMAP map of 24 heads over 8 scores" in text.object
    job.set_result(np.zeros((24, 2)))
    hm._show()
    assert hm._area.objects[0].object.name == "head_map"


def test_serve_binds_a_real_port_and_allows_only_this_machine(synth):
    from attnlens.dashboards.app import serve

    server = serve(synth, port=0, show=False, start=False, map_method="pca")
    try:
        assert server.port > 0
        assert server._tornado.websocket_origins == {f"127.0.0.1:{server.port}", f"localhost:{server.port}"}
    finally:
        server.stop(wait=False)


def test_the_head_views_share_one_click_to_select_handler(folder, sel):
    """Atlas, all-heads grid, head map and stats view: a click on a head selects it and counts,
    a re-click of the selected head marks it again, a click on no head changes nothing."""
    from attnlens.dashboards._pick import HeadPicker

    grid = HeadsGrid(sel)
    grid_fig = grid.plot().object
    s = grid.layout()[2]
    hmap = HeadMap(sel, method="pca")
    hmap.embedding(timeout=60)
    hmap._show()
    i = 3 * N_HEADS + 2  # L3H2's point
    stats = StatsRunView(folder.stats_runs)
    atlas = HeadAtlas(sel)
    cases = [(atlas, atlas.grid.figure, (2, 3), (40, 2), lambda: atlas.grid.mark.data["n"]),
             (grid, grid_fig, (2 * (s + 1) + 1, 3 * (s + 1) + 1), (-5, -5), lambda: grid._mark.data["n"]),
             (hmap, hmap._area.objects[0].object, (hmap._source.data["x"][i], hmap._source.data["y"][i]), None,
              lambda: hmap._mark.data["n"]),
             (stats, stats._grid.figure, (2, 3), (40, 2), lambda: stats._grid.mark.data["n"])]
    for view, fig, (x, y), off, marks in cases:
        assert isinstance(view, HeadPicker)
        seen = []
        view.param.watch(lambda e: seen.append(e.new), "selected")
        trigger_click(fig, x, y)
        assert view.selected == (3, 2) and view.clicks == 1 and seen == [(3, 2)], type(view).__name__
        assert marks() == [1]
        trigger_click(fig, x, y, events.DoubleTap)  # the re-click: answered (marked again), not re-selected
        assert view.clicks == 2 and seen == [(3, 2)] and marks() == [2], type(view).__name__
        if off is not None:
            trigger_click(fig, *off)
            assert view.clicks == 2 and view.selected == (3, 2), type(view).__name__
