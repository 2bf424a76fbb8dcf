import json

import pytest

from attnlens.formats import Circuit, Curves, HeadScores, open_sweep
from lens.errors import OutputExistsError

SETTINGS = {"model": "m", "task": "t", "method": "mean"}


def test_sweep_folder_semantics(tmp_path):
    out = tmp_path / "s"
    with open_sweep(out, SETTINGS) as log:
        log.append([{"item": "L0H0", "effect": 1.0}, {"item": "L0H1", "effect": 2.0}])
    with open(out / "sweep.jsonl", "a") as f:
        f.write('{"item": "L0H2", "eff')  # killed mid-write
    with open_sweep(out, SETTINGS) as again:
        assert again.resumed and set(again.done) == {"L0H0", "L0H1"}
        assert (out / "sweep.jsonl").read_text().endswith("}\n")  # the torn line is cut off before appending
        again.append([{"item": "L0H2", "effect": 3.0}])
    with pytest.raises(OutputExistsError, match="holds a sweep with other settings: pass `force=True`"):
        open_sweep(out, {**SETTINGS, "method": "zero"})
    with open_sweep(out, SETTINGS) as again:
        assert set(again.done) == {"L0H0", "L0H1", "L0H2"}
        again.finish()
    with pytest.raises(OutputExistsError, match="holds a finished sweep with these settings"):
        open_sweep(out, SETTINGS)
    with open_sweep(out, SETTINGS, force=True) as fresh:
        assert not fresh.done
        assert len((out / "sweep.jsonl").read_text().splitlines()) == 3  # the old sweep stays until the new one ends
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="is not empty"):
        open_sweep(tmp_path / "other", SETTINGS)


@pytest.fixture
def task_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{a}b{c} {a}x", "answer": "q", "corrupted": f"{d}b{c} {a}x", "distractor": "z"}
            for a, c, d in zip("abcd", "hgfe", "mnop")]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    return p


