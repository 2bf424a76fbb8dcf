"""The numpy side of the views: windows of long patterns, colour scales, pooling, statistics,
head types, the 2-D maps and their cache, the circuit layout, the report's summaries and escaping."""

from __future__ import annotations

import numpy as np
import pytest

from attnlens.dashboards.compute import (
    CONTEXT_BINS,
    MAX_WINDOW,
    ColorScale,
    color_range,
    downsample,
    embed_2d,
    pattern_stats,
    qk_points,
    stripe_visibility,
    thin_ticks,
    window_pattern,
)
from attnlens.dashboards.graph import circuit_layout, head_table
from attnlens.dashboards.profiles import head_profiles
from attnlens.dashboards.report import md_escape, summarize
from attnlens.dashboards.selection import ModelResults
from attnlens.formats import Circuit, Edge, Input, Node, NodeKind, Receiver, ResultsFolder


def test_window_bounds_cells_and_keeps_attention_mass():
    rng = np.random.default_rng(0)
    n = 1500
    p = np.tril(rng.uniform(size=(n, n)))
    p /= p.sum(axis=1, keepdims=True)
    w = window_pattern(p, start=900, size=10_000)  # asks for too much: clipped to MAX_WINDOW
    assert w.values.shape[0] == MAX_WINDOW
    assert w.values.shape[1] <= MAX_WINDOW + 2 * CONTEXT_BINS + 1
    np.testing.assert_allclose(w.values.sum(axis=1), 1.0, rtol=1e-5)  # pooling keeps every row's mass
    assert w.col_ranges[0] == (0, 1)  # the first key (the usual sink) stays exact
    assert w.q_start == 900 and (900, 901) in w.col_ranges
    assert w.sink_mask()[:, 0].all() and w.sink_mask().sum() == MAX_WINDOW


def test_window_of_a_short_pattern_is_the_whole_pattern():
    p = np.eye(5)
    w = window_pattern(p, start=3, size=64)
    assert (w.q_start, w.q_end) == (0, 5) and w.col_ranges == [(i, i + 1) for i in range(5)]
    np.testing.assert_array_equal(w.values, p)


def test_scale_without_the_sink_column_shows_the_rest():
    p = np.zeros((6, 6))
    p[:, 0] = 0.9  # a sink-dominated head
    p[np.arange(1, 6), np.arange(0, 5)] += 0.1  # with a faint previous-token diagonal
    sink = np.zeros(p.shape, bool)
    sink[:, 0] = True
    lo, hi = color_range(p, ColorScale.LINEAR)
    assert (lo, hi) == (0.0, pytest.approx(1.0))
    rows, cols = np.arange(2, 6), np.arange(1, 5)
    assert stripe_visibility(p, rows, cols, hi) == pytest.approx(0.1)  # linear: the diagonal is nearly white
    _, hi_ns = color_range(p, ColorScale.NO_SINK, sink)
    assert hi_ns == pytest.approx(0.1) and stripe_visibility(p, rows, cols, hi_ns) == pytest.approx(1.0)
    lo_log, hi_log = color_range(p, ColorScale.LOG)
    assert lo_log == pytest.approx(0.1) and hi_log == pytest.approx(1.0)
    assert color_range(np.zeros((3, 3)), ColorScale.NO_SINK, np.ones((3, 3), bool))[1] > 0  # never a zero range


def test_downsample_keeps_row_mass_and_bounds_size():
    rng = np.random.default_rng(1)
    p = np.tril(rng.uniform(size=(100, 100)))
    p /= p.sum(1, keepdims=True)
    d = downsample(p, 24)
    assert d.shape == (24, 24)
    np.testing.assert_allclose(d.sum(1), 1.0, rtol=1e-5)
    assert downsample(p[:10, :10], 24).shape == (10, 10)


def test_thin_ticks_never_exceed_the_label_budget():
    for n in (1, 7, 32, 48, 300, 4096):
        ticks = thin_ticks(n, 20)
        assert len(ticks) <= 20 and ticks[0] == 0 and ticks[-1] < n


def test_pattern_stats_of_a_previous_token_head():
    n = 10
    p = np.zeros((n, n))
    p[0, 0] = 1
    p[np.arange(1, n), np.arange(n - 1)] = 1
    s = pattern_stats(p)
    assert s["prev_token_mass"] == pytest.approx(1.0) and s["self_mass"] == 0.0
    assert s["entropy"] == pytest.approx(0.0) and s["mean_distance"] == pytest.approx(1.0)


def test_head_types_come_from_the_taxonomy_else_from_outlying_scores(synth):
    from tests.dashboards.synthetic import head_kind

    f = ResultsFolder.load(synth)
    sel = ModelResults.of(f)
    prof = head_profiles(sel)
    assert prof.features.shape == (24, len(sel.results))
    assert prof.color_by.startswith("taxonomy type")
    for i, t in enumerate(prof.types):
        layer, head = divmod(i, 6)
        want = head_kind(layer, head)
        assert t == want  # sink heads too, in the sink colour (not left grey)
    sel.results = {k: r for k, r in sel.results.items() if r.analysis != "taxonomy"}
    prof = head_profiles(sel)
    assert "stands out" in prof.color_by
    assert all(t == "typical" or t.startswith(("high ", "low ")) for t in prof.types)


