"""Notebook 06 opened in JupyterLab (the project's kernel, no network): after its cells run, the
inline views (`dashboards.show`) render: the head's pattern with the token view, the all-heads grid,
the contribution view and the dashboard."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import new_page

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "06_inline_views.ipynb"
# a grid redrawn is a new figure of the same name: any of them (the old ones show other steps)
GRID_AT_STEP_3 = """() => Bokeh.documents.some(d => [...d.all_models].some(m => m.name === 'heads_grid'
    && m.title.text.includes('step 3 of 4: new token')))"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    jupyter = Path(sys.executable).parent / "jupyter"
    if not (Path(sys.executable).parent / "jupyter-lab").exists():
        pytest.skip("JupyterLab is not installed (make install installs it)")
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    token = secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    proc = subprocess.Popen([str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", "--port=0",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--expose-app-in-browser", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
                             "--ServerApp.allow_remote_access=False", *(["--allow-root"] if os.getuid() == 0 else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url, lines, deadline = None, [], time.time() + 120
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/lab", line)
        if m:
            url = m.group(1)
        if proc.poll() is not None:
            break
    if url is None:
        proc.terminate()
        pytest.fail("JupyterLab did not start: " + "".join(lines[-20:]))
    yield url, token
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_notebook_views_render_in_jupyterlab(browser, lab, shots):
    url, token = lab
    page = new_page(browser, width=1300, height=1000)
    page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                           timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # the last cell (the dashboard) is done when its atlas is drawn; everything before it ran first
    page.wait_for_function("""() => { const nb = window.jupyterapp.shell.currentWidget;
        return nb.sessionContext.session.kernel.status === 'idle' &&
               [...nb.content.widgets].every(c => c.model.type !== 'code' || c.model.executionCount !== null) }""",
                           timeout=600_000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.first.inner_text()[:2000]
    page.locator(".attnlens-tokens .tok").first.wait_for(timeout=60_000)  # the head view's token view
    assert page.locator(".attnlens-tokens .tok").count() >= 80
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.some(d => d.get_model_by_name('heads_grid'))"
                           " && Bokeh.documents.some(d => d.get_model_by_name('dla_heatmap'))"
                           " && Bokeh.documents.some(d => d.get_model_by_name('head_heatmap'))", timeout=120_000)
    n_canvas = page.locator(".jp-OutputArea-output canvas").count()
    assert n_canvas >= 4, n_canvas
    page.locator(".attnlens-tokens .tok").nth(60).hover()  # interactive in the live kernel's page
    assert "attends to earlier tokens" in page.locator(".attnlens-tokens .caption").first.inner_text()
    news = page.get_by_role("button", name="No")  # JupyterLab asks about its news feed: decline (offline anyway)
    if news.count():
        news.first.click()
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "dashboard_jupyterlab.png"))
    # the generation capture's head view, then its all-heads grid: type step 3 into each one's step box
    # (the only two in the notebook, in that order)
    boxes = page.locator(".bk-input-group").filter(has_text=re.compile(r"^\s*step\s*$")).locator("input >> visible=true")
    for nth, shown in ((0, page.get_by_text("step 3 of 4: new token").first), (1, None)):
        step = boxes.nth(nth)
        step.scroll_into_view_if_needed()
        for attempt in range(3):  # a value typed while the kernel is still busy with the last cells can be lost
            for value in (["2"] if attempt else []) + ["3"]:  # on a retry, change it away and back
                step.fill(value)
                step.evaluate("e => e.blur()")  # commits the value (Enter would go to JupyterLab's own shortcuts)
            try:
                if shown is not None:
                    shown.wait_for(timeout=30_000)
                else:  # the grid's title names the step and its new token
                    page.wait_for_function(GRID_AT_STEP_3, timeout=30_000)
                break
            except PlaywrightTimeout:
                if attempt == 2:
                    raise
        page.screenshot(path=str(shots / ("generation_step3_jupyterlab.png" if nth == 0
                                          else "generation_grid_step3_jupyterlab.png")))
    # clicks in the inline dashboard: other tabs load their views through the kernel, offline
    for tab in ("Stats", "All heads", "Heads"):
        page.locator(".bk-tab").filter(has_text=tab).last.click()
        page.wait_for_timeout(1500)
    assert page.outside == [], page.outside[:5]  # offline: nothing fetched from elsewhere, also after clicks
    page.close()
