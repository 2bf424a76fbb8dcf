"""Launches the row and column kernels, wrapped in one ``torch.library.custom_op`` (with a shape-only fake) so the
call composes with ``torch.compile`` / meta tensors.

Import this module only after ``TRITON_INTERPRET`` has its final value (the kernels read it when decorated).
"""

from __future__ import annotations

import torch
import triton

from ._triton_col import col_stats_kernel
from ._triton_row import LOG2E, row_stats_kernel
from ._validate import triton_interpreting
from .spec import AttnOut, AttnStats, StatsSpec

_INTERPRET = triton_interpreting()
# Fixed block sizes under the interpreter (no autotuning without a GPU driver); small to keep CPU tests fast.
_INTERP_ROW_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}
_INTERP_COL_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}

_OutTuple = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
]


def _alloc(q: torch.Tensor, n: int, n_spans: int, topk: int, key_stats: bool) -> _OutTuple:
    b, h, m, _ = q.shape
    f32 = dict(dtype=torch.float32, device=q.device)
    i64 = dict(dtype=torch.int64, device=q.device)
    nk = n if key_stats else 0
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty(b, h, m, **f32), torch.empty(b, h, m, **f32), torch.empty(b, h, m, **f32),
        torch.empty(b, h, m, **i64), torch.empty(b, h, m, **f32), torch.empty(b, h, m, **f32),
        torch.empty(b, h, m, n_spans, **f32), torch.empty(b, h, m, topk, **f32), torch.empty(b, h, m, topk, **i64),
        torch.empty(b, h, nk, **f32), torch.empty(b, h, nk, **f32),
    )


@torch.library.custom_op("attnlens::attention_with_stats", mutates_args=())
def _attention_with_stats_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    sink_tokens: int,
    window: int,
    spans: list[int],
    topk: int,
    key_stats: bool,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> _OutTuple:
    """Flat-tuple form of :func:`triton_attention_stats`; ``spans`` is flattened ``[s0, e0, s1, e1, ...]``;
    ``softcap`` 0 means none; ``sinks`` ``[H]`` float32 or None."""
    b, h, m, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    n_spans = len(spans) // 2
    outs = _alloc(q, n, n_spans, topk, key_stats)
    o, lse, ent, maxw, arg, sink, win, span, topw, topi, rsum, rmean = outs
    has_pad = key_padding_mask is not None
    pad = key_padding_mask.to(torch.int8).contiguous() if has_pad else torch.empty(1, dtype=torch.int8, device=q.device)
    spans_t = torch.tensor(spans if spans else [0, 0], dtype=torch.int32, device=q.device)
    has_sinks = sinks is not None
    sinks_t = sinks.contiguous() if has_sinks else torch.empty(1, dtype=torch.float32, device=q.device)
    softcap2 = softcap * LOG2E
    common = dict(
        HAS_SOFTCAP=softcap > 0, D=d, BLOCK_D=triton.next_power_of_2(d), CAUSAL=causal, HAS_PAD=has_pad,
        IEEE=q.dtype == torch.float32, INTERPRET=_INTERPRET,
    )
    qk_scale = scale * LOG2E
    buckets = (triton.next_power_of_2(m), triton.next_power_of_2(n))  # autotuning keys only
    row_blocks = _INTERP_ROW_BLOCKS if _INTERPRET else {}

    def row_grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), b * h)

    row_stats_kernel[row_grid](
        q, k, v, o, lse, ent, maxw, arg, sink, win, span, topw, topi, pad, spans_t, sinks_t,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        h, h // hkv, m, n, n - m, qk_scale, softcap2, sink_tokens, window, *buckets, HAS_SINKS=has_sinks,
        N_SPANS=n_spans, SPAN_PAD=max(1, triton.next_power_of_2(max(n_spans, 1))),
        TOPK=topk, TOPK_PAD=max(1, triton.next_power_of_2(max(topk, 1))),
        **common, **row_blocks,
    )
    if key_stats:
        col_blocks = _INTERP_COL_BLOCKS if _INTERPRET else {}

        def col_grid(meta):
            return (triton.cdiv(n, meta["BLOCK_N"]), b * h)

        col_stats_kernel[col_grid](
            q, k, lse, rsum, rmean, pad, *q.stride(), *k.stride(),
            h, h // hkv, m, n, n - m, qk_scale, softcap2, *buckets, **common, **col_blocks,
        )
    return outs


@_attention_with_stats_op.register_fake
def _(q, k, v, key_padding_mask, causal, scale, sink_tokens, window, spans, topk, key_stats, softcap=0.0, sinks=None):
    return _alloc(q, k.shape[2], len(spans) // 2, topk, key_stats)


def triton_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    spec: StatsSpec,
    key_padding_mask: torch.Tensor | None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> AttnOut:
    """Run the fused kernels on validated inputs (see :func:`kernels.attention_with_stats` for shapes).

    No atomics anywhere: the row pass owns each query row, the column pass owns each key.
    """
    spans = [x for pair in spec.spans for x in pair]
    o, *stats = _attention_with_stats_op(
        q, k, v, key_padding_mask, bool(causal), float(scale), spec.sink_tokens, spec.window, spans, spec.topk,
        spec.key_stats, 0.0 if softcap is None else float(softcap), sinks,
    )
    return AttnOut(o, AttnStats(*stats))
