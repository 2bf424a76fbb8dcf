"""The chunked PyTorch path of the stats attention (CPU, or any device without triton).

Walks over chunks of ``c`` queries.  Each chunk holds *complete* score rows, but only over the keys some query of the
chunk can see: under causal attention chunk ``[r0, r1)`` scores keys ``[0, r1 + N - M)``, so the work follows the
visible triangle (plus half a ``c x c`` square on the diagonal) instead of the full ``M x N`` rectangle.  Complete rows
make the row max and sum final within the chunk, so the output, every row statistic and the per-key received mass
come out of one pass: no online rescaling and no second pass over the keys.

Per chunk the float32 score block ``[B, H, c, k_end]`` is touched by the ``Q K^T`` matmul, one segmented max, an
in-place centring and clamp, one ``exp``, a row sum, the ``P V`` matmul, the received-mass matmul (key stats only) and
an in-place product + row sum for the entropy.  The argmax and top-k are read from per-segment maxima instead of an
index-tracking pass over the whole row; window, sink and span masses read only their own columns; everything that is
per row is finished once, vectorised, after the loop.  Two block buffers are allocated once and reused: memory is
``O(B * H * c * N)`` besides the ``O(B * H * M * D)`` inputs and outputs.

:func:`fused_stats` runs the same algorithm as the C++ kernel of :mod:`kernels._compiled` on cache-sized blocks
(every case but explicit masks); :func:`_finish` turns the sums of either into :class:`AttnOut`.
"""

from __future__ import annotations

import torch

from . import _compiled
from .spec import AttnOut, AttnStats, StatsSpec

# A finite stand-in for -inf on masked scores, so that the entropy's sum of e * (s - max) never meets 0 * -inf = NaN.
_MASKED = -1.0e30
_EMPTY_BELOW = -1.0e29  # a row whose max is below this saw no key at all
_SEG = 64  # keys per segment of the two-level max / argmax / top-k
# exp() is evaluated at max(s - row_max, _EXP_FLOOR).  Measured on this project's CPU (AVX-512, torch 2.13): exp is
# 15-230x slower on inputs below -87 (float32 underflow, -inf included), and a weight block holding denormals makes
# the P V matmul 160x slower; long attention rows are full of such keys.  A
# visible key whose weight is below e^-40 ~ 4e-18 of the row's largest gets e^-40 instead: an absolute error below
# 4e-18 per key, far under the float32 resolution of any statistic.  Masked keys get exactly 0.
_EXP_FLOOR = -40.0
# With a learned sink the denominator is l + exp(sink - row_max); the exponent is clamped here so that a sink that
# outweighs every key by more than e^80 gives weights ~e^-80 (zero in float32) instead of an overflow to inf.
_SINK_CLAMP = 80.0
FUSED_MAX_KEYS = 1 << 24  # the compiled kernel tracks the argmax as a float32 index: exact below 2^24 keys


