"""Retrieval vs streaming heads (DuoAttention, Xiao et al. 2024), from attention mass and from trained gates.

(a) :func:`streaming_profile`: per head, the share of attention a query puts on the first
``sink`` keys plus the ``recent`` most recent keys (what a streaming head keeps), over
queries that have distant keys at all (i >= sink + recent). High = streaming-like; the
rest of the mass goes to distant context (retrieval-like). Inputs are per-row masses,
from a pattern (:func:`masses_from_pattern`) or the kernel's ``sink_mass`` and
``window_mass`` (``StatsSpec(sink_tokens=sink, window=recent)``), identical definitions.

(b) :func:`gate_scores`: gates per KV head trained by :mod:`analyses.duo_gates`, binarised,
compared with retrieval scores.

DuoAttention uses sink 64 / recent 256 at contexts of tens of thousands of tokens; on
short CPU contexts both are scaled by ``context / 8192`` (:func:`scaled_window`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError

PAPER_SINK, PAPER_RECENT, PAPER_CONTEXT = 64, 256, 8192


def scaled_window(context: int) -> tuple[int, int]:
    """(sink, recent) scaled from DuoAttention's 64/256 by ``context / 8192``; at least 1 and 4."""
    f = min(1.0, context / PAPER_CONTEXT)
    return max(1, round(PAPER_SINK * f)), max(4, round(PAPER_RECENT * f))


def masses_from_pattern(pattern: Float[Tensor, "batch head q k"], *, sink: int, recent: int
                        ) -> tuple[Float[Tensor, "batch head q"], Float[Tensor, "batch head q"]]:
    """(sink mass, recent-window mass incl. the query's own key) per row of a causal self-attention pattern."""
    p = pattern.double()
    q, k = p.shape[-2:]
    pos = torch.arange(q) + (k - q)
    keys = torch.arange(k)
    band = (keys[None, :] <= pos[:, None]) & (keys[None, :] > pos[:, None] - recent)
    return p[..., :sink].sum(-1).float(), (p * band).sum(-1).float()


def streaming_profile(runs: Sequence[Mapping[int, tuple[Tensor, Tensor]]], *, n_layers: int, n_heads: int,
                      sink: int, recent: int, provenance: Provenance,
                      retrieval: np.ndarray | None = None) -> list[HeadScores]:
    """Mean (sink + recent) mass per head over queries i >= sink + recent, over runs.

    Each run maps layer -> (sink_mass, window_mass), both ``[batch, head, q]`` for a full prefill
    (query i at position i). Sink and window overlap only when i < sink + recent, which is excluded.
    """
    total = np.zeros((n_layers, n_heads))
    count = np.zeros((n_layers, 1))
    for run in runs:
        for layer, (s, w) in run.items():
            start = sink + recent
            if s.shape[-1] <= start:
                continue
            m = (s[..., start:].double() + w[..., start:].double())
            total[layer] += m.sum((0, 2)).numpy()
            count[layer] += m.shape[0] * m.shape[2]
    if not count.any():
        raise AnalysisError(f"no prompt is longer than sink + recent = {sink + recent} tokens: use longer prompts")
    with np.errstate(invalid="ignore"):
        mass = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    summary = {"heads_streaming_above_0.9": int(np.nansum(mass > 0.9)), "n_heads": int(mass.size),
               "mean": float(np.nanmean(mass))}
    if retrieval is not None:
        summary.update(agreement(1 - mass, retrieval))
    return [HeadScores(analysis="streaming", metric="streaming_mass", scores=mass, provenance=provenance,
                       description=f"mean attention on the first {sink} + last {recent} keys (streaming heads' view)",
                       params={"sink": sink, "recent": recent, "scaled_from": [PAPER_SINK, PAPER_RECENT]},
                       summary=summary)]


def agreement(score: np.ndarray, retrieval: np.ndarray, *, top: int | None = None) -> dict:
    """Spearman rank correlation and top-k overlap between a per-head "needs full context" score and retrieval scores."""
    a, b = np.asarray(score, dtype=float).ravel(), np.asarray(retrieval, dtype=float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    k = top or max(1, int(np.sum(b > 0.1)))
    rho = float(np.corrcoef(_rank(a), _rank(b))[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    overlap = len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k]))
    return {"spearman_vs_retrieval": rho, "top_k": k, "top_k_overlap": overlap,
            "top_k_overlap_random_expectation": k * k / max(1, a.size)}


def kv_agreement(retrieval_kv: np.ndarray, retrieval: np.ndarray, *, min_score: float = 0.1) -> dict:
    """How many retrieval heads (score > ``min_score``) sit in a KV head the gates keep at full
    attention (``retrieval_kv [layer, head]`` bool, per query head), against the share of query
    heads those KV heads cover (what a random choice of the same size would catch)."""
    keep = np.asarray(retrieval_kv, dtype=bool)
    r = np.nan_to_num(np.asarray(retrieval, dtype=float), nan=0.0) > min_score
    n = int(r.sum())
    return {"retrieval_heads": n, "retrieval_heads_in_full_kv_heads": int((r & keep).sum()),
            "retrieval_heads_in_full_kv_heads_by_chance": float(n * keep.mean())}


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (many heads have retrieval score exactly 0)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size, dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def gate_scores(gates: Float[Tensor, "layer kv_head"], *, n_heads: int, provenance: Provenance,
                threshold: float = 0.5, retrieval: np.ndarray | None = None, params: dict | None = None
                ) -> list[HeadScores]:
    """Trained DuoAttention gates, expanded from KV heads to query heads; binarised at ``threshold``."""
    g = gates.detach().double()
    n_layers, n_kv = g.shape
    per_head = g.repeat_interleave(n_heads // n_kv, dim=1).numpy()
    binary = per_head > threshold
    summary = {"retrieval_kv_heads": int((g > threshold).sum()), "n_kv_heads": int(g.numel()),
               "sparsity": float(1 - (g > threshold).double().mean())}
    if retrieval is not None:
        summary.update(agreement(per_head, retrieval))
        summary.update(kv_agreement(binary, retrieval))
    return [HeadScores(analysis="streaming", metric="duo_gate", scores=per_head, provenance=provenance,
                       description="DuoAttention gate alpha per head (its KV head's); > threshold = retrieval head",
                       params={"threshold": threshold, **(params or {})}, summary=summary,
                       arrays={"gates_kv": g.numpy(), "binary": binary.astype(np.float64)})]
