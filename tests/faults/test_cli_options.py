"""Fault class 5 (issue 24): options that do nothing in the given combination, inputs that are
empty, endless, undecodable or not quite numbers, and errors that used to surface as "unexpected"
or as hangs. Each is one line on stderr, exit status 2, before any model loads where no model is
needed, and nothing is written."""

from __future__ import annotations

import json
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.test_cli_errors import one_line


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the refusal must come before the model loads."""
    import lens

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(lens, "load", refuse)


@pytest.fixture
def inputs(tmp_path, task_file):
    """Paths the cases name: a task file, empty and blank prompt files, an image and a WAV file."""
    from PIL import Image

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "scores.json").write_text("{}")
    return {"TASK": str(task_file), "EMPTY": str(tmp_path / "empty.txt"), "BLANK": str(tmp_path / "blank.txt"),
            "PNG": str(tmp_path / "ok.png"), "WAV": str(tmp_path / "a.wav"), "SCORES": str(tmp_path / "scores.json")}


NO_MODEL_CASES = [
    # options that do nothing in this combination
    (["ablate", "tiny-llama", "--task", "TASK", "--heads", "L0H0", "--template", "3"],
     "--template applies to the ioi task only: the task file"),
    (["ablate", "tiny-llama", "--task", "colored-objects", "--heads", "L0H0", "--template", "1"],
     "--template applies to the ioi task only: the task 'colored-objects' has no templates"),
    (["ablate", "tiny-llama", "--task", "ioi", "--heads", "L0H0", "--strict"],
     "--strict applies to a .jsonl task file"),
    (["ablate", "tiny-llama", "--task", "TASK", "--heads", "L0H0", "--seeds", "0,1"],
     "--seeds '0,1' names 2 seeds, but only --compare-random uses more than one"),
    (["ablate", "tiny-llama", "--task", "TASK", "--mlps", "0", "--compare-random", "3"],
     "--compare-random draws random head sets the size of --heads"),
    (["heads", "calibration", "tiny-llama", "--task", "TASK", "--templates", "0-5"],
     "--templates applies to the ioi task only: the task file"),
    (["heads", "calibration", "tiny-llama", "--task", "greater-than", "--templates", "0"],
     "--templates applies to the ioi task only: the task 'greater-than'"),
    (["heads", "calibration", "tiny-llama", "--heads", "all", "--top-k", "3"],
     "--top-k does nothing here: it applies to the head search (--heads search), not --heads 'all'"),
    (["heads", "calibration", "tiny-llama", "--heads", "L0H0", "--search-prompts", "3"],
     "--search-prompts does nothing here"),
    (["circuit", "tiny-llama", "--task", "TASK", "--edge-sizes", "5,10"],
     "--edge-sizes does nothing here: it sets the sizes of the faithfulness curve: add --curve"),
    (["circuit", "tiny-llama", "--task", "TASK", "--head-sizes", "2,4"], "--head-sizes does nothing here"),
    (["circuit", "tiny-llama", "--task", "TASK", "--method", "patching", "--threshold", "0.1"],
     "--threshold does nothing here: it selects edges by score"),
    (["circuit", "tiny-llama", "--task", "TASK", "--unit", "heads", "--threshold", "0.1"],
     "--threshold does nothing here"),
    (["circuit", "tiny-llama", "--task", "TASK", "--method", "eap", "--ig-steps", "3"],
     "--ig-steps does nothing here: it applies to --method eap-ig"),
    (["circuit", "tiny-llama", "--task", "TASK", "--method", "patching", "--unit", "heads"],
     "--unit does nothing here"),
    (["circuit", "tiny-llama", "--task", "TASK", "--method", "sae", "--unit", "heads"],
     "--unit does nothing here: it applies to eap and eap-ig"),
    (["circuit", "tiny-llama", "--task", "TASK", "--method", "eap", "--sae-examples", "5"],
     "--sae-examples does nothing here: it applies to --method sae"),
    (["circuit", "tiny-llama", "--task", "TASK", "--patching-scores", "SCORES"],
     "--patching-scores does nothing here: it replaces the patching loop of --compare-patching"),
    (["circuit", "tiny-llama", "--task", "TASK", "--random-circuits", "5"],
     "--random-circuits does nothing here: it is the baseline of --overlap-task"),
    (["circuit", "tiny-llama", "--task", "TASK", "--method", "eap", "--no-patch-mlps"],
     "--patch-mlps/--no-patch-mlps does nothing here"),
    (["circuit", "tiny-llama", "--task", "TASK", "--eval-prompts", "4"],
     "--eval-prompts draws other prompts with seed + 1, which the task file"),
    (["circuit", "tiny-llama", "--task", "TASK", "--template", "2"], "--template applies to the ioi task only"),
    (["heads", "retrieval", "tiny-llama", "--ablate-seeds", "0,1"],
     "--ablate-seeds does nothing here: it seeds the random-head baseline of --ablate"),
    (["heads", "streaming", "tiny-llama", "--no-gates", "--gate-steps", "3"],
     "--gate-steps does nothing here: it sets the DuoAttention gates, which --no-gates turns off"),
    (["heads", "streaming", "tiny-llama", "--no-gates", "--gate-objective", "prefill"], "--gate-objective does nothing"),
    (["capture", "tiny-dinov2", "--image", "PNG", "--chat"], "--chat does nothing here"),
    (["capture", "tiny-llama", "--prompt", "hi", "--sites", "resid_post,mlp_out", "--heads", "0"],
     "--heads does nothing here: it keeps heads of the per-head sites (pattern, q, k, v, z), and --sites "
     "'resid_post,mlp_out' has none"),
    (["generate", "tiny-llama", "--prompt", "hi", "--audio", "WAV"], "give --prompt TEXT or --audio FILE, not both"),
    (["generate", "tiny-whisper", "--audio", "WAV"], "cannot decode a.wav"),  # a bad audio file: refused before the model loads
    (["heads", "cross-attention", "tiny-whisper", "--audio", "WAV"], "cannot decode a.wav"),
    # empty, endless and undecodable inputs
    (["heads", "sinks", "tiny-llama", "--file", "EMPTY"], "--file EMPTY holds no prompt: every line is empty"),
    (["capture", "tiny-llama", "--file", "BLANK"], "--file BLANK holds no prompt"),
    (["stats", "tiny-llama", "--file", "EMPTY"], "--file EMPTY is empty"),
    (["heads", "sinks", "tiny-llama", "--prompt", "  "], "--prompt is empty"),
    (["capture", "tiny-llama", "--prompt", ""], "--prompt is empty"),
    (["capture", "tiny-llama", "--file", "/dev/zero"], "--file /dev/zero is larger than 32 MiB"),
    (["stats", "tiny-llama", "--file", "/dev/zero"], "--file /dev/zero is larger than 32 MiB"),
    (["capture", "tiny-llama", "--prompt", "caf\udce9"], "--prompt is not valid UTF-8 text (byte 0xe9 at character 3)"),
    (["heads", "sinks", "tiny-llama", "--prompt", "\udcff"], "--prompt is not valid UTF-8 text (byte 0xff"),
    (["stats", "tiny-llama", "--prompt", "x\udc80y"], "--prompt is not valid UTF-8 text (byte 0x80 at character 1)"),
    (["generate", "tiny-llama", "--prompt", "\udcc3("], "--prompt is not valid UTF-8 text"),
    (["heads", "vision-aware", "tiny-vlm", "--scenes", "1", "--question", "x"], "--question goes with --image"),
    # numbers parsed strictly: never rounded or read as something else
    (["heads", "retrieval", "tiny-llama", "--lengths", "300.5"], "--lengths '300.5' is not a list of integers"),
    (["heads", "retrieval", "tiny-llama", "--lengths", "1e3"], "--lengths '1e3' is not a list of integers"),
    (["heads", "retrieval", "tiny-llama", "--lengths", ""], "--lengths is empty"),
    (["heads", "retrieval", "tiny-llama", "--depths", "nan"], "--depths 'nan' is not a list of numbers"),
    (["heads", "retrieval", "tiny-llama", "--depths", "0_5"], "--depths '0_5' is not a list of numbers"),
    (["heads", "retrieval", "tiny-llama", "--seeds", "1_0"], "--seeds '1_0' is not a list of integers"),
    (["heads", "retrieval", "tiny-llama", "--ablate", "2.5"], "--ablate '2.5' is not a list of integers"),
    (["scan", "tiny-llama", "--lengths", "300.5"], "--lengths '300.5' is not a list of integers"),
    (["capture", "tiny-llama", "--prompt", "hi", "--layers", "+1"], "--layers '+1' is not a list of integers"),
    (["capture", "tiny-llama", "--prompt", "hi", "--heads", "\u0663"], "is not a list of integers"),  # Arabic-Indic 3
    (["ablate", "tiny-llama", "--task", "TASK", "--heads", "L0H0", "--seeds", "0.0"], "--seeds '0.0' is not a list"),
    # devices this machine does not have, and cluster addresses nothing answers at
    (["capture", "tiny-llama", "--prompt", "hi", "--device-map", "auto", "--max-memory", "999=1GiB"],
     "--max-memory names GPU 999, but this machine has"),
    (["ablate", "tiny-llama", "--task", "TASK", "--sweep", "heads", "--ray", "nohost"],
     "--ray 'nohost' is not 'auto' or a cluster address like ray://head:10001"),
]


def _fill(args: list[str], paths: dict[str, str]) -> list[str]:
    return [paths.get(a, a) for a in args]


@pytest.mark.parametrize(("args", "message"), NO_MODEL_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_refused_in_one_line_before_the_model_loads(cli, tmp_path, inputs, no_model, args, message):
    if "--ray" in args:
        pytest.importorskip("ray")
    out = tmp_path / "out"
    extra = ["--out", out] if args[0] != "generate" else []
    code, stdout, err = cli(*_fill(args, inputs), *extra)
    line = one_line(code, err)
    for name, path in inputs.items():  # the file names in the expected messages, filled in
        message = message.replace(f" {name} ", f" {path} ")
    assert message in line, line
    assert stdout == "" and not out.exists()


def test_max_memory_for_mps_on_a_machine_without_it(cli, tmp_path, no_model):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    line = one_line(*cli("capture", "tiny-llama", "--prompt", "hi", "--device-map", "auto", "--max-memory",
                         "mps=1GiB", "--out", tmp_path / "o")[::2])
    assert "--max-memory names mps, but this machine has no Apple GPU" in line
    assert not (tmp_path / "o").exists()


def test_library_task_file_with_a_template_names_the_parameter(task_file):
    from attnlens.analyses.circuits.tasks import TaskError, load_task

    with pytest.raises(TaskError, match=f"^template applies to the ioi task only: the task file {task_file} has"):
        load_task(str(task_file), template=2)
    with pytest.raises(TaskError, match="^templates applies to the ioi task only"):
        load_task(str(task_file), templates=[0, 1])


def test_library_max_memory_for_a_missing_gpu_names_the_parameter():
    import lens
    from attnlens.formats.errors import SelectionError

    with pytest.raises(SelectionError, match="^`max_memory` names GPU 999, but this machine has"):
        lens.load("tiny-llama", device_map="auto", max_memory={999: 2**30})


def test_ray_address_where_nothing_listens_fails_in_seconds(cli, tmp_path, task_file, no_model):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code, _, err = cli("ablate", "tiny-llama", "--task", task_file, "--sweep", "heads", "--ray", f"127.0.0.1:{port}",
                       "--out", tmp_path / "o")
    line = one_line(code, err)
    assert f"--ray 127.0.0.1:{port}: cannot connect to a Ray cluster: nothing accepts connections" in line
    assert time.perf_counter() - t0 < 30  # Ray's own retries took minutes
    assert not (tmp_path / "o").exists()


def test_retrieval_ablation_sizes_are_checked_before_the_needle_trials(cli, tmp_path, monkeypatch):
    import attnlens.pipelines.heads

    def no_trials(*args, **kwargs):
        raise AssertionError("the needle trials ran before --ablate was checked")

    monkeypatch.setattr(attnlens.pipelines.heads, "niah_trials", no_trials)
    code, _, err = cli("heads", "retrieval", "tiny-llama", "--no-chat", "--lengths", "64", "--depths", "0.5",
                       "--ablate", "5,200", "--out", tmp_path / "o")
    line = one_line(code, err)
    assert "--ablate 200 is out of range: tiny-llama has 16 heads, so k can be 1-8" in line
    assert not (tmp_path / "o").exists()


def test_streaming_refuses_a_retrieval_result_of_another_model(cli, tmp_path):
    import numpy as np

    from attnlens.formats.head_scores import HeadScores
    from attnlens.formats.provenance import Provenance

    path = HeadScores("retrieval", "retrieval_score", np.zeros((2, 3)), Provenance(model="other-model")).save(tmp_path)
    code, _, err = cli("heads", "streaming", "tiny-llama", "--retrieval", path, "--no-gates", "--out", tmp_path / "o")
    line = one_line(code, err)
    assert f"--retrieval {path} holds scores of shape [2, 3] (from 'other-model'), but tiny-llama has 4 layers x 4 " \
           "heads" in line
    assert not (tmp_path / "o").exists()


# ---- resumes keep a digest of every input ------------------------------------------------------
def _interrupt_after_one_chunk(monkeypatch):
    import attnlens.analyses.circuits as circuits

    real, calls = circuits.score_sets, {"n": 0}

    def flaky(ctx, sets, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(ctx, sets, **kw)

    monkeypatch.setattr(circuits, "score_sets", flaky)
    return real


def test_sweep_resumed_over_an_edited_task_file_is_refused(cli, tmp_path, task_file, monkeypatch):
    task = tmp_path / "task.jsonl"
    original = task_file.read_text()
    task.write_text(original)
    out = tmp_path / "sweep"
    args = ["ablate", "tiny-llama", "--task", task, "--sweep", "heads", "--max-rows", "12", "--out", out]
    real = _interrupt_after_one_chunk(monkeypatch)
    assert cli(*args)[0] == 130
    log_before = (out / "sweep.jsonl").read_bytes()
    assert len(log_before.splitlines()) == 3  # one chunk of 12 // 4 heads
    import attnlens.analyses.circuits as circuits

    monkeypatch.setattr(circuits, "score_sets", real)
    rows = [json.loads(line) for line in original.splitlines()]
    rows[0]["prompt"] = rows[0]["prompt"].replace("a", "c")  # same number of lines, same lengths: one prompt edited
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = one_line(*cli(*args)[::2])
    assert f"{out} holds a sweep with other settings: pass --force" in line
    assert "changed: the encoded prompts (inputs_sha256), the task file's contents (task_sha256)" in line
    assert (out / "sweep.jsonl").read_bytes() == log_before  # nothing added to the old log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep", "task.jsonl"]  # no half-made sibling
    task.write_text(original)  # the file as it was: the sweep resumes
    code, stdout, err = cli(*args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["done_before_this_run"] == 3 and summary["computed_this_run"] == 13


def test_library_sweep_refuses_other_prompts_under_the_same_settings(tiny_lm, tmp_path, monkeypatch):
    from attnlens.analyses.circuits.ablation import Method
    from attnlens.analyses.circuits.metrics import Metric
    from attnlens.analyses.circuits.tasks import encode_task, load_task
    from attnlens.formats.errors import OutputExistsError
    from attnlens.formats.sweep import open_sweep
    from attnlens.pipelines import sweeps

    def enc(first: str):
        path = tmp_path / f"{first}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"{first}b{c} {first}x", "answer": "q",
                                            "corrupted": f"mb{c} {first}x", "distractor": "z"}) + "\n"
                                    for c in "hgfe"))
        return encode_task(load_task(str(path), tiny_lm.tokenizer), tiny_lm.tokenizer)

    settings = {"model": "tiny-llama", "task": "pairs"}  # the caller's settings say nothing of the prompts
    kw = dict(settings=settings, method=Method.MEAN, metric=Metric.LOGIT_DIFF, max_rows=8)
    _interrupt_after_one_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        sweeps.sweep(tiny_lm, enc("a"), sweeps.SweepKind.HEADS, out=tmp_path / "s", **kw)
    with pytest.raises(OutputExistsError, match=r"\(changed: the encoded prompts \(inputs_sha256\)\)$"):
        sweeps.sweep(tiny_lm, enc("d"), sweeps.SweepKind.HEADS, out=tmp_path / "s", **kw)
    # a sweep stored before the digests were kept is not resumed blindly either
    with open_sweep(tmp_path / "old", settings):
        pass
    with pytest.raises(OutputExistsError, match=r"inputs_sha256 \(not recorded by the stored sweep\)"):
        sweeps.sweep(tiny_lm, enc("a"), sweeps.SweepKind.HEADS, out=tmp_path / "old", **kw)


def test_task_file_nested_too_deeply_is_one_line_before_the_model_loads(cli, tmp_path, no_model):
    task = tmp_path / "deep.jsonl"
    task.write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    line = one_line(*cli("ablate", "tiny-llama", "--task", task, "--heads", "L0H0", "--strict")[::2])
    assert "deep.jsonl:1: nested deeper than 32 levels, expected a flat JSON object" in line
    line = one_line(*cli("circuit", "tiny-llama", "--task", task, "--out", tmp_path / "o")[::2])
    assert f"task file {task} has no usable lines: deep.jsonl:1: nested deeper than 32 levels" in line
    assert not (tmp_path / "o").exists()


def test_a_deeply_nested_line_in_a_sweep_log_is_skipped_not_fatal(tmp_path):
    from attnlens.formats.sweep import open_sweep

    settings = {"model": "m", "task": "t"}
    with open_sweep(tmp_path / "s", settings) as log:
        log.append([{"item": "L0H0", "effect": 1.0}])
    with open(tmp_path / "s" / "sweep.jsonl", "a") as f:
        f.write("[" * 50_000 + "]" * 50_000 + "\n")
        f.write('{"item": "L0H1", "effect": 2.0}\n')
    with open_sweep(tmp_path / "s", settings) as again:
        assert again.resumed and set(again.done) == {"L0H0", "L0H1"}


def test_settings_diff_names_each_changed_setting():
    from attnlens.formats.sweep import settings_diff

    assert settings_diff({"method": "mean", "n": 4}, {"method": "zero", "n": 4}) == "method 'mean' -> 'zero'"
    many = settings_diff({f"k{i}": i for i in range(6)}, {f"k{i}": -i - 1 for i in range(6)})
    assert many.startswith("k0 0 -> -1, k1 1 -> -2") and many.endswith("and 2 more")


# ---- the list parsers, fuzzed: a value is either refused in one line or read exactly -------------
@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 10**6), min_size=1, max_size=5).map(
    lambda xs: ",".join(map(str, xs))), st.floats(allow_nan=True).map(str)))
def test_int_list_reads_exactly_or_refuses(text):
    from attnlens.formats.errors import SelectionError
    from lens.cli._common import int_list

    try:
        values = int_list(text, "lengths", lo=0, hi=10**6, max_count=64)
    except SelectionError as err:
        assert str(err).startswith("--lengths") and "\n" not in str(err)
        return
    if values is None:
        assert text.strip().lower() in ("", "all")
        return
    expanded = []
    for part in text.split(","):  # read back by hand (lo=0: no negative value gets here): N or LOW-HIGH, ASCII digits
        a, dash, b = part.strip().partition("-")
        assert all(x.isascii() and x.isdigit() for x in (a, *([b] if dash else []))), text
        expanded.extend(range(int(a), int(b) + 1) if dash else [int(a)])
    assert values == expanded


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True).map(str),
                 st.lists(st.floats(0, 1), min_size=1, max_size=4).map(lambda xs: ",".join(map(repr, xs)))))
def test_float_list_reads_exactly_or_refuses(text):
    from attnlens.formats.errors import SelectionError
    from lens.cli._common import float_list

    try:
        values = float_list(text, "depths", lo=0, hi=1, max_count=64)
    except SelectionError as err:
        assert str(err).startswith("--depths") and "\n" not in str(err)
        return
    assert values == [float(x) for x in text.split(",")] and all(0 <= v <= 1 for v in values)
