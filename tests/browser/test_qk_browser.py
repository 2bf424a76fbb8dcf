"""The QK attribution tab in Chromium: a folder written by the real `lens heads qk` on tiny-llama;
a click on a key of the head's attention row re-draws the decomposition for that key."""

from __future__ import annotations

import re

import pytest

from tests.analyses.qk_folder import write_qk_folder
from tests.browser.conftest import FRAME_JS, has_model, new_page, open_tab, point, serve, stop


@pytest.fixture(scope="module")
def qk_folder(tmp_path_factory):
    return write_qk_folder(tmp_path_factory.mktemp("qkb"), head=2)


def _title(page, name: str) -> str:
    return page.evaluate(f"() => Bokeh.documents[0].get_model_by_name('{name}').title.text")


def test_qk_tab_click_a_key(browser, qk_folder, shots, tmp_path):
    served = serve(qk_folder, env={"ATTNLENS_CACHE": str(tmp_path / "cache")})
    try:
        page = new_page(browser, width=1400, height=1100)
        page.goto(served.url)
        page.wait_for_selector(".bk-tab", timeout=90_000)
        open_tab(page, "QK attribution")
        page.wait_for_function(has_model("qk_row_figure"), timeout=60_000)
        page.wait_for_function(has_model("qk_heatmap_figure"), timeout=60_000)
        page.evaluate(FRAME_JS)
        before = _title(page, "qk_heatmap_figure")
        x, y = point(page, "qk_row_figure", 5, 0)
        page.mouse.click(x, y)
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('qk_heatmap_figure') !== null && "
                               "Bokeh.documents[0].get_model_by_name('qk_heatmap_figure').title.text"
                               ".includes('at key 5:')", timeout=30_000)
        assert "at key 5:" not in before
        page.get_by_text(re.compile("→ key 5 ")).first.wait_for(timeout=30_000)  # locators see into shadow roots
        page.evaluate(FRAME_JS)
        page.screenshot(path=str(shots / "dashboard_qk_attribution.png"), full_page=True)
        assert not page.errors and not page.outside
    finally:
        stop(served)
