"""`lens heads qk` on the tiny model: the result file round-trips, the folder finds it, errors are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlens.formats import ResultError, ResultsFolder
from attnlens.formats.provenance import Provenance
from attnlens.formats.qk import Contributor, Kind, QKResult
from tests.analyses.qk_folder import PROMPT, write_qk_folder


@pytest.fixture(scope="module")
def qk_folder(tmp_path_factory):
    """A folder written by the real command (also read by the view tests)."""
    return write_qk_folder(tmp_path_factory.mktemp("qk"), head=1)


def test_cli_writes_a_result_the_folder_finds(qk_folder, tiny_lm):
    from attnlens.analyses.qk_attribution import qk_attribution

    folder = ResultsFolder.load(qk_folder)
    assert not folder.problems and folder.counts()["QK attributions"] == 1
    (label, res), = folder.qk.items()
    assert label.startswith("L3H1.q")
    n = tiny_lm.encode(PROMPT).shape[1]
    assert res.query_pos == n - 1 and res.key_pos == int(np.argmax(res.pattern))
    assert res.answers == ["M", "J"] and res.ov.shape == (2, n)
    np.testing.assert_allclose(res.terms.sum((1, 2)), res.scores, atol=1e-4)
    a = qk_attribution(tiny_lm, tiny_lm.encode(PROMPT), 3, 1)
    np.testing.assert_allclose(res.terms, a.terms.numpy(), atol=1e-6)
    assert "frozen" in res.linearisation and res.provenance.model == "tiny-llama"


def test_cli_prints_named_terms(cli, tmp_path):
    code, out, err = cli("heads", "qk", "tiny-llama", "--layer", "2", "--head", "0", "--prompt", "abcabc",
                         "--key-pos", "2", "--out", tmp_path / "o", "--top", "3")
    assert code == 0, err
    assert "L2H0: query 6 'c' -> key 2 'b'" in err and "terms sum to" in err
    assert "embed[c] x embed[b]" in err or " x L" in err


def test_cli_json_top_terms(cli, tmp_path):
    code, out, err = cli("heads", "qk", "tiny-llama", "--layer", "1", "--head", "2", "--prompt", "abcabc",
                         "--out", tmp_path / "o", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["top"]) == 10 and all(" x " in name for name, _ in doc["top"])
    assert doc["query_pos"] == 6 and 0 <= doc["key_pos"] <= 6


@pytest.mark.parametrize(("args", "message"), [
    (["--layer", "7", "--head", "0"], "error: layer 7 is out of range: tiny-llama has layers 0-3"),
    (["--layer", "1", "--head", "4"], "error: head 4 is out of range: tiny-llama has heads 0-3 in each layer"),
    (["--layer", "1", "--head", "0", "--query-pos", "40"], "error: query position 40 is out of range"),
    (["--layer", "1", "--head", "0", "--query-pos", "2", "--key-pos", "5"],
     "error: key position 5 is out of range: query 2 attends to keys 0-2"),
    (["--layer", "1", "--head", "0", "--answer", "xyz"], "error: answer 'xyz' is 3 tokens for this tokenizer, expected one"),
])
def test_cli_bad_input_is_one_line(cli, tmp_path, args, message):
    code, out, err = cli("heads", "qk", "tiny-llama", "--prompt", "abcabc", "--out", tmp_path / "o", *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1 and "a bug in attnlens" not in err
    assert not (tmp_path / "o").exists()


def _result(**kw) -> QKResult:
    comps = [Contributor(Kind.EMBED), Contributor(Kind.HEAD, 0, 1), Contributor(Kind.BIAS)]
    base = dict(name="L1H0.q2", layer=1, head=0, kv_head=0, query_pos=2, key_pos=1, tokens=["<bos>", "Mary", "to"],
                components=comps, terms=np.arange(27, dtype=np.float32).reshape(3, 3, 3) / 10,
                scores=np.arange(3) * 0.9 + 3.6, pattern=np.array([0.2, 0.5, 0.3]), provenance=Provenance(model="m"),
                answers=["Mary"], ov=np.ones((1, 3)))
    base.update(kw)
    return QKResult(**base)


def test_round_trip_and_names(tmp_path):
    r = _result()
    r.save(tmp_path)
    back = QKResult.load(tmp_path / "L1H0.q2.qk.json")
    np.testing.assert_array_equal(back.terms, r.terms)
    assert back.components == r.components and back.answers == ["Mary"] and back.key_pos == 1
    assert back.names(1) == ["embed[Mary]", "L0H1", "bias"]
    assert back.top(1) == [("bias x bias", pytest.approx(1.7))]
    q_side, k_side = back.sides()
    assert q_side[2] == pytest.approx(1.5 + 1.6 + 1.7) and k_side[0] == pytest.approx(0.9 + 1.2 + 1.5)


def test_shape_mismatch_is_refused():
    with pytest.raises(ResultError, match=r"terms have shape \[2, 3, 3\], expected \[3, 3, 3\]"):
        _result(terms=np.zeros((2, 3, 3)))
    with pytest.raises(ResultError, match="key position 5 is outside keys 0-2"):
        _result(key_pos=5)


def test_corrupt_files_are_named_problems(tmp_path):
    _result().save(tmp_path)
    path = tmp_path / "L1H0.q2.qk.json"
    doc = json.loads(path.read_text())
    doc["components"][1] = ["neuron", 0, 1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultError, match=r"components\[1\] must be \[kind, layer, head\]"):
        QKResult.load(path)
    folder = ResultsFolder.load(tmp_path)
    assert "L1H0.q2.qk.json" in folder.problems and not folder.qk
    doc["components"][1] = ["head", 0, 1]
    doc["format_version"] = 9
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultError, match="format_version 9"):
        QKResult.load(path)
    doc["format_version"] = 1
    path.write_text(json.dumps(doc))
    (tmp_path / "L1H0.q2.qk.safetensors").unlink()
    with pytest.raises(ResultError, match="L1H0.q2.qk.safetensors"):
        QKResult.load(path)
