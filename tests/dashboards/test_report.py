"""`lens report`: html, md and pdf from a real `lens scan tiny-llama` folder, and its failures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dashboards.report import ReportError, write_report
from lens.cli import app
from lens.errors import OutputExistsError

LENS = str(Path(sys.executable).parent / "lens")


def _report(args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def _check_provenance(text: str, folder: Path):
    import html
    import json

    prov = json.loads((folder / "summary.sink_mass.json").read_text())["provenance"]
    for needle in ("tiny-llama", "weights SHA-256", "torch 2.", "python 3.", "seeds", "This report",
                   prov["machine"], prov["created"]):
        assert needle in text, needle
    assert prov["command"] in text or html.escape(prov["command"]) in text


def test_html_report_of_a_real_scan_is_self_contained(tiny_scan, tmp_path):
    out = tmp_path / "r.html"
    res = _report([tiny_scan, "--format", "html", "--out", out])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "summary.sink_mass" in text and "summary.entropy" in text
    assert text.count("data:image/png;base64,") >= 2 + 2 * 8  # heatmaps + a thumbnail per top head
    assert "src=\"http" not in text and "<script" not in text  # nothing to fetch
    from dashboards.data import EXPECTED_ANALYSES

    missing = [a for a in EXPECTED_ANALYSES if not list(tiny_scan.glob(f"{a}.*.json"))]
    assert (f"Missing analyses:</b> {', '.join(missing)}" if missing else "Every expected analysis is present") in text
    _check_provenance(text, tiny_scan)


def test_markdown_report_writes_its_images_next_to_it(tiny_scan, tmp_path):
    out = tmp_path / "r.md"
    assert _report([tiny_scan, "-f", "md", "-o", out]).exit_code == 0
    text = out.read_text()
    links = [line.split("](", 1)[1].split(")", 1)[0] for line in text.splitlines() if "](" in line]
    assert links and all((tmp_path / link).is_file() for link in links)
    assert "r_files/summary_sink_mass_heatmap.png" in links
    _check_provenance(text, tiny_scan)


def test_pdf_report_renders_to_legible_pages(tiny_scan, tmp_path):
    out = tmp_path / "r.pdf"
    assert _report([tiny_scan, "-f", "pdf", "-o", out]).exit_code == 0
    assert out.read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(out), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 2 and all(p.stat().st_size > 2000 for p in pages)


def test_report_refuses_to_overwrite_without_force(tiny_scan, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists: pass --force"):
        write_report(tiny_scan, "html", out)
    assert out.read_text() == "mine"
    write_report(tiny_scan, "html", out, force=True)
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_unwritable_output_is_one_clear_error(tiny_scan, tmp_path):
    with pytest.raises(ReportError, match="folder .*nowhere does not exist"):
        write_report(tiny_scan, "html", tmp_path / "nowhere" / "r.html")
    with pytest.raises(ReportError, match="cannot write the report to /proc/r.html"):
        write_report(tiny_scan, "html", "/proc/r.html")
    with pytest.raises(ReportError, match="is a folder"):
        write_report(tiny_scan, "md", tmp_path)
    with pytest.raises(ReportError, match="--format 'docx' is not one of html, md, pdf"):
        write_report(tiny_scan, "docx", tmp_path / "r.docx")


def test_cli_prints_one_line_errors(tiny_scan, tmp_path):
    res = subprocess.run([LENS, "report", str(tiny_scan), "--out", str(tmp_path / "no" / "r.html")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "error:" in res.stderr and "does not exist" in res.stderr
    res = subprocess.run([LENS, "dashboard", str(tmp_path / "missing"), "--no-show"], capture_output=True, text=True)
    assert res.returncode == 2 and "does not exist: run `lens scan" in res.stderr


def test_report_of_a_damaged_folder_says_what_is_missing(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "f", ignore=shutil.ignore_patterns("captures"))
    (tmp_path / "f" / "summary.sink_mass.safetensors").unlink()
    out = write_report(tmp_path / "f", "md", tmp_path / "r.md")
    text = out.read_text()
    assert "`summary.sink_mass.json`" in text and "is missing" in text
    assert "**Missing analyses:** retrieval, sinks" in text
    assert "No example captures" in text
    assert "## ablation.loss_increase" in text and "## Circuits" in text
    assert (tmp_path / "r_files" / "sweep_0_ablation_loss_increase.png").is_file()
