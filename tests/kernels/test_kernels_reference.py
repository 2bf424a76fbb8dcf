"""The float64 oracle against hand-derived facts, and the chunked torch path against the oracle."""

import math

import pytest
import torch

from attnlens.kernels import StatsSpec, attention_with_stats
from attnlens.kernels._testing import assert_matches_oracle, make_qkv
from attnlens.kernels.reference import chunked_attention_stats, naive_attention_stats

SPEC = StatsSpec(sink_tokens=2, window=5, spans=((0, 1), (3, 9), (7, 12)), topk=4, key_stats=True)


def test_oracle_output_matches_sdpa():
    q, k, v = make_qkv(2, 4, 2, 13, 13, 16, torch.float64)
    ref = naive_attention_stats(q, k, v, causal=True, spec=SPEC)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ref.out, sdpa)


def test_oracle_hand_values():
    # One query, keys with equal scores: uniform attention over the visible keys.
    q = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    k = torch.randn(1, 1, 6, 4, dtype=torch.float64)
    v = torch.randn(1, 1, 6, 4, dtype=torch.float64)
    st = naive_attention_stats(q, k, v, causal=True, spec=StatsSpec(sink_tokens=1, window=2, spans=((1, 4),))).stats
    assert st.entropy.item() == pytest.approx(math.log(6))
    assert st.lse.item() == pytest.approx(math.log(6))
    assert st.sink_mass.item() == pytest.approx(1 / 6)
    assert st.window_mass.item() == pytest.approx(2 / 6)
    assert st.span_mass.item() == pytest.approx(3 / 6)
    assert st.received_mean.flatten().tolist() == pytest.approx([1 / 6] * 6)


def test_received_mean_is_act_criterion_for_causal():
    q, k, v = make_qkv(1, 2, 2, 10, 10, 8, torch.float64)
    st = naive_attention_stats(q, k, v, causal=True).stats
    n = 10
    torch.testing.assert_close(st.received_mean, st.received_sum / torch.arange(n, 0, -1, dtype=torch.float64))
    torch.testing.assert_close(st.received_sum.sum(-1), torch.full((1, 2), 10.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "causal,b,h,hkv,m,n,chunk",
    [
        (True, 2, 4, 2, 37, 37, 8),
        (True, 1, 4, 1, 5, 41, 2),  # decoding: q_len < k_len, end-aligned
        (False, 2, 2, 2, 19, 40, 7),
        (False, 1, 3, 3, 50, 10, None),  # q_len > k_len only without causal
    ],
)
def test_chunked_matches_oracle(dtype, causal, b, h, hkv, m, n, chunk):
    q, k, v = make_qkv(b, h, hkv, m, n, 16, dtype, seed=m + n)
    spec = StatsSpec(sink_tokens=2, window=5, spans=((0, 1), (3, 9), (n - 4, n)), topk=4)
    got = chunked_attention_stats(q, k, v, causal=causal, spec=spec, chunk_size=chunk)
    assert_matches_oracle(got, q, k, v, causal=causal, spec=spec)


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_key_padding_and_empty_rows(causal):
    # Left padding: query rows 0..2 of batch 0 see no key (causal), which must give the documented empty-row values.
    q, k, v = make_qkv(2, 2, 1, 12, 12, 8, torch.float32, seed=3)
    kpm = torch.ones(2, 12, dtype=torch.bool)
    kpm[0, :3] = False
    kpm[1, -2:] = False
    got = chunked_attention_stats(q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, chunk_size=5)
    assert_matches_oracle(got, q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm)
    if causal:
        st = got.stats
        assert torch.isinf(st.lse[0, :, :3]).all() and (st.argmax[0, :, :3] == -1).all()
        assert (got.out[0, :, :3] == 0).all() and (st.entropy[0, :, :3] == 0).all()
        assert (st.topk_index[0, :, :3] == -1).all()
    assert (got.stats.received_sum[0, :, :3] == 0).all() and (got.stats.received_mean[1, :, -2:] == 0).all()


def test_topk_larger_than_keys_pads():
    q, k, v = make_qkv(1, 1, 1, 3, 3, 8, torch.float32)
    st = chunked_attention_stats(q, k, v, causal=True, spec=StatsSpec(topk=8)).stats
    assert st.topk_index.shape == (1, 1, 3, 8)
    assert st.topk_index[0, 0, 0].tolist() == [0] + [-1] * 7
    torch.testing.assert_close(st.topk_weight[..., :3].sum(-1), torch.ones(1, 1, 3))


def test_absent_stats_are_empty_tensors():
    q, k, v = make_qkv(1, 2, 2, 4, 4, 8, torch.float32)
    st = attention_with_stats(q, k, v, spec=StatsSpec(topk=0, key_stats=False)).stats
    assert st.span_mass.shape == (1, 2, 4, 0)
    assert st.topk_weight.shape == (1, 2, 4, 0) and st.topk_index.dtype == torch.int64
    assert st.received_sum.shape == (1, 2, 0) and st.received_mean.shape == (1, 2, 0)


def test_auto_on_cpu_uses_torch_and_any_d_head():
    q, k, v = make_qkv(1, 2, 1, 9, 9, 24, torch.float32)
    got = attention_with_stats(q, k, v, spec=SPEC.__class__(spans=((2, 9),), topk=3))
    assert_matches_oracle(got, q, k, v, causal=True, spec=StatsSpec(spans=((2, 9),), topk=3))
