"""transformers integration on a tiny random Llama: logits unchanged vs SDPA, stats equal eager attention patterns."""

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from attnlens.kernels import KernelInputError, StatsSpec
from attnlens.kernels.hf_attention import interpret_mask
from lens.recording.stats import stats_mode

SPEC = StatsSpec(sink_tokens=1, window=4, spans=((2, 6),), topk=3, key_stats=True)


def _tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


@pytest.fixture(scope="module")
def llama():
    return _tiny_llama()


def _ids(b=2, n=20, seed=1):
    return torch.randint(0, 128, (b, n), generator=torch.Generator().manual_seed(seed))


def _stats_from_probs(a: torch.Tensor, spec: StatsSpec) -> dict:
    """Reference stats from an eager probability matrix ``a [B, H, M, N]`` (causal, no padding, M == N)."""
    a = a.double()
    n = a.shape[-1]
    pos = torch.arange(n)
    keys = torch.arange(n)
    in_window = (keys[None] <= pos[:, None]) & (keys[None] > pos[:, None] - spec.window)
    w, i = a.topk(spec.topk, dim=-1)
    i = torch.where(w > 0, i, -1)  # early queries see fewer than k keys: padded with index -1
    return dict(
        entropy=-torch.special.xlogy(a, a).sum(-1), max_weight=a.amax(-1), argmax=a.argmax(-1),
        sink_mass=a[..., : spec.sink_tokens].sum(-1), window_mass=(a * in_window).sum(-1),
        span_mass=torch.stack([a[..., s:e].sum(-1) for s, e in spec.spans], -1), topk_weight=w, topk_index=i,
        received_sum=a.sum(-2), received_mean=a.sum(-2) / torch.arange(n, 0, -1, dtype=torch.float64),
    )


def test_logits_equal_sdpa_with_padding(llama):
    ids = _ids()
    am = torch.ones_like(ids)
    am[0, :5] = 0  # left padding
    am[1, -3:] = 0  # right padding
    with torch.no_grad():
        ref = llama(ids, attention_mask=am).logits
        with stats_mode(llama, SPEC) as rec:
            got = llama(ids, attention_mask=am).logits
    assert llama.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert sorted(rec.stats) == [0, 1, 2, 3] and rec.fallback_calls == 0
    st = rec[0][0]
    assert st.lse.shape == (2, 4, 20) and st.received_sum.shape == (2, 4, 20) and st.lse.device.type == "cpu"
    assert (st.argmax[0, :, :5] == -1).all()  # causal left-padding rows see no key
    assert (st.received_sum[0, :, :5] == 0).all() and (st.received_sum[1, :, -3:] == 0).all()


def test_stats_equal_eager_patterns(llama):
    ids = _ids(seed=2)
    with torch.no_grad():
        with stats_mode(llama, SPEC) as rec:
            got_logits = llama(ids).logits
        llama.set_attn_implementation("eager")
        try:
            eager = llama(ids, output_attentions=True)
        finally:
            llama.set_attn_implementation("sdpa")
    torch.testing.assert_close(got_logits, eager.logits, atol=1e-5, rtol=0)
    for layer, a in enumerate(eager.attentions):
        ref = _stats_from_probs(a, SPEC)
        got = rec[layer][0]
        for name, value in ref.items():
            torch.testing.assert_close(getattr(got, name).double(), value.to(getattr(got, name).dtype).double(),
                                       atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"layer {layer} {n}: {m}")


def test_layer_selection_and_generation_steps(llama):
    ids = _ids(b=1, n=6, seed=3)
    with torch.no_grad():
        ref = llama.generate(ids, max_new_tokens=4, do_sample=False)
        with stats_mode(llama, StatsSpec(topk=2), layers=[1, 3]) as rec:
            got = llama.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, ref)
    assert sorted(rec.stats) == [1, 3]
    calls = rec[1]
    assert len(calls) == 4  # prefill + 3 decoding steps
    assert calls[0].lse.shape == (1, 4, 6) and calls[1].lse.shape == (1, 4, 1)
    assert calls[3].received_sum.shape == (1, 4, 9)  # decoding step: one query over the whole cache
    torch.testing.assert_close(calls[3].received_mean, calls[3].received_sum)  # one query sees every key


def test_sliding_window_mask_falls_back_to_explicit_mask():
    torch.manual_seed(0)
    cfg = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=128, sliding_window=6, max_position_embeddings=256)
    model = MistralForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    ids = _ids(b=1, n=16, seed=4)
    with torch.no_grad():
        ref = model(ids).logits
        with stats_mode(model, StatsSpec(topk=8)) as rec:
            got = model(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert rec.fallback_calls == 2
    # The last query only sees the most recent ~6 keys: its top-8 holds at most that many, all recent.
    idx = rec[0][0].topk_index[0, :, -1]
    assert ((idx == -1) | (idx >= 16 - 7)).all() and ((idx >= 0).sum(-1) <= 7).all()
    torch.testing.assert_close(rec[0][0].topk_weight.sum(-1)[0, :, -1], torch.ones(4))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the triton interpreter on CPU")
def test_triton_backend_through_transformers():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=64, vocab_size=128, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    ids = _ids(n=18, seed=5)
    am = torch.ones_like(ids)
    am[0, :3] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=am).logits
        with stats_mode(model, SPEC, backend="triton") as rec:
            got = model(ids, attention_mask=am).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert rec.fallback_calls == 0 and len(rec[1]) == 1


def test_interpret_mask_forms():
    keep = torch.arange(5)[None, :] <= torch.arange(5)[:, None]
    kpm = torch.tensor([[False, True, True, True, True]])
    causal, pad, explicit = interpret_mask((keep & kpm[:, None])[:, None], 5, 5, True)
    assert causal and torch.equal(pad, kpm) and explicit is None
    additive = torch.where(keep, 0.0, torch.finfo(torch.float32).min)[None, None]
    assert interpret_mask(additive, 5, 5, True)[:2] == (True, None)
    causal, pad, explicit = interpret_mask(kpm[:, None, None].expand(1, 1, 5, 5), 5, 5, True)
    assert not causal and torch.equal(pad, kpm)
    band = keep & ~(torch.arange(5)[None, :] <= torch.arange(5)[:, None] - 2)
    assert interpret_mask(band[None, None], 5, 5, True)[2] is not None
    with pytest.raises(KernelInputError, match="additive biases"):
        interpret_mask(torch.randn(1, 1, 5, 5), 5, 5, True)


def test_bad_layers_and_restore_on_error(llama):
    with pytest.raises(KernelInputError, match=r"layers \[7\] do not exist: the model has layers 0-3"):
        with stats_mode(llama, StatsSpec(), layers=[7]):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with stats_mode(llama, StatsSpec()):
            raise RuntimeError("boom")
    assert llama.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, "_attnlens_stack") for m in llama.modules())
