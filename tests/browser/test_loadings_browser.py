"""QK head loadings in Chromium: a folder written by the real `lens heads qk` and `lens heads loadings` on
tiny-llama; the QK attribution tab shows both maps below the attribution, and a click on a head names its
query-side and key-side loadings."""

from __future__ import annotations

import pytest

from tests.analyses.loadings_folder import write_loadings_folder
from tests.analyses.qk_folder import write_qk_folder
from tests.browser.conftest import FRAME_JS, has_model, new_page, open_tab, point, serve, stop


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loadingsb")
    write_qk_folder(root, head=2)
    write_loadings_folder(root, layer=3, head=2)
    return root


def test_loadings_maps_in_the_qk_tab_click_a_head(browser, root, shots, tmp_path):
    served = serve(root, env={"ATTNLENS_CACHE": str(tmp_path / "cache")})
    try:
        page = new_page(browser, width=1400, height=2000)
        page.goto(served.url)
        page.wait_for_selector(".bk-tab", timeout=90_000)
        open_tab(page, "QK attribution")
        for name in ("qk_heatmap_figure", "loadings_query_figure", "loadings_key_figure"):
            page.wait_for_function(has_model(name), timeout=60_000)
        page.get_by_text("Head loadings of L3H2").first.wait_for(timeout=30_000)
        page.evaluate(FRAME_JS)
        x, y = point(page, "loadings_key_figure", 1, 2)  # head 1 of layer 2
        page.mouse.click(x, y)
        page.get_by_text("L2H1 → L3H2: query side").first.wait_for(timeout=30_000)
        page.evaluate(FRAME_JS)
        page.screenshot(path=str(shots / "dashboard_qk_loadings.png"), full_page=True)
        assert not page.errors and not page.outside
    finally:
        stop(served)
