"""Text encoder-decoders (T5, BART, mBART, Pegasus, Marian): facts, decoder tokens and a captured
forward pass over a source text and a target.

:func:`lens.prepare` (``lens.run(lm, source)``) on such a model: the encoder reads the source, the decoder runs once over the decoder start token and the target (``decoder_ids``,
default: the greedy output) with the capture on. ``pattern`` rows and columns are the decoder's
(target) tokens, ``enc_pattern`` is ``[batch, head, source, source]`` and ``cross_pattern``
``[batch, head, target, source]``; the capture's layout is a :class:`~formats.SourceLayout`
that labels the encoder positions by the source tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlens.formats.facts import Modality, ModelFacts
from lens.errors import PromptError


@dataclass(frozen=True)
class TextEncoderFacts:
    """The encoder of a text encoder-decoder, next to the decoder's :class:`~lens.ModelFacts`
    (which layer/head selections and the token side of a capture refer to). Bidirectional."""

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    causal: bool = False


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value:
            return value
    return default


def facts_of(config, *, name: str, architecture: str) -> tuple[ModelFacts, TextEncoderFacts]:
    """The decoder's facts and the encoder's, from the loaded model's config (T5 names its sizes
    ``num_layers``/``num_heads``/``d_kv``, BART-style models ``decoder_layers``/``decoder_attention_heads``)."""
    d_model = config.d_model
    heads = _first(config, "decoder_attention_heads", "num_heads")
    enc_heads = _first(config, "encoder_attention_heads", "num_heads")
    n_layers = _first(config, "decoder_layers", "num_decoder_layers", "num_layers")
    enc_layers = _first(config, "encoder_layers", "num_layers")
    facts = ModelFacts(
        name=name, architecture=architecture, n_layers=n_layers, n_heads=heads, n_kv_heads=heads,
        d_head=_first(config, "d_kv", default=d_model // heads), d_model=d_model,
        # T5's positions are relative buckets: no hard limit; 512 is what it was trained on
        context_length=_first(config, "max_position_embeddings", "n_positions", default=512),
        vocab_size=config.vocab_size, modality=Modality.TEXT, causal=True, encoder_layers=enc_layers,
    )
    encoder = TextEncoderFacts(n_layers=enc_layers, n_heads=enc_heads,
                               d_head=_first(config, "d_kv", default=d_model // enc_heads), d_model=d_model)
    return facts, encoder


def is_text_encoder_decoder(lm) -> bool:
    return lm.facts.modality is Modality.TEXT and lm.facts.encoder_layers > 0


def start_ids(lm) -> list[int]:
    """The decoder's first token(s): its ``decoder_start_token_id``."""
    start = getattr(lm.model.generation_config, "decoder_start_token_id", None)
    if start is None:
        start = lm.model.config.decoder_start_token_id
    if start is None:
        raise PromptError(f"{lm.facts.name} has no decoder_start_token_id in its config: give decoder_ids")
    return [int(start)]


def target_ids(lm, text: str) -> list[int]:
    """Decoder start + the tokens of ``text`` (no end-of-sequence token)."""
    if not isinstance(text, str) or not text.strip():
        raise PromptError("target is empty: give the text the decoder should read")
    return start_ids(lm) + list(lm.tokenizer(text, add_special_tokens=False).input_ids)


@torch.no_grad()
def generate(lm, source_ids: torch.Tensor, *, max_new_tokens: int = 20) -> list[int]:
    """Greedy decoder ids (start token first, no end-of-sequence) for the encoder's ``source_ids`` ``[1, source]``."""
    ids = source_ids.to(lm.device)
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                            num_beams=1)
    seq = [int(t) for t in out[0]]
    eos = lm.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) - {None}
    while len(seq) > 1 and seq[-1] in eos | {lm.model.generation_config.pad_token_id}:
        seq.pop()
    return seq

