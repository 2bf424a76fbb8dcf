"""Logit soft-capping (Gemma 2) and learned attention sinks (gpt-oss) in every statistics path.

The float64 oracle is checked against the definition written out as the models do it (scores capped with tanh, a
sink column concatenated to the softmax and dropped); the chunked PyTorch path, the compiled C++ kernel and the
Triton kernels (interpreter) against the oracle with the per-dtype tolerances of kernels._testing; stats mode on tiny
random Gemma 2 / gpt-oss models against their own eager attention probabilities, with the logits unchanged.
"""

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, GptOssConfig, GptOssForCausalLM

from attnlens.kernels import KernelInputError, StatsSpec, _compiled, attention_with_stats
from attnlens.kernels._testing import TOLERANCES, assert_matches_oracle, make_qkv
from attnlens.kernels._validate import triton_importable
from attnlens.kernels.reference import chunked_attention_stats, naive_attention_stats
from lens.attention import AttentionObserver, attention_mode
from lens.recording.stats import stats_mode

SPEC = StatsSpec(sink_tokens=2, window=5, spans=((3, 9), (0, 40)), topk=3)
TERMS = [(2.0, None), (None, "sinks"), (1.5, "sinks")]  # softcap, sinks: each alone and both
SHORT = StatsSpec(sink_tokens=2, window=5, spans=((3, 9),), topk=3)  # for 20-30 keys
IDS = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))


def _sinks(h: int, seed: int = 0) -> torch.Tensor:
    # Logits around the scores' range (the sink takes a visible share) and one head dominated by its sink.
    s = torch.randn(h, generator=torch.Generator().manual_seed(seed)) * 2
    s[-1] = 25.0
    return s


def _terms(softcap, sinks, h):
    return dict(softcap=softcap, sinks=_sinks(h) if sinks else None)


def _definition(q, k, v, *, softcap, sinks, scale):
    """``(out, A)`` as Gemma 2's / gpt-oss's eager attention computes them (causal, M == N), in float64."""
    g = q.shape[1] // k.shape[1]
    s = q.double() @ k.double().repeat_interleave(g, 1).transpose(-1, -2) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    n = s.shape[-1]
    s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.double().reshape(1, -1, 1, 1).expand(*s.shape[:-1], 1)], -1)
    a = torch.softmax(s, -1)[..., :n]  # the sink's column is dropped: it has no value
    return a @ v.double().repeat_interleave(g, 1), a


@pytest.mark.parametrize("softcap,sinks", TERMS)
def test_oracle_is_the_models_definition(softcap, sinks):
    q, k, v = make_qkv(2, 4, 2, 40, 40, 16, torch.float64, seed=3, sharpness=4.0)
    terms = _terms(softcap, sinks, 4)
    ref = naive_attention_stats(q, k, v, spec=SPEC, **terms)
    out, a = _definition(q, k, v, scale=16 ** -0.5, **terms)
    torch.testing.assert_close(ref.out, out)
    st = ref.stats
    torch.testing.assert_close(st.entropy, -torch.special.xlogy(a, a).sum(-1))
    torch.testing.assert_close(st.max_weight, a.amax(-1))
    torch.testing.assert_close(st.sink_mass, a[..., :2].sum(-1))
    torch.testing.assert_close(st.received_sum, a.sum(-2))
    if sinks:
        # Not renormalised: the real keys hold 1 - the sink's probability, and lse counts the sink's term.
        sink_prob = torch.exp(terms["sinks"].double()[None, :, None] - st.lse)
        torch.testing.assert_close(st.span_mass[..., 1], 1 - sink_prob)
        assert (st.span_mass[:, -1, :, 1] < 1e-3).all()  # the head whose sink outweighs every key
        assert (1 - st.span_mass[:, :-1, :, 1]).amax() > 0.1  # elsewhere a sink takes a visible share
    else:
        torch.testing.assert_close(st.span_mass[..., 1], torch.ones_like(st.lse))
    plain = naive_attention_stats(q, k, v, spec=SPEC)
    assert (plain.out - ref.out).abs().max() > 1e-2, "the term changes nothing: the test would not see it missing"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap,sinks", TERMS)
