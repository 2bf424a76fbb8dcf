import json

import pytest
from typer.testing import CliRunner

from analyses import HeadScores
from analyses.circuits.sweep import open_sweep
from lens.cli import app
from lens.errors import OutputExistsError

SETTINGS = {"model": "m", "task": "t", "method": "mean"}


def test_sweep_folder_semantics(tmp_path):
    out = tmp_path / "s"
    log = open_sweep(out, SETTINGS)
    log.append([{"item": "L0H0", "effect": 1.0}, {"item": "L0H1", "effect": 2.0}])
    with open(out / "sweep.jsonl", "a") as f:
        f.write('{"item": "L0H2", "eff')  # killed mid-write
    again = open_sweep(out, SETTINGS)
    assert again.resumed and set(again.done) == {"L0H0", "L0H1"}
    with pytest.raises(OutputExistsError, match="holds a sweep with other settings: pass --force"):
        open_sweep(out, {**SETTINGS, "method": "zero"})
    again.finish()
    with pytest.raises(OutputExistsError, match="holds a finished sweep with these settings"):
        open_sweep(out, SETTINGS)
    assert not open_sweep(out, SETTINGS, force=True).done
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


def test_interrupted_sweep_resumes_without_redoing_heads(tiny_lm, task_file, tmp_path, monkeypatch):
    import analyses.circuits as circuits

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
    args = ["ablate", "tiny-llama", "--task", str(task_file), "--sweep", "heads", "--max-rows", "12", "--out", str(out)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 130  # interrupted
    done_first = [json.loads(l)["item"] for l in (out / "sweep.jsonl").read_text().splitlines()]
    assert len(done_first) == 6  # two chunks of 12 // 4 = 3 heads
    seen.clear()
    second = CliRunner().invoke(app, args + ["--json"])
    assert second.exit_code == 0, second.output
    assert not set(seen) & set(done_first) and len(seen) == 16 - 6
    summary = json.loads(second.stdout[second.stdout.index("{"):])
    assert summary["done_before_this_run"] == 6 and summary["computed_this_run"] == 10
    hs = HeadScores.load(out / "ablation.mean_logit-diff.json")
    assert hs.shape == (4, 4) and not (hs.scores != hs.scores).any()
    assert (out / "effects.png").stat().st_size > 0 and (out / "effects.csv").read_text().count("\n") == 17
    third = CliRunner().invoke(app, args)
    assert isinstance(third.exception, OutputExistsError)


def test_ablate_cli_errors_name_the_argument(tiny_lm, task_file):
    r = CliRunner().invoke(app, ["ablate", "tiny-llama", "--task", str(task_file), "--heads", "L3H7"])
    assert "head 7 in 'L3H7' is out of range: tiny-llama has heads 0-3" in str(r.exception)
    r = CliRunner().invoke(app, ["ablate", "tiny-llama", "--task", str(task_file), "--heads", "L1H1", "--method", "max"])
    assert "--method 'max' is not one of zero, mean, resample, patch" in str(r.exception)


def test_ablate_cli_with_random_comparison(tiny_lm, task_file):
    r = CliRunner().invoke(app, ["ablate", "tiny-llama", "--task", str(task_file), "--heads", "L1H*",
                                 "--compare-random", "3", "--seeds", "0,1", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    assert doc["skipped"] == 1 and len(doc["components"]) == 4 and doc["random"]["k"] == 6


def test_circuit_cli(tiny_lm, task_file, tmp_path):
    out = tmp_path / "c"
    r = CliRunner().invoke(app, ["circuit", "tiny-llama", "--task", str(task_file), "--method", "eap", "--top-n", "10",
                                 "--compare-patching", "--overlap-task", str(task_file), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["vs_patching"]["eap"]["spearman"] > 0.5 and doc["vs_patching"]["eap-ig"]["speedup"] > 0 and doc["overlap"]["heads_jaccard"] == 1.0
    assert 0 < doc["faithfulness"]["n_edges"] <= 10
    r = CliRunner().invoke(app, ["circuit", "tiny-llama", "--task", str(task_file), "--out", str(out)])
    assert "pass --force" in str(r.exception)
