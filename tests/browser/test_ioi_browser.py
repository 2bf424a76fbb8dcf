"""The IOI circuit in the browser, on the folder `lens circuit smollm2-135m --task ioi` wrote:
the Circuits tab labels its heads with their scores and says the circuit is not faithful, and a
click on the strongest head opens that head's pattern on an IOI prompt the command saved, at
the answer position."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attnlens.formats import ResultsFolder
from tests.browser.conftest import has_model, new_page, open_tab, point, serve, stop
from tests.browser.test_contract_browser import LABELS_JS, LEGEND_JS, _has_selected

pytestmark = pytest.mark.slow  # the real model: about 3 minutes of CPU for the circuit


@pytest.fixture(scope="module")
def ioi(tmp_path_factory) -> Path:
    reuse = os.environ.get("ATTNLENS_IOI")  # a folder this fixture wrote before (for quick reruns)
    if reuse:
        return Path(reuse)
    from tests.dashboards.contract import _lens

    root = tmp_path_factory.mktemp("ioi") / "results"
    _lens("circuit", "smollm2-135m", "--task", "ioi", "--method", "eap", "--top-n", "30", "-n", "8",
          "--out", root / "ioi-circuit")
    return root


def test_the_ioi_circuit_labels_its_heads_and_a_click_opens_one_on_an_ioi_prompt(browser, ioi, shots):
    folder = ResultsFolder.load(ioi)
    assert folder.problems == {} and list(folder.circuits) == ["ioi-circuit/ioi_eap"]
    circuit = folder.circuits["ioi-circuit/ioi_eap"]
    want = {f"L{n.layer}H{n.head}" for n in circuit.nodes if n.kind.value == "head"}
    cap = folder.captures["ioi-circuit/captures/task-000"]
    assert " gave" in cap.tokens  # an IOI prompt ("When Tom and Sam went to the garden, Sam gave a ... to")
    served = serve(ioi)
    try:
        page = new_page(browser, width=1600, height=1000)
        page.goto(served.url)
        page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
        open_tab(page, "Circuits")
        page.wait_for_function(has_model("circuit_graph"), timeout=120_000)
        if circuit.faithfulness.get("faithfulness", 1.0) < 0.8:
            page.get_by_text("low faithfulness").first.wait_for(timeout=10_000)
        labels = page.wait_for_function(f"() => ({LABELS_JS})('node_labels')", timeout=30_000).json_value()
        heads = {t.split()[0]: float(t.split()[1]) for t in labels if t.startswith("L") and "H" in t.split()[0]}  # "L23H3 -2.59"
        assert set(heads) == want, (heads, want)
        assert {"attention head", "edge score > 0 (helps)", "edge score < 0 (hurts)"} <= set(page.evaluate(LEGEND_JS))
        page.screenshot(path=str(shots / "circuit_ioi.png"))
        name = max(heads, key=lambda h: abs(heads[h]))  # the strongest head, by |score|
        layer, head = (int(x) for x in name[1:].split("H"))
        page.mouse.click(*point(page, "circuit_graph", layer, head))  # the layered layout: x the layer, y the head
        page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text.includes(t)",
                               arg=f"{name}:", timeout=60_000)  # the Heads tab, on that head's pattern
        assert _has_selected(page, "ioi-circuit/captures/task-000")  # on the IOI prompt lens circuit saved
        shown = page.locator(".attnlens-tokens .tok").all_inner_texts()
        assert [t.strip() for t in shown[:len(cap.tokens)]] == [t.strip() for t in cap.tokens]
        f = cap.focus  # the answer is read at the last position: the view opens on that row
        page.get_by_text(f"task rows {f.rows[0]}-{f.rows[1] - 1}").first.wait_for(timeout=10_000)
        page.screenshot(path=str(shots / "circuit_ioi_head_pattern.png"))
        assert page.errors == [] and page.outside == [], page.outside[:5]
        page.close()
    finally:
        stop(served)