@pytest.mark.parametrize("causal", [True, False])
def test_chunked_path_matches_oracle(dtype, softcap, sinks, causal):
    q, k, v = make_qkv(2, 6, 2, 70, 70, 16, dtype, seed=5, sharpness=4.0)
    kpm = torch.ones(2, 70, dtype=torch.bool)
    kpm[0, :4] = False  # left padding: causal rows 0-3 of batch 0 see no key (and keep the empty-row values)
    terms = _terms(softcap, sinks, 6)
    got = chunked_attention_stats(q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, chunk_size=16,
                                  compile=False, **terms)
    assert_matches_oracle(got, q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, **terms)
    if causal:
        assert (got.out[0, :, :4] == 0).all() and torch.isneginf(got.stats.lse[0, :, :4]).all()
        assert (got.stats.entropy[0, :, :4] == 0).all() and (got.stats.argmax[0, :, :4] == -1).all()


@pytest.mark.parametrize("softcap,sinks", TERMS)
def test_chunked_path_with_an_explicit_mask(softcap, sinks):
    # A sliding window (the layers of Gemma 2 and gpt-oss alternate them) takes the explicit-mask path.
    q, k, v = make_qkv(1, 4, 4, 50, 50, 8, torch.float32, seed=7, sharpness=4.0)
    pos = torch.arange(50)
    keep = ((pos[None] <= pos[:, None]) & (pos[None] > pos[:, None] - 6))[None, None]
    terms = _terms(softcap, sinks, 4)
    got = chunked_attention_stats(q, k, v, causal=False, spec=SPEC, attn_mask=keep, chunk_size=8, **terms)
    assert_matches_oracle(got, q, k, v, causal=False, spec=SPEC, attn_mask=keep, **terms)


@pytest.mark.skipif(not _compiled.compiler_available(), reason="no C++ compiler or ninja")
@pytest.mark.parametrize("softcap,sinks", TERMS)
@pytest.mark.parametrize("causal", [True, False])
def test_compiled_kernel_matches_oracle(monkeypatch, softcap, sinks, causal):
    monkeypatch.setattr(_compiled, "block_rows", lambda group, n_keys: 7)  # several blocks and a short last one
    built, ran = _compiled.extension, []
    monkeypatch.setattr(_compiled, "extension", lambda: ran.append(built()) or ran[-1])
    q, k, v = make_qkv(2, 6, 3, 75, 75, 16, torch.float32, seed=9, sharpness=4.0)
    kpm = torch.ones(2, 75, dtype=torch.bool)
    kpm[1, -5:] = False
    terms = _terms(softcap, sinks, 6)
    got = chunked_attention_stats(q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, compile=True, **terms)
    assert ran and all(ext is not None for ext in ran), "the compiled kernel did not run"
    assert_matches_oracle(got, q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, **terms)
    eager = chunked_attention_stats(q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, compile=False, **terms)
    for name in ("lse", "entropy", "max_weight", "received_sum"):
        torch.testing.assert_close(getattr(got.stats, name), getattr(eager.stats, name), atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(not triton_importable(), reason="triton not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("softcap,sinks", TERMS)
@pytest.mark.parametrize("causal", [True, False])
def test_triton_matches_oracle(dtype, softcap, sinks, causal):
    q, k, v = make_qkv(1, 4, 2, 40, 40, 64, dtype, seed=11, sharpness=1.0)
    kpm = torch.ones(1, 40, dtype=torch.bool)
    kpm[0, :3] = False
    terms = _terms(softcap, sinks, 4)
    got = attention_with_stats(q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, backend="triton", **terms)
    assert_matches_oracle(got, q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, **terms)


def test_gradients_flow_through_the_terms():
    q, k, v = make_qkv(1, 4, 2, 30, 30, 8, torch.float32, seed=13, sharpness=4.0)
    q.requires_grad_(True)
    terms = _terms(1.5, True, 4)
    got = attention_with_stats(q, k, v, spec=SHORT, backend="torch", **terms)
    ref = naive_attention_stats(q.detach(), k, v, spec=SHORT, **terms)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(got.out.detach().double(), ref.out, atol=tol.out_atol, rtol=tol.out_rtol)
    got.out.sum().backward()
    q64 = q.detach().double().requires_grad_(True)
    _definition(q64, k, v, scale=8 ** -0.5, **terms)[0].sum().backward()
    torch.testing.assert_close(q.grad.double(), q64.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs,words", [
    (dict(softcap=0.0), "softcap=0.0 must be None or a finite positive float"),
    (dict(softcap=float("nan")), "softcap=nan must be None or a finite positive float"),
    (dict(softcap=True), "softcap=True must be None or a finite positive float"),
    (dict(sinks=[0.0] * 4), "sinks must be None or a [head] tensor of logits, got list"),
    (dict(sinks=torch.zeros(3)), "sinks shape (3,) does not match [head] = [4]"),
    (dict(sinks=torch.zeros(4, dtype=torch.int64)), "sinks dtype torch.int64 is not a floating point type"),
    (dict(sinks=torch.tensor([0.0, float("inf"), 0.0, 0.0])), "sinks holds NaN or inf"),
])
def test_bad_terms_are_refused_in_one_line(kwargs, words):
    q, k, v = make_qkv(1, 4, 2, 8, 8, 8, torch.float32)
    for fn in (attention_with_stats, naive_attention_stats, chunked_attention_stats):
        with pytest.raises(KernelInputError) as info:
            fn(q, k, v, **kwargs)
        assert words in str(info.value) and "\n" not in str(info.value)


# ---- through transformers: the models' own eager attention is the reference --------------------------------------
def _gemma2():
    torch.manual_seed(0)
    cfg = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=128, sliding_window=6,
                       attn_logit_softcapping=1.0)  # strong capping: every score lies in (-1, 1)
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():  # scores of a few units (random init gives ~0.01, where tanh is the identity)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40.0)
    return model


