"""Pure-PyTorch implementations of :func:`kernels.attention_with_stats` semantics.

* :func:`naive_attention_stats` materialises the full ``[B, H, M, N]`` probability matrix in float64.  It is the
  test oracle and is written as directly as possible, independent of the other backends.
* :func:`chunked_attention_stats` walks over query chunks so peak memory is ``O(B * H * chunk * N)`` instead of
  ``O(B * H * M * N)``, computing only the visible causal triangle; it is the CPU / no-triton fallback
  (``backend="torch"``).  Its loop lives in :mod:`kernels._cpu_stats`; on the CPU it runs as the compiled C++ kernel
  of :mod:`kernels._compiled` where that applies.

Both accept an extra ``attn_mask`` (bool ``[B, 1 or H, M, N]``, True = keep), ANDed with the causal and padding
masks; the transformers integration uses it for masks that are not plain causal + padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import _compiled
from ._compiled import use_compiled
from ._cpu_stats import FUSED_MAX_KEYS, chunked_stats, fused_stats
from ._validate import check_logit_terms, check_score_bias, validate_inputs
from .errors import KernelInputError
from .spec import AttnOut, AttnStats, StatsSpec

# Queries per chunk of the chunked path: measured fastest on a 2-core CPU for SmolLM2's 9 heads at 2k-8k keys
# (smaller chunks pay per-op overhead, larger ones fall out of cache; see benchmarks/results/cpu_stats.md) ...
_CHUNK_ROWS = 64
# ... unless one float32 [B, H, chunk, N] block would exceed this many elements (64 MiB; two such blocks are live).
_CHUNK_ELEMENTS = 1 << 24


def _check_attn_mask(attn_mask: torch.Tensor | None, q: torch.Tensor, n: int) -> None:
    if attn_mask is None:
        return
    b, h, m, _ = q.shape
    if attn_mask.dtype != torch.bool or attn_mask.dim() != 4:
        raise KernelInputError(f"attn_mask must be a 4-D bool tensor, got {attn_mask.dtype} {tuple(attn_mask.shape)}")
    if attn_mask.shape[0] not in (1, b) or attn_mask.shape[1] not in (1, h) or tuple(attn_mask.shape[2:]) != (m, n):
        raise KernelInputError(
            f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to [batch, head, q_len, k_len] = "
            f"[{b}, {h}, {m}, {n}]"
        )


def _visible(
    rows: torch.Tensor, n: int, m: int, causal: bool, key_padding_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Bool visibility for query indices ``rows [C]``: shape ``[B or 1, 1, C, N]``."""
    keys = torch.arange(n, device=device)
    pos = rows + (n - m)  # queries are aligned to the end of the keys
    vis = (keys[None, :] <= pos[:, None]) if causal else torch.ones(rows.numel(), n, dtype=torch.bool, device=device)
    vis = vis[None, None]
    if key_padding_mask is not None:
        vis = vis & key_padding_mask[:, None, None, :]
    return vis


