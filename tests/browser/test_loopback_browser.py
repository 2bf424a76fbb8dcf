"""Issue 29: the served dashboard loads every stylesheet and script from the server itself.
Panel falls back to the HoloViz CDN for a stylesheet of a view built where its document does not
say where Panel's files are served (a tab rendered on first opening, a circuit node's click
switching tabs); the pages here may only reach 127.0.0.1, so any such request fails the test."""

from __future__ import annotations

import pytest

from tests.browser.conftest import FRAME_JS, has_model, new_page, open_tab, point, serve, stop
from tests.dashboards.contract import contract_folder

TABS = ["All heads", "Head map", "Q/K map", "Stats", "Ablations", "Circuits", "Vision", "Heads"]
HEADS_JS = """() => { const m = Bokeh.documents[0].get_model_by_name('node_labels');
  return m === null ? null : Array.from(m.source.data.text).filter(t => t.startsWith('L')) }"""
# every stylesheet the page's shadow roots and head link to (what Panel asked the browser to load)
SHEETS_JS = """() => { const urls = new Set();
  const visit = (root) => { for (const l of root.querySelectorAll('link[rel=stylesheet]')) urls.add(l.href);
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) visit(el.shadowRoot); };
  visit(document); return Array.from(urls) }"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = serve(contract_folder(tmp_path_factory))
    yield s
    stop(s)


@pytest.mark.parametrize("session", range(3))
def test_no_request_leaves_loopback_after_every_tab_and_a_circuit_click(browser, served, session):
    page = new_page(browser, width=1600, height=1000)
    page.goto(served.url)
    page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
    for tab in TABS:
        open_tab(page, tab)
        page.wait_for_timeout(300)
    open_tab(page, "Circuits")
    heads = page.wait_for_function(f"() => ({HEADS_JS})()", timeout=120_000).json_value()
    layer, head = (int(x) for x in heads[0].split()[0][1:].split("H"))
    page.mouse.click(*point(page, "circuit_graph", layer, head))  # switches to the Heads tab, on that head
    page.wait_for_function("(t) => { const m = Bokeh.documents[0].get_model_by_name('pattern_heatmap');"
                           " return m !== null && m.title.text.includes(t) }", arg=f"L{layer}H{head}:", timeout=60_000)
    for tab in reversed(TABS):  # every tab again, now built after the click
        open_tab(page, tab)
        page.wait_for_timeout(300)
    page.evaluate(FRAME_JS)
    page.wait_for_load_state("networkidle")
    sheets = page.evaluate(SHEETS_JS)
    assert sheets, "no stylesheet links found: the check below would be empty"
    assert [u for u in sheets if not u.startswith(served.url)] == []  # every stylesheet from the server
    assert page.outside == [] and page.errors == []
    page.close()
