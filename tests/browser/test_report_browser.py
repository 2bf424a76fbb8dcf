"""The HTML report in headless chromium (offline: every figure inline), and the PDF as page images."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from attnlens.dashboards.report import write_report
from tests.browser.conftest import new_page


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory):
    from tests.dashboards.synthetic import make_results_folder

    return make_results_folder(tmp_path_factory.mktemp("rep") / "results", n_layers=6, n_heads=8, vision=True)


def test_html_report_renders_in_chromium_offline(browser, report_folder, shots, tmp_path):
    out = write_report(report_folder, "html", tmp_path / "report.html")
    page = new_page(browser, width=1100, height=900)
    page.goto(out.resolve().as_uri())
    sizes = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
    assert len(sizes) > 20 and all(w > 0 for w in sizes)  # every embedded PNG decodes
    assert page.outside == []
    page.screenshot(path=str(shots / "report_html_full.png"), full_page=True)
    page.close()


def test_pdf_report_pages(report_folder, shots, tmp_path):
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is missing")
    out = write_report(report_folder, "pdf", tmp_path / "report.pdf")
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(out), str(tmp_path / "report_pdf")], check=True)
    pages = sorted(tmp_path.glob("report_pdf-*.png"))
    assert len(pages) >= 3
    for p in pages[:3]:
        shutil.copy(p, shots / p.name)
