import pytest
import torch

import lens
from lens.zoo import _cache


def test_tiny_model_facts_describe_gqa(tiny_lm):
    f = tiny_lm.facts
    assert (f.n_layers, f.n_heads, f.n_kv_heads, f.d_head) == (4, 4, 2, 16)
    assert [f.kv_head_of(h) for h in range(4)] == [0, 0, 1, 1]
    assert f.query_heads_of(1) == [2, 3]


def test_tiny_model_is_deterministic(tiny_lm):
    again = lens.load("tiny-llama")
    ids = tiny_lm.encode("same weights every time")
    with torch.no_grad():
        assert torch.equal(tiny_lm.model(ids).logits, again.model(ids).logits)


def test_unknown_model_names_the_zoo():
    with pytest.raises(lens.UnknownModelError, match="unknown model 'gpt-17'.*smollm2-135m"):
        lens.load("gpt-17")


def test_hub_model_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(lens.ModelUnavailableError, match="cannot load 'nobody-here/no-such-model'"):
        lens.load("nobody-here/no-such-model")


def test_local_folder_loads_through_transformers(tiny_lm, tmp_path):
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    lm = lens.load(str(tmp_path))
    assert lm.facts.n_kv_heads == 2
    ids = tiny_lm.encode("a local copy")
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, tiny_lm.model(ids).logits)


def test_cache_rebuilds_a_corrupt_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLENS_CACHE", str(tmp_path))
    builds = []

    def build(dest):
        builds.append(dest)
        (dest / "weights.bin").write_bytes(b"0123456789" * 100)
        return {"source": "test"}

    folder, manifest = _cache.cached_folder("entry", build)
    assert manifest["files"]["weights.bin"] == _cache.sha256_file(folder / "weights.bin")
    _cache.cached_folder("entry", build)
    assert len(builds) == 1  # a verified entry is reused
    with open(folder / "weights.bin", "r+b") as f:  # truncate, as an interrupted copy would
        f.truncate(10)
    notices = []
    folder2, _ = _cache.cached_folder("entry", build, on_rebuild=notices.append)
    assert len(builds) == 2 and "corrupt" in notices[0]
    assert (folder2 / "weights.bin").stat().st_size == 1000


def test_interrupted_build_leaves_no_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLENS_CACHE", str(tmp_path))

    def failing(dest):
        (dest / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _cache.cached_folder("entry", failing)
    assert not (tmp_path / "entry").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt_is_refused(tiny_lm, prompt):
    with pytest.raises(lens.PromptError, match="prompt is empty"):
        tiny_lm.encode(prompt)


def test_prompt_longer_than_context_is_refused(tiny_lm):
    with pytest.raises(lens.PromptError, match="longer than tiny-llama's context of 512"):
        tiny_lm.encode("x" * 600)


def test_chat_without_template_is_refused(tiny_lm):
    with pytest.raises(lens.PromptError, match="no chat template"):
        tiny_lm.encode("hello", chat=True)
