"""SmolLM2's top induction head on the repeated-token capture (the taxonomy's own inputs): the
dashboard and the report draw its induction stripe, not just its sink (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest

from attnlens.dashboards._bokeh import trigger_click
from attnlens.dashboards.app import Dashboard
from attnlens.dashboards.compute import ColorScale, stripe_visibility
from attnlens.dashboards.report import build_report
from attnlens.formats import ResultsFolder

REPEAT = 40


@pytest.mark.slow
def test_the_induction_stripe_is_drawn_in_the_dashboard_and_the_report(smollm2, tmp_path):
    from attnlens.pipelines.examples import repeated_example
    from attnlens.pipelines.heads import run_taxonomy

    for r in run_taxonomy(smollm2, repeat_len=REPEAT, batch=2):
        r.params["example_capture"] = "captures/repeated-tokens"
        r.save(tmp_path / "scan")
    repeated_example(smollm2, repeat_len=REPEAT).capture.write_into(tmp_path / "scan" / "captures" / "repeated-tokens")
    folder = ResultsFolder.load(tmp_path)
    layer, head, score = folder.results["scan/taxonomy.induction"].top(1)[0]
    assert score > 0.3, score  # SmolLM2 has clear induction heads

    dash = Dashboard(folder, map_method="pca")
    dash.atlas.metric = "scan/taxonomy.induction"
    trigger_click(dash.atlas.grid.figure, head, layer)
    ex = dash.explorer
    assert (ex.layer, ex.head) == (layer, head) and ex.capture == "scan/captures/repeated-tokens"
    cap = folder.captures["scan/captures/repeated-tokens"]
    n = len(cap.tokens)
    offset = n - 2 * REPEAT
    q = np.arange(offset + REPEAT, n)  # the second copy
    k = q - REPEAT + 1  # the token after the earlier copy of the current token
    ex.window_size = 256  # every row
    w = ex.window
    shown = stripe_visibility(w.values, q, k, ex.color_high)
    off_sink = w.values[q][:, 1:].sum(1).mean()
    assert shown > 0.4, (shown, off_sink)  # the stripe is drawn in the darker half of the scale
    ex.scale = ColorScale.LINEAR
    linear = stripe_visibility(ex.window.values, q, k, ex.color_high)
    assert shown >= linear

    report = build_report(folder)
    section = next(r for m in report.models for r in m.results if r.label == "scan/taxonomy.induction")
    top = section.top[0]
    assert top.label == f"L{layer}H{head}" and top.capture == "scan/captures/repeated-tokens"
    thumb = top.thumb
    assert thumb.data.shape == (n, n)  # short enough to be drawn unpooled
    assert stripe_visibility(thumb.data, q, k, thumb.vmax) > 0.4
    print(f"\nL{layer}H{head}: induction {score:.2f}, stripe drawn at {shown:.2f} of the scale "
          f"(linear scale: {linear:.2f}), first-token mass {w.values[q, 0].mean():.2f}")
