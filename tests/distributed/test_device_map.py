"""A model split over devices with accelerate (here: CPU memory plus disk offload) gives the same
patterns, statistics and ablation numbers as the whole model; the options' errors are one line;
nnsight --remote stops with one line where there is no key or no route to NDIF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lens
from attnlens.analyses.circuits import Example, Task, all_heads, encode_task, prepare, score_sets
from lens.errors import BackendError, SelectionError

PROMPT = "The quick brown fox jumps over the lazy dog"
# tiny-llama's weights are about 725 kB: 400 kB of CPU memory holds the embedding and layer 0,
# the other three layers, the final norm and the head go to disk
SPLIT = {"device_map": "sequential", "max_memory": {"cpu": "400kB", "disk": "1GB"}}


@pytest.fixture(scope="module")
def split_lm():
    return lens.load("tiny-llama", **SPLIT)


def test_the_model_is_split_over_cpu_and_disk(split_lm):
    placed = split_lm.model.hf_device_map
    assert placed["model.embed_tokens"] == "cpu" and placed["model.layers.0"] == "cpu"
    assert placed["model.layers.3"] == "disk" and placed["lm_head"] == "disk"
    assert split_lm.device == torch.device("cpu")
    offloaded = split_lm.model.model.layers[3].self_attn.o_proj.weight
    assert offloaded.device.type == "meta"  # its weights are streamed from disk at each forward


@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_patterns_and_activations_match_unsplit(tiny_lm, split_lm, backend):
    sites = [lens.Site.PATTERN, lens.Site.Z, lens.Site.MLP_OUT, lens.Site.RESID_POST]
    a = lens.run(tiny_lm, PROMPT, sites=sites, heads=[1, 3], backend=backend)
    b = lens.run(split_lm, PROMPT, sites=sites, heads=[1, 3], backend=backend)
    assert set(a.capture.steps[0]) == set(b.capture.steps[0]) and len(a.capture.steps[0]) == 16
    for key, t in a.capture.steps[0].items():
        torch.testing.assert_close(b.capture.steps[0][key], t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)


def test_edits_on_a_split_model_match_unsplit(tiny_lm, split_lm):
    ref = lens.run(tiny_lm, PROMPT, sites=[lens.Site.Z], layers=[2]).capture.steps[0]
    reference = lens.Reference(z={2: ref[lens.SiteKey(lens.Site.Z, 2)].transpose(1, 2)})
    edits = lens.zero_ablation([(3, 1)]) + lens.mean_ablation(reference, [(2, 0)]) + lens.scale_heads({(1, 2): 3.0})
    a = lens.run(tiny_lm, PROMPT, sites=[lens.Site.PATTERN], edits=edits)
    b = lens.run(split_lm, PROMPT, sites=[lens.Site.PATTERN], edits=edits)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    unedited = lens.run(tiny_lm, PROMPT, sites=[lens.Site.PATTERN])
    assert not torch.allclose(unedited.logits, a.logits)  # the edits did something


def test_stats_mode_matches_unsplit(tiny_lm, split_lm):
    from attnlens.kernels import StatsSpec

    spec = StatsSpec(sink_tokens=1, window=4, spans=((2, 5),), topk=2)
    a = lens.run_stats(tiny_lm, PROMPT, spec=spec, backend="torch")
    b = lens.run_stats(split_lm, PROMPT, spec=spec, backend="torch")
    assert sorted(a.stats) == sorted(b.stats) == [0, 1, 2, 3]
    for layer, s in a.stats.items():
        for name in type(s)._fields:
            torch.testing.assert_close(getattr(b.stats[layer], name), getattr(s, name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["zero", "mean", "resample", "patch"])
def test_ablation_numbers_match_unsplit(tiny_lm, split_lm, method):
    exs = [Example(f"{a}b{c} {a}x", "q", f"{d}b{c} {a}x", "z") for a, c, d in zip("abcdefgh", "hgfedcba", "mnopqrst")]
    enc = encode_task(Task("pairs", exs), tiny_lm.tokenizer, max_batch=4)
    sets = [[h] for h in all_heads(tiny_lm.facts)] + [[lens.MlpRef(1)], [lens.HeadRef(0, 0), lens.MlpRef(3)]]
    a, b = prepare(tiny_lm, enc, method, "logit-diff", seed=1), prepare(split_lm, enc, method, "logit-diff", seed=1)
    assert abs(a.baseline - b.baseline) < 1e-5
    np.testing.assert_allclose(score_sets(b, sets, max_rows=8), score_sets(a, sets, max_rows=8), rtol=1e-5, atol=1e-6)


def test_auto_device_map_and_cli_capture(cli, tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    code, _, err = cli("capture", "tiny-llama", "-p", PROMPT, "--sites", "pattern,z", "--out", out_a)
    assert code == 0, err
    code, _, err = cli("capture", "tiny-llama", "-p", PROMPT, "--sites", "pattern,z", "--device-map", "auto",
                       "--max-memory", "cpu=300kB,disk=1GB", "--offload-folder", tmp_path / "offload", "--out", out_b)
    assert code == 0, err
    assert any(p.suffix == ".dat" for p in (tmp_path / "offload").rglob("*"))  # weights really went to disk
    a, b = lens.Capture.load(out_a / "000"), lens.Capture.load(out_b / "000")
    for key, t in a.steps[0].items():
        torch.testing.assert_close(b.steps[0][key], t, rtol=1e-5, atol=1e-6)
    code, stdout, err = cli("stats", "tiny-llama", "-p", PROMPT, "--device-map", "sequential", "--max-memory",
                            "cpu=400kB,disk=1GB", "--backend", "torch", "--json", "--out", tmp_path / "s")
    assert code == 0, err
    assert len(json.loads(stdout)["layers"]) == 4


@pytest.mark.parametrize("args, message", [
    (["--max-memory", "cpu=1GB"], "--max-memory and --offload-folder need --device-map"),
    (["--device-map", "auto", "--max-memory", "gpu0=1GB"], "device 'gpu0' is not a GPU index, cpu, mps or disk"),
    (["--device-map", "auto", "--max-memory", "cpu=lots"], "'lots' is not a size like 20GiB"),
    (["--device-map", "auto", "--max-memory", "cpu=1GB,cpu=2GB"], "--max-memory names cpu twice"),
    (["--device-map", "auto", "--max-memory", "cpu=0"], "must be a positive size"),
    (["--device-map", "sequential", "--max-memory", "cpu=1kB,disk=1GB"], "no room in memory for any layer"),
    (["--device-map", "everywhere"], "'everywhere' is not one of"),
    (["--device-map", "auto", "--backend", "transformer_lens"], "transformer_lens builds its own copy"),
    (["--remote"], "--remote runs through nnsight: add --backend nnsight"),
])
def test_option_errors_are_one_line(cli, tmp_path, args, message):
    code, _, err = cli("capture", "tiny-llama", "-p", PROMPT, *args, "--out", tmp_path / "x")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "x").exists()


def test_placement_validation():
    from lens.zoo.placement import Placement, parse_max_memory, parse_size

    assert parse_max_memory("0=20GiB, 1=512MB,cpu=64GiB,disk=1000") == {0: 20 * 2**30, 1: 512 * 10**6,
                                                                       "cpu": 64 * 2**30, "disk": 1000}
    assert parse_size("1.5kB") == 1500 and parse_max_memory("") is None
    assert Placement.make(None) is None
    with pytest.raises(SelectionError, match="need `device_map`"):
        Placement.make(None, {"cpu": "1GB"})


def test_remote_without_a_key_or_a_route_is_one_line(cli, monkeypatch, tmp_path):
    from nnsight import CONFIG

    from lens.backends.nnsight_backend import check_remote

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    code, _, err = cli("capture", "tiny-llama", "-p", PROMPT, "--sites", "z", "--backend", "nnsight", "--remote",
                       "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "--remote runs the trace on NDIF and needs an API key" in err
    assert "NDIF_API_KEY" in err and "not tested remote runs" in err and not (tmp_path / "x").exists()

    class Facts:
        name = "meta-llama/Llama-3.1-8B"

    class FakeLM:
        facts = Facts()

    monkeypatch.setenv("NDIF_API_KEY", "not-a-real-key")
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(BackendError, match="NDIF at http://127.0.0.1:9 cannot be reached from here") as e:
        check_remote(FakeLM(), timeout=2)
    assert "\n" not in str(e.value)
    code, _, err = cli("capture", "tiny-llama", "-p", PROMPT, "--sites", "z", "--backend", "nnsight", "--remote",
                       "--out", tmp_path / "x")
    assert code == 2 and "runs models NDIF hosts, named by hub id" in err
    with pytest.raises(BackendError, match="`remote=True` cannot capture patterns"):
        lens.run(lens.load("tiny-llama"), PROMPT, sites=[lens.Site.PATTERN], backend="nnsight", remote=True)


def test_a_local_folder_loads_straight_into_place(tiny_lm, tmp_path):
    """Hub ids and folders go through from_pretrained(device_map=...): never whole in memory."""
    tiny_lm.model.save_pretrained(tmp_path / "m")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "m")
    split = lens.load(tmp_path / "m", device_map="auto", max_memory={"cpu": "300kB", "disk": "1GB"},
                      offload_folder=tmp_path / "off")
    assert "disk" in split.model.hf_device_map.values()
    # offloaded weights stay in the checkpoint's safetensors (read from there at each forward)
    assert split.model.model.layers[2].mlp.up_proj.weight.device.type == "meta"
    a = lens.run(tiny_lm, PROMPT, sites=[lens.Site.PATTERN])
    b = lens.run(split, PROMPT, sites=[lens.Site.PATTERN])
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    for key, t in a.capture.steps[0].items():
        torch.testing.assert_close(b.capture.steps[0][key], t, rtol=1e-5, atol=1e-6)


def _task_file(tmp_path):
    rows = [{"prompt": f"{a}b{c} {a}x", "answer": "q", "corrupted": f"{d}b{c} {a}x", "distractor": "z"}
            for a, c, d in zip("abcd", "hgfe", "mnop")]
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_cli_sweep_and_patching_on_a_split_model(cli, tmp_path):
    from attnlens.formats import Circuit, HeadScores

    task = _task_file(tmp_path)
    split = ["--device-map", "sequential", "--max-memory", "cpu=400kB,disk=1GB"]
    for name, extra in (("whole", []), ("split", split)):
        code, _, err = cli("ablate", "tiny-llama", "--task", task, "--sweep", "heads", "--method", "patch",
                           "--out", tmp_path / f"sweep-{name}", *extra)
        assert code == 0, err
        code, _, err = cli("circuit", "tiny-llama", "--task", task, "--method", "patching", "--top-n", "5",
                           "--out", tmp_path / f"circuit-{name}", *extra)
        assert code == 0, err
    a, b = (HeadScores.load(tmp_path / f"sweep-{n}" / "ablation.patch_logit-diff.json") for n in ("whole", "split"))
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-6)
    ca, cb = (Circuit.load(tmp_path / f"circuit-{n}" / "pairs_patching.circuit.json") for n in ("whole", "split"))
    assert ca.heads == cb.heads and abs(ca.faithfulness["circuit"] - cb.faithfulness["circuit"]) < 1e-5
    code, _, err = cli("circuit", "tiny-llama", "--task", task, "--method", "eap", "--out", tmp_path / "eap", *split)
    assert code == 2 and err.count("\n") == 1 and "--device-map works with --method patching only" in err
