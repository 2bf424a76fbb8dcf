"""`lens heads ...` and `lens scan` on the tiny model: files written, one-line errors."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from attnlens.analyses import load_results
from lens.cli import app

runner = CliRunner()


def test_heads_taxonomy_writes_results(tmp_path):
    out = tmp_path / "tax"
    r = runner.invoke(app, ["heads", "taxonomy", "tiny-llama", "--repeat-len", "8", "--batch", "2", "--out", str(out),
                            "--json"])
    assert r.exit_code == 0, r.output
    names = {x["name"] for x in json.loads(r.stdout)["results"]}
    assert {"taxonomy.induction", "taxonomy.positional", "taxonomy.sink", "taxonomy.head_type"} <= names
    results, problems = load_results(out)
    assert len(results) == 8 and not problems
    types = next(r for r in results if r.metric == "head_type")
    assert types.params["type_names"][-1] == "other" and types.params["shuffled"] is True


def test_heads_sinks_refuses_existing_out(cli, tmp_path):
    (tmp_path / "x").write_text("x")
    code, _, err = cli("heads", "sinks", "tiny-llama", "--prompt", "hello there", "--out", tmp_path)
    assert code == 2 and "already exists" in err and (tmp_path / "x").read_text() == "x"


def test_chat_without_template_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-c", "from lens.cli import main; main()", "heads", "retrieval", "tiny-llama",
           "--out", str(tmp_path / "r")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "no chat template" in p.stderr and "Traceback" not in p.stderr


def test_bad_source_and_depths(cli, tmp_path):
    code, _, err = cli("heads", "retrieval", "tiny-llama", "--source", "magic", "--out", tmp_path / "a")
    assert code == 2 and "'magic' is not one of 'pattern', 'kernel'" in err
    code, _, err = cli("heads", "retrieval", "tiny-llama", "--no-chat", "--depths", "0,2", "--out", tmp_path / "b")
    assert code == 2 and "--depths: 2.0 is outside [0, 1]" in err


def test_scan_runs_everything_on_tiny(tmp_path):
    r = runner.invoke(app, ["scan", "tiny-llama", "--no-chat", "--out", str(tmp_path / "s"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    names = {x["name"] for x in doc["results"]}
    assert {"summary.sink_mass", "sinks.hidden_sinks", "taxonomy.induction", "streaming.streaming_mass"} <= names
    assert any("retrieval skipped: 0 of" in n for n in doc["notes"])  # a random model never answers
