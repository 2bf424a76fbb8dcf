"""Fault class 5: bad input anywhere in the CLI is one line on stderr, exit status 2, no traceback,
nothing written; markup in user text is printed, never interpreted."""

from __future__ import annotations

import pytest


def one_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("capturing", "stats over"))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


CASES = [
    # markup in user text (Rich would crash on "[/]" and swallow "[bold]")
    (["capture", "x[/]y", "--prompt", "hi"], "model 'x[/]y' is neither a zoo name"),
    (["capture", "[bold]x", "--prompt", "hi"], "unknown model '[bold]x'"),
    (["capture", "tiny-llama", "--prompt", "hi", "--sites", "[bold]x"], "unknown site '[bold]x'"),
    (["capture", "tiny-llama", "--prompt", "hi", "--layers", "[/]"], "--layers '[/]' is not a list of integers"),
    # bounded before expanded
    (["capture", "tiny-llama", "--prompt", "hi", "--layers", "0-10000000"], "--layers: 10000000 is out of range"),
    (["capture", "tiny-llama", "--prompt", "hi", "--layers", "0-99999999999"], "out of range: valid values are 0-100000"),
    (["heads", "retrieval", "tiny-llama", "--seeds", "0-30000000"], "--seeds: 30000000 is out of range"),
    (["capture", "tiny-llama", "--prompt", "hi", "--layers", "5-2"], "range 5-2 is empty"),
    # numbers that are not numbers
    (["capture", "tiny-llama", "--prompt", "hi", "--budget-gb", "nan"], "--budget-gb must be a positive number"),
    (["capture", "tiny-llama", "--prompt", "hi", "--budget-gb", "inf"], "--budget-gb must be a positive number"),
    (["capture", "tiny-llama", "--prompt", "hi", "--budget-gb", "-1"], "--budget-gb must be a positive number"),
    (["dashboard", ".", "--port", "-1"], "--port"),
    (["dashboard", ".", "--port", "70000"], "--port"),
    (["stats", "tiny-llama", "--prompt", "one two three", "--span", "1.5:3"], "--span '1.5:3' is not START:END"),
    (["stats", "tiny-llama", "--prompt", "one two three", "--span", "2:999"], "--span 2:999 is out of range"),
    (["stats", "tiny-llama", "--prompt", "one two three", "--topk", "9"], "--topk"),
    # models that are not models
    (["capture", "", "--prompt", "hi"], "model name is empty"),
    (["capture", "nobody/no-such-model-xyz", "--prompt", "hi"], "cannot load 'nobody/no-such-model-xyz'"),
    (["capture", "a b c", "--prompt", "hi"], "unknown model 'a b c'"),
    # inputs a model cannot take
    (["capture", "tiny-dinov2", "--prompt", "a text for a vision model"], "tiny-dinov2 is a vision model: give an image"),
    (["generate", "tiny-dinov2", "--prompt", "hello"], "without a tokenizer"),
    (["stats", "tiny-llama", "--prompt", "hello", "--backend", "triton"], "triton"),  # on CPU: needs CUDA; under the interpreter (tests): d_head 16 unsupported
    # options that contradict each other or do nothing
    (["capture", "tiny-llama", "--prompt", "hi", "--backend", "nnsight", "--sites", "q"], "nnsight backend cannot capture q"),
    (["scan", "tiny-llama", "--ablate=-3"], "--ablate: -3 is out of range"),
    (["heads", "streaming", "tiny-llama", "--length", "64", "--sink", "40", "--recent", "40"], "must be less than --length"),
    # direct logit attribution: positions and targets the prompt or tokenizer does not have
    (["heads", "dla", "tiny-llama", "--prompt", "abc", "--pos", "9"], "position 9 is out of range: the prompt has positions 0-3"),
    (["heads", "dla", "tiny-llama", "--prompt", "abc", "--target", "ab"], "target 'ab' is 2 tokens"),
    (["heads", "dla", "tiny-llama", "--prompt", "abc", "--top", "500"], "--top"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, args, message):
    out = tmp_path / "out"
    extra = ["--out", out] if args[0] not in ("dashboard", "generate") else []
    code, _, err = cli(*args, *extra)
    line = one_line(code, err)
    assert message in line, line
    assert not out.exists()


def test_files_that_are_not_utf8(cli, tmp_path, task_file):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert "is not UTF-8 text" in one_line(*cli("capture", "tiny-llama", "--file", bad, "--out", tmp_path / "o")[::2])
    assert "is not UTF-8 text" in one_line(*cli("stats", "tiny-llama", "--file", bad, "--out", tmp_path / "o")[::2])
    bad_task = tmp_path / "t.jsonl"
    bad_task.write_bytes(b"\xff\xfe{}\n")
    line = one_line(*cli("ablate", "tiny-llama", "--task", bad_task, "--heads", "L0H0")[::2])
    assert "task file" in line and "is not UTF-8 text" in line
    assert not (tmp_path / "o").exists()


def test_undecodable_images_and_images_for_text_models(cli, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really")
    assert "cannot be decoded" in one_line(*cli("capture", "tiny-dinov2", "--image", junk, "--out", tmp_path / "o")[::2])
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    line = one_line(*cli("capture", "tiny-llama", "--image", tmp_path / "ok.png", "--out", tmp_path / "o")[::2])
    assert "--image needs a vision model" in line
    assert not (tmp_path / "o").exists()


def test_unexpected_errors_are_one_line_with_a_debug_hint(cli, monkeypatch, tmp_path):
    import lens.cli.models_cmds as m

    def boom(*a, **k):
        raise RuntimeError("something broke [/] inside")

    monkeypatch.setattr("lens.zoo.list_models", boom)
    code, _, err = cli("models")
    assert code == 1 and err.count("\n") == 1 and "rerun with --debug" in err and "[/]" in err
    with pytest.raises(RuntimeError):
        cli("--debug", "models")
    assert m  # the module is imported (the patched name is looked up at call time)


def test_library_errors_are_project_errors():
    """Every error a user can cause through the Python API is an AttnlensError (the CLI's one boundary)."""
    import numpy as np
    import torch

    import lens
    from attnlens.kernels import StatsSpec, attention_with_stats

    lm = lens.load("tiny-llama")
    q = torch.randn(1, 2, 4, 8)
    checks = [
        lambda: attention_with_stats(q, q, q, causal="no"),
        lambda: attention_with_stats(q.clone().fill_(float("nan")), q, q),
        lambda: StatsSpec(spans=((1.5, 3),)),
        lambda: lens.run(lm, torch.tensor([[0, 5, 99999]])),
        lambda: lens.run(lm, np.zeros((8, 8, 3), dtype=np.uint8)),
        lambda: lens.run(lens.load("tiny-dinov2"), torch.full((1, 3, 32, 32), float("nan"))),
        lambda: lens.run(lm, "hi", layers=[7]),
        lambda: lens.load(""),
    ]
    for check in checks:
        with pytest.raises(lens.AttnlensError):
            check()