def _segment_max(s: torch.Tensor) -> torch.Tensor:
    """Max of each ``_SEG``-wide key segment of ``s [B, H, c, k]``: ``[B, H, c, ceil(k / _SEG)]`` (the last may be short)."""
    k = s.shape[-1]
    full = (k // _SEG) * _SEG
    if full == k:
        return s.unflatten(-1, (k // _SEG, _SEG)).amax(-1)
    tail = s[..., full:].amax(-1, keepdim=True)
    return torch.cat([s[..., :full].unflatten(-1, (k // _SEG, _SEG)).amax(-1), tail], dim=-1) if full else tail


def _max_and_first_argmax(s: torch.Tensor, segmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row max of ``s [B, H, c, k]`` and the first key holding it, from the segment maxima ``segmax [B, H, c, t]``.

    ``max(dim)`` returns the first index on ties; it runs on the segment maxima and then on the ``_SEG`` keys of the
    first segment holding the max, never on a whole row (index-tracking reductions are slow on CPU).
    """
    row_max, seg = segmax.max(-1)
    start = seg * _SEG
    keys = (start.unsqueeze(-1) + torch.arange(_SEG, device=s.device)).clamp_max_(s.shape[-1] - 1)
    # Clamped duplicates of key k-1 come after its own position, so the first hit is still the true first maximum.
    return row_max, start + s.gather(-1, keys).max(-1).indices


def _topk_of_rows(s: torch.Tensor, segmax: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``topk`` largest scores of each row of ``s [B, H, c, k]`` (descending) and their keys, ``[B, H, c, <=topk]``.

    Searched in the ``topk`` segments with the largest maxima: every value among a row's ``topk`` largest lies in one
    of them or ties with one that does, so the values are exact; keys may differ from a full sort only between equal
    scores.  (CPU ``topk`` costs about a microsecond per row whatever its length, so this is the costly statistic.)
    """
    k = s.shape[-1]
    full = k // _SEG  # whole segments; the keys after them (a short last segment) are always candidates
    parts, n_best = [], 0
    if full:
        best = segmax[..., :full].topk(min(topk, full), dim=-1).indices  # [B, H, c, n_best]
        n_best = best.shape[-1]
        parts.append(s[..., : full * _SEG].unflatten(-1, (full, _SEG))
                     .gather(-2, best.unsqueeze(-1).expand(*best.shape, _SEG)).flatten(-2))
    if full * _SEG < k:
        parts.append(s[..., full * _SEG:])
    cand = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    top_vals, at = cand.topk(min(topk, k), dim=-1)
    in_best = at < n_best * _SEG
    keys = at - n_best * _SEG + full * _SEG  # a tail candidate
    if n_best:
        from_best = best.gather(-1, (at // _SEG).clamp_max(n_best - 1)) * _SEG + at % _SEG
        keys = torch.where(in_best, from_best, keys)
    return top_vals, keys


def _received_count(m: int, n: int, causal: bool, key_padding_mask: torch.Tensor | None, dev) -> torch.Tensor:
    """``#{i : query i sees key j}`` when there is no explicit mask: ``[B or 1, 1, N]`` float32."""
    keys = torch.arange(n, device=dev)
    if causal:
        count = (m - (keys - (n - m)).clamp(0, m)).to(torch.float32)  # the queries i >= j - (N - M)
    else:
        count = torch.full((n,), float(m), device=dev)
    count = count[None, None]
    if key_padding_mask is not None:
        count = count * key_padding_mask[:, None, :]
    return count


class _Masks:
    """Causal, key-padding and explicit masks, applied in place to the ``[B, H, c, k_end]`` block of a query chunk.

    Scores are masked by adding ``_MASKED`` (it absorbs any real score) and weights by multiplying with the keep mask:
    both are vectorised broadcasts, 5-10x faster on CPU than ``masked_fill_`` with a mask broadcast over the heads.
    """

    def __init__(self, c_max: int, causal: bool, key_padding_mask: torch.Tensor | None,
                 attn_mask: torch.Tensor | None, dev) -> None:
        # Only the c x c square on the diagonal of a causal chunk holds keys after some of its queries.
        self.diag_keep = torch.ones(c_max, c_max, dtype=torch.bool, device=dev).tril_() if causal else None
        self.diag_bias = None if self.diag_keep is None else _bias(self.diag_keep)
        self.key_keep = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # [B, 1, 1, N]
        self.key_bias = None if self.key_keep is None else _bias(self.key_keep)
        self.keep = attn_mask  # [B or 1, H or 1, M, N]; its bias is built per chunk, never for the whole M x N

    def apply_(self, block: torch.Tensor, r0: int, pos0: int, weights: bool) -> None:
        """Mask scores (``weights=False``) or weights of the chunk whose first query ``r0`` sits at key ``pos0``."""
        c, k_end = block.shape[-2], block.shape[-1]
        if self.diag_keep is not None:
            diag = block[..., pos0: pos0 + c]
            if weights:
                diag.mul_(self.diag_keep[:c, :c])
            else:
                diag.add_(self.diag_bias[:c, :c])
        if self.key_keep is not None:
            if weights:
                block.mul_(self.key_keep[..., :k_end])
            else:
                block.add_(self.key_bias[..., :k_end])
        if self.keep is not None:
            keep = self.keep[:, :, r0: r0 + c, :k_end]
            if weights:
                block.mul_(keep)
            else:
                block.add_(_bias(keep))


def _bias(keep: torch.Tensor) -> torch.Tensor:
    """Float32 additive mask: 0 where ``keep``, ``_MASKED`` elsewhere."""
    return torch.where(keep, 0.0, _MASKED).to(torch.float32)


def _window_band(c_max: int, window: int, dev) -> torch.Tensor:
    """``band [c_max, c_max + window - 1]`` float32: row ``i`` (position ``p0 + i``) keeps keys ``p0 - window + 1 + j``
    for ``i <= j < i + window``, i.e. the ``window`` keys up to and including its own position."""
    j = torch.arange(c_max + window - 1, device=dev)
    i = torch.arange(c_max, device=dev)[:, None]
    return ((j >= i) & (j < i + window)).to(torch.float32)


def chunked_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    spec: StatsSpec,
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    chunk_size: int,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> AttnOut:
    """Stats attention over query chunks of ``chunk_size``; inputs already validated (see ``chunked_attention_stats``).

    Args:
        q: ``[B, H, M, D]``; k, v: ``[B, Hkv, N, D]`` (GQA: query head ``h`` uses kv head ``h // (H // Hkv)``).
        key_padding_mask: ``[B, N]`` bool, True = keep.  attn_mask: ``[B or 1, H or 1, M, N]`` bool, True = keep.
        softcap: scores become ``softcap * tanh(scores / softcap)`` before masking.  sinks: ``[H]`` float32 logits,
            one extra softmax column per head that takes mass and gives no value (see :mod:`kernels.spec`).
        score_bias: float32 ``[B or 1, H, N]`` (per key: ALiBi) or ``[B or 1, H, M, N]`` (per query and key: T5),
            added to the scores after soft-capping.
    Returns:
        :class:`AttnOut`: ``out [B, H, M, D]`` in ``q.dtype``, float32 statistics, int64 indices.
    """
    b, h, m, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    g, off = h // hkv, n - m
    dev, f32 = q.device, torch.float32
    qs = q.to(f32) * scale
    # Row-major copies (transformers hands over transposed views): each chunk's GEMMs then read plain matrices.
    k_t = k.to(f32).contiguous().transpose(-1, -2)  # [B, Hkv, D, N]
    vf = v.to(f32).contiguous()
    topk, key_stats = spec.topk, spec.key_stats
    window = min(spec.window, n)  # a window longer than the keys keeps them all

    # Per-row accumulators, finished after the loop: row max, sum of e, sum of e * (s - max), masses before / l.
    row_max, l_sum, e_dot, sink, win = (torch.zeros(b, h, m, dtype=f32, device=dev) for _ in range(5))
    argmax = torch.empty(b, h, m, dtype=torch.int64, device=dev)
    span = torch.zeros(b, h, m, len(spec.spans), dtype=f32, device=dev)
    top_vals = torch.full((b, h, m, topk), float("-inf"), dtype=f32, device=dev)
    top_keys = torch.full((b, h, m, topk), -1, dtype=torch.int64, device=dev)
    out = torch.empty(b, h, m, d, dtype=f32, device=dev)  # P V before the division by l
    received = torch.zeros(b, h, n if key_stats else 0, dtype=f32, device=dev)
    count = torch.zeros(b, h, n, dtype=f32, device=dev) if key_stats and attn_mask is not None else None

    c_max = min(chunk_size, m)
    s_buf = torch.empty(b * h * c_max * n, dtype=f32, device=dev)
    e_buf = torch.empty_like(s_buf)
    masks = _Masks(c_max, causal, key_padding_mask, attn_mask, dev)
    band = _window_band(c_max, window, dev) if window else None

    for r0 in range(0, m, c_max):
        r1 = min(m, r0 + c_max)
        c = r1 - r0
        rows = slice(r0, r1)
        k_end = r1 + off if causal else n  # keys some query of the chunk can see (causal implies M <= N)
        s = s_buf[: b * h * c * k_end].view(b, hkv, g * c, k_end)
        torch.matmul(qs[:, :, rows].reshape(b, hkv, g * c, d), k_t[..., :k_end], out=s)
        s = s.view(b, h, c, k_end)
        if softcap is not None:
            s.div_(softcap).tanh_().mul_(softcap)
        if score_bias is not None:
            s.add_(score_bias[:, :, None, :k_end] if score_bias.dim() == 3 else score_bias[:, :, rows, :k_end])
        masks.apply_(s, r0, r0 + off, weights=False)
        if count is not None:
            count[:, :, :k_end] += (s > _EMPTY_BELOW).sum(-2, dtype=f32)

        segmax = _segment_max(s)
        mx, argmax[:, :, rows] = _max_and_first_argmax(s, segmax)
        row_max[:, :, rows] = mx
        if topk:
            tv, tk = _topk_of_rows(s, segmax, topk)
            top_vals[:, :, rows, : tv.shape[-1]], top_keys[:, :, rows, : tk.shape[-1]] = tv, tk

        e = e_buf[: b * h * c * k_end].view(b, h, c, k_end)
        l_sum[:, :, rows], e_dot[:, :, rows] = _weights(s, mx, e, masks, r0, r0 + off)
        out[:, :, rows] = torch.matmul(e.view(b, hkv, g * c, k_end), vf[:, :, :k_end]).view(b, h, c, d)
        if spec.sink_tokens:
            torch.sum(e[..., : spec.sink_tokens], -1, out=sink[:, :, rows])
        if band is not None:
            pos0 = r0 + off
            lo_full, hi = pos0 - window + 1, min(k_end, pos0 + c)
            lo = max(0, lo_full)
            if hi > lo:
                torch.sum(e[..., lo:hi] * band[:c, lo - lo_full: hi - lo_full], -1, out=win[:, :, rows])
        for si, (s0, s1) in enumerate(spec.spans):
            if s0 < k_end:
                torch.sum(e[..., s0: min(s1, k_end)], -1, out=span[:, :, rows, si])
        if key_stats:
            # received[j] += sum_i e[i, j] / l[i]: a matmul reads the block once and builds no normalised copy.
            inv_l = _denominator(l_sum[:, :, rows], mx, sinks).clamp_min(1.0).reciprocal_()
            received[:, :, :k_end] += torch.bmm(inv_l.view(b * h, 1, c), e.view(b * h, c, k_end)).view(b, h, k_end)

    return _finish(q.dtype, out, row_max, l_sum, e_dot, argmax, sink, win, span, top_vals, top_keys, received,
                   count, m, n, causal, key_padding_mask, sinks)


def _denominator(l_sum: torch.Tensor, row_max: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """The softmax denominator relative to ``row_max`` (both ``[B, H, c]``): ``l``, plus ``exp(sink_h - row_max)``
    with learned sinks ``[H]`` (exponent clamped at ``_SINK_CLAMP``)."""
    if sinks is None:
        return l_sum
    return l_sum + torch.exp((sinks[None, :, None] - row_max).clamp_max(_SINK_CLAMP))


def _weights(s: torch.Tensor, mx: torch.Tensor, e: torch.Tensor, masks: _Masks, r0: int,
             pos0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``e = exp(max(s - max, _EXP_FLOOR))`` of a chunk's masked scores ``s`` (centred in place) written into
    ``e``, masked keys 0; returns the row sums ``l`` and ``sum e * (s - max)``, each ``[B, H, c]``.  Four passes."""
    # s - max: <= 0 and exactly 0 at the max.  An empty row has max = _MASKED, so its masked scores centre to 0; every
    # key of it is masked, so its e is zeroed like any masked key's.
    s.sub_(mx.unsqueeze(-1)).clamp_min_(_EXP_FLOOR)
    torch.exp(s, out=e)
    masks.apply_(e, r0, pos0, weights=True)
    return e.sum(-1), s.mul_(e).sum(-1)  # masked keys: e = 0 times a finite centred score


def fused_stats(ext, q, k, v, *, causal: bool, scale: float, spec: StatsSpec,
                key_padding_mask: torch.Tensor | None, softcap: float | None = None,
                sinks: torch.Tensor | None = None) -> AttnOut:
    """:func:`chunked_stats` by the compiled kernel ``ext`` (see ``_cpu_fused.cpp``; no ``attn_mask``, fewer than
    ``FUSED_MAX_KEYS`` keys); the same :func:`_finish`."""
    b, h, m, _ = q.shape
    n = k.shape[2]
    f32 = torch.float32
    qs = (q.to(f32) * scale).contiguous()
    k_t = k.to(f32).transpose(-1, -2).contiguous()  # [B, Hkv, D, N]
    keep = torch.empty(0, dtype=torch.bool) if key_padding_mask is None else key_padding_mask.contiguous()
    spans = torch.tensor(spec.spans, dtype=torch.int64).view(-1, 2)
    sink_logits = torch.empty(0, dtype=f32) if sinks is None else sinks
    out, row_max, l_sum, e_dot, argmax, sink, win, span, received, top_vals, top_keys = ext.stats_forward(
        qs, k_t, v.to(f32).contiguous(), keep, causal, min(spec.sink_tokens, n), min(spec.window, n), spans, spec.topk,
        spec.key_stats, _compiled.block_rows(h // k.shape[1], n), 0.0 if softcap is None else softcap, sink_logits)
    return _finish(q.dtype, out, row_max, l_sum, e_dot, argmax, sink, win, span, top_vals, top_keys, received,
                   None, m, n, causal, key_padding_mask, sinks)


def _finish(dtype, out, row_max, l_sum, e_dot, argmax, sink, win, span, top_vals, top_keys, received, count,
            m, n, causal, key_padding_mask, sinks=None) -> AttnOut:
    """Turn the per-row sums into :class:`AttnOut` (all ``[B, H, M]``-sized work, done once)."""
    zero = torch.zeros((), device=out.device)
    empty = row_max < _EMPTY_BELOW
    l1 = l_sum.clamp_min(1.0)  # l >= 1 on a row with a key (e = 1 at its max); empty rows have l = 0 and sums 0
    if sinks is None:
        inv_l, log_l = l1.reciprocal(), l1.log()
        lse = torch.where(empty, float("-inf"), log_l + row_max)
        # H = -sum p log p = log(l) - sum_j e_j (s_j - max) / l
        entropy = torch.where(empty, zero, log_l - e_dot * inv_l)
    else:
        # Denominator L = l + exp(sink - max); p_j = e_j / L over the real keys (not renormalised), so
        # H = -sum_j p_j log p_j = (l / L) log(L) - sum_j e_j (s_j - max) / L.
        big_l = _denominator(l1, row_max, sinks)
        inv_l, log_big = big_l.reciprocal(), big_l.log()
        lse = torch.where(empty, float("-inf"), torch.logaddexp(l1.log() + row_max, sinks[None, :, None]))
        entropy = torch.where(empty, zero, l1 * inv_l * log_big - e_dot * inv_l)
    max_weight = torch.where(empty, zero, inv_l)
    argmax = torch.where(empty, -1, argmax)
    valid = top_vals > _EMPTY_BELOW
    topk_w = torch.where(valid, torch.exp(top_vals - row_max.unsqueeze(-1)) * inv_l.unsqueeze(-1), zero)
    topk_i = torch.where(valid, top_keys, -1)
    if received.shape[-1]:
        if count is None:
            count = _received_count(m, n, causal, key_padding_mask, out.device)
        received_mean = torch.where(count > 0, received / count.clamp_min(1.0), zero)
    else:
        received_mean = received
    stats = AttnStats(lse, entropy, max_weight, argmax, sink * inv_l, win * inv_l, span * inv_l.unsqueeze(-1),
                      topk_w, topk_i, received, received_mean)
    return AttnOut(out.mul_(inv_l.unsqueeze(-1)).to(dtype), stats)
