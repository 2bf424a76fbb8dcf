"""q/k/v of families that compute attention in their own code (no attention interface, no ``_attn`` the
stack can wrap) come from their projections, split per head by the site table and rotated as the
family rotates them. They must be what the family scores: the eager pattern equals
softmax(scale * q k^T + the family's position bias + causal mask) written out here from each family's
definition (ALiBi from the family's own builder), and z equals pattern @ v, per head. Stats mode computes
their statistics beside their own attention from the same q/k/v: those of the patterns, and the
log-sum-exp of those scores.
"""

from __future__ import annotations

import math

import pytest
import torch

import lens
from lens import Site

IDS = torch.tensor([[0, 40, 77, 12, 99, 40, 77, 150]])
POS = IDS.shape[1]
COMMON = dict(vocab_size=259, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def _falcon(alibi: bool):
    from transformers import FalconConfig, FalconForCausalLM

    return FalconForCausalLM(FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=alibi,
                                          **COMMON))


def _bloom():
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, **COMMON))


def _mpt():
    from transformers import MptConfig, MptForCausalLM

    return MptForCausalLM(MptConfig(d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, max_seq_len=64,
                                    attn_config={"clip_qkv": 0.05}, **COMMON))  # a clip small enough to bite


def _xglm():
    from transformers import XGLMConfig, XGLMForCausalLM

    return XGLMForCausalLM(XGLMConfig(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64, **COMMON))


def _no_bias(model, heads):
    return torch.zeros(heads, 1, POS)


def _bloom_alibi(model, heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    return build_alibi_tensor(torch.ones(1, POS, dtype=torch.long), heads, torch.float32).view(heads, 1, POS)


def _falcon_alibi(model, heads):
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    return build_alibi_tensor(torch.ones(1, POS, dtype=torch.long), heads, torch.float32).view(heads, 1, POS)


def _mpt_alibi(model, heads):
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    return build_mpt_alibi_tensor(heads, model.config.max_seq_len)[:, :, -POS:]


# name -> (model builder, the bias on the scores [head, 1, key], whether the bias is scaled with the scores)
FAMILIES = {
    "falcon (rotary)": (lambda: _falcon(False), _no_bias, False),
    "falcon (alibi)": (lambda: _falcon(True), _falcon_alibi, True),  # (q k^T + alibi) / sqrt(d)
    "bloom": (_bloom, _bloom_alibi, False),
    "mpt (clip_qkv)": (_mpt, _mpt_alibi, False),
    "xglm": (_xglm, _no_bias, False),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    from lens.zoo import tiny

    build, bias, scaled_bias = FAMILIES[request.param]
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = build().eval()
    finally:
        torch.random.set_rng_state(state)
    folder = tmp_path_factory.mktemp("family")
    model.save_pretrained(folder)
    tiny.build_byte_tokenizer(folder)
    return lens.load(str(folder)), bias, scaled_bias


def test_projected_qk_are_what_the_family_scores(family):
    lm, bias, scaled_bias = family
    cap = lens.run(lm, IDS, sites=[Site.Q, Site.K, Site.V, Site.Z, Site.PATTERN], layers=[0, 1]).capture
    heads, d = lm.facts.n_heads, lm.facts.d_head
    causal = torch.full((POS, POS), float("-inf")).triu(1)
    for layer in (0, 1):
        q, k, v = cap.get(Site.Q, layer), cap.get(Site.K, layer), cap.get(Site.V, layer)
        assert q.shape == (1, heads, POS, d) and k.shape[2:] == (POS, d), (q.shape, k.shape)
        group = heads // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        b = bias(lm.model, heads)[None]
        scores = (q @ k.transpose(-1, -2) + b) / math.sqrt(d) if scaled_bias else q @ k.transpose(-1, -2) / math.sqrt(d) + b
        pattern = cap.pattern(layer)
        torch.testing.assert_close(torch.softmax(scores + causal, -1), pattern, atol=2e-5, rtol=0)
        torch.testing.assert_close(pattern @ v, cap.get(Site.Z, layer), atol=2e-5, rtol=0)


def test_stats_beside_their_attention_are_those_of_their_scores(family):
    """Stats mode computes these families' statistics beside their own attention, from the same q/k/v, scale and
    ALiBi: the eager patterns' statistics, and the log-sum-exp of the scores as each family defines them."""
    lm, bias, scaled_bias = family
    heads, d = lm.facts.n_heads, lm.facts.d_head
    cap = lens.run(lm, IDS, sites=[Site.Q, Site.K, Site.PATTERN], layers=[0, 1]).capture
    run = lens.run_stats(lm, IDS, layers=[0, 1])
    with torch.no_grad():
        torch.testing.assert_close(run.logits, lm.model(IDS).logits)  # the model's own outputs
    causal = torch.full((POS, POS), float("-inf")).triu(1)
    for layer in (0, 1):
        st, p = run.stats[layer], cap.pattern(layer)
        q, k = cap.get(Site.Q, layer), cap.get(Site.K, layer).repeat_interleave(heads // cap.get(Site.K, layer).shape[1], 1)
        b = bias(lm.model, heads)[None]
        scores = (q @ k.transpose(-1, -2) + b) / math.sqrt(d) if scaled_bias else q @ k.transpose(-1, -2) / math.sqrt(d) + b
        torch.testing.assert_close(st.lse, torch.logsumexp(scores + causal, -1), atol=1e-4, rtol=0)
        torch.testing.assert_close(st.max_weight, p.amax(-1), atol=2e-5, rtol=0)
        torch.testing.assert_close(st.entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), atol=1e-4, rtol=0)
        torch.testing.assert_close(st.received_sum, p.sum(-2), atol=1e-4, rtol=0)


def test_stats_during_generation(family):
    """With a KV cache the projections give only the new positions: refused in one line. MPT generates without
    a cache (each step runs the whole sequence), so each step's statistics are complete."""
    from attnlens.kernels import StatsSpec
    from lens.errors import KernelInputError

    lm, _, _ = family
    if lm.model.config.model_type == "mpt":
        with lens.stats_mode(lm, StatsSpec()) as rec:
            lm.model.generate(IDS, max_new_tokens=2, do_sample=False)
        assert [s.lse.shape[-1] for s in rec.stats[1]] == [POS, POS + 1]
        return
    with pytest.raises(KernelInputError, match="a KV cache leaves out") as info:
        with lens.stats_mode(lm, StatsSpec()):
            lm.model.generate(IDS, max_new_tokens=2, do_sample=False)
    assert "\n" not in str(info.value)
