"""Tiny random models of several families (saved with the byte tokenizer and loaded through
``lens.load``), for the attribution tests: GPT-2 (LayerNorm, learned positions, Conv1D, tied
unembedding), Qwen2 (GQA, q/k/v biases, untied) and Gemma 2 (soft-capping, post-norms, tied)."""

from __future__ import annotations

import pytest
import torch

import lens
from lens.zoo.tiny import TINY_VOCAB, build_byte_tokenizer


def saved(model, path) -> lens.LoadedModel:
    torch.manual_seed(0)
    model.save_pretrained(path)
    build_byte_tokenizer(path)
    return lens.load(str(path))


def init(cls, config, seed=0):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return cls(config).eval()
    finally:
        torch.random.set_rng_state(state)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=TINY_VOCAB, n_positions=128, bos_token_id=0,
                     eos_token_id=1, scale_attn_by_inverse_layer_idx=True)
    m = init(GPT2LMHeadModel, cfg)
    with torch.no_grad():  # LayerNorms away from (1, 0) and non-zero projection biases, so bias terms matter
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
            elif type(mod).__name__ == "Conv1D":
                mod.bias.normal_(0, 0.1)
    return saved(m, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=TINY_VOCAB, max_position_embeddings=256, bos_token_id=0,
                      eos_token_id=1, tie_word_embeddings=False)
    m = init(Qwen2ForCausalLM, cfg)
    with torch.no_grad():  # Qwen2 has q/k/v biases: make them large enough to matter
        for layer in m.model.layers:
            for p in (layer.self_attn.q_proj.bias, layer.self_attn.k_proj.bias):
                p.normal_(0, 0.5)
    return saved(m, tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def tiny_gemma2(tmp_path_factory):
    """Soft-capping small enough to bite (scores of a random model are small), GQA, post-norms."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=TINY_VOCAB, bos_token_id=0, eos_token_id=1,
                       pad_token_id=2, attn_logit_softcapping=0.5, final_logit_softcapping=3.0,
                       sliding_window=8, attn_implementation="eager")
    m = init(Gemma2ForCausalLM, cfg)
    with torch.no_grad():  # norms away from their (1 + 0) start, so the frozen scales matter
        for mod in m.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.weight.uniform_(-0.5, 0.5)
        for layer in m.model.layers:  # scores large enough for the cap to bind (Gemma's init gives ~0.003)
            layer.self_attn.q_proj.weight.normal_(0, 0.5)
            layer.self_attn.k_proj.weight.normal_(0, 0.5)
    return saved(m, tmp_path_factory.mktemp("gemma2"))
