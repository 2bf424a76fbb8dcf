"""Issue 11's contract in the browser: `lens dashboard` over the real commands' output on the tiny
models shows every kind, non-empty, in every tab."""

from __future__ import annotations

import pytest

from tests.browser.conftest import FRAME_JS, has_model, new_page, open_tab, serve, stop
from tests.dashboards.contract import contract_folder

DATA_JS = """([name, field]) => { const m = Bokeh.documents[0].get_model_by_name(name);
  if (m === null) return -1;
  const r = m.renderers.find(r => r.data_source && r.data_source.data[field] !== undefined);
  return r ? r.data_source.data[field].length : -1 }"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = serve(contract_folder(tmp_path_factory))
    yield s
    stop(s)


@pytest.mark.parametrize("tab,figure,field,least", [
    ("Heads", "pattern_heatmap", "value", 100), ("All heads", "heads_grid", "image", 1),
    ("Head map", "head_map", "x", 16), ("Q/K map", "qk_map", "x", 40), ("Stats", "stats_curves", "entropy", 40),
    ("Ablations", "curves_plot_0", "y", 3), ("Circuits", "circuit_graph", "x0", 3)])
def test_every_tab_shows_the_commands_output(browser, served, tab, figure, field, least):
    page = new_page(browser)
    page.goto(served.url)
    page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
    open_tab(page, tab)
    page.wait_for_function(has_model(figure), timeout=120_000)
    page.evaluate(FRAME_JS)
    assert page.evaluate(DATA_JS, [figure, field]) >= least
    if tab == "Ablations":
        assert page.evaluate(DATA_JS, ["ablation_plot", "top"]) >= 1  # the set against random sets
        # faithfulness curves over edges and heads, and the layer sweep (4 layers)
        assert [page.evaluate(DATA_JS, [f"curves_plot_{i}", "y"]) for i in range(3)] == [3, 3, 4]
    assert page.errors == [] and page.outside == []
    page.close()


def test_vision_tab_overlays_the_dinov2_capture(browser, served):
    page = new_page(browser)
    page.goto(served.url)
    page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
    open_tab(page, "Vision")
    img = page.locator("img").first
    img.wait_for(timeout=60_000)
    assert img.evaluate("i => i.naturalWidth") > 100
    page.get_by_text("tiny-dinov2 · query 0").first.wait_for(timeout=10_000)  # the ViT, on its CLS query
    page.close()
