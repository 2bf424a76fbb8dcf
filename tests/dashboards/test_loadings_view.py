"""QK head loadings end to end on a folder the real `lens heads loadings` wrote (tiny-llama): the
results kind, the CLI's errors, the dashboard view, both reports and `dashboards.show`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlens.dashboards import show
from attnlens.dashboards._bokeh import trigger_click
from attnlens.dashboards.app import Dashboard
from attnlens.dashboards.loadings import LoadingsView
from attnlens.dashboards.report import build_report, render_html, render_markdown
from attnlens.formats import HeadLoadings, ResultError, ResultsFolder
from attnlens.formats.provenance import Provenance
from tests.analyses.loadings_folder import PROMPTS, run_lens, write_loadings_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_loadings_folder(tmp_path_factory.mktemp("loadings"), layer=3, head=2)


@pytest.fixture(scope="module")
def res(folder) -> HeadLoadings:
    (r,) = ResultsFolder.load(folder).loadings.values()
    return r


def test_the_file_holds_the_analysis_numbers(tiny_lm, folder, res):
    from attnlens.analyses.qk_attribution import head_loadings

    want = head_loadings(tiny_lm, [tiny_lm.encode(p) for p in PROMPTS], 3, 2)
    assert (res.layer, res.head, res.n_prompts, res.name) == (3, 2, 3, "L3H2")
    for side in ("query", "key"):
        got = getattr(res, side)
        assert got.shape == (4, 4) and np.isnan(got[3:]).all()
        np.testing.assert_allclose(got[:3], want[side][:3].numpy(), rtol=1e-5, atol=1e-7)
    assert res.provenance.model == "tiny-llama" and res.provenance.inputs_sha256
    doc = json.loads((folder / "L3H2.loadings.json").read_text())
    assert doc["kind"] == "qk_head_loadings" and doc["format_version"] == 1


def test_top_orders_earlier_heads_by_magnitude(res):
    top = res.top("key", 12)
    assert len(top) == 12 and all(int(n[1]) < 3 for n, _ in top)  # only layers 0-2
    assert [abs(v) for _, v in top] == sorted((abs(v) for _, v in top), reverse=True)
    with pytest.raises(ResultError, match="`side` must be 'query' or 'key'"):
        res.top("value")


def test_writer_and_reader_round_trip_and_refuse_bad_shapes(tmp_path, res):
    path = res.save(tmp_path)
    back = HeadLoadings.load(path)
    np.testing.assert_array_equal(back.query, res.query)
    np.testing.assert_array_equal(back.key, res.key)
    with pytest.raises(ResultError, match="must both be \\[layer, head\\]"):
        HeadLoadings(name="x", layer=1, head=0, n_prompts=1, query=np.zeros((2, 2)), key=np.zeros((2, 3)),
                     provenance=Provenance(model="m"))
    with pytest.raises(ResultError, match="layers 0-0 must be finite"):
        HeadLoadings(name="x", layer=1, head=0, n_prompts=1, query=np.full((2, 2), np.nan), key=np.zeros((2, 2)),
                     provenance=Provenance(model="m"))
    doc = json.loads(path.read_text())
    doc["format_version"] = 9
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultError, match="L3H2.loadings.json"):
        HeadLoadings.load(path)


@pytest.mark.parametrize("args, words", [
    (["--layer", "9", "--head", "0"], "error: layer 9 is out of range: tiny-llama has layers 0-3"),
    (["--layer", "0", "--head", "0"], "error: --layer 0 has no earlier heads to load on"),
    (["--layer", "2", "--head", "7"], "error: head 7 is out of range"),
    (["--layer", "2", "--head", "0", "--name", "../x"], "error: --name must be a plain file name, got '../x'"),
])
def test_cli_bad_selection_is_one_line_and_writes_nothing(tmp_path, capsys, args, words):
    prompts = tmp_path / "p.txt"
    prompts.write_text("abcabc\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_lens("heads", "loadings", "tiny-llama", *args, "--file", str(prompts), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(words) and not out.exists()


def test_cli_blank_prompt_file_is_refused(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n  \n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_lens("heads", "loadings", "tiny-llama", "--layer", "2", "--head", "0", "--file", str(prompts),
                    "--out", str(out)) == 2
    assert "holds no prompt" in capsys.readouterr().err and not out.exists()


def test_view_marks_the_target_and_a_click_names_both_loadings(res):
    view = LoadingsView({"a": res})
    assert "Head loadings of L3H2</b> over 3 prompts" in view._info.object
    for side in ("query", "key"):
        data = view.figures[side].renderers[0].data_source.data
        outlined = [lab for lab, w in zip(data["label"], data["line"]) if w]
        assert outlined == ["L3H2 (not earlier)"]
        mapper = view.figures[side].renderers[0].glyph.fill_color.transform
        assert mapper.palette[-1] == "#67001f" and mapper.high > 0  # positive is red, as in the report's RdBu_r
    trigger_click(view.figures["key"], 1.1, 2.2)  # head 1 of layer 2
    assert view.picked == (2, 1)
    assert (f"L2H1 → L3H2: query side {float(res.query[2, 1]):+.4f}, key side {float(res.key[2, 1]):+.4f}"
            in view._picked.object)
    trigger_click(view.figures["query"], 0.0, 3.0)
    assert "cannot write into its input" in view._picked.object


def test_empty_view_says_how_to_make_one():
    assert "lens heads loadings MODEL" in LoadingsView({})._info.object


def test_dashboard_shows_it_in_the_qk_tab(folder):
    dash = Dashboard(folder, map_method="pca")
    assert "QK attribution" in dash.tabs()._names and dash.model == "tiny-llama"
    assert list(dash.loadings.results) == ["L3H2"]


def test_report_sections_html_and_markdown(folder, res):
    report = build_report(ResultsFolder.load(folder))
    (s,) = report.loadings
    assert s["figure"] in report.figures() and s["figure"].png.startswith(b"\x89PNG")
    (qn, qv), (kn, kv) = res.top("query", 1)[0], res.top("key", 1)[0]
    text = render_html(report)
    assert "QK head loadings: which earlier heads a head reads" in text
    assert f"<td>{qn}</td><td class=\"num\">{qv:+.4f}</td><td>{kn}</td>" in text
    md = render_markdown(report, "figs")
    assert "## QK head loadings" in md and f"(figs/{s['figure'].name}.png)" in md
    assert f"| {qn} | {qv:+.4f} | {kn} | {kv:+.4f} |" in md
    assert any(a == "loadings" for a, _, _ in report.findings)


def test_show_inline_from_result_path_and_memory(tiny_lm, folder, res):
    from attnlens.pipelines.qk import run_loadings

    assert isinstance(show(res), LoadingsView)
    assert isinstance(show(folder / "L3H2.loadings.json"), LoadingsView)
    mem = show(run_loadings(tiny_lm, PROMPTS, 3, 2))
    np.testing.assert_allclose(mem.current.key, res.key, rtol=1e-6, equal_nan=True)