def test_embed_2d_pca_and_degenerate_inputs():
    x = np.random.default_rng(1).normal(size=(20, 5))
    assert embed_2d(x, "pca").shape == (20, 2)
    assert embed_2d(np.ones((3, 2)), "umap").shape == (3, 2)
    assert embed_2d(np.zeros((0, 4)), "pca").shape == (0, 2)


def test_qk_points_move_keys_onto_the_queries():
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(50, 8)), 3 * rng.normal(size=(40, 8)) + 5
    pts, is_key, pos = qk_points(q, k, max_points=30)
    assert is_key.sum() == 30 and (~is_key).sum() == 30 and pos.max() <= 49
    pts_all, is_key_all, _ = qk_points(q, k, max_points=1000)
    np.testing.assert_allclose(pts_all[is_key_all].mean(0), pts_all[~is_key_all].mean(0), atol=2.0)
    qn = np.linalg.norm(pts_all[~is_key_all], axis=1).mean()
    assert np.linalg.norm(pts_all[is_key_all], axis=1).mean() == pytest.approx(qn, rel=0.3)


@pytest.mark.slow
def test_umap_embedding_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLENS_CACHE", str(tmp_path))
    x = np.random.default_rng(3).normal(size=(30, 4))
    xy = embed_2d(x, "umap", cache=True)
    assert xy.shape == (30, 2) and np.isfinite(xy).all()
    (cached,) = (tmp_path / "dashboard-maps").glob("umap-*.npy")
    np.testing.assert_array_equal(np.load(cached), xy)
    np.save(cached, xy + 1)  # what is read back is the cache, not a recomputation
    np.testing.assert_array_equal(embed_2d(x, "umap", cache=True), xy + 1)


def test_circuit_layout_is_layered_and_merges_qkv_edges():
    c = Circuit(heads=[(0, 1), (1, 0), (1, 3)], mlps=[0], n_layers=2, n_heads=4, group_size=2, edges=[
        Edge(Node(NodeKind.EMBED), Receiver(Input.Q, 0, 1), 0.3),
        Edge(Node(NodeKind.HEAD, 0, 1), Receiver(Input.V, 1, 1), -0.2),  # KV head 1 = query heads 2, 3
        Edge(Node(NodeKind.HEAD, 0, 1), Receiver(Input.Q, 1, 3), 0.1),
        Edge(Node(NodeKind.HEAD, 0, 1), Receiver(Input.K, 1, 1), 0.05),
        Edge(Node(NodeKind.MLP, 0), Receiver(Input.LOGITS), 0.5),
        Edge(Node(NodeKind.HEAD, 1, 0), Receiver(Input.LOGITS), 0.9),
        Edge(Node(NodeKind.HEAD, 1, 3), Receiver(Input.LOGITS), -1.4)])
    pos, edges = circuit_layout(c)
    assert pos[Node(NodeKind.EMBED)][0] == -1 and pos[Node(NodeKind.LOGITS)][0] == 2
    assert pos[Node(NodeKind.HEAD, 1, 0)] == (1, 0) and pos[Node(NodeKind.HEAD, 1, 3)] == (1, 3)  # layer, head
    assert 0 < pos[Node(NodeKind.MLP, 0)][0] < 1 and pos[Node(NodeKind.MLP, 0)][1] < 0  # the MLP lane
    # q, k and v of one sender into one head: one edge carrying the letters and each part's score
    into = [d for d in edges if d.sender == Node(NodeKind.HEAD, 0, 1)]
    assert len(into) == 1 and into[0].target == Node(NodeKind.HEAD, 1, 3)  # the KV group's head in the circuit
    assert into[0].letters == "qkv" and into[0].score == -0.2 and into[0].parts == {"q": 0.1, "k": 0.05, "v": -0.2}
    assert Node(NodeKind.HEAD, 1, 2) not in pos  # not fanned out to the group's heads outside the circuit
    ys = [pos[n][1] for n in pos if pos[n][0] == 1]
    assert len(set(ys)) == len(ys)  # no two nodes of a layer on top of each other
    rows = head_table(c, edges)
    assert [str(n) for n, *_ in rows[:2]] == ["L1H3", "L1H0"]  # by |score|: the negative head first
    assert rows[0][1] == -1.4 and rows[0][2:] == (1, 1)


def test_summaries_are_short_whatever_the_value():
    assert summarize(list(range(5000))).startswith("5000 numbers: min 0, mean 2500, max 4999")
    long = summarize([{"item": f"L{i}H0", "effect": 0.1 * i} for i in range(100)])
    assert "(100 in all)" in long and len(long) < 400
    assert long.startswith("100 rows of item, effect: item L0H0, effect 0;") and "{" not in long  # no record dumps
    assert summarize("x" * 10_000).endswith("(10000 characters)") and len(summarize("x" * 10_000)) < 350
    assert summarize({f"k{i}": i for i in range(50)}) == "k0 0, k1 1, k2 2, k3 3, k4 4, k5 5, … (44 more)"
    assert summarize(float("nan")) == "nan" and summarize(0.123456) == "0.1235"


def test_markdown_escaping_neutralises_html_links_images_and_tables():
    for payload in ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[x](javascript:alert(1))",
                    "![t](http://evil/x.png)", "a | b", "line\n# heading", "it's &amp; \\"):
        out = md_escape(payload)
        assert "<" not in out and "](" not in out and "\n" not in out
        assert "|" not in out.replace("\\|", "")
    assert md_escape("it's") == "it's"
