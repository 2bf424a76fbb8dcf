"""Screenshots of every dashboard view over a results folder (the ones in docs/img).

    python benchmarks/dashboard_screenshots.py RESULTS_DIR --out docs/img [--head L18H6 --score scan/taxonomy.induction]

Serves `lens dashboard RESULTS_DIR --port 0`, opens it in Debian's chromium (headless, this
machine only), selects the head on the given score and saves one PNG per tab as
``dashboard_TAB.png``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import (  # noqa: E402
    ARGS,
    CHROMIUM,
    FRAME_JS,
    has_model,
    new_page,
    open_tab,
    point,
    serve,
    stop,
)

TABS = ["Heads", "All heads", "Head map", "Q/K map", "Stats", "Ablations", "Circuits", "Vision", "Contributions"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--head", default=None, help="e.g. L18H6: clicked in the atlas first")
    ap.add_argument("--score", default=None, help="result label shown in the atlas, e.g. scan/taxonomy.induction")
    ap.add_argument("--grid-capture", default=None, help="capture label for the all-heads grid")
    ap.add_argument("--maps", default="umap")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=960)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    served = serve(args.folder, maps=args.maps)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = new_page(browser, width=args.width, height=args.height)
            page.goto(served.url)
            page.wait_for_function(has_model("head_heatmap"), timeout=120_000)
            page.wait_for_timeout(1500)
            if args.score:
                _select(page, args.score)
                page.wait_for_timeout(1500)
            if args.head:
                layer, head = map(int, re.fullmatch(r"L(\d+)H(\d+)", args.head).groups())
                page.mouse.click(*point(page, "head_heatmap", head, layer))
                page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('pattern_heatmap').title.text"
                                       ".includes(t)", arg=f"{args.head}:", timeout=60_000)
                page.wait_for_timeout(800)
                toks = page.locator(".attnlens-tokens .tok")
                toks.nth(max(0, toks.count() - 12)).hover()
            for tab in TABS:
                open_tab(page, tab)
                page.wait_for_timeout(1500)
                if tab == "All heads" and args.grid_capture:
                    _select(page, args.grid_capture)
                    page.wait_for_timeout(2500)
                if tab == "Head map":
                    page.wait_for_function(has_model("head_map"), timeout=300_000)
                page.evaluate(FRAME_JS)
                page.wait_for_timeout(1200)
                path = args.out / f"dashboard_{tab.lower().replace(' ', '_').replace('/', '')}.png"
                page.screenshot(path=str(path))
                print(f"wrote {path}")
            if page.outside or page.errors:
                print(f"requests elsewhere: {page.outside[:5]}; page errors: {page.errors[:5]}")
            browser.close()
    finally:
        stop(served)
    return 0


def _select(page, label: str) -> None:
    selects = page.locator("select")
    for i in range(selects.count()):
        if label in selects.nth(i).locator("option").all_inner_texts():
            selects.nth(i).select_option(label=label)
            return
    raise SystemExit(f"no selector offers {label!r}")


if __name__ == "__main__":
    sys.exit(main())
