"""`dashboards.show` on in-memory and saved captures of tiny-llama, the direct logit attribution view
(inline from a capture attributed by pipelines.dla, and from a saved result), and short reprs of what a
notebook prints."""

from __future__ import annotations

import numpy as np
import pytest

import lens
from attnlens.dashboards import show
from attnlens.dashboards.dla import ContributionView, head_grid
from attnlens.dashboards.explorer import AttentionExplorer
from attnlens.dashboards.heads_grid import HeadsGrid
from attnlens.formats import CaptureFile, PromptError, ResultsFolder, SelectionError, Site

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def run(tiny_lm):
    return lens.run(tiny_lm, PROMPT, sites=[Site.PATTERN, Site.Z, Site.ATTN_OUT, Site.RESID_POST])


def test_show_a_head_all_heads_and_a_folder(run, tmp_path, synth):
    view = show(run.capture, layer=2, head=1)
    assert isinstance(view, AttentionExplorer) and (view.layer, view.head) == (2, 1)
    np.testing.assert_allclose(view.window.values, run.capture.pattern(2, 1)[0].numpy(), atol=1e-6)
    assert view.tokens.tokens == run.capture.meta.tokens[0]
    grid = show(run)  # a RunResult: its capture, every head
    assert isinstance(grid, HeadsGrid) and grid.layout()[:2] == ([0, 1, 2, 3], [0, 1, 2, 3])
    run.capture.write_into(tmp_path / "cap")
    assert isinstance(show(tmp_path / "cap", layer=0, head=3), AttentionExplorer)  # a saved capture's path
    dash = show(str(synth))
    assert dash.__class__.__name__ == "Dashboard" and dash.sel.results
    atlas = show(ResultsFolder.load(synth).results["scan/summary.entropy"])
    assert atlas.__class__.__name__ == "HeadAtlas"
    with pytest.raises(SelectionError, match="head 9 is out of range"):
        show(run.capture, layer=0, head=9)
    with pytest.raises(SelectionError, match="show\\(\\) takes a capture"):
        show(42)
    with pytest.raises(SelectionError, match="view='dla' shows a direct logit attribution"):
        show(run, view="dla")
    with pytest.raises(AttributeError, match="from attnlens.dashboards import show"):
        lens.show  # noqa: B018  (moved: lens imports no views)


def test_views_render_with_inline_resources(run, tmp_path):
    import re

    import panel as pn

    from attnlens.dashboards.inline import ensure_inline

    ensure_inline()
    assert pn.config.inline
    out = tmp_path / "view.html"
    pn.panel(show(run.capture, layer=1, head=0)).save(out, resources="inline")
    text = out.read_text()
    assert len(text) > 1_000_000  # Bokeh and Panel themselves are in the page
    assert not re.findall(r"<script[^>]+src=[\"']https?://", text)  # no script from a CDN
    assert not re.findall(r"<link[^>]+stylesheet[^>]+href=[\"']https?://", text)  # nor a style sheet


def test_direct_logit_attribution_inline_from_a_capture_and_from_a_file(tiny_lm, run, tmp_path):
    from attnlens.pipelines.dla import dla_of_capture, run_dla

    view = show(dla_of_capture(tiny_lm, run, ["M", "J"]))
    assert isinstance(view, ContributionView)
    res = view.current
    np.testing.assert_allclose(res.totals(), res.logits, atol=1e-4)  # through analyses.dla
    assert res.targets[:2] == ["M", "J"] and res.positions == [len(res.tokens) - 1]
    want = run_dla(tiny_lm, PROMPT, ["M", "J"])
    np.testing.assert_allclose(res.heads, want.heads, atol=1e-6)  # the capture's tokens are the prompt's
    grid = head_grid(res, res.positions[0], "J")
    view.target = 1
    drawn = np.asarray(view._grid.source.data["value"], dtype=float).reshape(grid.shape)
    np.testing.assert_allclose(drawn, grid, rtol=1e-6)
    assert view._grid.mapper.low == -view._grid.mapper.high == -np.abs(grid).max()  # diverging, centred on zero
    assert "the model's logit" in view._info.object and "parts sum to" in view._info.object
    view._on_click(2.1, 3.2)  # head 2 of layer 3
    assert view.selected == (3, 2) and f"L3H2</b> adds <b>{grid[3, 2]:+.4f}" in view._cell.object
    path = want.save(tmp_path)
    again = show(path)  # a saved *.dla.json
    assert isinstance(again, ContributionView) and again.current.targets == want.targets
    with pytest.raises(PromptError, match="target 'two tokens' is 10 tokens"):
        dla_of_capture(tiny_lm, run, ["two tokens"])
    with pytest.raises(SelectionError, match="view='dla' shows a direct logit attribution"):
        from attnlens.dashboards.inline import as_saved, view_of

        view_of(as_saved(run), view="dla")


def test_what_a_notebook_prints_is_short(run, synth, tmp_path):
    folder = ResultsFolder.load(synth)
    run.capture.write_into(tmp_path / "c")
    objects = [run.capture, CaptureFile.load(tmp_path / "c"), folder, *folder.results.values(), *folder.curves.values(),
               *folder.circuits.values(), *folder.ablations.values(), *folder.stats_runs.values()]
    for obj in objects:
        assert len(repr(obj)) < 300, repr(obj)[:400]
