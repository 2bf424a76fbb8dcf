"""Real-browser tests: `lens dashboard` served on 127.0.0.1 (port 0: the real port is read from
its output) and driven by Playwright with Debian's chromium (never a downloaded browser).
Skipped when either is missing. Pages may only reach 127.0.0.1: any other request fails the test.

Screenshots go to $ATTNLENS_SCREENSHOTS (default: a pytest temp folder); `make screenshots`
style runs set it to docs/img.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ATTNLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LENS = str(Path(sys.executable).parent / "lens")

# Where a Bokeh figure (found by name) puts data point (x, y), in page pixels.
POINT_JS = """([name, x, y]) => {
  const m = Bokeh.documents[0].get_model_by_name(name);
  function walk(v) {
    if (v.model === m) return v;
    for (const c of (v.child_views ?? [])) { const r = walk(c); if (r) return r; }
    return null;
  }
  for (const root of Bokeh.index.roots) {
    const v = walk(root);
    if (v) { const bb = v.el.getBoundingClientRect();
             return [bb.left + v.frame.x_scale.compute(x), bb.top + v.frame.y_scale.compute(y)]; }
  }
  return null;
}"""
# Count websocket messages, and log every change of the named data sources (what a click answers).
INIT_JS = """(() => {
  const W = window.WebSocket; window.__wsIn = 0; window.__msgs = [];
  window.WebSocket = function(...a) {
    const ws = new W(...a);
    ws.addEventListener('message', (e) => {
      window.__wsIn++;
      if (typeof e.data === 'string' && e.data.startsWith('{"msgid"')) {  // a Bokeh message's header frame
        try { window.__msgs.push(JSON.parse(e.data).msgtype); } catch (err) {}
      }
    });
    return ws; };
  window.WebSocket.prototype = W.prototype; Object.assign(window.WebSocket, W);
  window.__log = {};
  window.__watch = (name) => {
    const src = Bokeh.documents[0].get_model_by_name(name);
    window.__log[name] = [];
    const push = () => { const d = src.data; const row = Object.keys(d).sort().map(k => d[k][0]);
                         const log = window.__log[name]; const last = log[log.length - 1];
                         if (!last || JSON.stringify(last) !== JSON.stringify(row)) log.push(row); };
    src.properties.data.change.connect(push); src.change.connect(push); push();
  };
})();"""
FRAME_JS = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def has_model(name: str) -> str:
    return f"() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].get_model_by_name('{name}') !== null"


@pytest.fixture(scope="session")
def browser():
    pw = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("ATTNLENS_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_page(browser, *, width: int = 1400, height: int = 1000):
    """A page that may only reach this machine (a request elsewhere is recorded and refused)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.outside = []

    def route(r):
        url = r.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "data:", "blob:", "file:")):
            r.continue_()
        else:
            page.outside.append(url)
            r.abort()

    page.route("**/*", route)
    page.add_init_script(INIT_JS)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page


class Served:
    def __init__(self, proc, url, lines):
        self.proc, self.url, self.lines = proc, url, lines  # lines: the server's output so far


def serve(folder: Path, *, maps: str = "pca", env: dict | None = None) -> Served:
    """`lens dashboard FOLDER --port 0 --no-show`, and the URL it prints."""
    proc = subprocess.Popen([LENS, "dashboard", str(folder), "--port", "0", "--no-show", "--maps", maps],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    lines: list[str] = []
    found: dict[str, str] = {}

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"at (http://127\.0\.0\.1:(\d+)/)", line)
            if m and "url" not in found:
                found["url"] = m.group(1)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 120
    while time.time() < deadline and "url" not in found:
        if proc.poll() is not None:
            time.sleep(0.5)
            pytest.fail(f"lens dashboard exited: {''.join(lines)}")
        time.sleep(0.2)
    if "url" not in found:
        proc.terminate()
        pytest.fail(f"lens dashboard printed no URL within 120 s: {''.join(lines)}")
    assert not found["url"].endswith(":0/")  # the real port, not the one asked for
    return Served(proc, found["url"], lines)


def stop(served: Served) -> None:
    served.proc.terminate()
    served.proc.wait(timeout=20)


@pytest.fixture(scope="session")
def big_folder(tmp_path_factory) -> Path:
    """32 layers x 32 heads (1,024 heads), every kind, a vision capture, and one corrupt result
    file the dashboard must name."""
    from tests.dashboards.synthetic import make_results_folder

    folder = make_results_folder(tmp_path_factory.mktemp("big") / "results", n_layers=32, n_heads=32, n_tokens=48,
                                 vision=True)
    (folder / "scan" / "retrieval.recall.json").write_text('{"kind": "head_scores", "analysis": "retrieval"')
    return folder


@pytest.fixture(scope="session")
def server(big_folder, tmp_path_factory):
    served = serve(big_folder, env={"ATTNLENS_CACHE": str(tmp_path_factory.mktemp("cache"))})
    yield served.url
    stop(served)


def open_dashboard(browser, url, *, width: int = 1400, height: int = 1000):
    page = new_page(browser, width=width, height=height)
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(has_model("head_heatmap"), timeout=90_000)
    page.wait_for_function("() => { const m = Bokeh.documents[0].get_model_by_name('pattern_heatmap');"
                           " return m !== null && m.renderers[0].data_source.data.value.length > 0 }", timeout=60_000)
    page.evaluate(FRAME_JS)
    return page, time.perf_counter() - t0


def point(page, name: str, x: float, y: float, timeout_s: float = 15) -> tuple[float, float]:
    """Page pixels of data point (x, y) in figure ``name``, waiting while BokehJS (re)builds its view:
    a busy page can take a moment between a figure's model and its view."""
    handle = page.wait_for_function(f"(a) => ({POINT_JS})(a)", arg=[name, x, y], timeout=timeout_s * 1000)
    return tuple(handle.json_value())


def open_tab(page, title: str) -> None:
    page.locator(".bk-tab").filter(has_text=title).first.click()
    page.evaluate(FRAME_JS)
