"""The chunked torch stats path (kernels._cpu_stats) against the float64 oracle, at its edges.

Edges: chunks and 64-key segments that do not divide the lengths, spans and windows at the ends of the keys, GQA
groups, decode rows (q_len < k_len), key padding (rows that see nothing), explicit masks (sliding windows, rows and
keys masked entirely), score ranges wide enough to hit the exp floor, exact ties, every input dtype.  Tolerances are
the per-dtype ones of kernels._testing.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnlens.kernels import KernelInputError, StatsSpec
from attnlens.kernels._testing import assert_matches_oracle, make_qkv
from attnlens.kernels.reference import chunked_attention_stats

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _spec(n: int, topk: int = 4, key_stats: bool = True) -> StatsSpec:
    # Spans on the first key, straddling a 64-key segment boundary, and on the last keys.
    return StatsSpec(sink_tokens=3, window=7, spans=((0, 1), (max(0, n - 70), n - 60 if n > 70 else n), (n - 3, n)),
                     topk=topk, key_stats=key_stats)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "causal,b,h,hkv,m,n,chunk",
    [
        (True, 1, 6, 2, 130, 130, 64),  # GQA 3:1, 130 = 2 segments + a tail of 2, chunks 64 + 64 + 2
        (True, 2, 4, 4, 77, 77, 16),  # MHA, chunks not dividing M
        (True, 1, 4, 1, 1, 150, None),  # decode: one query over 150 keys (MQA)
        (True, 1, 2, 1, 9, 200, 4),  # a few queries at the end of 200 keys
        (False, 1, 4, 2, 33, 129, 8),  # full attention, keys one past two segments
        (False, 2, 3, 3, 70, 20, None),  # q_len > k_len without causal
    ],
)
def test_matches_oracle(dtype, causal, b, h, hkv, m, n, chunk):
    q, k, v = make_qkv(b, h, hkv, m, n, 16, dtype, seed=m * n)
    spec = _spec(n)
    got = chunked_attention_stats(q, k, v, causal=causal, spec=spec, chunk_size=chunk)
    assert_matches_oracle(got, q, k, v, causal=causal, spec=spec)


@pytest.mark.parametrize("topk,key_stats", [(0, False), (1, True), (8, True)])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunk_sizes_and_optional_stats(topk, key_stats, chunk):
    q, k, v = make_qkv(1, 4, 2, 70, 70, 8, torch.float32, seed=chunk + topk)
    spec = _spec(70, topk=topk, key_stats=key_stats)
    got = chunked_attention_stats(q, k, v, causal=True, spec=spec, chunk_size=chunk)
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec)
    assert got.stats.topk_index.shape == (1, 4, 70, topk)
    assert got.stats.received_sum.shape == ((1, 4, 70) if key_stats else (1, 4, 0))


@pytest.mark.parametrize("window,sink", [(0, 0), (1, 1), (500, 80)])
def test_window_and_sink_limits(window, sink):
    # window 0 / sink 0 disable the masses; a window or sink longer than the keys covers them all.
    q, k, v = make_qkv(1, 2, 1, 66, 66, 8, torch.float32, seed=window)
    spec = StatsSpec(sink_tokens=sink, window=window, topk=2)
    got = chunked_attention_stats(q, k, v, causal=True, spec=spec, chunk_size=10)
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec)
    if window == 500:
        torch.testing.assert_close(got.stats.window_mass, torch.ones(1, 2, 66))
    if window == 0:
        assert (got.stats.window_mass == 0).all() and (got.stats.sink_mass == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_key_padding(dtype, causal):
    # Batch 0 left-padded (its first causal rows see no key), batch 1 right-padded, batch 2 fully padded.
    q, k, v = make_qkv(3, 4, 2, 75, 75, 16, dtype, seed=7)
    kpm = torch.ones(3, 75, dtype=torch.bool)
    kpm[0, :10] = False
    kpm[1, -9:] = False
    kpm[2] = False
    spec = _spec(75)
    got = chunked_attention_stats(q, k, v, causal=causal, spec=spec, key_padding_mask=kpm, chunk_size=16)
    assert_matches_oracle(got, q, k, v, causal=causal, spec=spec, key_padding_mask=kpm)
    st = got.stats
    empty_rows = [(2, slice(None))] + ([(0, slice(0, 10))] if causal else [])
    for batch, rows in empty_rows:
        assert torch.isinf(st.lse[batch, :, rows]).all() and (st.argmax[batch, :, rows] == -1).all()
        assert (got.out[batch, :, rows] == 0).all() and (st.entropy[batch, :, rows] == 0).all()
        assert (st.max_weight[batch, :, rows] == 0).all() and (st.topk_index[batch, :, rows] == -1).all()
    # Padded keys receive exactly nothing (not merely a rounding residue).
    assert (st.received_sum[0, :, :10] == 0).all() and (st.received_sum[1, :, -9:] == 0).all()
    assert (st.received_sum[2] == 0).all() and (st.received_mean[2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_explicit_masks(dtype):
    # A sliding window of 20 (the hf fallback's typical mask, causal=False), a fully masked query row, and a key that
    # no query may see.
    m = n = 90
    q, k, v = make_qkv(2, 4, 2, m, n, 16, dtype, seed=11)
    i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
    band = (j <= i) & (j > i - 20)
    mask = band[None, None].repeat(2, 1, 1, 1)
    mask[1, 0, 40] = False
    mask[:, :, :, 33] = False
    spec = _spec(n)
    got = chunked_attention_stats(q, k, v, causal=False, spec=spec, attn_mask=mask, chunk_size=32)
    assert_matches_oracle(got, q, k, v, causal=False, spec=spec, attn_mask=mask)
    st = got.stats
    assert (st.argmax[1, :, 40] == -1).all() and (got.out[1, :, 40] == 0).all()
    assert (st.received_sum[..., 33] == 0).all()
    # Every query sees at most its 20 most recent keys: its top-k keys are among them.
    idx = st.topk_index[0]
    assert ((idx == -1) | ((idx <= i) & (idx > i - 20))).all()


def test_explicit_mask_per_head_with_causal_and_padding():
    q, k, v = make_qkv(1, 4, 2, 50, 60, 8, torch.float32, seed=5)
    mask = torch.rand(1, 4, 50, 60, generator=torch.Generator().manual_seed(2)) > 0.4
    kpm = torch.ones(1, 60, dtype=torch.bool)
    kpm[0, :4] = False
    spec = _spec(60)
    got = chunked_attention_stats(q, k, v, causal=True, spec=spec, attn_mask=mask, key_padding_mask=kpm, chunk_size=9)
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec, attn_mask=mask, key_padding_mask=kpm)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_score_range_hits_the_exp_floor(dtype):
    # Scores spread over ~hundreds: most weights are far below e^-40 of the row max (the floor of the fast exp).
    q, k, v = make_qkv(1, 2, 1, 140, 140, 16, dtype, seed=3, sharpness=40.0)
    spec = _spec(140)
    got = chunked_attention_stats(q, k, v, causal=True, spec=spec)
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec)
    assert torch.isfinite(got.stats.entropy).all() and (got.stats.entropy >= -1e-6).all()


def test_argmax_is_the_first_of_exact_ties():
    # Keys 5 and 70 (in different 64-key segments) and 100 are equal and score highest for every query.
    d, n = 8, 130
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(1, 1, n, d, generator=gen) * 0.1
    k[0, 0, [5, 70, 100]] = torch.ones(d)
    q = torch.ones(1, 1, n, d) * 3
    v = torch.randn(1, 1, n, d, generator=gen)
    st = chunked_attention_stats(q, k, v, causal=True, spec=StatsSpec(topk=3), chunk_size=16).stats
    pos = torch.arange(n)
    expected = torch.where(pos >= 5, 5, st.argmax[0, 0])  # rows before key 5 have another max
    assert torch.equal(st.argmax[0, 0], expected)
    assert st.topk_index[0, 0, -1].sort().values.tolist() == [5, 70, 100]
    torch.testing.assert_close(st.topk_weight[0, 0, -1, 0], st.topk_weight[0, 0, -1, 2])


def test_causal_skips_the_masked_triangle():
    # Matmul FLOPs: causal is about half of full attention (plus the diagonal chunks), not the same.
    q, k, v = make_qkv(1, 2, 1, 512, 512, 16, torch.float32)

    def flops(causal: bool) -> int:
        with FlopCounterMode(display=False) as counter:
            chunked_attention_stats(q, k, v, causal=causal, spec=StatsSpec(key_stats=False), chunk_size=64)
        return counter.get_total_flops()

    full, causal = flops(False), flops(True)
    n_chunks = 512 // 64
    assert causal / full == pytest.approx((n_chunks + 1) / (2 * n_chunks), rel=1e-6)


def test_batch_of_two_equals_two_single_runs_and_is_deterministic():
    q, k, v = make_qkv(2, 4, 2, 45, 45, 8, torch.float32, seed=9)
    spec = _spec(45)
    both = chunked_attention_stats(q, k, v, spec=spec, chunk_size=8)
    again = chunked_attention_stats(q, k, v, spec=spec, chunk_size=8)
    for a, b in zip(both.stats, again.stats):
        assert torch.equal(a, b)
    for i in range(2):
        one = chunked_attention_stats(q[i: i + 1], k[i: i + 1], v[i: i + 1], spec=spec, chunk_size=8)
        torch.testing.assert_close(one.out, both.out[i: i + 1], atol=1e-6, rtol=1e-6)
        for a, b in zip(one.stats, both.stats):
            torch.testing.assert_close(a, b[i: i + 1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("chunk", [0, -3, True, 2.5])
def test_bad_chunk_size(chunk):
    q, k, v = make_qkv(1, 1, 1, 4, 4, 8, torch.float32)
    with pytest.raises(KernelInputError, match="chunk_size=.* must be an int >= 1"):
        chunked_attention_stats(q, k, v, chunk_size=chunk)


@pytest.mark.parametrize("causal,m,n", [(True, 40, 40), (True, 5, 40), (False, 17, 33)])
def test_inputs_that_need_grad_get_the_same_numbers_and_gradients(causal, m, n):
    """Stats mode inside a training or attribution run: the statistics are those of the no-grad
    run, the output is the same and its gradients are the eager attention's."""
    q, k, v = (t.requires_grad_() for t in make_qkv(2, 4, 2, m, n, 16, torch.float32, seed=7))
    pad = torch.ones(2, n, dtype=torch.bool)
    pad[1, :3] = False  # left padding: some rows of batch 1 see nothing under causal decode
    spec = _spec(n)
    with torch.no_grad():
        plain = chunked_attention_stats(q, k, v, causal=causal, spec=spec, key_padding_mask=pad)
    res = chunked_attention_stats(q, k, v, causal=causal, spec=spec, key_padding_mask=pad)
    torch.testing.assert_close(res.out, plain.out, atol=1e-5, rtol=1e-5)
    for a, b in zip(res.stats, plain.stats):
        assert torch.equal(a, b)
    grads = torch.autograd.grad(res.out.square().sum(), (q, k, v))
    keep = pad[:, None, None, :] & (torch.ones(m, n, dtype=torch.bool).tril(n - m) if causal else True)
    kk, vv = (t.repeat_interleave(2, dim=1) for t in (k, v))
    s = (q @ kk.transpose(-1, -2) / 4.0).masked_fill(~keep, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1))  # rows that see nothing: 0
    ref = torch.autograd.grad((p @ vv).square().sum(), (q, k, v))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
