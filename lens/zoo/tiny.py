"""Tiny random-initialised models for fast tests, with a byte-level tokenizer.

Built from small configs with a fixed seed, so every run gets the same weights. The
tokenizer maps each byte to a token (no merges) and prepends ``<bos>``; it is saved to
the cache so that tools which reload tokenizers by path (TransformerLens) find it.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VOCAB = 259  # 3 specials + 256 bytes


def build_byte_tokenizer(dest: Path) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        add_bos_token=True, model_max_length=512,
    )
    fast.save_pretrained(dest)
    return {"source": "byte-level tokenizer"}


def tiny_llama(seed: int = 0, *, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2,
               d_model: int = 64, context_length: int = 512):
    """A Llama-style causal LM with GQA and random weights (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=context_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.config.name_or_path = "tiny-llama"
    return model.eval()


def tiny_dinov2(seed: int = 0):
    """A random ``Dinov2Model`` (2 layers x 4 heads, d_model 32, 4-pixel patches, 8x8 grid) and a
    processor that resizes and crops images to 32x32 pixels."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                          patch_size=4, image_size=32, layerscale_value=0.5)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Dinov2Model(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return model, processor


TINY_WHISPER_SECONDS = 2  # a 2 s window: 200 log-mel frames, 100 encoder positions


def tiny_whisper(seed: int = 0):
    """A random ``WhisperForConditionalGeneration`` (2 encoder + 2 decoder layers x 4 heads, d_model 32,
    2 s windows), its generation config and a matching feature extractor; eager attention."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    config = WhisperConfig(
        vocab_size=TINY_VOCAB, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=TINY_WHISPER_SECONDS * 50, max_target_positions=64, pad_token_id=2, bos_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, suppress_tokens=[3, 4], begin_suppress_tokens=[1],
        alignment_heads=[[1, 0], [1, 2]], tie_word_embeddings=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = WhisperForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=2,
                                               suppress_tokens=[3, 4], begin_suppress_tokens=[1])
    return model, WhisperFeatureExtractor(chunk_length=TINY_WHISPER_SECONDS)
