"""Head taxonomy on repeated random token sequences: sink, previous-token, positional,
duplicate-token, induction and local scores, and one type per head.

Input: each layer's pattern ``[batch, head, q, k]`` on ``prefix + r + r``, where ``r`` is
``repeat_len`` random tokens and ``prefix`` is ``offset`` tokens (e.g. BOS), and optionally the
pattern on ``prefix + s + s`` where ``s`` is ``r`` shuffled (the same tokens in another order).
Scores per head, each in [0, 1]:

* sink: mean attention on the sink keys (the prefix, or the first token when there is none).
* previous_token: A[i, i-1] over queries i > offset.
* duplicate_token: A[i, i-R] over the second copy (attends to the earlier copy of its own token).
* induction: A[i, i-R+1] over the second copy (attends to the token after that earlier copy).
* local: mass on the ``window`` most recent keys (incl. itself), over queries i >= offset + window.
* positional: the attention that is a fixed function of the relative offset, the same whatever
  the content. Three conditions are compared: the first copy (random tokens), the second copy
  (repeated tokens: content now matches earlier keys) and the shuffled first copy (the same
  tokens reordered). For offsets o = 0, 2, 3, ..., ``max_offset`` - 1 (the previous token,
  o = 1, and the sink keys are left out: they are their own types), let P_c(o) be the mean of
  A[i, i-o] over condition c's queries and P(o) = min over conditions of P_c(o): the mass each
  offset gets in every condition. A row's positional mass is sum_o min(A[i, i-o], P(o)); the
  score is its mean over the rows of all conditions. A head attending to itself or to a fixed
  local window scores high; sinks, previous-token heads, induction and other content-driven
  heads (whose offsets move with the tokens) score low.
* content_independence: 1 - mean total-variation distance between the same head's rows on
  different random sequences (batch >= 2). It is high for every head whose pattern ignores
  content, sinks and previous-token heads included: the earlier, broader "positional" score,
  kept for comparison.
* head_type: the type with the largest score among sink, previous-token, positional, induction
  and duplicate-token when it reaches ``type_threshold`` (0.3), else "other"; codes are named
  by ``params["type_names"]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError

SCORES = ("sink", "previous_token", "positional", "duplicate_token", "induction", "local", "content_independence")
TYPE_NAMES = ("sink", "previous-token", "positional", "induction", "duplicate-token", "other")
TYPED = ("sink", "previous_token", "positional", "induction", "duplicate_token")  # in TYPE_NAMES order
METRICS = (*SCORES, "head_type")
TYPE_THRESHOLD = 0.3
MAX_OFFSET = 16


class TaxonomyError(AnalysisError):
    """Patterns that do not fit the repeated-sequence layout."""


def _check(pattern: Tensor, repeat_len: int, offset: int, window: int, what: str) -> None:
    b, h, q, k = pattern.shape
    if q != offset + 2 * repeat_len or k != q:
        raise TaxonomyError(f"{what} is [.., {q}, {k}] but offset {offset} + 2 x repeat_len {repeat_len} = "
                            f"{offset + 2 * repeat_len} positions were expected")
    if repeat_len < 2 or not 1 <= window <= repeat_len:
        raise TaxonomyError(f"need repeat_len >= 2 and window in 1-{repeat_len}, got {repeat_len}, {window}")


def offset_profile(pattern: Float[Tensor, "batch head q k"], queries: Tensor, offsets: Tensor
                   ) -> Float[Tensor, "batch head query offset"]:
    """A[i, i - o] for each query i in ``queries`` and offset o in ``offsets``."""
    keys = queries[:, None] - offsets[None, :]
    return pattern[:, :, queries[:, None], keys]


def positional_scores(conditions: list[tuple[Tensor, Tensor]], offsets: Tensor) -> Float[Tensor, " head"]:
    """Mass at relative offsets shared by every condition (see the module docstring).

    ``conditions``: ``(pattern [batch, head, q, k], queries [n])`` per condition.
    """
    rows = [offset_profile(p.double(), qs, offsets) for p, qs in conditions]  # [b, h, n, o] each
    shared = torch.stack([r.mean((0, 2)) for r in rows]).amin(0)  # [h, o]
    per_row = [torch.minimum(r, shared[None, :, None, :]).sum(-1) for r in rows]  # [b, h, n]
    return torch.cat([r.permute(1, 0, 2).reshape(r.shape[1], -1) for r in per_row], dim=1).mean(1)


def head_type_scores(pattern: Float[Tensor, "batch head q k"], *, repeat_len: int, offset: int = 0,
                     window: int = 4, shuffled: Float[Tensor, "batch head q k"] | None = None,
                     max_offset: int = MAX_OFFSET) -> dict[str, Float[Tensor, " head"]]:
    """The scores of every head of one layer (``shuffled``: the pattern on ``prefix + s + s``)."""
    _check(pattern, repeat_len, offset, window, "pattern")
    if shuffled is not None:
        _check(shuffled, repeat_len, offset, window, "shuffled pattern")
        if shuffled.shape[1] != pattern.shape[1]:
            raise TaxonomyError(f"shuffled pattern has {shuffled.shape[1]} heads, the pattern {pattern.shape[1]}")
    b, h, q, k = pattern.shape
    p = pattern.double()
    sink_end = max(offset, 1)
    i = torch.arange(offset + 1, q)
    sink = p[:, :, sink_end:, :sink_end].sum(-1).mean((0, 2))
    prev = p[:, :, i, i - 1].mean((0, 2))
    second = torch.arange(offset + repeat_len, q)
    dup = p[:, :, second, second - repeat_len].mean((0, 2))
    ind = p[:, :, second, second - repeat_len + 1].mean((0, 2))
    qs = torch.arange(offset + window, q)
    keys = torch.arange(k)
    band = (keys[None, :] <= qs[:, None]) & (keys[None, :] > qs[:, None] - window)
    local = (p[:, :, qs, :] * band).sum(-1).mean((0, 2))
    # offsets inside one copy that never reach the sink keys
    n_off = max(1, min(max_offset, repeat_len - 1))
    offsets = torch.tensor([o for o in range(n_off) if o != 1] or [0])
    first_q = torch.arange(sink_end + n_off - 1, offset + repeat_len)
    second_q = torch.arange(offset + repeat_len + n_off - 1, q)
    conditions = [(p, first_q), (p, second_q)]
    if shuffled is not None:
        conditions.append((shuffled.double(), first_q))
    positional = positional_scores(conditions, offsets)
    if b >= 2:
        rows = p[:, :, 1:, :]
        tv = [0.5 * (rows[a] - rows[c]).abs().sum(-1).mean(-1) for a in range(b) for c in range(a + 1, b)]
        independence = 1 - torch.stack(tv).mean(0)
    else:
        independence = torch.full((h,), float("nan"), dtype=torch.float64)
    return {"sink": sink, "previous_token": prev, "positional": positional, "duplicate_token": dup, "induction": ind,
            "local": local, "content_independence": independence}


def head_types(scores: Mapping[str, np.ndarray], threshold: float = TYPE_THRESHOLD) -> np.ndarray:
    """Type codes (indices into :data:`TYPE_NAMES`) from the per-head score grids."""
    stack = np.stack([np.nan_to_num(np.asarray(scores[m], dtype=float), nan=-1.0) for m in TYPED])  # [type, ...]
    best = stack.argmax(0)
    codes = np.where(stack.max(0) >= threshold, best, len(TYPE_NAMES) - 1).astype(float)
    unscored = np.all(~np.isfinite(np.stack([np.asarray(scores[m], dtype=float) for m in TYPED])), axis=0)
    codes[unscored] = np.nan
    return codes


def taxonomy_scores(patterns: Mapping[int, Float[Tensor, "batch head q k"]], *, n_layers: int, n_heads: int,
                    repeat_len: int, provenance: Provenance, offset: int = 0, window: int = 4,
                    shuffled: Mapping[int, Float[Tensor, "batch head q k"]] | None = None,
                    max_offset: int = MAX_OFFSET, type_threshold: float = TYPE_THRESHOLD) -> list[HeadScores]:
    """One :class:`HeadScores` per score and one of head types, from each layer's pattern on
    repeated random sequences (and, when given, on the shuffled sequences)."""
    scores = {m: np.full((n_layers, n_heads), np.nan) for m in SCORES}
    for layer, pattern in patterns.items():
        sh = None if shuffled is None else shuffled.get(layer)
        for m, v in head_type_scores(pattern, repeat_len=repeat_len, offset=offset, window=window, shuffled=sh,
                                     max_offset=max_offset).items():
            scores[m][layer] = v.numpy()
    params = {"repeat_len": repeat_len, "offset": offset, "window": window, "max_offset": max_offset,
              "shuffled": shuffled is not None,
              "batch": int(next(iter(patterns.values())).shape[0]) if patterns else 0}
    sinkish = scores["sink"] > 0.5
    out = []
    for m in SCORES:
        s = scores[m]
        summary = {"heads_above_0.4": int(np.nansum(s > 0.4)), "n_heads": int(s.size),
                   "max": float(np.nanmax(s)) if np.isfinite(s).any() else None}
        if m in ("positional", "content_independence"):
            summary["sink_heads_above_0.4"] = int(np.nansum(sinkish & (s > 0.4)))
            summary["previous_token_heads_above_0.4"] = int(np.nansum((scores["previous_token"] > 0.5) & (s > 0.4)))
        out.append(HeadScores(
            analysis="taxonomy", metric=m, scores=s, provenance=provenance, params=params,
            description=f"{m.replace('_', '-')} score on repeated random tokens (see analyses/taxonomy.py)",
            summary=summary))
    codes = head_types(scores, type_threshold)
    counts = {name: int(np.sum(codes == i)) for i, name in enumerate(TYPE_NAMES)}
    out.append(HeadScores(
        analysis="taxonomy", metric="head_type", scores=codes, provenance=provenance,
        scale="categorical", categories=list(TYPE_NAMES),
        params={**params, "type_names": list(TYPE_NAMES), "type_threshold": type_threshold,
                "typed_by": list(TYPED)},
        description="head type: the largest of the sink, previous-token, positional, induction and duplicate-token "
                    f"scores when >= {type_threshold}, else other",
        summary={"counts": counts, "n_heads": int(codes.size)}))
    return out
