"""The dashboard in headless chromium on a 1,024-head folder: every click answered on the first
try (random cells, 150-400 ms apart, re-clicks, borders, long presses), one update per click,
every view rendered (screenshots), the token view's hover both ways, and the timings benchmark."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest

from tests.browser.conftest import FRAME_JS, has_model, new_page, open_dashboard, open_tab, point

N = 32  # layers and heads of the big folder


def click_plan(rng: np.random.Generator, n: int, n_rows: int, n_cols: int, start: tuple[int, int]):
    """``n`` clicks: (row, col, dx, dy, hold_s, gap_s). 15% re-click the selected cell, 20% land
    near a cell border, 15% are long presses (held 350-450 ms, a "press" to BokehJS)."""
    plan, sel = [], start
    for _ in range(n):
        cell = sel if rng.random() < 0.15 else (int(rng.integers(n_rows)), int(rng.integers(n_cols)))
        if rng.random() < 0.2:
            dx, dy = rng.choice([-0.44, 0.44]), rng.uniform(-0.44, 0.44)
        else:
            dx, dy = rng.uniform(-0.3, 0.3, 2)
        hold = rng.uniform(0.35, 0.45) if rng.random() < 0.15 else 0.0
        plan.append((cell[0], cell[1], float(dx), float(dy), float(hold), float(rng.uniform(0.15, 0.40))))
        sel = cell
    return plan


def run_clicks(page, figure: str, plan, to_xy) -> float:
    """Fire the plan without waiting for answers; returns the seconds the clicking took."""
    t0 = time.perf_counter()
    for row, col, dx, dy, hold, gap in plan:
        x, y = point(page, figure, *to_xy(row, col, dx, dy))
        page.mouse.move(x, y)
        page.mouse.down()
        if hold:
            page.wait_for_timeout(hold * 1000)
        page.mouse.up()
        page.wait_for_timeout(gap * 1000)
    return time.perf_counter() - t0


def wait_log(page, name: str, n: int, timeout_s: float = 90) -> list:
    page.wait_for_function(f"() => window.__log['{name}'].length >= {n}", timeout=timeout_s * 1000)
    return page.evaluate(f"() => window.__log['{name}']")


def test_40_random_atlas_clicks_are_all_answered_first_time(browser, server):
    page, _ = open_dashboard(browser, server)
    page.evaluate("() => { window.__watch('head_heatmap_mark'); window.__watch('pattern_query_mark'); }")
    plan = click_plan(np.random.default_rng(0), 40, N, N, (0, 0))
    m0 = page.evaluate("() => window.__msgs.length")
    run_clicks(page, "head_heatmap", plan, lambda r, c, dx, dy: (c + dx, r + dy))
    log = wait_log(page, "head_heatmap_mark", 41)  # the initial mark, then one per click
    answered = [tuple(row) for row in log[1:]]  # [head, layer, n]
    assert answered == [(c, r, i + 1) for i, (r, c, *_) in enumerate(plan)]
    last = plan[-1]
    page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text.includes(t)",
                           arg=f"L{last[0]}H{last[1]}:", timeout=30_000)
    patches = page.evaluate("(m0) => window.__msgs.slice(m0).filter(t => t === 'PATCH-DOC').length", m0)
    assert patches <= 40, f"{patches} document updates for 40 clicks"  # one update per click (and acks)
    assert sum(1 for p in plan if p[4]) >= 3 and page.errors == [] and page.outside == []
    page.close()


def test_40_random_explorer_row_clicks_are_all_answered_first_time(browser, server):
    page, _ = open_dashboard(browser, server)
    page.evaluate("() => window.__watch('pattern_query_mark')")
    plan = click_plan(np.random.default_rng(1), 40, 48, 1, (47, 0))
    run_clicks(page, "pattern_heatmap", plan, lambda r, c, dx, dy: (max(0.0, r / 2 + dx), r + dy))
    log = wait_log(page, "pattern_query_mark", 41)
    answered = [(int(n), int(y)) for n, _, y in log[1:]]  # [n, w, y]
    assert answered == [(i + 1, r) for i, (r, *_) in enumerate(plan)]
    page.close()


def test_grid_and_head_map_clicks_select_the_head(browser, server):
    page, _ = open_dashboard(browser, server)
    open_tab(page, "All heads")
    page.wait_for_function(has_model("heads_grid"), timeout=60_000)
    page.evaluate("() => window.__watch('heads_grid_mark')")
    s = page.evaluate("() => { const m = Bokeh.documents[0].get_model_by_name('heads_grid');"
                      " return m.x_range.end / 32 - 1 }")
    for layer, head in [(3, 7), (3, 7), (30, 1)]:
        x, y = point(page, "heads_grid", head * (s + 1) + s / 2, layer * (s + 1) + s / 2)
        if y > 900:  # 32 layers of thumbnails are taller than the window: scroll to the row, as a user does
            page.mouse.move(x, 500)
            page.mouse.wheel(0, y - 500)
            page.wait_for_timeout(300)
            x, y = point(page, "heads_grid", head * (s + 1) + s / 2, layer * (s + 1) + s / 2)
        page.mouse.click(x, y)
        page.wait_for_timeout(200)
    page.wait_for_function("() => { const l = window.__log['heads_grid_mark']; return l[l.length - 1][0] === 3 }",
                           timeout=30_000)  # [n, x, y]: three clicks answered
    open_tab(page, "Heads")  # the explorer follows the grid
    page.wait_for_function(has_model("pattern_heatmap"), timeout=30_000)
    page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text.includes(t)",
                           arg="L30H1:", timeout=30_000)
    open_tab(page, "Head map")
    page.wait_for_function(has_model("head_map"), timeout=120_000)
    xy = page.evaluate("() => { const m = Bokeh.documents[0].get_model_by_name('head_map');"
                       " const d = m.renderers[0].data_source.data; return [d.x[5 * 32 + 9], d.y[5 * 32 + 9]] }")
    page.evaluate(FRAME_JS)
    x, y = point(page, "head_map", *xy)
    page.evaluate("() => window.__watch('head_map_mark')")
    page.mouse.click(x, y)
    page.wait_for_function("() => window.__log['head_map_mark'].length >= 2", timeout=30_000)
    open_tab(page, "Heads")
    page.wait_for_function(has_model("pattern_heatmap"), timeout=30_000)
    page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text.includes(t)",
                           arg="L5H9:", timeout=30_000)
    assert page.errors == []
    page.close()


def test_token_view_hover_shows_attention_both_ways(browser, server):
    page, _ = open_dashboard(browser, server)
    tok = page.locator(".attnlens-tokens .tok[data-pos='20']")
    tok.hover()
    page.wait_for_timeout(200)
    bg = {p: page.locator(f".attnlens-tokens .tok[data-pos='{p}']").evaluate("e => e.style.background")
          for p in (0, 19, 20, 21, 40)}
    assert bg[19].startswith("rgba(30, 100, 220") and bg[21].startswith("rgba(240, 120, 20")  # from / to
    caption = page.locator(".attnlens-tokens .caption").inner_text()
    assert caption.startswith("token 20 ") and "attended by later tokens" in caption
    page.mouse.move(5, 5)
    page.wait_for_timeout(200)
    assert "pinned query" in page.locator(".attnlens-tokens .caption").inner_text()
    page.close()


@pytest.mark.parametrize("tab,marker", [("Heads", "pattern_heatmap"), ("All heads", "heads_grid"),
                                        ("Head map", "head_map"), ("Q/K map", "qk_map"), ("Stats", "stats_curves"),
                                        ("Ablations", "curves_plot_0"), ("Circuits", "circuit_graph"),
                                        ("Vision", None), ("Contributions", None)])
def test_every_view_renders_within_1024_px(browser, server, shots, tab, marker):
    page, _ = open_dashboard(browser, server, width=1024, height=900)
    page.get_by_text("retrieval.recall.json").first.wait_for(timeout=10_000)  # the corrupt file is named
    open_tab(page, tab)
    if marker:
        page.wait_for_function(has_model(marker), timeout=120_000)
    elif tab == "Vision":
        page.locator("img").first.wait_for(timeout=60_000)
    page.wait_for_timeout(600)
    page.evaluate(FRAME_JS)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1024, f"the {tab} tab is {width} px wide"
    page.screenshot(path=str(shots / f"dashboard_{tab.lower().replace(' ', '_').replace('/', '')}.png"))
    assert page.errors == [] and page.outside == []
    page.close()


@pytest.mark.benchmark
def test_timings_on_1024_heads(browser, big_folder, shots, tmp_path):
    """First render, click-to-pattern and the head map's first open (UMAP, cold cache) on 32 x 32
    heads, written to timings.json. A measurement (make bench-dashboard), not a test of behaviour."""
    from tests.browser.conftest import serve, stop

    served = serve(big_folder, maps="umap", env={"ATTNLENS_CACHE": str(tmp_path / "cache")})
    try:
        t_start = time.perf_counter()
        firsts = []
        for _ in range(3):
            page, t = open_dashboard(browser, served.url)
            firsts.append(t)
            page.close()
        page, _ = open_dashboard(browser, served.url)
        clicks = []
        for layer, head in [(3, 4), (10, 20), (31, 31), (16, 0), (7, 13), (25, 9), (0, 5), (19, 19)]:
            x, y = point(page, "head_heatmap", head, layer)
            t0 = time.perf_counter()
            page.mouse.click(x, y)
            page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text"
                                   ".includes(t)", arg=f"L{layer}H{head}:", timeout=30_000)
            page.evaluate(FRAME_JS)
            clicks.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        open_tab(page, "Head map")
        page.wait_for_function(has_model("head_map"), timeout=300_000)
        page.evaluate(FRAME_JS)
        head_map_open = time.perf_counter() - t0
        since_start = time.perf_counter() - t_start
        page.close()
        served2 = serve(big_folder, maps="umap", env={"ATTNLENS_CACHE": str(tmp_path / "cache")})
        page = new_page(browser)
        page.goto(served2.url)
        page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
        t0 = time.perf_counter()
        open_tab(page, "Head map")
        page.wait_for_function(has_model("head_map"), timeout=300_000)
        cached_open = time.perf_counter() - t0
        page.close()
        stop(served2)
    finally:
        stop(served)
    result = {"heads": 1024, "first_render_s": [round(t, 2) for t in firsts],
              "click_to_pattern_s": [round(t, 3) for t in clicks],
              "click_to_pattern_median_s": round(statistics.median(clicks), 3),
              "head_map_first_open_s": round(head_map_open, 2),
              "head_map_first_open_seconds_after_server_start": round(since_start, 1),
              "head_map_open_with_cache_s": round(cached_open, 2)}
    (shots / "timings.json").write_text(json.dumps(result, indent=1))
    print("\nbrowser timings:", result)
