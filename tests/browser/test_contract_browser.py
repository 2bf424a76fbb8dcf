"""Issue 11's contract in the browser: `lens dashboard` over the real commands' output on the tiny
models shows every kind, non-empty, in every tab."""

from __future__ import annotations

import pytest

from tests.browser.conftest import FRAME_JS, has_model, new_page, open_tab, point, serve, stop
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


# Heads opens on the task score (the circuit's) and so on the circuit's own task prompt, saved by
# lens circuit: 7 tokens of the contract's task file, 28 causal cells
@pytest.mark.parametrize("tab,figure,field,least", [
    ("Heads", "pattern_heatmap", "value", 28), ("All heads", "heads_grid", "image", 1),
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


def test_vision_tab_overlays_the_dinov2_capture(browser, served, tmp_path_factory):
    page = new_page(browser)
    page.goto(served.url)
    page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
    open_tab(page, "Vision")
    img = page.locator("img").first
    img.wait_for(timeout=60_000)
    assert img.evaluate("i => i.naturalWidth") > 100
    page.get_by_text("tiny-dinov2 · query 0").first.wait_for(timeout=10_000)  # the ViT, on its CLS query
    # a click on a patch of the patch map makes it the query: patch (r, c) is token start + r * cols + c
    from attnlens.formats import ResultsFolder

    lay = ResultsFolder.load(contract_folder(tmp_path_factory)).captures["image/000"].layout
    rows, cols = lay.grid
    r, c = rows - 1, cols // 2
    page.wait_for_function(has_model("vision_patches"), timeout=60_000)
    page.mouse.click(*point(page, "vision_patches", c + 0.5, r + 0.5))
    want = lay.patch_span[0] + r * cols + c
    page.get_by_text(f"tiny-dinov2 · query {want} 'patch({r},{c})'").first.wait_for(timeout=30_000)
    page.wait_for_function("(t) => [...Bokeh.documents[0].all_models].some(m => m.name === 'vision_patches'"
                           " && m.title.text.startsWith(t))", arg=f"query {want} ", timeout=30_000)  # redrawn there
    assert page.errors == [] and page.outside == [], page.outside[:5]
    page.close()


LABELS_JS = """(name) => { const m = Bokeh.documents[0].get_model_by_name(name);
  return m === null ? null : Array.from(m.source.data.text) }"""
LEGEND_JS = """() => Bokeh.documents[0].get_model_by_name('circuit_legend').items.map(i => i.label.value)"""
def _select(page, label: str, timeout_s: float = 20) -> None:
    """Choose ``label`` in the one selector that offers it (waiting while the widgets render)."""
    selects = page.locator("select")
    for _ in range(int(timeout_s * 4)):
        found = [i for i in range(selects.count()) if label in selects.nth(i).locator("option").all_inner_texts()]
        if found:
            selects.nth(found[0]).select_option(label=label)
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"no selector offers {label!r}")


def _has_selected(page, value: str, timeout_s: float = 10) -> bool:
    """Whether a selector shows ``value`` within ``timeout_s`` (locators reach into Panel's shadow roots)."""
    for _ in range(int(timeout_s * 4)):
        if value in page.locator("select").evaluate_all("els => els.map(e => e.value)"):
            return True
        page.wait_for_timeout(250)
    return False


BAR_JS = """() => { const b = Bokeh.documents[0].get_model_by_name('head_heatmap_colorbar');
  const o = b.major_label_overrides;
  return [b.title, b.color_mapper.low, b.color_mapper.high, o instanceof Map ? Array.from(o.values()) : Object.values(o)] }"""


def test_the_circuit_view_labels_its_heads_and_a_click_opens_one(browser, served):
    page = new_page(browser, width=1600, height=1000)
    page.goto(served.url)
    page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
    open_tab(page, "Circuits")
    page.wait_for_function(has_model("circuit_graph"), timeout=120_000)
    page.get_by_text("low faithfulness: this 3-edge circuit").first.wait_for(timeout=10_000)  # 0.54 < 0.8
    labels = page.wait_for_function(f"() => ({LABELS_JS})('node_labels')", timeout=30_000).json_value()
    heads = [t for t in labels if t.startswith("L")]
    assert len(heads) == 3 and all(len(t.split()) == 2 for t in heads)  # each head: its name and its score
    assert {"attention head", "edge score > 0 (helps)", "edge score < 0 (hurts)"} <= set(page.evaluate(LEGEND_JS))
    name = heads[0].split()[0]
    layer, head = (int(x) for x in name[1:].split("H"))
    page.mouse.click(*point(page, "circuit_graph", layer, head))  # the layered layout: x the layer, y the head
    page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text.includes(t)",
                           arg=f"{name}:", timeout=60_000)  # the Heads tab, on that head's pattern
    assert _has_selected(page, "circuit/captures/task-000")  # the explorer on the task's own prompt
    assert page.errors == [] and page.outside == []  # the Heads tab, built while hidden, links no CDN stylesheet
    page.close()


def test_signed_scores_diverge_and_categories_show_their_legend_in_the_browser(browser, served):
    page = new_page(browser)
    page.goto(served.url)
    page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
    _select(page, "circuit/circuit.T_eap_logit-diff")
    page.wait_for_function(f"() => ({BAR_JS})()[0].startsWith('signed')", timeout=30_000)
    _, low, high, _ = page.evaluate(BAR_JS)
    assert low == -high < 0  # centred on zero
    _select(page, "scan/taxonomy.head_type")
    page.wait_for_function(f"() => ({BAR_JS})()[0] === 'category'", timeout=30_000)
    assert page.evaluate(BAR_JS)[3] == ["sink", "previous-token", "positional", "induction", "duplicate-token", "other"]
    assert page.errors == [] and page.outside == []
    page.close()