def test_interrupted_sweep_resumes_without_redoing_heads(cli, tiny_lm, task_file, tmp_path, monkeypatch):
    import attnlens.analyses.circuits as circuits

    real = circuits.score_sets
    seen: list[str] = []
    calls = {"n": 0}

    def flaky(ctx, sets, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the third chunk
        seen.extend(str(s[0]) for s in sets)
        return real(ctx, sets, **kw)

    monkeypatch.setattr(circuits, "score_sets", flaky)
    out = tmp_path / "sweep"
    args = ["ablate", "tiny-llama", "--task", task_file, "--sweep", "heads", "--max-rows", "12", "--out", out]
    code, _, _ = cli(*args)
    assert code == 130  # interrupted
    done_first = [json.loads(line)["item"] for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert len(done_first) == 6  # two chunks of 12 // 4 = 3 heads
    assert not list(tmp_path.glob(".sweep.lock"))  # the lock is released on interruption
    seen.clear()
    code, stdout, err = cli(*args, "--json")
    assert code == 0, err
    assert not set(seen) & set(done_first) and len(seen) == 16 - 6
    summary = json.loads(stdout)
    assert summary["done_before_this_run"] == 6 and summary["computed_this_run"] == 10
    hs = HeadScores.load(out / "ablation.mean_logit-diff.json")
    assert hs.shape == (4, 4) and not (hs.scores != hs.scores).any()
    code, _, err = cli(*args)
    assert code == 2 and "holds a finished sweep with these settings" in err


def test_layer_sweep_writes_curves(cli, task_file, tmp_path):
    out = tmp_path / "layers"
    code, _, err = cli("ablate", "tiny-llama", "--task", task_file, "--sweep", "layers", "--method", "zero", "--out", out)
    assert code == 0, err
    curves = Curves.load(out / "ablation.zero_logit-diff_layers.curves.json")
    assert set(curves.series) == {"attention (all heads)", "MLP"} and curves.x.tolist() == [0, 1, 2, 3]


def test_ablate_cli_errors_name_the_argument(cli, task_file):
    code, _, err = cli("ablate", "tiny-llama", "--task", task_file, "--heads", "L3H7")
    assert code == 2 and "head 7 in 'L3H7' is out of range: tiny-llama has heads 0-3" in err
    code, _, err = cli("ablate", "tiny-llama", "--task", task_file, "--heads", "L1H1", "--method", "max")
    assert code == 2 and "'max' is not one of 'zero', 'mean', 'resample', 'patch'" in err
    code, _, err = cli("ablate", "tiny-llama", "--task", task_file, "--sweep", "heads", "--compare-random", "3")
    assert code == 2 and "--compare-random applies to one set of --heads, not to a --sweep" in err


def test_ablate_cli_with_random_comparison(cli, task_file, tmp_path):
    code, stdout, err = cli("ablate", "tiny-llama", "--task", task_file, "--heads", "L1H*", "--compare-random", "3",
                            "--seeds", "0,1", "--json", "--out", tmp_path / "a")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["skipped"] == 1 and len(doc["components"]) == 4 and doc["random"]["k"] == 6
    from attnlens.formats import AblationResult

    saved = AblationResult.load(tmp_path / "a" / "ablation.json")
    assert len(saved.random_effects) == 6 and saved.heads == [(1, h) for h in range(4)]


def test_circuit_cli(cli, task_file, tmp_path):
    out = tmp_path / "c"
    code, _, err = cli("circuit", "tiny-llama", "--task", task_file, "--method", "eap", "--top-n", "10",
                       "--compare-patching", "--overlap-task", task_file, "--out", out, "--json")
    assert code == 0, err
    c = Circuit.load(out / "pairs_eap.circuit.json")
    assert c.details["vs_patching"]["eap"]["spearman"] > 0.5 and c.details["vs_patching"]["eap-ig"]["speedup"] > 0
    assert c.details["overlap"]["heads_jaccard"] == 1.0
    assert 0 < len(c.edges) == c.faithfulness["n_edges"] <= 10
    code, _, err = cli("circuit", "tiny-llama", "--task", task_file, "--out", out)
    assert code == 2 and "pass --force" in err
    for bad, message in ((["--top-n", "0"], "--top-n"), (["--threshold", "nan"], "--threshold must be a finite"),
                         (["--top-n", "5", "--threshold", "0.1"], "one of --top-n and --threshold"),
                         (["--overlap-task", "nope"], "unknown task 'nope'")):
        code, _, err = cli("circuit", "tiny-llama", "--task", task_file, "--out", tmp_path / "never", *bad)
        assert code == 2 and message in err, (bad, err)
    assert not (tmp_path / "never").exists()


def test_circuit_cli_curves_settings_and_reuse_baseline(cli, task_file, tmp_path):
    out = tmp_path / "curves"
    code, _, err = cli("circuit", "tiny-llama", "--task", task_file, "--method", "eap", "--top-n", "20",
                            "--curve", "--edge-sizes", "5,20,1000", "--head-sizes", "2,8", "--settings-table",
                            "--overlap-task", task_file, "--random-circuits", "50", "--out", out)
    assert code == 0, err
    c = Circuit.load(out / "pairs_eap.circuit.json")
    assert c.faithfulness["setting"] == "hanna2024" and c.params["eval_level"] == "edge"
    assert {r["setting"] for r in c.details["settings"]} >= {"hanna2024", "wang2022"}
    edges = Curves.load(out / "circuit.pairs_faithfulness_edges.curves.json")
    heads = Curves.load(out / "circuit.pairs_faithfulness_heads.curves.json")
    assert edges.x.tolist() == [5, 20] and list(edges.series) == ["eap"]  # 1000 is more than the graph has
    assert heads.x.tolist() == [2, 8] and heads.params["setting"] == "wang2022"
    assert "smallest reaching faithfulness 0.8" in err  # messages go to stderr
    rb = c.details["overlap"]["random_baseline"]
    assert rb["n_random"] == 50 and rb["uniform"]["share_of_a_heads"]["observed"] == 1.0
    code, _, err = cli("circuit", "tiny-llama", "--task", task_file, "--method", "patching", "--top-n", "3",
                       "--level", "edge", "--no-patch-mlps", "--out", tmp_path / "p", "--json")
    assert code == 0, err
    p = Circuit.load(tmp_path / "p" / "pairs_patching.circuit.json")
    assert p.faithfulness["setting"] == "custom" and p.faithfulness["level"] == "edge" and not p.mlps
    code, _, err = cli("circuit", "tiny-llama", "--task", task_file, "--ablate", "all", "--out", tmp_path / "never")
    assert code == 2 and "'all' is not one of 'heads', 'heads+mlps'" in err
