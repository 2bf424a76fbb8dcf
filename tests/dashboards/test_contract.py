"""Issue 11's contract test: what the real commands write on the tiny models (one folder) is what
the folder reader, every view and every report format show, each kind non-empty; and folders
written by the previous format load or name the file and its format version."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from bokeh.models import Arrow

from attnlens.dashboards._bokeh import trigger_click
from attnlens.dashboards.app import Dashboard
from attnlens.dashboards.circuits import circuit_figure
from attnlens.dashboards.graph import circuit_layout
from attnlens.dashboards.report import build_report, write_report
from attnlens.formats import ResultsFolder, SelectionError, Site
from tests.dashboards.contract import TASK_ROWS

RESULTS = {"scan/summary.sink_mass", "scan/summary.entropy", "scan/sinks.first_token_mass", "scan/sinks.hidden_sinks",
           "scan/streaming.streaming_mass", "scan/taxonomy.induction", "scan/taxonomy.previous_token",
           "sweep-heads/ablation.mean_logit-diff", "circuit/circuit.T_eap_logit-diff",
           "circuit/circuit.T_patching_logit-diff"}
CAPTURES = {"scan/captures/prose-000", "scan/captures/prose-001", "scan/captures/repeated-tokens", "image/000",
            "speech/captures/audio-000",
            "bf16/000", "circuit/captures/task-000", "generate/000"}


@pytest.fixture(scope="module")
def folder(contract):
    return ResultsFolder.load(contract)


@pytest.fixture(scope="module")
def dash(folder):
    return Dashboard(folder, map_method="pca")


def test_the_reader_finds_every_kind_the_commands_wrote(folder):
    assert folder.problems == {}
    assert RESULTS <= set(folder.results)
    assert sorted(folder.curves) == ["circuit/circuit.T_faithfulness_edges", "circuit/circuit.T_faithfulness_heads",
                                     "sweep-layers/ablation.mean_logit-diff_layers"]
    assert list(folder.ablations) == ["ablation/ablation"] and list(folder.circuits) == ["circuit/T_eap"]
    assert set(folder.captures) == CAPTURES and list(folder.stats_runs) == ["stats"]
    assert folder.captures["bf16/000"].dtypes == {"bfloat16"}
    assert folder.captures["image/000"].layout is not None and folder.captures["image/000"].image_path().is_file()
    assert set(folder.models) == {"tiny-llama", "tiny-dinov2", "tiny-whisper"}
    assert list(folder.token_maps) == ["speech/cross_attention.saliency_000"]
    assert {"speech/cross_attention.pearson", "speech/cross_attention.saliency_share"} <= set(folder.results)


def test_atlas_and_explorer_show_every_result_and_capture(dash, folder):
    assert set(dash.atlas.param.metric.objects) == {k for k, r in folder.results.items() if r.provenance.model == "tiny-llama"}
    for label in dash.atlas.param.metric.objects:
        dash.atlas.metric = label
        np.testing.assert_array_equal(np.asarray(dash.atlas.grid.source.data["value"]), folder.results[label].scores.ravel())
        trigger_click(dash.atlas.grid.figure, 1, 2)
        assert dash.explorer.cells["x"], label  # every result opens a pattern
    dash.atlas.metric = "scan/taxonomy.induction"
    assert dash.explorer.capture == "scan/captures/repeated-tokens"  # the taxonomy's own inputs
    for label in ("scan/captures/prose-000", "bf16/000"):
        dash.explorer.capture = label
        assert len(dash.explorer.cells["x"]) > 100 and np.isfinite(dash.explorer.cells["value"]).all()
        p = folder.captures[label].pattern(2, 1)
        np.testing.assert_allclose(dash.explorer.window.values[: p.shape[0], : p.shape[1]].sum(1),
                                   p[: dash.explorer.window.values.shape[0]].sum(1), rtol=1e-3)
    assert "(bfloat16)" in dash.explorer._message.object


def test_grid_maps_stats_ablations_circuits_and_vision_are_not_empty(dash, folder):
    fig = dash.grid.plot().object
    assert np.isfinite(fig.renderers[0].data_source.data["image"][0]).sum() > 1000
    xy, prof = dash.head_map.embedding(timeout=120)
    assert xy.shape == (16, 2) and np.isfinite(xy).all() and prof.color_by.startswith("taxonomy type")
    for label in ("scan/captures/prose-000", "bf16/000"):
        dash.qk_map.capture = label
        pts = dash.qk_map.points()
        assert isinstance(pts, dict) and len(pts["x"]) > 40
    stats = dash.stats
    trigger_click(stats._grid.figure, 3, 1)
    curves, received = (p.object for p in stats._curves.objects)
    run = folder.stats_runs["stats"]
    np.testing.assert_allclose(curves.renderers[0].data_source.data["sink_mass"], run.read(1, "sink_mass")[0, 3],
                               rtol=1e-6)
    assert sum(received.renderers[0].data_source.data["sum"]) == pytest.approx(len(run.tokens), rel=1e-3)
    figs = {f.title.text: f for f in dash.ablations.curve_figures()}
    assert set(figs) == {"ablation.mean_logit-diff_layers", "circuit.T_faithfulness_edges",
                         "circuit.T_faithfulness_heads"}, set(figs)
    curve = figs["ablation.mean_logit-diff_layers"]
    assert curve.yaxis[0].axis_label == "Δ logit-diff" and curve.xaxis[0].axis_label == "layer"
    for name, n in (("circuit.T_faithfulness_edges", 2), ("circuit.T_faithfulness_heads", 3)):  # patching: heads only
        lines = [r for r in figs[name].renderers if r.glyph.__class__.__name__ == "Line"]
        assert len(lines) == n and all(np.isfinite(r.data_source.data["y"]).any() for r in lines), name
    (abl,) = dash.ablations.ablation_figures()
    assert any(r.glyph.__class__.__name__ == "Quad" for r in abl.renderers)
    assert len(dash.ablations.heatmaps()) == 4  # the sweep, and EAP, EAP-IG and patching of the circuit
    c = folder.circuits["circuit/T_eap"]
    fig = circuit_figure(c)
    (arrow,) = [x for x in fig.center if isinstance(x, Arrow)]
    assert len(arrow.source.data["x0"]) == len(circuit_layout(c)[1]) == len(c.edges) > 0  # one arrow per edge here
    labels = fig.select_one({"name": "node_labels"}).source.data["text"]
    assert {f"L{la}H{h}" for la, h in c.heads} <= {t.split()[0] for t in labels}
    assert all(re.fullmatch(r"L\d+H\d+ [+-]\S+", t) for t in labels if t not in ("embed", "logits"))  # name, score
    legend = {i.label.value for i in fig.select_one({"name": "circuit_legend"}).items}
    assert {"attention head", "edge score > 0 (helps)", "edge score < 0 (hurts)"} <= legend
    pane = dash.circuits.plot()
    assert "low faithfulness: this 3-edge circuit reproduces 0.54" in pane.objects[0].object  # 0.54 < 0.8
    assert "no size on the eap curve reaches 0.8" in pane.objects[0].object  # the curve was run
    table = pane.objects[1].objects[1].object
    assert [f"L{la}H{h}" for la, h in c.heads if f"L{la}H{h}" in table] and "by |score|" in table
    assert "faithfulness" in pane.objects[-1].object
    nodes = dash.circuits._fig.select_one({"name": "circuit_nodes"}).data
    i = next(k for k, name in enumerate(nodes["id"]) if name.startswith("L"))
    dash.atlas.metric = "scan/summary.sink_mass"
    trigger_click(dash.circuits._fig, nodes["x"][i], nodes["y"][i])  # a head of the circuit: its pattern on the task
    assert dash.selected == (nodes["layer"][i], nodes["head"][i]) and dash._tabs.active == 0
    assert dash.atlas.metric == "circuit/circuit.T_eap_logit-diff" and dash.explorer.capture == "circuit/captures/task-000"
    task = folder.captures["circuit/captures/task-000"]
    assert task.focus.rows == (len(task.tokens) - 1, len(task.tokens))  # opens on the answer's row
    assert "".join(task.tokens[1:]) in {r["prompt"] for r in TASK_ROWS}  # one of the task's prompts, after <bos>
    dash.vision.capture = "image/000"
    overlay = dash.vision.plot()
    assert overlay.objects[1][0].object[:4] == b"\x89PNG" and "no image saved" not in overlay.objects[0].object
    speech = dash.speech
    assert speech.capture == "speech/captures/audio-000"
    png = speech.figure_png()
    assert isinstance(png, bytes) and png[:4] == b"\x89PNG" and "pearson" in speech.table_html()
    from attnlens.dashboards.audio import maps_for, token_view

    view = token_view(folder.captures[speech.capture], maps_for(folder, speech.capture), 1, None, 0)
    assert view.saliency is not None and abs(view.saliency.sum() - 1) < 1e-6 and view.attention.size == 100
    dash.model = "tiny-dinov2"  # the ViT's captures in the explorer too
    assert dash.explorer.capture == "image/000" and dash.explorer.cells["x"]


def test_signed_scores_are_drawn_diverging_and_categories_with_their_legend(dash, folder):
    from bokeh.models import LinearColorMapper

    from attnlens.dashboards._bokeh import DIVERGING_PALETTE

    dash.model = "tiny-llama"  # an earlier test shows the ViT
    dash.atlas.metric = "circuit/circuit.T_eap_logit-diff"
    m = dash.atlas.grid.mapper
    scores = folder.results["circuit/circuit.T_eap_logit-diff"].scores
    assert list(m.palette) == list(DIVERGING_PALETTE) and m.low == -m.high == -np.nanmax(np.abs(scores))  # 0 mid
    assert "signed" in dash.atlas.grid.bar.title and "ranked by |score|" in dash.atlas._info.object
    dash.atlas.metric = "scan/taxonomy.head_type"
    bar = dash.atlas.grid.bar
    assert bar.major_label_overrides == dict(enumerate(["sink", "previous-token", "positional", "induction",
                                                        "duplicate-token", "other"])) and bar.title == "category"
    assert len(set(dash.atlas.grid.mapper.palette)) == 6 and (dash.atlas.grid.mapper.low, dash.atlas.grid.mapper.high) \
        == (-0.5, 5.5)  # one colour per code
    assert "of 16 heads)" in dash.atlas._info.object and " of 16)" not in dash.atlas._info.object  # not ranked
    dash.atlas.metric = "scan/summary.sink_mass"
    assert dash.atlas.grid.mapper.low > 0 and dash.atlas.grid.bar.title == "score"  # sequential: its own range
    # the Ablations tab's per-head maps (a sweep's effects, EAP, patching: all signed) on the same scale
    maps = dash.ablations.heatmaps()
    assert maps and all(h.select_one({"name": "ablation_heatmap_colorbar"}).title == "signed score (0 = white)"
                        for h in maps)
    assert all(list(h.select_one({"type": LinearColorMapper}).palette) == list(DIVERGING_PALETTE) for h in maps)


def test_the_contribution_view_says_how_to_make_a_result_when_there_is_none(dash):
    from attnlens.dashboards.dla import ContributionView

    view = ContributionView({})
    assert view.current is None and "lens heads dla MODEL --prompt TEXT --target TOKEN" in view._info.object


def test_every_report_format_shows_every_kind(contract, tmp_path):
    rep = build_report(contract)
    labels = {r.label for m in rep.models for r in m.results}
    assert RESULTS <= labels
    assert sorted(c[0] for c in rep.curves) == ["circuit/circuit.T_faithfulness_edges",
                                                "circuit/circuit.T_faithfulness_heads",
                                                "sweep-layers/ablation.mean_logit-diff_layers"]
    assert [a[0] for a in rep.ablations] == ["ablation/ablation"] and [c["label"] for c in rep.circuits] == ["circuit/T_eap"]
    assert [s["label"] for s in rep.stats_runs] == ["stats"] and {c["label"] for c in rep.captures} == CAPTURES
    assert [o[0] for o in rep.overlays] == ["image/000"]
    assert [s["label"] for s in rep.speech] == ["speech/captures/audio-000"] and rep.speech[0]["agreement"]
    induction = next(r for m in rep.models for r in m.results if r.label == "scan/taxonomy.induction")
    assert all(t.capture == "scan/captures/repeated-tokens" for t in induction.top)  # thumbnails on its inputs
    texts = {}
    for fmt in ("html", "md"):
        texts[fmt] = write_report(contract, fmt, tmp_path / f"r.{fmt}").read_text()
    pdf = write_report(contract, "pdf", tmp_path / "r.pdf")
    if shutil.which("pdftotext"):
        texts["pdf"] = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                                      check=True).stdout
    for fmt, text in texts.items():
        plain = text.replace("\\", "")  # Markdown escapes _ and friends
        for needle in [*RESULTS, "sweep-layers/ablation.mean_logit-diff_layers", "ablation/ablation", "circuit/T_eap",
                       "circuit/circuit.T_faithfulness_edges", "hanna2024",
                       "Stats runs", "image/000", "bf16/000", "bfloat16", "Speech: speech/captures/audio-000"]:
            assert needle in plain or needle.replace("_", " ") in plain, (fmt, needle)


def _legacy_folder(contract, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(contract / "scan", root / "scan")
    shutil.copytree(contract / "image", root / "image")
    (root / "ioi").mkdir()
    (root / "ioi" / "circuit.json").write_text(json.dumps({"name": "ioi", "edges": [
        {"sender": "L0H1", "receiver": "logits", "score": 0.5}]}))
    (root / "ioi" / "ablation.json").write_text(json.dumps({"heads": ["L1H0"], "baseline": 1.0, "ablated": 0.5}))
    (root / "sweep").mkdir()
    (root / "sweep" / "summary.json").write_text(json.dumps({"ks": [1, 2], "accuracy": [0.9, 0.4]}))
    # a head-score file from a newer format, and a capture in the previous version (layout under extra.image)
    doc = json.loads((root / "scan" / "summary.entropy.json").read_text())
    doc["format_version"] = 99
    (root / "scan" / "summary.entropy.json").write_text(json.dumps(doc))
    cap = json.loads((root / "image" / "000" / "capture.json").read_text())
    layout = cap["meta"].pop("layout")
    layout.pop("kind")
    cap["meta"]["extra"]["image"] = layout
    cap.pop("kind")
    cap["format_version"] = 1
    (root / "image" / "000" / "capture.json").write_text(json.dumps(cap))
    return root


def test_old_folders_load_or_name_the_file_and_format_version(contract, tmp_path):
    root = _legacy_folder(contract, tmp_path)
    dash = Dashboard(root, map_method="pca")
    alert = dash.problems_pane().object
    for name in ("ioi/circuit.json", "ioi/ablation.json", "sweep/summary.json"):
        assert name in alert and "older" in alert and "format without a version" in alert
    assert "scan/summary.entropy.json" in alert and "format_version 99" in alert and "versions 1, 2" in alert
    assert dash.folder.captures["image/000"].layout.grid == (8, 8)  # version 1 still loads
    assert "scan/summary.sink_mass" in dash.atlas.param.metric.objects  # the rest is shown
    for fmt in ("html", "md"):
        text = write_report(root, fmt, tmp_path / f"old.{fmt}").read_text()
        assert "format\\_version 99" in text or "format_version 99" in text
        assert text.count("format without a version") == 3
        assert "Image attention" in text
    for problem in dash.folder.problems.values():
        assert "\n" not in problem and len(problem) < 300  # one line each
    assert Site.PATTERN in dash.folder.captures["image/000"].sites


def test_a_generation_capture_shows_each_step_and_prompt(dash, folder, contract):
    from attnlens.dashboards.inline import view_of
    from tests.dashboards.contract import GENERATE_STEPS

    cap = folder.captures["generate/000"]
    assert (cap.n_steps, cap.n_batch) == (GENERATE_STEPS, 2) and len(cap.meta.generated_tokens[1]) == GENERATE_STEPS - 1
    n = len(cap.tokens)
    dash.model = "tiny-llama"
    for ex in (dash.explorer, view_of(contract / "generate" / "000", layer=1, head=2)):  # dashboard and show
        if ex is dash.explorer:
            ex.query = 3  # pinned on another capture: the step's own row replaces it
            ex.capture = "generate/000"
        assert ex.param.step.bounds == (0, GENERATE_STEPS - 1) and ex.param.batch.bounds == (0, 1)
        assert ex._step_widget.visible and ex._batch_widget.visible
        ex.param.update(layer=1, head=2)
        assert ex.window.values.shape[0] == n and "step 0 of 5: the prompt" in ex._message.object
        assert ex.query == n - 1  # the pin of the other capture (3) is gone: the last row, as on a first view
        ex._step_widget.value = 3  # what a user types into the step box
        assert ex.step == 3 and ex.tokens_shown == cap.tokens + cap.meta.generated_tokens[0][:3]
        assert ex.query == n + 2 and ex._boxes["query"].value == n + 2  # the third new token's query row, in its box
        row = cap.pattern(1, 2, step=3)[0]  # the step's own pattern, [1, n + 3] -> its one row
        np.testing.assert_allclose(ex._pattern[n + 2], row, rtol=0, atol=0)
        assert f"step 3 of 5: new token {cap.meta.generated_tokens[0][2]!r}"[:20] in ex._message.object.replace("&#x27;", "'")
        ex.batch = 1
        np.testing.assert_allclose(ex._pattern[n + 2], cap.pattern(1, 2, batch=1, step=3)[0])
        assert ex.tokens_shown[-3:] == cap.meta.generated_tokens[1][:3] and "prompt 1 of 2" in ex._message.object
    dash.explorer.capture = "bf16/000"  # another capture: back to step 0, prompt 0
    assert dash.explorer.step == 0 and dash.explorer.batch == 0 and not dash.explorer._step_widget.visible
    assert dash.explorer._step_widget.value == 0 and dash.explorer._boxes["query"].value == dash.explorer.query
    with pytest.raises(SelectionError, match="step 6 is out of range: 000 holds steps 0-5"):
        cap.pattern_through(1, 2, step=6)
    with pytest.raises(SelectionError, match="batch 2 is out of range: 000 holds batch rows 0-1"):
        cap.tokens_through(0, batch=2)


def test_the_vision_tab_follows_the_model_opens_on_the_last_layer_and_can_share_one_scale(folder):
    import io

    from PIL import Image

    dash = Dashboard(folder, map_method="pca", model="tiny-dinov2")
    cap = folder.captures["image/000"]
    assert dash.vision.capture == "image/000" and dash.vision.layer == cap.layers[-1]  # not the selected head's 0
    dash.selected = (1, 2)  # a head picked by the user: the overlay follows its layer
    assert dash.vision.layer == 1
    own = Image.open(io.BytesIO(dash.vision.plot().objects[1][0].object))
    dash.vision.shared_scale = True
    shared = Image.open(io.BytesIO(dash.vision.plot().objects[1][0].object))
    assert shared.width > own.width + 40  # the colour bar


def test_the_all_heads_grid_shows_a_generation_step_and_prompt(dash, folder, contract):
    from attnlens.dashboards.heads_grid import HeadsGrid
    from attnlens.dashboards.inline import view_of
    from tests.dashboards.contract import GENERATE_STEPS

    cap = folder.captures["generate/000"]
    n = len(cap.tokens)
    dash.model = "tiny-llama"
    for grid in (dash.grid, view_of(contract / "generate" / "000")):  # dashboard and show(cap)
        assert isinstance(grid, HeadsGrid)
        if grid is dash.grid:
            grid.capture = "generate/000"
        assert grid.param.step.bounds == (0, GENERATE_STEPS - 1) and grid.param.batch.bounds == (0, 1)
        assert grid._step_widget.visible and grid._batch_widget.visible
        fig = grid.plot().object
        assert "step 0 of 5: the prompt" in fig.title.text and f"({n} tokens" in fig.title.text
        grid._step_widget.value = 3  # what a user types into the step box
        fig = grid.plot().object
        layers, heads, s = grid._layout  # as drawn: s, the thumbnail side in tokens
        assert grid.step == 3 and "step 3 of 5: new token" in fig.title.text and f"({n + 3} tokens" in fig.title.text
        img = fig.renderers[0].data_source.data["image"][0]
        assert s == n + 3  # the prompt and the 3 new tokens, one pixel each (below the largest cell side)
        i, j = layers.index(1), heads.index(2)
        block = img[i * (s + 1):i * (s + 1) + s, j * (s + 1):j * (s + 1) + s]
        assert block.shape == (n + 3, n + 3)  # below the cell size: one pixel per token, the step's rows last
        want = cap.pattern(1, 2, step=3)[0]  # the step's own row
        shown = np.nan_to_num(block[n + 2])
        assert np.argmax(shown) == np.argmax(want) and np.isfinite(block[n + 2, n + 2])
        grid.batch = 1
        assert "prompt 1 of 2" in grid.plot().object.title.text
        want1 = cap.pattern(1, 2, batch=1, step=3)[0]
        assert np.argmax(np.nan_to_num(grid.plot().object.renderers[0].data_source.data["image"][0][
            i * (s + 1) + n + 2, j * (s + 1):j * (s + 1) + s])) == np.argmax(want1)
    dash.grid.capture = "bf16/000"  # another capture: back to step 0, the step box hidden
    assert dash.grid.step == 0 and dash.grid.batch == 0 and not dash.grid._step_widget.visible
    assert "step" not in dash.grid.plot().object.title.text
