"""A first look at every head: how much it attends to the first token, and how spread out it is.

Sink mass is the attention a query row puts on the first ``sink_tokens`` keys
(StreamingLLM's first-token sink, see METHODS.md); entropy is that row's attention
entropy in nats. Both are averaged over prompts and over query positions >= ``skip``:
the first query can only see itself, so it carries no information about the head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.analyses.rows import RowStats

SINK_SHARE_THRESHOLD = 0.5  # a head "is a sink head" on average above this first-token mass


def attention_summary(runs: Iterable[Mapping[int, RowStats]], *, n_layers: int, n_heads: int,
                      provenance: Provenance, skip: int = 1) -> list[HeadScores]:
    """Mean sink mass and entropy per ``[layer, head]`` over runs (one mapping layer -> RowStats per prompt)."""
    sink_sum = np.zeros((n_layers, n_heads))
    ent_sum = np.zeros((n_layers, n_heads))
    count = np.zeros((n_layers, n_heads))
    sink_tokens = 1
    for rows_by_layer in runs:
        for layer, rows in rows_by_layer.items():
            q = rows.sink_mass.shape[-1]
            if q <= skip:
                continue
            sink_tokens = rows.sink_tokens
            sink_sum[layer] += rows.sink_mass[..., skip:].sum(dim=(0, 2)).double().numpy()
            ent_sum[layer] += rows.entropy[..., skip:].sum(dim=(0, 2)).double().numpy()
            count[layer] += rows.sink_mass.shape[0] * (q - skip)
    with np.errstate(invalid="ignore", divide="ignore"):
        sink = np.where(count > 0, sink_sum / count, np.nan)
        ent = np.where(count > 0, ent_sum / count, np.nan)
    share = np.nanmean(sink > SINK_SHARE_THRESHOLD, axis=1)
    params = {"sink_tokens": sink_tokens, "skip_queries": skip}
    sink_result = HeadScores(
        analysis="summary", metric="sink_mass", scores=sink, provenance=provenance, params=params,
        description=f"mean attention on the first {sink_tokens} token(s), over queries >= {skip}",
        summary={"heads_above_0.5": int(np.nansum(sink > SINK_SHARE_THRESHOLD)), "n_heads": int(sink.size),
                 "mean": float(np.nanmean(sink))},
        arrays={"share_of_heads_above_0.5_per_layer": share},
    )
    ent_result = HeadScores(
        analysis="summary", metric="entropy", scores=ent, provenance=provenance, params=params,
        description="mean attention entropy (nats) over queries", summary={"mean": float(np.nanmean(ent))},
    )
    return [sink_result, ent_result]