def _gpt_oss():
    torch.manual_seed(0)
    cfg = GptOssConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=128, sliding_window=6, num_local_experts=4,
                       num_experts_per_tok=2)
    model = GptOssForCausalLM(cfg).eval()
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.sinks.copy_(_sinks(4, seed=i))
    return model


@pytest.mark.parametrize("build", [_gemma2, _gpt_oss], ids=["gemma2-softcap", "gpt-oss-sinks"])
def test_stats_mode_equals_the_models_eager_attention(build):
    model = build()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(IDS, output_attentions=True)
        with stats_mode(model, SHORT, backend="torch") as rec:
            logits = model(IDS).logits
    assert model.config._attn_implementation == "eager"  # restored
    torch.testing.assert_close(logits, eager.logits, atol=2e-5, rtol=0)
    assert sorted(rec.stats) == [0, 1] and rec.fallback_calls == 1  # layer 0 slides (explicit mask), layer 1 not
    for layer, a in enumerate(eager.attentions):
        a, got = a.double(), rec[layer][0]
        want = dict(entropy=-torch.special.xlogy(a, a).sum(-1), max_weight=a.amax(-1), sink_mass=a[..., :2].sum(-1),
                    span_mass=a[..., 3:9].sum(-1), received_sum=a.sum(-2), topk_weight=a.topk(3, -1).values)
        got_span = got.span_mass[..., 0]
        for name, value in want.items():
            g = got_span if name == "span_mass" else getattr(got, name)
            torch.testing.assert_close(g.double(), value, atol=2e-5, rtol=1e-4,
                                       msg=lambda m, n=name: f"layer {layer} {n}: {m}")


class _KeepWeights(AttentionObserver):
    """Wants the probabilities (as pattern capture does) and keeps them per layer."""

    needs_weights = True

    def __init__(self) -> None:
        self.weights = {}

    def on_outputs(self, module, layer, query, key, value, out, weights) -> None:
        self.weights[layer] = weights


@pytest.mark.parametrize("build", [_gemma2, _gpt_oss], ids=["gemma2-softcap", "gpt-oss-sinks"])
def test_patterns_wanted_inside_stats_mode_are_the_models_own(build):
    model = build()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(IDS, output_attentions=True)
        with attention_mode(model, _KeepWeights()) as keep, stats_mode(model, SHORT, backend="torch") as rec:
            logits = model(IDS).logits
    torch.testing.assert_close(logits, eager.logits, atol=2e-5, rtol=0)
    for layer, a in enumerate(eager.attentions):
        torch.testing.assert_close(keep.weights[layer], a, atol=2e-6, rtol=0)
        torch.testing.assert_close(rec[layer][0].max_weight, a.amax(-1), atol=2e-5, rtol=0)
