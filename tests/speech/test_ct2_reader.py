"""The CTranslate2 model.bin reader and the Whisper mapping, on files written here by hand."""

import json
import struct

import numpy as np
import pytest
import torch

from lens.zoo import ctranslate2_format as ct2
from lens.zoo import whisper

_DTYPE_ID = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(variables: dict, aliases: dict | None = None, *, spec="TestSpec", revision=1, version=6,
              bfloat16: frozenset = frozenset()) -> bytes:
    """A model.bin in CTranslate2's layout (written independently of the reader under test)."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        value = np.asarray(value)
        out += [_string(name), struct.pack("<B", value.ndim), *[struct.pack("<I", d) for d in value.shape]]
        if name in bfloat16:
            raw = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
            out += [struct.pack("<B", 5), struct.pack("<I", len(raw)), raw]
        else:
            raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
            out += [struct.pack("<B", _DTYPE_ID[value.dtype]), struct.pack("<I", len(raw)), raw]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for a, b in aliases.items():
        out += [_string(a), _string(b)]
    return b"".join(out)


def test_reads_arrays_scalars_and_aliases():
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    data = write_ct2({"a/weight": w, "a/num_heads": np.array(6, np.int16), "b": np.array([1.5, -2.0], np.float32)},
                     {"c": "a/weight"}, spec="WhisperSpec", revision=3)
    m = ct2.parse(data)
    assert (m.spec, m.revision, m.version) == ("WhisperSpec", 3, 6)
    assert m.get("a/weight").dtype == np.float16 and m.get("a/weight").shape == (2, 3)
    np.testing.assert_array_equal(m.get("a/weight"), w)
    np.testing.assert_array_equal(m.get("c"), w)  # the alias resolves
    assert m.scalar("a/num_heads") == 6
    np.testing.assert_array_equal(m.get("b"), [1.5, -2.0])
    assert m.names() == ["a/num_heads", "a/weight", "b", "c"]


def test_bfloat16_is_widened_to_float32():
    x = np.array([1.0, -0.5, 3.0, 256.0], np.float32)  # exactly representable in bfloat16
    m = ct2.parse(write_ct2({"x": x}, bfloat16=frozenset({"x"})))
    assert m.get("x").dtype == np.float32
    np.testing.assert_array_equal(m.get("x"), x)


@pytest.mark.parametrize("cut", [3, 20, -1])
def test_truncated_file_is_a_one_line_error(cut):
    data = write_ct2({"x": np.ones((4, 4), np.float32)})
    with pytest.raises(ct2.Ct2FormatError, match="truncated|left over") as err:
        ct2.parse(data[:cut])
    assert "\n" not in str(err.value)


def test_unknown_version_and_trailing_bytes_are_refused():
    with pytest.raises(ct2.Ct2FormatError, match="binary version 9"):
        ct2.parse(write_ct2({"x": np.ones(2, np.float32)}, version=9))
    with pytest.raises(ct2.Ct2FormatError, match="left over"):
        ct2.parse(write_ct2({"x": np.ones(2, np.float32)}) + b"\0\0")
    with pytest.raises(ct2.Ct2FormatError, match="no variable 'y'"):
        ct2.parse(write_ct2({"x": np.ones(2, np.float32)})).get("y")


def test_wrong_size_for_shape_is_refused():
    data = bytearray(write_ct2({"x": np.ones((2, 2), np.float32)}))
    # the first dim sits after version, spec, revision, count, the name and ndim
    offset = 4 + len(_string("TestSpec")) + 4 + 4 + len(_string("x")) + 1
    data[offset:offset + 4] = struct.pack("<I", 3)
    with pytest.raises(ct2.Ct2FormatError, match=r"4 values for shape \(3, 2\)"):
        ct2.parse(bytes(data))


def ct2_whisper_variables(model, dtype=np.float32) -> dict:
    """The CTranslate2 WhisperSpec layout of a transformers Whisper: fused qkv / kv, no key bias."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in model.state_dict().items()}
    cfg = model.config
    out = {"encoder/num_heads": np.array(cfg.encoder_attention_heads, np.int16),
           "decoder/num_heads": np.array(cfg.decoder_attention_heads, np.int16)}

    def norm(dst, src):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def lin(dst, src):
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst, src):
        q, k, v = (sd[f"{src}.{p}_proj.weight"] for p in "qkv")
        out[f"{dst}/linear_0/weight"] = np.concatenate([q, k, v])
        zero = np.zeros_like(sd[f"{src}.q_proj.bias"])
        out[f"{dst}/linear_0/bias"] = np.concatenate([sd[f"{src}.q_proj.bias"], zero, sd[f"{src}.v_proj.bias"]])
        lin(f"{dst}/linear_1", f"{src}.out_proj")

    for i in (1, 2):
        lin(f"encoder/conv{i}", f"model.encoder.conv{i}")
    out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(cfg.encoder_layers):
        s, d = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        fused(f"{d}/self_attention", f"{s}.self_attn")
        norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
        lin(f"{d}/ffn/linear_0", f"{s}.fc1"), lin(f"{d}/ffn/linear_1", f"{s}.fc2")
        norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(cfg.decoder_layers):
        s, d = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        fused(f"{d}/self_attention", f"{s}.self_attn")
        norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
        lin(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
        k, v = sd[f"{s}.encoder_attn.k_proj.weight"], sd[f"{s}.encoder_attn.v_proj.weight"]
        out[f"{d}/attention/linear_1/weight"] = np.concatenate([k, v])
        vb = sd[f"{s}.encoder_attn.v_proj.bias"]
        out[f"{d}/attention/linear_1/bias"] = np.concatenate([np.zeros_like(vb), vb])
        lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
        norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
        lin(f"{d}/ffn/linear_0", f"{s}.fc1"), lin(f"{d}/ffn/linear_1", f"{s}.fc2")
        norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
    return out


def _wheel_folder(tmp_path, model, dtype=np.float32, variables=None):
    variables = variables or ct2_whisper_variables(model, dtype)
    (tmp_path / "model.bin").write_bytes(write_ct2(variables, {"decoder/projection/weight": "decoder/embeddings/weight"},
                                                   spec="WhisperSpec", revision=3))
    cfg = model.config
    (tmp_path / "config.json").write_text(json.dumps({
        "alignment_heads": cfg.alignment_heads, "suppress_ids": cfg.suppress_tokens,
        "suppress_ids_begin": cfg.begin_suppress_tokens}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": 1, "content": "<|endoftext|>"}, {"id": 0, "content": "<|startoftranscript|>"}]}))
    return tmp_path


def _same_logits(a, b, atol):
    b.set_attn_implementation("eager")  # as the tiny source model: SDPA would differ in the last bits
    torch.manual_seed(1)
    feats = torch.randn(1, 80, 2 * a.config.max_source_positions)
    ids = torch.tensor([[0, 5, 9, 7]])
    with torch.no_grad():
        la = a(input_features=feats, decoder_input_ids=ids).logits
        lb = b(input_features=feats, decoder_input_ids=ids).logits
    torch.testing.assert_close(la, lb, atol=atol, rtol=0)


def test_whisper_mapping_round_trips_a_tiny_model(tmp_path, tiny_whisper):
    src = tiny_whisper.model
    converted, extra = whisper.build_model(_wheel_folder(tmp_path, src))
    assert converted.config.encoder_layers == 2 and converted.config.decoder_attention_heads == 4
    assert converted.config.alignment_heads == [[1, 0], [1, 2]] and extra["suppress_ids"] == [3, 4]
    expected = src.state_dict()
    for name, value in converted.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=0, rtol=0, msg=name)
    _same_logits(src, converted, atol=0)


def test_whisper_mapping_from_fp16(tmp_path, tiny_whisper):
    converted, _ = whisper.build_model(_wheel_folder(tmp_path, tiny_whisper.model, dtype=np.float16))
    assert converted.model.encoder.conv1.weight.dtype == torch.float32
    _same_logits(tiny_whisper.model, converted, atol=2e-2)


def test_a_nonzero_key_bias_is_refused(tmp_path, tiny_whisper):
    variables = ct2_whisper_variables(tiny_whisper.model)
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[40] = 0.5  # inside the key block (d_model 32: rows 32-63)
    variables["encoder/layer_0/self_attention/linear_0/bias"] = bias
    with pytest.raises(ct2.Ct2FormatError, match="key bias is not zero"):
        whisper.build_model(_wheel_folder(tmp_path, tiny_whisper.model, variables=variables))


def test_another_spec_is_refused(tmp_path, tiny_whisper):
    folder = _wheel_folder(tmp_path, tiny_whisper.model)
    (folder / "model.bin").write_bytes(write_ct2({"x": np.ones(2, np.float32)}, spec="TransformerSpec"))
    with pytest.raises(ct2.Ct2FormatError, match="TransformerSpec, not a WhisperSpec"):
        whisper.build_model(folder)
