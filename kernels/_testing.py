"""Helpers shared by the kernels test-suite: random inputs and oracle comparison with per-dtype tolerances."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .reference import naive_attention_stats
from .spec import MAX_TOPK, AttnOut, StatsSpec


@dataclass(frozen=True)
class Tolerance:
    """``out_*``: output tolerance; ``stat_*``: lse/entropy; ``mass_atol``: probabilities/masses (all in [0, 1])."""

    out_atol: float
    out_rtol: float
    stat_atol: float
    stat_rtol: float
    mass_atol: float


# Statistics are computed in float32 from the exact (upcast) inputs in every backend, so their error is float32
# accumulation-order noise whatever the input dtype; only `out` sees the input dtype's rounding (it is stored in the
# input dtype, and the triton kernel feeds P to the P @ V matmul in the input dtype).
TOLERANCES = {
    torch.float32: Tolerance(out_atol=2e-5, out_rtol=1e-4, stat_atol=1e-4, stat_rtol=1e-4, mass_atol=2e-5),
    torch.float16: Tolerance(out_atol=2e-3, out_rtol=5e-3, stat_atol=1e-4, stat_rtol=1e-4, mass_atol=2e-5),
    torch.bfloat16: Tolerance(out_atol=1.5e-2, out_rtol=2e-2, stat_atol=1e-3, stat_rtol=1e-3, mass_atol=1e-4),
}


def make_qkv(
    b: int, h: int, hkv: int, m: int, n: int, d: int, dtype: torch.dtype, seed: int = 0, sharpness: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``q [b, h, m, d]``, ``k``/``v`` ``[b, hkv, n, d]``; ``sharpness`` scales q so attention is peaked."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, m, d, generator=gen) * sharpness
    k = torch.randn(b, hkv, n, d, generator=gen)
    v = torch.randn(b, hkv, n, d, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _close(name: str, got: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> None:
    got64, ref64 = got.double().cpu(), ref.double().cpu()
    both_inf = torch.isinf(got64) & torch.isinf(ref64) & (torch.sign(got64) == torch.sign(ref64))
    got64 = torch.where(both_inf, torch.zeros_like(got64), got64)
    ref64 = torch.where(both_inf, torch.zeros_like(ref64), ref64)
    torch.testing.assert_close(got64, ref64, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def assert_matches_oracle(
    got: AttnOut,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    spec: StatsSpec,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    tol: Tolerance | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> None:
    """Compare every field of ``got`` with the float64 oracle; argmax / top-k indices may differ only on near-ties."""
    tol = tol or TOLERANCES[q.dtype]
    kw = dict(causal=causal, scale=scale, key_padding_mask=key_padding_mask, attn_mask=attn_mask, softcap=softcap,
              sinks=sinks, score_bias=score_bias)
    ref = naive_attention_stats(q, k, v, spec=spec, **kw)
    r, g = ref.stats, got.stats
    assert got.out.dtype == q.dtype and got.out.shape == q.shape
    _close("out", got.out, ref.out, tol.out_atol, tol.out_rtol)
    for name in ("lse", "entropy"):
        assert getattr(g, name).dtype == torch.float32, name
        _close(name, getattr(g, name), getattr(r, name), tol.stat_atol, tol.stat_rtol)
    for name in ("max_weight", "sink_mass", "window_mass", "span_mass", "topk_weight", "received_sum"):
        assert getattr(g, name).shape == getattr(r, name).shape, (name, getattr(g, name).shape)
        _close(name, getattr(g, name), getattr(r, name), tol.mass_atol, 1e-3)
    # received_mean divides by small counts near the end of a causal sequence; relative check there.
    _close("received_mean", g.received_mean, r.received_mean, tol.mass_atol, 1e-3)
    # argmax: equal unless the two best keys are a near-tie in the oracle.
    top2 = naive_attention_stats(q, k, v, spec=StatsSpec(sink_tokens=0, window=0, topk=2, key_stats=False), **kw)
    w = top2.stats.topk_weight
    near_tie = (w[..., 0] - w[..., 1]).abs() < 1e-3 if w.shape[-1] == 2 else torch.zeros_like(w[..., 0], dtype=bool)
    bad = (g.argmax.cpu() != r.argmax) & ~near_tie
    assert not bad.any(), f"argmax differs at {bad.nonzero()[:5].tolist()}"
    assert g.argmax.dtype == torch.int64 and g.topk_index.dtype == torch.int64
    if spec.topk:
        rw = r.topk_weight
        # The last slot is decided against the (k+1)-th weight; at k = MAX_TOPK that one is not available, and an
        # index there counts as decided only by the weights check above.
        if spec.topk < MAX_TOPK:
            wider = replace(spec, sink_tokens=0, window=0, spans=(), topk=spec.topk + 1, key_stats=False)
            after = naive_attention_stats(q, k, v, spec=wider, **kw).stats.topk_weight[..., -1:]
        else:
            after = rw[..., -1:]
        gaps = torch.cat([(rw[..., :-1] - rw[..., 1:]).abs(), (rw[..., -1:] - after).abs()], -1)
        prev = torch.cat([torch.full_like(rw[..., :1], 1.0), (rw[..., :-1] - rw[..., 1:]).abs()], -1)
        decisive = (torch.minimum(gaps, prev) > 1e-3) | (r.topk_index == -1)
        bad = (g.topk_index.cpu() != r.topk_index) & decisive
        assert not bad.any(), f"topk_index differs at {bad.nonzero()[:5].tolist()}"
