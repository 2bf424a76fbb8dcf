"""Fixtures: a tiny random Whisper (2 s windows, byte tokenizer) for fast tests, the real
whisper-tiny.en and espeak-ng speech for the slow tier."""

import pytest
import torch

TINY_CHUNK_S = 2  # a 2 s window: 200 log-mel frames, 100 encoder positions


def tiny_whisper_config(**kw):
    from transformers import WhisperConfig

    from lens.zoo.tiny import TINY_VOCAB

    base = dict(
        vocab_size=TINY_VOCAB, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=TINY_CHUNK_S * 50, max_target_positions=64, pad_token_id=2, bos_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, suppress_tokens=[3, 4], begin_suppress_tokens=[1],
        alignment_heads=[[1, 0], [1, 2]], tie_word_embeddings=True,
    )
    base.update(kw)
    return WhisperConfig(**base)


def build_tiny_whisper(seed: int = 0):
    """A :class:`LoadedModel` of a random ``WhisperForConditionalGeneration`` (2+2 layers x 4 heads,
    d_model 32) with the byte tokenizer and a 2 s feature extractor; eager attention."""
    from transformers import (
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    import lens
    from lens.audio import EncoderFacts
    from lens.loaded import LoadedModel
    from lens.zoo.whisper import decoder_facts

    config = tiny_whisper_config()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = WhisperForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.set_attn_implementation("eager")
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=2,
                                               suppress_tokens=[3, 4], begin_suppress_tokens=[1])
    tokenizer = lens.load("tiny-llama").tokenizer
    return LoadedModel(model=model, tokenizer=tokenizer,
                       facts=decoder_facts(config, name="tiny-whisper", architecture=type(model).__name__),
                       processor=WhisperFeatureExtractor(chunk_length=TINY_CHUNK_S),
                       extras={"encoder": EncoderFacts.from_whisper_config(config)})


@pytest.fixture(scope="session")
def tiny_whisper():
    return build_tiny_whisper()


@pytest.fixture(scope="session")
def whisper_tiny_en():
    import lens

    return lens.load("whisper-tiny.en")
