"""Fault class 4: crafted or corrupt files are one error naming the file (loaders validate the whole
structure inside one boundary); folder readers skip a bad file, name it and use what is intact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lens
from attnlens.formats import CaptureFile, HeadScores, Provenance, ResultsFolder, StatsFile
from attnlens.formats.errors import CorruptCaptureError, CorruptFileError, ResultError
from lens.recording.record import Capture


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _entry(doc, **changes):
    doc["entries"][0].update(changes)


CRAFTED = {
    "entry step out of range": lambda d: _entry(d, step=7),
    "entry layer not captured": lambda d: _entry(d, layer=3),
    "entry step of the wrong type": lambda d: _entry(d, step="0"),
    "entry missing its name": lambda d: d["entries"][0].pop("name"),
    "unknown site": lambda d: _entry(d, site="telepathy"),
    "shape contradicting the tensor": lambda d: _entry(d, shape=[1, 4, 5, 5]),
    "dtype contradicting the tensor": lambda d: _entry(d, dtype="float16"),
    "entries not a list": lambda d: d.__setitem__("entries", {"a": 1}),
    "heads outside the model": lambda d: d["meta"].__setitem__("heads", [0, 1, 2, 99]),
    "fewer heads than the tensors hold": lambda d: d["meta"].__setitem__("heads", [0, 1]),
    "token ids of another length": lambda d: d["meta"]["token_ids"][0].pop(),
    "tokens of another length": lambda d: d["meta"]["tokens"][0].append("extra"),
    "facts with a string for layers": lambda d: d["meta"]["facts"].__setitem__("n_layers", "4"),
    "facts with 0 KV heads": lambda d: d["meta"]["facts"].__setitem__("n_kv_heads", 0),
    "n_steps negative": lambda d: d.__setitem__("n_steps", -1),
    "meta not an object": lambda d: d.__setitem__("meta", [1, 2]),
    "image file outside the folder": lambda d: d["meta"].__setitem__(
        "layout", {"kind": "image", "height": 32, "width": 32, "patch_size": 4, "image_file": "../../etc/passwd"}),
    "absolute image file": lambda d: d["meta"].__setitem__(
        "layout", {"kind": "image", "height": 32, "width": 32, "patch_size": 4, "image_file": "/etc/passwd"}),
    "a future format version": lambda d: d.__setitem__("format_version", 99),
    "source layout with text ids": lambda d: d["meta"].__setitem__(
        "layout", {"kind": "source", "tokens": ["a", "b"], "token_ids": ["1", "2"], "text": "ab"}),
    "source layout with fewer ids than tokens": lambda d: d["meta"].__setitem__(
        "layout", {"kind": "source", "tokens": ["a", "b"], "token_ids": [1], "text": "ab"}),
    "empty source layout": lambda d: d["meta"].__setitem__(
        "layout", {"kind": "source", "tokens": [], "token_ids": [], "text": ""}),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_capture_metadata_is_refused_with_the_file_named(saved_capture, case):
    meta = saved_capture / "capture.json"
    _edit(meta, CRAFTED[case])
    for load in (CaptureFile.load, Capture.load):
        with pytest.raises(CorruptCaptureError) as info:
            load(saved_capture)
        assert "capture.json" in str(info.value) or "tensors.safetensors" in str(info.value), str(info.value)
    if case == "a future format version":
        with pytest.raises(CorruptCaptureError, match="format_version 99; this attnlens reads capture versions 1, 2"):
            CaptureFile.load(saved_capture)


def test_deep_nesting_null_and_garbage(saved_capture, tmp_path):
    meta = saved_capture / "capture.json"
    meta.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptCaptureError, match="nested too deeply|nested deeper"):
        CaptureFile.load(saved_capture)
    meta.write_text("null")
    with pytest.raises(CorruptCaptureError, match="holds a JSON NoneType, expected an object"):
        CaptureFile.load(saved_capture)
    meta.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptCaptureError, match="is not UTF-8"):
        CaptureFile.load(saved_capture)


def test_tensor_file_damage(saved_capture):
    t = saved_capture / "tensors.safetensors"
    data = t.read_bytes()
    t.write_bytes(data[:4])
    with pytest.raises(CorruptCaptureError, match="tensors.safetensors is truncated"):
        CaptureFile.load(saved_capture)
    t.write_bytes((10**12).to_bytes(8, "little") + data[8:])  # a header length larger than the file
    with pytest.raises(CorruptCaptureError, match="truncated or not safetensors"):
        CaptureFile.load(saved_capture)
    t.unlink()
    with pytest.raises(CorruptCaptureError, match="tensors.safetensors is missing"):
        Capture.load(saved_capture)


def test_head_scores_and_stats_runs(tmp_path):
    r = HeadScores("a", "m", np.zeros((2, 3)), Provenance(model="x"))
    path = r.save(tmp_path)
    (tmp_path / "a.m.safetensors").unlink()
    with pytest.raises(ResultError, match=r"a\.m\.safetensors is missing"):
        HeadScores.load(path)
    r.save(tmp_path)
    _edit(path, lambda d: d.__setitem__("shape", [3, 3]))
    with pytest.raises(ResultError, match="scores have shape"):
        HeadScores.load(path)
    lm = lens.load("tiny-llama")
    folder = lens.run_stats(lm, "stats to damage").save(tmp_path / "s")
    (folder / "stats.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(CorruptFileError, match="stats.safetensors"):
        StatsFile.load(folder)
    with pytest.raises(lens.AttnlensError):
        lens.StatsRun.load(folder)


def test_a_results_folder_skips_and_names_bad_files(saved_capture, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(saved_capture, root / "good")
    shutil.copytree(saved_capture, root / "bad")
    (root / "bad" / "tensors.safetensors").write_bytes(b"\x00")
    HeadScores("a", "m", np.ones((4, 4)), Provenance(model="tiny-llama")).save(root / "scores")
    (root / "scores" / "broken.json").write_text('{"kind": "head_scores", "format_version": 2}')
    (root / "scores" / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    (root / "scores" / "circuit.json").write_text(json.dumps({"circuit": {"edges": []}}))  # the old format
    f = ResultsFolder.load(root)
    assert list(f.captures) == ["good"] and list(f.results) == ["scores/a.m"]
    assert set(f.problems) == {"bad", "scores/broken.json", "scores/deep.json", "scores/circuit.json"}
    assert "older `lens circuit`" in f.problems["scores/circuit.json"]
    assert "truncated" in f.problems["bad"]
