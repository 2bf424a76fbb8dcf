"""Real-browser tests: `lens dashboard` served on 127.0.0.1 and driven by Playwright with
Debian's chromium (never a downloaded browser). Skipped when either is missing.

Screenshots go to $ATTNLENS_SCREENSHOTS (default: a pytest temp folder).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ATTNLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="session")
def big_folder(tmp_path_factory) -> Path:
    """32 layers x 32 heads (1,024 heads), captures with q/k, a sweep, a circuit, a vision
    capture, and one corrupt result file the dashboard must name."""
    from dashboards.synthetic import make_results_folder

    folder = make_results_folder(tmp_path_factory.mktemp("big") / "results", n_layers=32, n_heads=32, n_tokens=48,
                                 taxonomy=True, vision=True)
    (folder / "retrieval.recall.json").write_text('{"kind": "head_scores", "analysis": "retrieval"')
    return folder


@pytest.fixture(scope="session")
def server(big_folder):
    """`lens dashboard BIG_FOLDER --no-show` on a free localhost port; yields its URL."""
    port = _free_port()
    lens = str(Path(sys.executable).parent / "lens")
    proc = subprocess.Popen([lens, "dashboard", str(big_folder), "--port", str(port), "--no-show", "--maps", "pca"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lens dashboard exited: {proc.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("lens dashboard did not answer within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)
