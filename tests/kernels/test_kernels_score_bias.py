"""A bias on the scores in the statistics paths: per head and key (ALiBi: BLOOM, MPT, Falcon with ALiBi) or per
head, query and key (T5's relative position bias).

The float64 oracle is checked against the definition written out (softmax of scale * q . k + bias under the causal
mask); the chunked PyTorch path and ``attention_with_stats`` (which runs it for a bias) against the oracle with the
per-dtype tolerances of kernels._testing; bad biases are refused in one line.
"""

import pytest
import torch

from attnlens.kernels import KernelInputError, StatsSpec, attention_with_stats
from attnlens.kernels._testing import assert_matches_oracle, make_qkv
from attnlens.kernels.reference import chunked_attention_stats, naive_attention_stats

SPEC = StatsSpec(sink_tokens=2, window=5, spans=((3, 9),), topk=3)


def _alibi(b: int, h: int, n: int) -> torch.Tensor:
    slopes = 2.0 ** (-8.0 * torch.arange(1, h + 1) / h)  # ALiBi's geometric slopes
    return (slopes[:, None] * torch.arange(n)[None]).expand(b, h, n).contiguous()


def test_oracle_is_the_definition():
    q, k, v = make_qkv(1, 4, 2, 30, 30, 8, torch.float64, seed=2, sharpness=2.0)
    bias = _alibi(1, 4, 30).double()
    ref = naive_attention_stats(q, k, v, spec=SPEC, score_bias=bias)
    s = q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 8 ** -0.5 + bias[:, :, None, :]
    a = torch.softmax(s.masked_fill(~torch.ones(30, 30, dtype=torch.bool).tril(), float("-inf")), -1)
    torch.testing.assert_close(ref.out, a @ v.repeat_interleave(2, 1))
    torch.testing.assert_close(ref.stats.max_weight, a.amax(-1))
    torch.testing.assert_close(ref.stats.received_sum, a.sum(-2))
    torch.testing.assert_close(ref.stats.lse, torch.logsumexp(s.masked_fill(
        ~torch.ones(30, 30, dtype=torch.bool).tril(), float("-inf")), -1))
    plain = naive_attention_stats(q, k, v, spec=SPEC)
    assert (plain.stats.max_weight - ref.stats.max_weight).abs().max() > 1e-2, "the bias changes nothing"


def _relative(h: int, m: int, n: int) -> torch.Tensor:
    """A T5-like bias: a per-head value for each (bucketed) distance j - i."""
    table = torch.randn(h, 9, generator=torch.Generator().manual_seed(4))
    dist = (torch.arange(n)[None] - torch.arange(m)[:, None] - (n - m)).clamp(-4, 4) + 4
    return table[:, dist][None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["per key", "per query and key"])
def test_chunked_path_matches_oracle(dtype, causal, kind):
    q, k, v = make_qkv(2, 6, 2, 70, 70, 16, dtype, seed=5, sharpness=4.0)
    kpm = torch.ones(2, 70, dtype=torch.bool)
    kpm[0, :4] = False
    bias = _alibi(2, 6, 70) if kind == "per key" else _relative(6, 70, 70)
    got = chunked_attention_stats(q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, chunk_size=16,
                                  score_bias=bias)
    assert_matches_oracle(got, q, k, v, causal=causal, spec=SPEC, key_padding_mask=kpm, score_bias=bias)


def test_public_entry_runs_the_chunked_path_for_a_bias():
    q, k, v = make_qkv(1, 4, 4, 40, 40, 8, torch.float32, seed=9, sharpness=3.0)
    bias = _alibi(1, 4, 40)[:1]
    got = attention_with_stats(q, k, v, spec=SPEC, score_bias=bias, backend="auto", compile=True)  # never compiled
    assert_matches_oracle(got, q, k, v, causal=True, spec=SPEC, score_bias=bias)
    with pytest.raises(KernelInputError, match="backend='triton' has no score_bias"):
        attention_with_stats(q, k, v, spec=SPEC, score_bias=bias, backend="triton")


@pytest.mark.parametrize("bias,words", [
    (torch.zeros(1, 3, 40), r"score_bias shape \(1, 3, 40\) is neither \[batch or 1, head, k_len\] = \[1, 4, 40\]"),
    (torch.zeros(1, 4, 39, 40), r"nor \[batch or 1, head, q_len, k_len\] = \[1, 4, 40, 40\]"),
    (torch.zeros(1, 4, 40, dtype=torch.long), "score_bias dtype torch.int64 is not a floating point type"),
    (torch.full((1, 4, 40), float("-inf")), "score_bias holds NaN or inf"),
    ("alibi", "score_bias must be None or a tensor"),
])
def test_bad_bias_is_one_line(bias, words):
    q, k, v = make_qkv(1, 4, 4, 40, 40, 8, torch.float32, seed=9)
    with pytest.raises(KernelInputError, match=words) as info:
        attention_with_stats(q, k, v, spec=SPEC, score_bias=bias)
    assert "\n" not in str(info.value)
