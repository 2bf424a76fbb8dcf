"""`lens report`: html, md and pdf of the real commands' folder; summaries, notes, provenance,
page breaks, and its failures."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attnlens.dashboards.report import ReportError, build_report, write_report
from attnlens.formats import OutputExistsError

LENS = str(Path(sys.executable).parent / "lens")


def _report(args):
    from lens.cli import app

    return CliRunner().invoke(app, ["report", *map(str, args)])


@pytest.fixture(scope="module")
def report(contract):
    return build_report(contract, command="pytest")


def test_html_report_is_self_contained_and_has_every_figure(contract, tmp_path, report):
    out = tmp_path / "r.html"
    res = _report([contract, "--format", "html", "--out", out])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.count("data:image/png;base64,") == len(report.figures())
    assert "src=\"http" not in text and "<script" not in text.lower()  # nothing to fetch, nothing to run


def test_markdown_report_writes_its_images_next_to_it(contract, tmp_path):
    out = tmp_path / "r.md"
    assert _report([contract, "-f", "md", "-o", out]).exit_code == 0
    text = out.read_text()
    links = re.findall(r"\]\((r_files/[^)]+)\)", text)
    assert len(links) > 20 and all((tmp_path / link).is_file() for link in links)


def test_long_values_are_summarised_not_printed(report, tmp_path, contract):
    text = write_report(contract, "md", tmp_path / "r.md").read_text()
    hidden = next(r for m in report.models for r in m.results if r.label == "sweep-heads/ablation.mean_logit-diff")
    top = dict(hidden.summary)["top"]
    assert "(10 in all)" in top and len(top) < 400  # a list of 10 records, cut to its first few
    assert "'item':" not in text and "{'" not in text  # no Python reprs
    assert max(len(line) for line in text.splitlines()) < 3000


def test_nearly_identical_maps_get_a_note_saying_how_they_differ(report):
    notes = [n for m in report.models for n in m.notes]
    (note,) = [n for n in notes if "measure nearly the same thing" in n]
    assert "summary.sink_mass" in note and "pools every query row" in note and "here r = " in note
    (counts,) = [n for n in notes if n.startswith("Sink heads are counted in several ways")]
    for name, what in (("summary.sink_mass", "over every query of the scan prompts above 0.5"),
                       ("sinks.first_token_mass", "averaged over prompts, above 0.5"),
                       ("taxonomy.sink", "on repeated random tokens above 0.4"),
                       ("taxonomy.head_type", "typed sink: sink is the largest of its type scores")):
        assert f"by {name} (" in counts and what in counts, name  # each count says what it counts


def test_the_report_opens_with_findings_and_anchored_contents(contract, tmp_path, report):
    text = write_report(contract, "html", tmp_path / "r.html").read_text()
    assert text.index('id="findings"') < text.index('<nav class="toc">') < text.index('id="folder"')
    ids = set(re.findall(r'id="([^"]+)"', text))
    links = re.findall(r'href="#([^"]+)"', text)
    assert len(links) > 30 and set(links) <= ids  # every contents and findings link lands somewhere
    whats = [w for _, w, _ in report.findings]
    for what in ("tiny-llama · sinks", "tiny-llama · taxonomy", "tiny-llama · circuit", "circuit circuit/T_eap",
                 "ablation ablation/ablation", "curves circuit/circuit.T_faithfulness_heads"):
        assert what in whats, what
    found = dict((w, t) for _, w, t in report.findings)
    assert found["tiny-llama · taxonomy"].startswith("taxonomy.head_type: of 16 heads, ")  # categories, counted
    assert "by |score|" in found["tiny-llama · ablation"]
    assert "smallest circuit size (heads) reaching faithfulness 0.8" in found["curves circuit/circuit.T_faithfulness_heads"]
    md = write_report(contract, "md", tmp_path / "r.md").read_text()
    assert md.index("## Findings") < md.index("**Contents:**") < md.index("## Contents of this folder")
    assert set(re.findall(r"\]\(#([^)]+)\)", md)) <= set(re.findall(r'<a id="([^"]+)"></a>', md))


def test_signed_top_heads_by_abs_score_categorical_counted_and_no_raw_dumps(contract, tmp_path, report):
    from attnlens.formats import ResultsFolder

    folder = ResultsFolder.load(contract)
    sections = {r.label: r for m in report.models for r in m.results}
    for label in ("circuit/circuit.T_eap_logit-diff", "sweep-heads/ablation.mean_logit-diff"):
        scores = folder.results[label].scores
        shown = [float(t.score) for t in sections[label].top]
        expect = sorted(scores[np.isfinite(scores)].tolist(), key=lambda v: -abs(v))[:len(shown)]
        np.testing.assert_allclose(shown, expect, rtol=1e-3)  # by |score|: the strongest negative heads appear
        assert min(shown) < 0 and sections[label].scale == "signed"
    types = sections["scan/taxonomy.head_type"]
    assert types.top == [] and [c for c, _ in types.categories] == ["sink", "previous-token", "positional",
                                                                    "induction", "duplicate-token", "other"]
    assert sum(n for _, n in types.categories) == 16
    text = write_report(contract, "html", tmp_path / "r.html").read_text()
    assert "Heads per category" in text and "(4 fields)" not in text and "fields)" not in text
    top = dict(sections["sweep-heads/ablation.mean_logit-diff"].summary)["top"]
    assert top.startswith("10 rows of item, metric, effect") and "item L0H1" in top  # records: fields once
    assert "No circuits in this folder" not in text and "No captures in this folder" not in text


def test_provenance_has_the_inputs_hash_and_code_version(contract, tmp_path, report):
    from attnlens.formats import HeadScores

    prov = HeadScores.load(contract / "scan" / "summary.sink_mass.json").provenance
    assert prov.inputs_sha256 and prov.code_version
    for fmt in ("html", "md"):
        text = write_report(contract, fmt, tmp_path / f"r.{fmt}").read_text().replace("\\", "")
        for needle in (prov.inputs_sha256, prov.code_version, prov.machine, "weights SHA-256",
                       "torch 2.", "python 3.", "This report", report.generated["code_version"]):
            assert needle in text, (fmt, needle)


def test_pdf_headings_stay_with_their_figures(contract, tmp_path, report):
    out = tmp_path / "r.pdf"
    assert _report([contract, "-f", "pdf", "-o", out]).exit_code == 0
    assert out.read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    pages = subprocess.run(["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True,
                           check=True).stdout.split("\f")
    pages = [p for p in pages if p.strip()]
    assert len(pages) >= 4
    headings = {r.label for m in report.models for r in m.results} | {c[0] for c in report.curves} | {
        "Curves", "Circuits", "Captures", "Provenance", "Stats runs", "Top heads", "Summary", "Parameters"}
    for i, page in enumerate(pages[:-1]):
        lines = [ln.strip() for ln in page.splitlines() if ln.strip()]
        tail = [ln for ln in lines[-3:] if not re.fullmatch(r"\d+ / \d+", ln)]  # the page number
        assert not tail or tail[-1] not in headings, f"page {i + 1} ends with the heading {tail[-1]!r}"


def test_report_refuses_to_overwrite_without_force(contract, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists: pass --force"):
        write_report(contract, "html", out)
    assert out.read_text() == "mine"
    write_report(contract, "html", out, force=True)
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_unwritable_output_is_one_clear_error(contract, tmp_path):
    with pytest.raises(ReportError, match="folder .*nowhere does not exist"):
        write_report(contract, "html", tmp_path / "nowhere" / "r.html")
    with pytest.raises(ReportError, match="cannot write the report to /proc/r.html"):
        write_report(contract, "html", "/proc/r.html")
    with pytest.raises(ReportError, match="is a folder"):
        write_report(contract, "md", tmp_path)
    with pytest.raises(ReportError, match="--format 'docx' is not one of html, md, pdf"):
        write_report(contract, "docx", tmp_path / "r.docx")


def test_cli_prints_one_line_errors(contract, tmp_path):
    res = subprocess.run([LENS, "report", str(contract), "--out", str(tmp_path / "no" / "r.html")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "error:" in res.stderr and "does not exist" in res.stderr
    res = subprocess.run([LENS, "dashboard", str(tmp_path / "missing"), "--no-show"], capture_output=True, text=True)
    assert res.returncode == 2 and "does not exist: run `lens scan" in res.stderr


def test_report_of_a_damaged_folder_names_the_file_and_uses_the_rest(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "f", ignore=shutil.ignore_patterns("captures", "image"))
    (tmp_path / "f" / "scan" / "summary.sink_mass.safetensors").unlink()
    (tmp_path / "f" / "scan" / "sinks.first_token_mass.json").write_text("[" * 5000)  # nested too deep
    out = write_report(tmp_path / "f", "md", tmp_path / "r.md")
    text = out.read_text().replace("\\", "")
    assert "scan/summary.sink_mass.json" in text and "is missing" in text
    assert "scan/sinks.first_token_mass.json" in text
    assert "### scan/summary.entropy" in text and "## Circuits" in text and "### curves/" in text
    assert "## Captures" not in text and "captures" not in text.split("**Contents:**")[1].split("\n")[0]  # no empty section


def test_thumbnails_of_task_captures_show_the_task_rows(contract, tmp_path, report):
    """A head on a capture with task rows (the circuit's prompt: the answer is read at the last
    position) is drawn on those rows and the keys they see, and the report says so; a capture
    without task rows keeps the whole pattern."""
    from attnlens.dashboards.compute import downsample
    from attnlens.dashboards.figures import THUMB_TOKENS
    from attnlens.formats import ResultsFolder

    folder = ResultsFolder.load(contract)
    cap = folder.captures["circuit/captures/task-000"]
    r0, r1 = cap.focus.rows
    assert r1 - r0 < len(cap.tokens)  # a crop, not the whole prompt
    sections = {r.label: r for m in report.models for r in m.results}
    tops = [t for t in sections["circuit/circuit.T_eap_logit-diff"].top if t.thumb is not None]
    assert tops
    for t in tops:
        layer, head = (int(x) for x in t.label[1:].split("H"))
        assert t.thumb.data.shape == (r1 - r0, r1)  # the task rows, on the keys up to the last of them
        np.testing.assert_allclose(t.thumb.data, cap.pattern(layer, head)[r0:r1, :r1], rtol=1e-6)
        span = f"row {r0}" if r1 - r0 == 1 else f"rows {r0}-{r1 - 1}"
        assert f"{span} (the answer is read at the last position)" in t.capture
    prose = [t for t in sections["scan/summary.entropy"].top if t.thumb is not None]
    assert prose and all(" row" not in t.capture for t in prose)
    pcap = folder.captures[prose[0].capture]
    layer, head = (int(x) for x in prose[0].label[1:].split("H"))
    np.testing.assert_allclose(prose[0].thumb.data, downsample(pcap.pattern(layer, head), THUMB_TOKENS), rtol=1e-6)
    for fmt, name in (("html", "r.html"), ("md", "r.md")):
        text = write_report(contract, fmt, tmp_path / name).read_text().replace("\\(", "(").replace("\\)", ")")
        assert f"task-000 {span} (the answer is read at the last position)" in text, fmt
