"""The results format every analysis writes and every dashboard and report reads."""

import json

import numpy as np
import pytest

from analyses.result import HeadScores, Provenance, ResultError, load_results


def scores(name="a", value=0.0, shape=(3, 4)):
    return HeadScores(name, "m", np.full(shape, value), Provenance(model="tiny", seeds=(1, 2)),
                      params={"k": 3}, summary={"mean": value}, arrays={"curve": np.arange(5.0)})


def test_round_trip_keeps_everything(tmp_path):
    r = scores(value=0.5)
    r.scores[1, 2] = np.nan
    back = HeadScores.load(r.save(tmp_path))
    np.testing.assert_array_equal(back.scores, r.scores)
    np.testing.assert_array_equal(back.arrays["curve"], r.arrays["curve"])
    assert back.provenance == r.provenance and back.params == {"k": 3} and back.summary == {"mean": 0.5}


def test_top_orders_heads_and_puts_nan_last():
    r = scores(shape=(2, 2))
    r.scores[:] = [[0.1, np.nan], [0.9, 0.5]]
    assert r.top(4) == [(1, 0, 0.9), (1, 1, 0.5), (0, 0, 0.1), (0, 1, pytest.approx(np.nan, nan_ok=True))]


def test_a_broken_file_never_hides_the_others(tmp_path):
    scores("good", 1.0).save(tmp_path)
    scores("bad", 2.0).save(tmp_path)
    scores("gone", 3.0).save(tmp_path)
    (tmp_path / "bad.m.safetensors").write_bytes(b"garbage")
    (tmp_path / "gone.m.safetensors").unlink()
    (tmp_path / "notes.json").write_text(json.dumps({"kind": "something else"}))
    (tmp_path / "broken.json").write_text("{")
    results, problems = load_results(tmp_path)
    assert [r.analysis for r in results] == ["good"]
    assert set(problems) == {"bad.m.json", "gone.m.json", "broken.json"}
    assert "missing" in problems["gone.m.json"] and "not valid JSON" in problems["broken.json"]


def test_scores_must_be_layer_by_head():
    with pytest.raises(ResultError, match=r"scores must be \[layer, head\]"):
        HeadScores("a", "m", np.zeros(3), Provenance(model="x"))
