"""Head taxonomy on repeated random token sequences: previous-token, duplicate-token, induction, local, positional.

Input: each layer's pattern ``[batch, head, q, k]`` on sequences ``prefix + r + r`` where
``r`` is ``repeat_len`` random tokens and ``prefix`` is ``offset`` tokens (e.g. BOS).
Scores per head, each a mean attention weight in [0, 1]:

* previous_token: A[i, i-1] over queries i > offset.
* duplicate_token: A[i, i-R] over the second copy (attends to the earlier copy of its own token).
* induction: A[i, i-R+1] over the second copy (attends to the token after that earlier copy).
* local: mass on the ``window`` most recent keys (incl. itself), over queries i >= offset + window.
* positional: 1 - mean total-variation distance between the same head's rows on different
  random sequences (needs batch >= 2): 1 when the pattern ignores content. Heads that always
  attend to a fixed position (a sink, the previous token) are positional in this sense.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from analyses.result import HeadScores, Provenance
from formats.errors import AnalysisError

METRICS = ("previous_token", "duplicate_token", "induction", "local", "positional")


class TaxonomyError(AnalysisError):
    """Patterns that do not fit the repeated-sequence layout."""


def head_type_scores(pattern: Float[Tensor, "batch head q k"], *, repeat_len: int, offset: int = 0,
                     window: int = 4) -> dict[str, Float[Tensor, " head"]]:
    """The five scores of every head of one layer."""
    b, h, q, k = pattern.shape
    if q != offset + 2 * repeat_len or k != q:
        raise TaxonomyError(f"pattern is [.., {q}, {k}] but offset {offset} + 2 x repeat_len {repeat_len} = "
                            f"{offset + 2 * repeat_len} positions were expected")
    if repeat_len < 2 or not 1 <= window <= repeat_len:
        raise TaxonomyError(f"need repeat_len >= 2 and window in 1-{repeat_len}, got {repeat_len}, {window}")
    p = pattern.double()
    i = torch.arange(offset + 1, q)
    prev = p[:, :, i, i - 1].mean((0, 2))
    second = torch.arange(offset + repeat_len, q)
    dup = p[:, :, second, second - repeat_len].mean((0, 2))
    ind = p[:, :, second, second - repeat_len + 1].mean((0, 2))
    qs = torch.arange(offset + window, q)
    keys = torch.arange(k)
    band = (keys[None, :] <= qs[:, None]) & (keys[None, :] > qs[:, None] - window)
    local = (p[:, :, qs, :] * band).sum(-1).mean((0, 2))
    if b >= 2:
        rows = p[:, :, 1:, :]
        tv = [0.5 * (rows[a] - rows[c]).abs().sum(-1).mean(-1) for a in range(b) for c in range(a + 1, b)]
        positional = 1 - torch.stack(tv).mean(0)
    else:
        positional = torch.full((h,), float("nan"), dtype=torch.float64)
    return {"previous_token": prev, "duplicate_token": dup, "induction": ind, "local": local,
            "positional": positional}


def taxonomy_scores(patterns: Mapping[int, Float[Tensor, "batch head q k"]], *, n_layers: int, n_heads: int,
                    repeat_len: int, provenance: Provenance, offset: int = 0, window: int = 4) -> list[HeadScores]:
    """One :class:`HeadScores` per metric from each layer's pattern on repeated random sequences."""
    scores = {m: np.full((n_layers, n_heads), np.nan) for m in METRICS}
    for layer, pattern in patterns.items():
        for m, v in head_type_scores(pattern, repeat_len=repeat_len, offset=offset, window=window).items():
            scores[m][layer] = v.numpy()
    params = {"repeat_len": repeat_len, "offset": offset, "window": window,
              "batch": int(next(iter(patterns.values())).shape[0]) if patterns else 0}
    out = []
    for m in METRICS:
        s = scores[m]
        out.append(HeadScores(
            analysis="taxonomy", metric=m, scores=s, provenance=provenance, params=params,
            description=f"{m.replace('_', '-')} score on repeated random tokens (see analyses/taxonomy.py)",
            summary={"heads_above_0.4": int(np.nansum(s > 0.4)), "n_heads": int(s.size),
                     "max": float(np.nanmax(s)) if np.isfinite(s).any() else None}))
    return out
