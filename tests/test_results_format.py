"""The results format every analysis writes and every dashboard and report reads."""

import json

import numpy as np
import pytest

from attnlens.analyses.result import HeadScores, Provenance, ResultError, load_results


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


def test_scale_round_trips_ranks_signed_by_abs_and_rejects_unknown(tmp_path):
    r = scores(shape=(2, 2))
    r.scores[:] = [[0.1, -2.6], [0.9, np.nan]]
    r.scale = "signed"
    back = HeadScores.load(r.save(tmp_path))
    assert back.scale == "signed" and back.top(2) == [(0, 1, -2.6), (1, 0, 0.9)]  # the strongest negative head first
    types = HeadScores("taxonomy", "head_type", np.array([[0.0, 2.0]]), Provenance(model="tiny"),
                       scale="categorical", categories=["sink", "induction", "other"])
    back = HeadScores.load(types.save(tmp_path))
    assert back.scale == "categorical" and back.categories == ["sink", "induction", "other"]
    with pytest.raises(ResultError, match="scale must be one of sequential, signed, categorical, got 'log'"):
        HeadScores("a", "m", np.zeros((1, 1)), Provenance(model="tiny"), scale="log")
    doc = json.loads((tmp_path / "a.m.json").read_text())
    for key in ("scale", "categories"):  # a file written before the field: circuit/ablation effects read as signed
        doc.pop(key)
    (tmp_path / "circuit.m.json").write_text(json.dumps(doc | {"analysis": "circuit"}))
    (tmp_path / "circuit.m.safetensors").write_bytes((tmp_path / "a.m.safetensors").read_bytes())
    assert HeadScores.load(tmp_path / "circuit.m.json").scale == "signed"
    (tmp_path / "a.m.json").write_text(json.dumps(doc))
    assert HeadScores.load(tmp_path / "a.m.json").scale == "sequential"


def test_faithfulness_warning_says_how_far_and_what_size_reaches_it():
    from attnlens.formats import (
        Circuit,
        Curves,
        Edge,
        Input,
        Node,
        NodeKind,
        Receiver,
        faithfulness_warning,
    )

    edges = [Edge(Node(NodeKind.HEAD, 0, i), Receiver(Input.LOGITS), 0.1) for i in range(3)]
    c = Circuit(heads=[(0, 0), (0, 1), (0, 2)], mlps=[], edges=edges, method="eap", metric="logit-diff",
                faithfulness={"faithfulness": 0.06, "n_edges": 3})
    assert faithfulness_warning(c) == ("low faithfulness: this 3-edge circuit reproduces 0.06 of the full model's "
                                       "logit-diff (under 0.8)")
    curve = Curves("circuit", "T_faithfulness_edges", x=np.array([5.0, 50.0, 500.0]),
                   series={"eap": [0.1, 0.5, 0.85], "eap-ig": [0.2, 0.9, 0.95]}, provenance=Provenance(model="tiny"),
                   x_label="circuit size (edges)",
                   summary={"threshold": 0.8, "smallest_reaching": {"eap": 500, "eap-ig": 50}})
    heads = Curves("circuit", "T_faithfulness_heads", x=np.array([5.0]), series={"eap": [0.9]},
                   provenance=Provenance(model="tiny"), x_label="circuit size (heads)",
                   summary={"threshold": 0.8, "smallest_reaching": {"eap": 5}})
    assert faithfulness_warning(c, [heads, curve]).endswith("; the smallest eap circuit reaching 0.8 has 500 edges")
    c.faithfulness["faithfulness"] = 0.81
    assert faithfulness_warning(c, [curve]) == ""
    c.faithfulness = {}
    assert faithfulness_warning(c) == ""  # not measured: nothing to warn about
