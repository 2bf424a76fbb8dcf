"""Pure-PyTorch implementations of :func:`kernels.attention_with_stats` semantics.

* :func:`naive_attention_stats` materialises the full ``[B, H, M, N]`` probability matrix in float64.  It is the
  test oracle and is written as directly as possible, independent of the other backends.
* :func:`chunked_attention_stats` walks over query chunks so peak memory is ``O(B * H * chunk * N)`` instead of
  ``O(B * H * M * N)``; it is the CPU / no-triton fallback (``backend="torch"``).

Both accept an extra ``attn_mask`` (bool ``[B, 1 or H, M, N]``, True = keep), ANDed with the causal and padding
masks; the transformers integration uses it for masks that are not plain causal + padding.
"""

from __future__ import annotations

import torch

from ._validate import validate_inputs
from .errors import KernelInputError
from .spec import AttnOut, AttnStats, StatsSpec

# Elements of one float32 [B, H, chunk, N] score block the chunked path aims for (~256 MiB).
_CHUNK_ELEMENTS = 1 << 26


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
) -> AttnOut:
    """Oracle: float64, materialises ``A [B, H, M, N]``.  Returns ``out`` and every stat in float64 (indices int64).

    Shapes as in :func:`kernels.attention_with_stats`; memory is ``O(B * H * M * N)``: small inputs only.
    """
    scale = validate_inputs(
        q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask, allow_float64=True
    )
    b, h, m, _ = q.shape
    n = k.shape[2]
    _check_attn_mask(attn_mask, q, n)
    g = h // k.shape[1]
    kk = k.double().repeat_interleave(g, dim=1)
    vv = v.double().repeat_interleave(g, dim=1)
    s = q.double() @ kk.transpose(-1, -2) * scale
    vis = _visible(torch.arange(m, device=q.device), n, m, causal, key_padding_mask, q.device)
    if attn_mask is not None:
        vis = vis & attn_mask
    vis = vis.expand(b, h, m, n)
    s = s.masked_fill(~vis, float("-inf"))
    has_any = vis.any(-1)
    row_max = torch.where(has_any, s.amax(-1), torch.zeros((), dtype=s.dtype))
    e = torch.exp(s - row_max[..., None])
    denom = e.sum(-1)
    p = torch.where(has_any[..., None], e / denom.clamp_min(1e-300)[..., None], torch.zeros((), dtype=s.dtype))
    lse = torch.where(has_any, torch.log(denom.clamp_min(1e-300)) + row_max, torch.full_like(row_max, float("-inf")))
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
) -> AttnOut:
    """Chunked float32 implementation: ``O(B * H * chunk * N)`` memory, same results as the oracle.

    Each chunk holds *complete* score rows for ``chunk`` queries, so its log-sum-exp is already final and the
    per-key received mass is accumulated in the same pass (no second pass needed, unlike the triton kernel, which
    only holds a key block at a time).  Deterministic: chunks are summed in a fixed order.

    Args:
        q: ``[B, H, M, D]``; k, v: ``[B, Hkv, N, D]`` (GQA without repeating k/v).
        chunk_size: queries per chunk; default keeps one float32 score block around 256 MiB.
    Returns:
        :class:`AttnOut` with ``out [B, H, M, D]`` in ``q.dtype`` and float32 stats.
    """
    scale = validate_inputs(q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask)
    b, h, m, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    _check_attn_mask(attn_mask, q, n)
    g = h // hkv
    if chunk_size is None:
        chunk_size = max(1, min(m, _CHUNK_ELEMENTS // max(1, b * h * n)))
    if chunk_size < 1:
        raise KernelInputError(f"chunk_size={chunk_size} must be >= 1")
    dev, f32 = q.device, torch.float32
    kf = k.to(f32).unsqueeze(2)  # [B, Hkv, 1, N, D]: broadcast over the g query heads of a group instead of repeating
    vf = v.to(f32).unsqueeze(2)
    keys = torch.arange(n, device=dev)
    n_spans, topk = len(spec.spans), spec.topk
    out = torch.empty(b, h, m, d, dtype=q.dtype, device=dev)
    rows_stats = {name: torch.empty(b, h, m, dtype=f32, device=dev) for name in
                  ("lse", "entropy", "max_weight", "sink_mass", "window_mass")}
    argmax = torch.empty(b, h, m, dtype=torch.int64, device=dev)
    span = torch.empty(b, h, m, n_spans, dtype=f32, device=dev)
    topk_w = torch.empty(b, h, m, topk, dtype=f32, device=dev)
    topk_i = torch.empty(b, h, m, topk, dtype=torch.int64, device=dev)
    received = torch.zeros(b, h, n if spec.key_stats else 0, dtype=f32, device=dev)
    count = torch.zeros(b, h, n if spec.key_stats else 0, dtype=f32, device=dev)
    zero = torch.zeros((), dtype=f32, device=dev)
    for r0 in range(0, m, chunk_size):
        r1 = min(m, r0 + chunk_size)
        c = r1 - r0
        qc = q[:, :, r0:r1].to(f32).view(b, hkv, g, c, d)
        s = (qc @ kf.transpose(-1, -2)).view(b, h, c, n) * scale
        rows = torch.arange(r0, r1, device=dev)
        vis = _visible(rows, n, m, causal, key_padding_mask, dev)
        if attn_mask is not None:
            vis = vis & attn_mask[:, :, r0:r1]
        s = s.masked_fill(~vis, float("-inf"))
        has_any = vis.any(-1).expand(b, h, c)
        row_max = torch.where(has_any, s.amax(-1), zero)
        centered = s - row_max[..., None]  # -inf where invisible
        e = torch.exp(centered)
        denom = e.sum(-1).clamp_min(1e-30)  # >= 1 on rows with a visible key
        p = e / denom[..., None]
        out[:, :, r0:r1] = (p.view(b, hkv, g, c, n) @ vf).view(b, h, c, d).to(q.dtype)
        lse = torch.where(has_any, torch.log(denom) + row_max, torch.full_like(row_max, float("-inf")))
        rows_stats["lse"][:, :, r0:r1] = lse
        # H = log(l) - sum_j p_j (s_j - max): stable form of -sum p log p, no log(0) on masked keys.
        plogit = torch.where(e > 0, p * centered, zero).sum(-1)
        rows_stats["entropy"][:, :, r0:r1] = torch.where(has_any, torch.log(denom) - plogit, zero)
        rows_stats["max_weight"][:, :, r0:r1] = torch.where(has_any, 1.0 / denom, zero)
        argmax[:, :, r0:r1] = torch.where(has_any, s.argmax(-1), torch.full_like(argmax[:, :, r0:r1], -1))
        rows_stats["sink_mass"][:, :, r0:r1] = p[..., : spec.sink_tokens].sum(-1)
        pos = rows + (n - m)
        in_window = (keys[None, :] <= pos[:, None]) & (keys[None, :] > pos[:, None] - spec.window)
        rows_stats["window_mass"][:, :, r0:r1] = (p * in_window).sum(-1)
        for si, (s0, e0) in enumerate(spec.spans):
            span[:, :, r0:r1, si] = p[..., s0:e0].sum(-1)
        if topk:
            w, i = _topk(s, lse, topk)
            topk_w[:, :, r0:r1], topk_i[:, :, r0:r1] = w, i
        if spec.key_stats:
            received += p.sum(-2)
            count += vis.sum(-2, dtype=f32).expand(b, h, n) if vis.shape[1] == 1 else vis.sum(-2, dtype=f32)
    if spec.key_stats:
        received_mean = torch.where(count > 0, received / count.clamp_min(1), zero)
    else:
        received_mean = received
    stats = AttnStats(
        rows_stats["lse"], rows_stats["entropy"], rows_stats["max_weight"], argmax, rows_stats["sink_mass"],
        rows_stats["window_mass"], span, topk_w, topk_i, received, received_mean,
    )
    return AttnOut(out, stats)
