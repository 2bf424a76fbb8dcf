"""`lens.show` on in-memory and saved captures of tiny-llama, the direct logit attribution checked
against the model's own logits, and short reprs of what a notebook prints."""

from __future__ import annotations

import numpy as np
import pytest

import lens
from dashboards.dla import ContributionView, dla_grid, head_outputs
from dashboards.explorer import AttentionExplorer
from dashboards.heads_grid import HeadsGrid
from formats import CaptureFile, ResultsFolder, SelectionError, Site

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def run(tiny_lm):
    return lens.run(tiny_lm, PROMPT, sites=[Site.PATTERN, Site.Z, Site.ATTN_OUT, Site.RESID_POST])


def test_show_a_head_all_heads_and_a_folder(run, tmp_path, synth):
    view = lens.show(run.capture, layer=2, head=1)
    assert isinstance(view, AttentionExplorer) and (view.layer, view.head) == (2, 1)
    np.testing.assert_allclose(view.window.values, run.capture.pattern(2, 1)[0].numpy(), atol=1e-6)
    assert view.tokens.tokens == run.capture.meta.tokens[0]
    grid = lens.show(run)  # a RunResult: its capture, every head
    assert isinstance(grid, HeadsGrid) and grid.layout()[:2] == ([0, 1, 2, 3], [0, 1, 2, 3])
    run.capture.write_into(tmp_path / "cap")
    assert isinstance(lens.show(tmp_path / "cap", layer=0, head=3), AttentionExplorer)  # a saved capture's path
    dash = lens.show(str(synth))
    assert dash.__class__.__name__ == "Dashboard" and dash.sel.results
    atlas = lens.show(ResultsFolder.load(synth).results["scan/summary.entropy"])
    assert atlas.__class__.__name__ == "HeadAtlas"
    with pytest.raises(SelectionError, match="head 9 is out of range"):
        lens.show(run.capture, layer=0, head=9)
    with pytest.raises(SelectionError, match="show\\(\\) takes a capture"):
        lens.show(42)
    with pytest.raises(SelectionError, match="view='dla' needs model="):
        lens.show(run, view="dla")


def test_views_render_with_inline_resources(run, tmp_path):
    import re

    import panel as pn

    from dashboards.inline import ensure_inline

    ensure_inline()
    assert pn.config.inline
    out = tmp_path / "view.html"
    pn.panel(lens.show(run.capture, layer=1, head=0)).save(out, resources="inline")
    text = out.read_text()
    assert len(text) > 1_000_000  # Bokeh and Panel themselves are in the page
    assert not re.findall(r"<script[^>]+src=[\"']https?://", text)  # no script from a CDN
    assert not re.findall(r"<link[^>]+stylesheet[^>]+href=[\"']https?://", text)  # nor a style sheet


def test_direct_logit_attribution_adds_up_to_the_models_logits(tiny_lm, run):
    from lens.show import as_capture_file, readout_for

    cap = as_capture_file(run)
    readout = readout_for(tiny_lm, cap, targets=[" "])
    f = tiny_lm.facts
    pos = len(cap.tokens) - 1
    for layer in range(f.n_layers):
        # the heads' outputs through their slices of o_proj add up to the attention block's output
        z = cap.read(Site.Z, layer, 0, (0, slice(None), pos))
        out = head_outputs(z, readout.w_o[layer]).sum(0)
        np.testing.assert_allclose(out, cap.read(Site.ATTN_OUT, layer)[0, pos], rtol=1e-4, atol=1e-5)
    resid = cap.read(Site.RESID_POST, f.n_layers - 1)[0].astype(np.float64)  # [pos, d_model]
    for name, direction in readout.directions.items():
        # with the final norm's scale frozen, the logit is the residual stream's projection
        np.testing.assert_allclose(resid @ direction / readout.sigma, readout.logits[name], rtol=1e-4, atol=1e-4)
    target = next(iter(readout.directions))
    grid = dla_grid(cap, readout, target, pos)
    assert grid.shape == (f.n_layers, f.n_heads) and np.isfinite(grid).all()
    heads_total = sum(head_outputs(cap.read(Site.Z, la, 0, (0, slice(None), pos)), readout.w_o[la]).sum(0)
                      for la in range(f.n_layers)) @ readout.directions[target] / readout.sigma[pos]
    assert grid.sum() == pytest.approx(heads_total, rel=1e-6)
    view = lens.show(run, view="dla", model=tiny_lm, targets=[" "])
    assert isinstance(view, ContributionView) and view.missing() is None
    np.testing.assert_allclose(np.asarray(view._grid.source.data["value"]).reshape(grid.shape), grid, rtol=1e-6)
    assert "the model's logit there is" in view._info.object
    with pytest.raises(SelectionError, match="give one token"):
        readout_for(tiny_lm, cap, targets=["two tokens"])


def test_what_a_notebook_prints_is_short(run, synth, tmp_path):
    folder = ResultsFolder.load(synth)
    run.capture.write_into(tmp_path / "c")
    objects = [run.capture, CaptureFile.load(tmp_path / "c"), folder, *folder.results.values(), *folder.curves.values(),
               *folder.circuits.values(), *folder.ablations.values(), *folder.stats_runs.values()]
    for obj in objects:
        assert len(repr(obj)) < 300, repr(obj)[:400]
