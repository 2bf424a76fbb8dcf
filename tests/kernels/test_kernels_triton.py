"""Triton kernels under the triton interpreter (CPU) against the float64 oracle.

Tolerances per dtype live in ``kernels._testing.TOLERANCES``: statistics are float32 computations on the exact
inputs, so lse/entropy agree to ~1e-4 (1e-3 for bf16, the issue's target) and masses/weights to ~1e-4 absolute;
``out`` is checked at the input dtype's precision.  argmax / top-k indices must match except on near-ties.
The interpreter uses 16 x 16 blocks, so lengths like 37 exercise ragged blocks and several causal diagonals.
"""

import os

import pytest
import torch

from attnlens.kernels import StatsSpec, attention_with_stats
from attnlens.kernels._testing import assert_matches_oracle, make_qkv

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="triton CPU tests need TRITON_INTERPRET=1 (set by conftest)"
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _spec(n, topk=3, key_stats=True):
    # Spans at both edges and one straddling a 16-key block boundary.
    return StatsSpec(sink_tokens=2, window=7, spans=((0, 1), (14, 19), (n - 3, n)), topk=topk, key_stats=key_stats)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "causal,b,h,hkv,m,n",
    [
        (True, 1, 4, 2, 37, 37),  # GQA, ragged
        (True, 2, 2, 1, 9, 41),  # decoding-style q_len < k_len, end-aligned
        (False, 1, 2, 2, 21, 35),
        (False, 1, 2, 1, 40, 22),  # q_len > k_len (non-causal only)
    ],
)
def test_triton_matches_oracle(dtype, causal, b, h, hkv, m, n):
    q, k, v = make_qkv(b, h, hkv, m, n, 64, dtype, seed=m * n)
    spec = _spec(n)
    got = attention_with_stats(q, k, v, causal=causal, spec=spec, backend="triton")
    assert_matches_oracle(got, q, k, v, causal=causal, spec=spec)


@pytest.mark.parametrize("d", [80, 96, 128])
def test_triton_d_heads(d):
    q, k, v = make_qkv(1, 2, 1, 20, 20, d, torch.float32, seed=d)
    spec = _spec(20, topk=8)
    got = attention_with_stats(q, k, v, causal=True, spec=spec, backend="triton")
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_triton_key_padding(dtype, causal):
    q, k, v = make_qkv(2, 2, 1, 30, 30, 64, dtype, seed=5)
    kpm = torch.ones(2, 30, dtype=torch.bool)
    kpm[0, :19] = False  # left padding past a block boundary: causal rows 0-18 of batch 0 see nothing
    kpm[1, -5:] = False  # right padding
    spec = _spec(30, topk=8)
    got = attention_with_stats(q, k, v, causal=causal, spec=spec, key_padding_mask=kpm, backend="triton")
    assert_matches_oracle(got, q, k, v, causal=causal, spec=spec, key_padding_mask=kpm)
    if causal:
        assert (got.stats.argmax[0, :, :19] == -1).all() and torch.isinf(got.stats.lse[0, :, :19]).all()
        assert (got.out[0, :, :19] == 0).all() and (got.stats.topk_index[0, :, :19] == -1).all()


def test_triton_minimal_spec_and_noncontiguous_inputs():
    # [B, M, H, D] -> transpose: the layout transformers hands to attention functions.
    q, k, v = make_qkv(1, 4, 2, 19, 19, 64, torch.float16, seed=11)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    spec = StatsSpec(sink_tokens=0, window=0, topk=0, key_stats=False)
    got = attention_with_stats(q, k, v, causal=True, spec=spec, backend="triton", scale=0.2)
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec, scale=0.2)
    assert got.stats.received_sum.shape == (1, 4, 0) and got.stats.span_mass.shape == (1, 4, 19, 0)


def test_triton_matches_chunked_torch():
    q, k, v = make_qkv(1, 2, 2, 33, 33, 64, torch.float32, seed=2)
    spec = _spec(33)
    a = attention_with_stats(q, k, v, spec=spec, backend="triton")
    b = attention_with_stats(q, k, v, spec=spec, backend="torch")
    torch.testing.assert_close(a.out, b.out, atol=1e-5, rtol=1e-5)
    for name, x, y in zip(a.stats._fields, a.stats, b.stats):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=name)


def test_triton_fake_impl_shapes():
    from attnlens.kernels._triton_op import _attention_with_stats_op

    q, k, v = (t.to("meta") for t in make_qkv(2, 4, 2, 10, 12, 64, torch.bfloat16))
    outs = _attention_with_stats_op(q, k, v, None, True, 0.125, 1, 4, [0, 3, 5, 9], 5, True)
    shapes = [tuple(t.shape) for t in outs]
    assert shapes == [(2, 4, 10, 64)] + [(2, 4, 10)] * 6 + [(2, 4, 10, 2), (2, 4, 10, 5), (2, 4, 10, 5)] + [(2, 4, 12)] * 2
    assert outs[0].dtype == torch.bfloat16 and outs[4].dtype == torch.int64


def test_inputs_that_need_grad_get_the_kernels_statistics_and_sdpa_gradients():
    """The Triton kernels have no backward: with grad on, the statistics are the kernel's and the
    output (same numbers) carries the eager attention's gradients."""
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 4, 2, 40, 40, 64, torch.float32, seed=3))
    spec = _spec(40)
    with torch.no_grad():
        plain = attention_with_stats(q, k, v, causal=True, spec=spec, backend="triton")
    res = attention_with_stats(q, k, v, causal=True, spec=spec, backend="triton")
    torch.testing.assert_close(res.out, plain.out, atol=1e-4, rtol=1e-4)
    for a, b in zip(res.stats, plain.stats):
        assert torch.equal(a, b)
    grads = torch.autograd.grad(res.out.square().sum(), (q, k, v))
    kk, vv = (t.repeat_interleave(2, dim=1) for t in (k, v))
    s = (q @ kk.transpose(-1, -2) / 8.0).masked_fill(~torch.ones(40, 40, dtype=torch.bool).tril(), float("-inf"))
    ref = torch.autograd.grad((torch.softmax(s, -1) @ vv).square().sum(), (q, k, v))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