def _topk(scores: torch.Tensor, lse: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of masked ``scores [..., N]`` (-inf = invisible) as (weights, int64 indices); pads with (0, -1)."""
    lead = scores.shape[:-1]
    if k == 0:
        return scores.new_zeros(*lead, 0), torch.zeros(*lead, 0, dtype=torch.int64, device=scores.device)
    kk = min(k, scores.shape[-1])
    vals, idx = scores.topk(kk, dim=-1)
    valid = torch.isfinite(vals)
    weight = torch.where(valid, torch.exp(vals - lse[..., None]), torch.zeros((), dtype=vals.dtype, device=vals.device))
    idx = torch.where(valid, idx, torch.full_like(idx, -1))
    if kk < k:
        weight = torch.cat([weight, weight.new_zeros(*lead, k - kk)], dim=-1)
        idx = torch.cat([idx, idx.new_full((*lead, k - kk), -1)], dim=-1)
    return weight, idx


def naive_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    spec: StatsSpec = StatsSpec(),
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> AttnOut:
    """Oracle: float64, materialises ``A [B, H, M, N]``.  Returns ``out`` and every stat in float64 (indices int64).

    Shapes as in :func:`kernels.attention_with_stats`; memory is ``O(B * H * M * N)``: small inputs only.
    ``softcap``, ``sinks`` and ``score_bias`` as there: written here straight from their definition in :mod:`kernels.spec`.
    """
    scale = validate_inputs(
        q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask, allow_float64=True
    )
    softcap, sinks = check_logit_terms(softcap, sinks, q)
    score_bias = check_score_bias(score_bias, q, k.shape[2])
    b, h, m, _ = q.shape
    n = k.shape[2]
    _check_attn_mask(attn_mask, q, n)
    g = h // k.shape[1]
    kk = k.double().repeat_interleave(g, dim=1)
    vv = v.double().repeat_interleave(g, dim=1)
    s = q.double() @ kk.transpose(-1, -2) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if score_bias is not None:
        s = s + (score_bias.double()[:, :, None, :] if score_bias.dim() == 3 else score_bias.double())
    vis = _visible(torch.arange(m, device=q.device), n, m, causal, key_padding_mask, q.device)
    if attn_mask is not None:
        vis = vis & attn_mask
    vis = vis.expand(b, h, m, n)
    s = s.masked_fill(~vis, float("-inf"))
    has_any = vis.any(-1)
    # lse = log(sum_j exp s_j [+ exp sink_h]); A = exp(s - lse): with a sink, the real keys' weights sum to
    # 1 - exp(sink - lse).  Rows with no visible key: lse = -inf, A = 0.
    lse = torch.logsumexp(s, -1)
    if sinks is not None:
        lse = torch.logaddexp(lse, sinks.double()[None, :, None].expand_as(lse))
    lse = torch.where(has_any, lse, torch.full_like(lse, float("-inf")))
    p = torch.where(vis, torch.exp(s - torch.where(has_any, lse, 0.0)[..., None]), torch.zeros((), dtype=s.dtype))
    entropy = -torch.special.xlogy(p, p).sum(-1)
    max_weight = p.amax(-1)
    argmax = torch.where(has_any, s.argmax(-1), torch.full_like(s[..., 0], -1, dtype=torch.int64))
    keys = torch.arange(n, device=q.device)
    pos = torch.arange(m, device=q.device) + (n - m)
    sink = p[..., : spec.sink_tokens].sum(-1)
    in_window = (keys[None, :] <= pos[:, None]) & (keys[None, :] > pos[:, None] - spec.window)
    window = (p * in_window).sum(-1)
    span = torch.stack([p[..., s0:e0].sum(-1) for s0, e0 in spec.spans], dim=-1) if spec.spans else p.new_zeros(
        b, h, m, 0
    )
    topk_w, topk_i = _topk(s, lse, spec.topk)
    if spec.key_stats:
        received_sum = p.sum(-2)
        count = vis.sum(-2)
        received_mean = torch.where(count > 0, received_sum / count.clamp_min(1), torch.zeros((), dtype=p.dtype))
    else:
        received_sum = received_mean = p.new_zeros(b, h, 0)
    stats = AttnStats(lse, entropy, max_weight, argmax, sink, window, span, topk_w, topk_i, received_sum, received_mean)
    return AttnOut(p @ vv, stats)


def chunked_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    spec: StatsSpec = StatsSpec(),
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    compile: bool | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> AttnOut:
    """Chunked float32 implementation: ``O(B * H * chunk * N)`` memory, same results as the oracle.

    Each chunk of queries holds complete score rows over the keys it can see (under causal attention only the visible
    triangle is computed), so the log-sum-exp is final within the chunk and the output, every row statistic and the
    per-key received mass come out of one pass (see :mod:`kernels._cpu_stats`).  Deterministic: chunks are
    accumulated in a fixed order.

    Args:
        q: ``[B, H, M, D]``; k, v: ``[B, Hkv, N, D]`` (GQA without repeating k/v).
        chunk_size: queries per chunk; default ``_CHUNK_ROWS``, fewer when one float32 ``[B, H, chunk, N]`` block
            would exceed ``_CHUNK_ELEMENTS``.
        compile: run the compiled C++ kernel (CPU only; not for ``attn_mask``), the same algorithm on cache-sized
            blocks.  ``None``: the ``ATTNLENS_COMPILE`` environment variable, else only for calls with at least
            ``MIN_SCORES`` visible scores and a C++ compiler and ninja there (see :mod:`kernels._compiled`).
        softcap, sinks, score_bias: as in :func:`kernels.attention_with_stats` (``score_bias`` runs this chunked
            loop, never the compiled kernel).
    Returns:
        :class:`AttnOut` with ``out [B, H, M, D]`` in ``q.dtype`` and float32 stats.
    """
    scale = validate_inputs(q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask)
    softcap, sinks = check_logit_terms(softcap, sinks, q)
    score_bias = check_score_bias(score_bias, q, k.shape[2])
    return chunked_validated(q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask,
                             attn_mask=attn_mask, chunk_size=chunk_size, compile=compile, softcap=softcap, sinks=sinks,
                             score_bias=score_bias)


def chunked_validated(q, k, v, *, causal: bool, scale: float, spec: StatsSpec, key_padding_mask, attn_mask=None,
                      chunk_size: int | None = None, compile: bool | None = None, softcap: float | None = None,
                      sinks: torch.Tensor | None = None, score_bias: torch.Tensor | None = None) -> AttnOut:
    """:func:`chunked_attention_stats` for inputs :func:`validate_inputs`, :func:`check_logit_terms` and
    :func:`check_score_bias` have passed (``scale`` resolved, ``sinks`` and ``score_bias`` float32)."""
    b, h, m, _ = q.shape
    n = k.shape[2]
    _check_attn_mask(attn_mask, q, n)
    if chunk_size is None:
        chunk_size = max(1, min(m, _CHUNK_ROWS, _CHUNK_ELEMENTS // max(1, b * h * n)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise KernelInputError(f"chunk_size={chunk_size!r} must be an int >= 1")
    fused = (use_compiled(compile, q, b * h * _visible_pairs(m, n, causal)) and attn_mask is None
             and score_bias is None and n < FUSED_MAX_KEYS)

    def run() -> AttnOut:
        ext = _compiled.extension() if fused else None  # None too when building failed (warned once)
        if ext is not None:
            return fused_stats(ext, q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask,
                               softcap=softcap, sinks=sinks)
        return chunked_stats(q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask,
                             attn_mask=attn_mask, chunk_size=chunk_size, softcap=softcap, sinks=sinks,
                             score_bias=score_bias)

    if needs_grad(q, k, v):
        if score_bias is not None:
            raise KernelInputError("score_bias: statistics with a score bias have no differentiable output here; "
                                   "call under torch.no_grad()")  # the one-pass path writes into preallocated buffers, which autograd cannot follow
        return grad_through_sdpa(run, q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask,
                                 attn_mask=attn_mask, softcap=softcap, sinks=sinks)
    return run()


def _visible_pairs(m: int, n: int, causal: bool) -> int:
    """Query-key pairs inside the causal triangle (end-aligned queries), or all ``m * n``."""
    return m * (n - m) + m * (m + 1) // 2 if causal else m * n


def needs_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether autograd will follow this attention call."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def grad_through_sdpa(stats_run: Callable[[], AttnOut], q, k, v, *, causal: bool, scale: float, key_padding_mask,
                      attn_mask=None, softcap: float | None = None, sinks: torch.Tensor | None = None) -> AttnOut:
    """For a run that needs gradients: the statistics of ``stats_run()`` (a kernel without a
    backward; statistics are never differentiated) computed without grad, the output from SDPA
    with the same masks, which carries the gradients (with soft-capping or sinks, which SDPA
    lacks, from the materialised float32 softmax instead)."""
    with torch.no_grad():
        res = stats_run()
    if softcap is not None or sinks is not None:
        out = _differentiable_capped(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask,
                                     attn_mask=attn_mask, softcap=softcap, sinks=sinks)
    else:
        out = _differentiable_output(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask,
                                     attn_mask=attn_mask)
    return AttnOut(out, res.stats)


def _differentiable_capped(q, k, v, *, causal: bool, scale: float, key_padding_mask, attn_mask, softcap,
                           sinks) -> torch.Tensor:
    """``[B, H, M, D]``: soft-capped / sink attention written out in float32 (``O(M * N)`` memory), for gradients."""
    m, n = q.shape[2], k.shape[2]
    g = q.shape[1] // k.shape[1]
    f32 = torch.float32
    s = q.to(f32) @ k.to(f32).repeat_interleave(g, dim=1).transpose(-1, -2) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    keep = _visible(torch.arange(m, device=q.device), n, m, causal, key_padding_mask, q.device)
    if attn_mask is not None:
        keep = keep & attn_mask
    s = s.masked_fill(~keep, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.to(f32)[None, :, None, None].expand(*s.shape[:-1], 1)], dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)[..., :n]  # a row with no key and no sink: NaN -> 0
    out = p @ v.to(f32).repeat_interleave(g, dim=1)
    return torch.where(keep.any(-1, keepdim=True), out, torch.zeros((), dtype=f32, device=q.device)).to(q.dtype)


def _differentiable_output(q, k, v, *, causal: bool, scale: float, key_padding_mask, attn_mask) -> torch.Tensor:
    """``[B, H, M, D]``: the attention output through SDPA with the same masks (rows that see no
    key give 0, as the chunked path does), for runs that need gradients. Plain causal attention
    over equal lengths takes SDPA's own causal path (no mask tensor); masks stay unexpanded over
    heads unless ``attn_mask`` has them."""
    m, n = q.shape[2], k.shape[2]
    f32 = torch.float32
    qf, kf, vf = q.to(f32), k.to(f32), v.to(f32)
    if key_padding_mask is None and attn_mask is None and (not causal or m == n):  # every row sees a key
        return F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal, scale=scale, enable_gqa=True).to(q.dtype)
    keep = torch.ones(1, 1, m, n, dtype=torch.bool, device=q.device)
    if causal:
        keep = keep & (torch.arange(n, device=q.device) <= torch.arange(m, device=q.device)[:, None] + (n - m))
    if key_padding_mask is not None:
        keep = keep & key_padding_mask.bool()[:, None, None, :]
    if attn_mask is not None:
        keep = keep & attn_mask.bool()
    seen = keep.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=keep | ~seen, scale=scale, enable_gqa=True)
    return torch.where(seen, out, torch.zeros((), dtype=out.dtype, device=out.device)).to(q.dtype)
