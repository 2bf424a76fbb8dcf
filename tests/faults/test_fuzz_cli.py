"""Property-based fuzzing of the CLI's option parsers through the real entry point: for any text in any
option, the CLI either runs, or prints one line ``error: ...`` with exit status 2, no traceback, and
writes nothing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# what users (and attackers) type: digits and range syntax, markup, paths, unicode, control characters
PIECES = st.sampled_from(["0", "1", "3", "-", ",", ":", ".", "e", "nan", "inf", "-1", "99999999999", "[/]",
                          "[bold]", "*", "L", "H", "all", " ", "\x00", "é", "😀", "/", "..", "0x10", "1e3", "\n"])
TEXT = st.one_of(st.lists(PIECES, min_size=0, max_size=8).map("".join), st.text(max_size=12))
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)


def check(cli, args, out: Path) -> None:
    code, _, err = cli(*args)
    assert code in (0, 2), (args, code, err)
    assert "Traceback" not in err, (args, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert not out.exists(), args


def _run(cli, make_args):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        out = tmp / "out"
        check(cli, make_args(out), out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@FUZZ
@given(option=st.sampled_from(["--layers", "--heads", "--sites", "--dtype", "--budget-gb", "--backend"]), value=TEXT)
def test_capture_options(cli, option, value):
    _run(cli, lambda out: ["capture", "tiny-llama", "--prompt", "fuzzing the parser", option, value, "--out", out])


@FUZZ
@given(value=TEXT)
def test_capture_prompts(cli, value):
    _run(cli, lambda out: ["capture", "tiny-llama", "--prompt", value, "--layers", "0", "--out", out])


@FUZZ
@given(option=st.sampled_from(["--span", "--layers", "--topk", "--window", "--sink-tokens", "--backend"]), value=TEXT)
def test_stats_options(cli, option, value):
    _run(cli, lambda out: ["stats", "tiny-llama", "--prompt", "one two three four five", option, value, "--out", out])


@FUZZ
@given(option=st.sampled_from(["--lengths", "--depths", "--seeds", "--needles", "--source", "--ablate"]), value=TEXT)
def test_retrieval_options(cli, option, value):
    base = {"--lengths": "64", "--depths": "0.5", "--seeds": "0"}
    base.pop(option, None)
    fixed = [x for k, v in base.items() for x in (k, v)]
    _run(cli, lambda out: ["heads", "retrieval", "tiny-llama", "--no-chat", "--max-new-tokens", "1", *fixed, option,
                           value, "--out", out])


@FUZZ
@given(option=st.sampled_from(["--heads", "--mlps", "--method", "--metric", "--sweep", "--seeds", "--task",
                               "--compare-random", "--template"]), value=TEXT)
def test_ablate_options(cli, task_file, option, value):
    base = ["--task", str(task_file)] if option != "--task" else []
    extra = ["--heads", "L0H0"] if option not in ("--heads", "--mlps", "--sweep") else []
    _run(cli, lambda out: ["ablate", "tiny-llama", *base, *extra, "-n", "4", option, value, "--out", out])


@FUZZ
@given(option=st.sampled_from(["--top-n", "--threshold", "--method", "--overlap-task", "--ig-steps", "--metric"]),
       value=TEXT)
def test_circuit_options(cli, task_file, option, value):
    _run(cli, lambda out: ["circuit", "tiny-llama", "--task", str(task_file), "-n", "4", "--method", "eap", option,
                           value, "--out", out])


@FUZZ
@given(command=st.sampled_from(["capture", "stats", "generate", "scan"]), model=TEXT)
def test_model_names(cli, command, model):
    def args(out):
        rest = {"capture": ["--prompt", "hi"], "stats": ["--prompt", "hi"], "generate": ["--prompt", "hi"],
                "scan": []}[command]
        return [command, model, *rest] + (["--out", out] if command != "generate" else []) + \
            (["--captures", "0", "--lengths", "64", "--depths", "0.5", "--no-chat"] if command == "scan" else [])
    _run(cli, args)
