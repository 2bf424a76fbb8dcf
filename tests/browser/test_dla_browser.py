"""The Contributions (direct logit attribution) tab in Chromium: a folder written by the real
`lens heads dla` on tiny-llama; a click on a head's cell gives its number."""

from __future__ import annotations

import re

import pytest

from attnlens.formats import ResultsFolder
from tests.analyses.dla_folder import write_dla_folder
from tests.browser.conftest import FRAME_JS, has_model, new_page, open_tab, point, serve, stop


@pytest.fixture(scope="module")
def dla_folder(tmp_path_factory):
    return write_dla_folder(tmp_path_factory.mktemp("dlab"))


def test_dla_tab_click_a_head(browser, dla_folder, shots, tmp_path):
    res = ResultsFolder.load(dla_folder).dla["dla"]
    want = f"{float(res.heads[0, 0, 2, 1]):+.4f}"
    served = serve(dla_folder, env={"ATTNLENS_CACHE": str(tmp_path / "cache")})
    try:
        page = new_page(browser, width=1400, height=1100)
        page.goto(served.url)
        page.wait_for_selector(".bk-tab", timeout=90_000)
        open_tab(page, "Contributions")
        page.wait_for_function(has_model("dla_heatmap"), timeout=60_000)
        page.evaluate(FRAME_JS)
        page.get_by_text(re.compile("parts sum to")).first.wait_for(timeout=30_000)
        x, y = point(page, "dla_heatmap", 1, 2)  # head 1 of layer 2
        page.mouse.click(x, y)
        page.get_by_text(re.compile(rf"adds {re.escape(want)} to")).first.wait_for(timeout=30_000)
        assert page.get_by_text(re.compile("L2H1")).count() >= 1
        page.evaluate(FRAME_JS)
        page.screenshot(path=str(shots / "dashboard_dla.png"), full_page=True)
        assert not page.errors and not page.outside
    finally:
        stop(served)
