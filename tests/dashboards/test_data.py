"""The data layer: reading results folders, captures and their failures; the numpy helpers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dashboards.compute import (
    CONTEXT_BINS,
    MAX_WINDOW,
    embed_2d,
    head_profiles,
    pattern_stats,
    qk_points,
    window_pattern,
)
from dashboards.data import CaptureFile, CaptureReadError, ResultsFolder, ResultsFolderError


def test_folder_reads_results_captures_sweeps_and_circuits(synth):
    f = ResultsFolder.load(synth)
    assert f.problems == {}
    assert f.names == ["ablation.loss_increase", "streaming.prev_token_mass", "summary.entropy",
                       "summary.sink_mass", "taxonomy.type"]
    assert f.shape == (4, 6) and f.model == "synthetic-model"
    assert [c.name for c in f.captures] == ["000", "001", "002"]
    assert len(f.sweeps) == 1 and f.sweeps[0].ys["accuracy"].shape == (3, 11)
    assert f.circuits[0].name == "synthetic" and f.circuits[0].edges
    assert f.missing == ["retrieval", "sinks"]


def test_capture_file_reads_what_lens_capture_wrote(tiny_scan):
    from lens.recording.record import Capture

    cap_np = CaptureFile.load(tiny_scan / "captures" / "000")
    cap_t = Capture.load(tiny_scan / "captures" / "000")
    np.testing.assert_array_equal(cap_np.pattern(2, 3), cap_t.pattern(2, 3)[0].numpy())
    from lens.sites import Site

    np.testing.assert_array_equal(cap_np.queries(1, 2), cap_t.get(Site.Q, 1)[0, 2].numpy())
    # tiny-llama has 4 query heads on 2 KV heads: head 3 reads KV head 1
    np.testing.assert_array_equal(cap_np.keys(1, 3), cap_t.get(Site.K, 1)[0, 1].numpy())
    assert cap_np.tokens == cap_t.meta.tokens[0]


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ResultsFolderError, match="does not exist: run `lens scan"):
        ResultsFolder.load(tmp_path / "nope")


def test_broken_files_are_named_and_the_rest_still_loads(synth, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    (bad / "summary.entropy.json").write_text("{not json")
    (bad / "streaming.prev_token_mass.safetensors").unlink()
    (bad / "captures" / "001" / "capture.json").write_text("[]")
    (bad / "orphan.metric.safetensors").write_bytes(b"x")
    f = ResultsFolder.load(bad)
    assert "summary.entropy.json" in f.problems and "not valid JSON" in f.problems["summary.entropy.json"]
    assert "is missing" in f.problems["streaming.prev_token_mass.json"]
    assert "not valid capture metadata" in f.problems["captures/001"]
    assert "orphan.metric.json is missing" in f.problems["orphan.metric.safetensors"]
    assert f.names == ["ablation.loss_increase", "summary.sink_mass", "taxonomy.type"]
    assert [c.name for c in f.captures] == ["000", "002"]


def test_truncated_tensor_file_fails_on_read_with_the_file_named(synth, tmp_path):
    shutil.copytree(synth / "captures" / "000", tmp_path / "c")
    t = tmp_path / "c" / "tensors.safetensors"
    t.write_bytes(t.read_bytes()[:200])
    cap = CaptureFile.load(tmp_path / "c")
    with pytest.raises(CaptureReadError, match="tensors.safetensors cannot be read"):
        cap.pattern(0, 0)


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


def test_window_of_a_short_pattern_is_the_whole_pattern():
    p = np.eye(5)
    w = window_pattern(p, start=3, size=64)
    assert (w.q_start, w.q_end) == (0, 5) and w.col_ranges == [(i, i + 1) for i in range(5)]
    np.testing.assert_array_equal(w.values, p)


def test_pattern_stats_of_a_previous_token_head():
    n = 10
    p = np.zeros((n, n))
    p[0, 0] = 1
    p[np.arange(1, n), np.arange(n - 1)] = 1
    s = pattern_stats(p)
    assert s["prev_token_mass"] == pytest.approx(1.0) and s["self_mass"] == 0.0
    assert s["entropy"] == pytest.approx(0.0) and s["mean_distance"] == pytest.approx(1.0)


def test_head_types_come_from_taxonomy_else_from_outlying_scores(synth):
    f = ResultsFolder.load(synth)
    prof = head_profiles(f)
    assert prof.features.shape == (24, 4) and "taxonomy.type" not in prof.feature_names
    assert set(prof.types) == {"sink", "previous-token", "spread", "local"}
    f.results = [r for r in f.results if r.analysis != "taxonomy"]
    assert all(t == "typical" or t.endswith((" high", " low")) for t in head_profiles(f).types)


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
    np.testing.assert_allclose(pts_all[is_key_all].mean(0), pts_all[~is_key_all].mean(0) * 1.0, atol=2.0)
    qn = np.linalg.norm(pts_all[~is_key_all], axis=1).mean()
    assert np.linalg.norm(pts_all[is_key_all], axis=1).mean() == pytest.approx(qn, rel=0.3)


@pytest.mark.slow
def test_umap_embeds_heads():
    x = np.random.default_rng(3).normal(size=(30, 4))
    xy = embed_2d(x, "umap")
    assert xy.shape == (30, 2) and np.isfinite(xy).all()


def test_circuit_file_without_nodes_places_them_after_the_last_layer(tmp_path, synth):
    shutil.copytree(synth, tmp_path / "f")
    (tmp_path / "f" / "x.circuit.json").write_text(json.dumps(
        {"kind": "circuit", "edges": [{"source": "a", "target": "b", "weight": -0.5}],
         "nodes": [{"id": "a", "layer": 2, "head": 1}]}))
    (tmp_path / "f" / "y.circuit.json").write_text(json.dumps({"kind": "circuit", "edges": [{"weight": 1}]}))
    f = ResultsFolder.load(tmp_path / "f")
    c = next(c for c in f.circuits if c.name == "x")
    assert c.layout() == {"a": (2.0, 1.0), "b": (3.0, -1.0)}
    assert "not a valid circuit" in f.problems["y.circuit.json"]
