"""The `lens` CLI end to end on the tiny model: outputs, and one-line errors for bad input."""

import json

import pytest


def test_models_json_lists_the_zoo(cli):
    code, out, _ = cli("models", "--json")
    assert code == 0
    names = [m["name"] for m in json.loads(out)]
    assert "smollm2-135m" in names and "tiny-llama" in names


def test_capture_then_info(cli, tmp_path):
    out_dir = tmp_path / "caps"
    code, out, _ = cli("capture", "tiny-llama", "--prompt", "hello there", "--prompt", "second one",
                       "--sites", "pattern,z", "--layers", "1-2", "--heads", "0,3", "--out", str(out_dir), "--json")
    assert code == 0
    written = json.loads(out)["captures"]
    assert len(written) == 2 and written[0]["tokens"] == 12
    code, out, _ = cli("info", str(out_dir / "000"), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["meta"]["layers"] == [1, 2] and info["meta"]["heads"] == [0, 3]
    shapes = {(t["site"], t["layer"]): t["shape"] for t in info["tensors"]}
    assert shapes[("pattern", 2)] == [1, 2, 12, 12] and shapes[("z", 1)] == [1, 2, 12, 16]


def test_capture_reads_a_prompt_file(cli, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n\ntwo\n")
    code, out, _ = cli("capture", "tiny-llama", "--file", str(prompts), "--layers", "0", "--out", str(tmp_path / "o"), "--json")
    assert code == 0 and len(json.loads(out)["captures"]) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["capture", "gpt-17", "--prompt", "hi"], "unknown model 'gpt-17'"),
    (["capture", "tiny-llama", "--prompt", "hi", "--layers", "4"], "layer 4 is out of range: tiny-llama has layers 0-3"),
    (["capture", "tiny-llama", "--prompt", "hi", "--heads", "4"], "head 4 is out of range: tiny-llama has heads 0-3"),
    (["capture", "tiny-llama", "--prompt", ""], "prompt is empty"),
    (["capture", "tiny-llama", "--prompt", "x" * 600], "prompt is 601 tokens: longer than tiny-llama's context of 512"),
    (["capture", "tiny-llama", "--prompt", "x" * 400, "--budget-gb", "0.001"], "over the budget of 976.6 KiB"),
    (["capture", "tiny-llama", "--prompt", "hi", "--sites", "pattern,attn"], "unknown site 'attn'"),
    (["capture", "tiny-llama", "--prompt", "hi", "--backend", "jax"], "'jax' is not one of 'torch', 'transformer_lens', 'nnsight'"),
    (["capture", "tiny-llama", "--prompt", "hi", "--layers", "two"], "--layers 'two' is not a list of integers"),
    (["capture", "tiny-llama"], "no prompt given"),
])
def test_bad_input_gets_one_line(cli, tmp_path, args, message):
    code, _, err = cli(*args, "--out", str(tmp_path / "never"))
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err and err.strip().startswith("error:")
    assert not (tmp_path / "never").exists()  # nothing written for bad input


def test_existing_output_needs_force(cli, tmp_path):
    out_dir = tmp_path / "caps"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    code, _, err = cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", str(out_dir))
    assert code == 2 and "already exists and is not empty: pass --force" in " ".join(err.split())
    assert (out_dir / "keep.txt").read_text() == "precious"
    code, _, err = cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", str(out_dir), "--force")
    assert code == 2 and "holds files lens did not write" in err  # --force replaces lens output only
    (out_dir / "keep.txt").unlink()
    code, _, err = cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", str(out_dir))
    assert code == 0 and (out_dir / "000" / "capture.json").exists()
    code, _, err = cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", str(out_dir), "--force")
    assert code == 0 and (out_dir / "000" / "capture.json").exists()


def test_info_on_a_corrupt_capture(cli, tmp_path):
    cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", str(tmp_path / "c"))
    tensors = tmp_path / "c" / "000" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    code, _, err = cli("info", str(tmp_path / "c" / "000"))
    assert code == 2 and "tensors.safetensors is truncated" in err and "Traceback" not in err


def test_every_command_has_help_with_an_example(cli):
    for command in ("models", "generate", "capture", "info", "scan"):
        code, out, _ = cli(command, "--help")
        assert code == 0 and "Example: lens " in " ".join(out.split()), command


def _callbacks(app):
    for info in app.registered_commands:
        yield info.callback
    for group in app.registered_groups:
        yield from _callbacks(group.typer_instance)


def test_every_command_docstring_dedents_so_its_help_keeps_its_paragraphs():
    # A line at column 0 inside a docstring (a literal newline in an example, say) stops the dedent, and --help then
    # prints every following line indented under the first.
    from lens.cli import app

    callbacks = [cb for cb in _callbacks(app) if cb.__doc__]
    assert len(callbacks) > 10
    for cb in callbacks:
        later = cb.__doc__.split("\n")[1:]
        flush = [line for line in later if line.strip() and not line.startswith(" ")]
        assert not flush, f"{cb.__name__}: {flush[0]!r}"


def test_stats_table_has_a_column_per_span_averaged_over_the_queries_that_see_it(cli, tmp_path):
    from attnlens.formats import StatsFile

    args = ("stats", "tiny-llama", "--prompt", "The cat sat on the mat and the dog sat on the log.", "--span", "2:6",
            "--span", "30:40")
    code, out, err = cli(*args, "--out", tmp_path / "a")
    assert code == 0 and "span 2:6" in out + err and "30:40" in out + err
    code, out, _ = cli(*args, "--out", tmp_path / "b", "--json")
    layers = json.loads(out)["layers"]
    run = StatsFile.load(tmp_path / "b")
    span = run.read(1, "span_mass")[..., 1].astype("float64")  # [batch, head, q]
    assert layers[1]["spans"]["30:40"] == pytest.approx(span[:, :, 30:].mean(), rel=1e-5)
    assert layers[1]["spans"]["30:40"] > span.mean()  # queries before 30 would dilute it
