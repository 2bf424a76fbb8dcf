"""The explorer in chromium on folders the real code wrote: a capture across generate() shows
its step 3 after typing it into the step box (the head view and the all-heads grid); on the folder
`lens scan smollm2-135m` wrote, the top retrieval head opens the needle capture on an answer row
whose top key lies inside the needle; a click on a token pins it as the query; and
no request leaves this machine after the clicks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from attnlens.formats import ResultsFolder
from tests.browser.conftest import FRAME_JS, has_model, new_page, open_tab, point, serve, stop
from tests.browser.test_contract_browser import _has_selected
from tests.dashboards.contract import contract_folder

TITLE_JS = "(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text.includes(t)"


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    return contract_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    """What `lens scan smollm2-135m --lengths 256 --depths 0.5` wrote: the retrieval scores of a
    needle trial the model passes and the needle capture (its answer rows and needle keys)."""
    reuse = os.environ.get("ATTNLENS_SCAN")  # a folder this fixture wrote before (for quick reruns)
    if reuse:
        return Path(reuse)
    from tests.dashboards.contract import _lens

    root = tmp_path_factory.mktemp("scan") / "results"
    _lens("scan", "smollm2-135m", "--lengths", "256", "--depths", "0.5", "--out", root / "scan")
    return root


def _open(browser, url):
    page = new_page(browser, width=1600, height=1000)
    page.goto(url)
    page.wait_for_function(has_model("pattern_heatmap"), timeout=90_000)
    page.evaluate(FRAME_JS)
    return page


def test_step_3_of_a_generation_capture_in_the_dashboard(browser, contract, shots):
    served = serve(contract)
    try:
        page = _open(browser, served.url)
        page.locator("select").filter(has=page.locator("option[value='generate/000']")).first.select_option(
            "generate/000")
        step = page.locator(".bk-input-group").filter(has_text=re.compile(r"^\s*step\s*$")).locator("input >> visible=true").first
        step.wait_for(state="visible", timeout=30_000)
        step.fill("3")
        step.press("Enter")
        page.wait_for_function(TITLE_JS, arg="at step 3", timeout=30_000)
        page.get_by_text("step 3 of 5: new token").first.wait_for(timeout=30_000)
        n_rows = page.evaluate("() => { const m = Bokeh.documents[0].get_model_by_name('pattern_heatmap');"
                               " return Math.round(m.y_range.start + 0.5) }")
        cap = ResultsFolder.load(contract).captures["generate/000"]
        assert n_rows == len(cap.tokens) + 3  # the prompt's rows and one row per generated token so far
        page.screenshot(path=str(shots / "explorer_generation_step3.png"))
        # a ViT's patch tokens ("patch(r,c)", no spaces) wrap inside the token view instead of running off
        page.locator("select").filter(has=page.locator("option[value='tiny-dinov2']")).first.select_option(
            "tiny-dinov2")
        body = page.locator(".attnlens-tokens .body").filter(has_text="patch(0,0)").first
        body.wait_for(timeout=30_000)
        page.get_by_text("patch(0,0)").first.wait_for(timeout=60_000)
        sw, cw = body.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert sw <= cw + 1, (sw, cw)
        assert page.errors == [] and page.outside == [], page.outside[:5]
        page.close()
    finally:
        stop(served)


# the grid is redrawn as a new figure; the one shown is the newest of that name
GRID_JS = "() => [...Bokeh.documents[0].all_models].filter(m => m.name === 'heads_grid').map(m => m.title.text)"
GRID_TITLE_JS = f"(t) => ({GRID_JS})().some(x => x.includes(t))"


def test_step_3_of_a_generation_capture_in_the_all_heads_grid(browser, contract, shots):
    served = serve(contract)
    try:
        page = _open(browser, served.url)
        open_tab(page, "All heads")
        page.wait_for_function(has_model("heads_grid"), timeout=60_000)
        pick = page.locator("select >> visible=true").filter(has=page.locator("option[value='generate/000']")).first
        pick.select_option("generate/000")
        page.wait_for_function(GRID_TITLE_JS, arg="step 0 of 5: the prompt", timeout=30_000)
        step = page.locator(".bk-input-group >> visible=true").filter(has_text=re.compile(r"^\s*step\s*$")).locator(
            "input").first
        step.fill("3")
        step.press("Enter")
        page.wait_for_function(GRID_TITLE_JS, arg="step 3 of 5: new token", timeout=30_000)
        cap = ResultsFolder.load(contract).captures["generate/000"]
        (title,) = [t for t in page.evaluate(GRID_JS) if "step 3 of 5" in t]
        assert title.endswith(f"({len(cap.tokens) + 3} tokens)"), title
        page.evaluate(FRAME_JS)
        page.screenshot(path=str(shots / "heads_grid_generation_step3.png"))
        assert page.errors == [] and page.outside == [], page.outside[:5]
        page.close()
    finally:
        stop(served)


@pytest.mark.slow  # the real model: lens scan smollm2-135m (one 256-token needle trial) takes minutes
def test_the_top_retrieval_head_opens_on_the_answer_row_with_its_top_key_in_the_needle(browser, scan, shots):
    folder = ResultsFolder.load(scan)
    result = folder.results["scan/retrieval.retrieval_score"]
    assert result.summary["trials_passed"] >= 1 and result.params["example_capture"] == "captures/needle"
    layer, head = map(int, np.unravel_index(np.nanargmax(result.scores), result.scores.shape))
    focus = folder.captures["scan/captures/needle"].focus
    served = serve(scan)
    try:
        page = _open(browser, served.url)
        page.wait_for_function(has_model("head_heatmap"), timeout=60_000)
        page.locator("select").filter(has=page.locator("option[value='scan/retrieval.retrieval_score']")).first.select_option(
            "scan/retrieval.retrieval_score")
        x, y = point(page, "head_heatmap", head, layer)
        page.mouse.click(x, y)
        page.wait_for_function(TITLE_JS, arg=f"L{layer}H{head}:", timeout=30_000)
        assert _has_selected(page, "scan/captures/needle")  # the scan's own needle prompt
        top = page.get_by_text(re.compile(r"top key of query \d+: \d+")).first
        top.wait_for(timeout=30_000)
        q, k = map(int, re.search(r"top key of query (\d+): (\d+)", top.inner_text()).groups())
        assert focus.rows[0] <= q < focus.rows[1] and focus.keys[0] <= k < focus.keys[1], (q, k, focus)
        page.get_by_text(f"task rows {focus.rows[0]}-{focus.rows[1] - 1}").first.wait_for(timeout=10_000)
        page.screenshot(path=str(shots / "explorer_needle_answer_row.png"))
        pos = focus.rows[0] - 20
        tok = page.locator(f".attnlens-tokens .tok[data-pos='{pos}']")  # a click on a token pins it as the query
        tok.scroll_into_view_if_needed()
        tok.click()
        page.get_by_text(re.compile(rf"top key of query {pos}: \d+")).first.wait_for(timeout=30_000)
        assert page.errors == [] and page.outside == [], page.outside[:5]
        page.close()
    finally:
        stop(served)
