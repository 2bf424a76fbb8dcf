"""Attention sinks: first-token sinks (StreamingLLM), hidden sinks (ACT) and massive activations (Sun et al.).

Inputs are per-prompt, per-layer :class:`KeyStats` (from a captured pattern with
:func:`key_stats_from_pattern`, or from the statistics kernel with
:func:`key_stats_from_kernel`, identical definitions) and optionally the residual
stream per layer for massive activations.

* first-token mass: mean over queries i >= 1 of A[i, 0]; per layer, the share of heads above 0.5.
* hidden sinks (ACT): s_j = sum_i A[i, j] / (N - j); key j > 0 is a sink of a head when
  s_j > 0.1. ``min_queries`` (default 10) ignores keys seen by fewer queries: with fewer
  than 10 queries a single query's attention alone can push s_j over 0.1 (the last key
  always has s = A[N-1, N-1]); ``min_queries=1`` is the bare definition.
* massive activations: |h[pos, dim]| of the residual stream leaving a layer above both
  ``massive_ratio`` x the median |h| of that layer and ``massive_abs`` (defaults 100 and 100,
  chosen before looking at any model; Sun et al. use about 1000x and 100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError

HIDDEN_SINK_THRESHOLD = 0.1
FIRST_TOKEN_THRESHOLD = 0.5


@dataclass(frozen=True)
class KeyStats:
    """One layer of one prompt: ``first_mass [head]`` (mean over queries >= 1 of A[i, 0]),
    ``received_mean [head, k]`` (s_j) and ``n_queries [k]`` (N - j)."""

    first_mass: Float[Tensor, " head"]
    received_mean: Float[Tensor, "head k"]
    n_queries: Float[Tensor, " k"]


@dataclass(frozen=True)
class SinkInput:
    """One prompt: key statistics per layer, its token strings, optionally the residual stream per layer."""

    layers: Mapping[int, KeyStats]
    tokens: Sequence[str]
    hidden: Mapping[int, Float[Tensor, "pos d_model"]] = field(default_factory=dict)


def key_stats_from_pattern(pattern: Float[Tensor, "batch head q k"], causal: bool = True) -> KeyStats:
    """From a full self-attention pattern of one prompt (batch item 0, q == k); with ``causal``
    key j is seen by the N - j queries at or after it, without (a bidirectional encoder) by all N."""
    p = pattern[0].double()
    n = p.shape[-1]
    n_queries = torch.arange(n, 0, -1, dtype=torch.float64) if causal else torch.full((n,), float(n), dtype=torch.float64)
    return KeyStats(first_mass=p[:, 1:, 0].mean(-1) if n > 1 else p[:, :, 0].mean(-1),
                    received_mean=p.sum(-2) / n_queries, n_queries=n_queries)


def key_stats_from_kernel(stats, causal: bool = True) -> KeyStats:
    """From a prefill :class:`kernels.AttnStats` with ``sink_tokens=1`` and ``key_stats=True`` (batch item 0)."""
    sink = stats.sink_mass[0].double()
    n = stats.received_mean.shape[-1]
    return KeyStats(first_mass=(sink[:, 1:] if n > 1 else sink).mean(-1).float(),
                    received_mean=stats.received_mean[0].float(),
                    n_queries=torch.arange(n, 0, -1, dtype=torch.float32) if causal else torch.full((n,), float(n)))


def sink_scores(prompts: Sequence[SinkInput], *, n_layers: int, n_heads: int, provenance: Provenance,
                min_queries: int = 10, massive_ratio: float = 100.0, massive_abs: float = 100.0) -> list[HeadScores]:
    """First-token mass and hidden-sink counts per ``[layer, head]``, averaged over prompts."""
    if not prompts:
        raise AnalysisError("no prompts given: sink scores need at least one prompt")
    first = np.zeros((n_layers, n_heads))
    hidden = np.zeros((n_layers, n_heads))
    count = np.zeros(n_layers)
    found: dict[tuple[int, int], dict] = {}  # (prompt, position) -> what
    for p_idx, prompt in enumerate(prompts):
        for layer, ks in prompt.layers.items():
            first[layer] += ks.first_mass.double().numpy()
            count[layer] += 1
            s = ks.received_mean.double()
            ok = (ks.n_queries >= min_queries).view(1, -1)
            ok[:, 0] = False
            sinks = (s > HIDDEN_SINK_THRESHOLD) & ok
            hidden[layer] += sinks.sum(-1).double().numpy()
            for head, pos in sinks.nonzero().tolist():
                entry = found.setdefault((p_idx, pos), {"prompt": p_idx, "position": pos,
                                                        "token": prompt.tokens[pos], "heads": []})
                entry["heads"].append([layer, head, round(float(s[head, pos]), 3)])
    with np.errstate(invalid="ignore"):
        first = np.where(count[:, None] > 0, first / np.maximum(count[:, None], 1), np.nan)
        hidden = np.where(count[:, None] > 0, hidden / np.maximum(count[:, None], 1), np.nan)
    share = np.nanmean(first > FIRST_TOKEN_THRESHOLD, axis=1)
    massive = massive_activations(prompts, n_layers=n_layers, ratio=massive_ratio, abs_min=massive_abs)
    sink_positions = {(p, 0) for p in range(len(prompts))} | set(found)
    carried = [m for m in massive["found"] if (m["prompt"], m["position"]) in sink_positions]
    hidden_list = sorted(found.values(), key=lambda e: -len(e["heads"]))
    for e in hidden_list:
        e["n_heads"] = len(e["heads"])
        e["heads"] = sorted(e["heads"], key=lambda x: -x[2])[:8]  # the strongest few; counts are in n_heads
        e["massive"] = any(m["prompt"] == e["prompt"] and m["position"] == e["position"] for m in massive["found"])
    params = {"min_queries": min_queries, "hidden_threshold": HIDDEN_SINK_THRESHOLD,
              "first_token_threshold": FIRST_TOKEN_THRESHOLD, "massive_ratio": massive_ratio,
              "massive_abs": massive_abs, "n_prompts": len(prompts)}
    first_res = HeadScores(
        analysis="sinks", metric="first_token_mass", scores=first, provenance=provenance, params=params,
        description="mean attention on the first token over queries >= 1 (StreamingLLM's sink)",
        summary={"heads_above_0.5": int(np.nansum(first > FIRST_TOKEN_THRESHOLD)), "n_heads": int(first.size),
                 "share_above_0.5_per_layer": [round(float(x), 3) for x in share],
                 "first_tokens": sorted({p.tokens[0] for p in prompts})},
        arrays={"share_of_heads_above_0.5_per_layer": share, "mean_per_layer": np.nanmean(first, axis=1)},
    )
    hidden_res = HeadScores(
        analysis="sinks", metric="hidden_sinks", scores=hidden, provenance=provenance, params=params,
        description=f"mean number per prompt of keys j > 0 with s_j = sum_i A[i,j]/(N-j) > {HIDDEN_SINK_THRESHOLD} "
                    f"(ACT), keys seen by >= {min_queries} queries",
        summary={"heads_with_hidden_sinks": int(np.nansum(hidden > 0)), "n_heads": int(hidden.size),
                 "sink_positions_found": len(hidden_list), "top_hidden_sinks": hidden_list[:20],
                 "massive_activations": massive["found"][:20], "massive_on_sink_tokens": len(carried),
                 "massive_total": len(massive["found"]), "massive_dims": massive["dims"]},
        arrays={"massive_max_abs_per_layer": massive["max_abs"], "massive_max_ratio_per_layer": massive["max_ratio"]},
    )
    return [first_res, hidden_res]


def massive_activations(prompts: Sequence[SinkInput], *, n_layers: int, ratio: float, abs_min: float) -> dict:
    """Per layer, the largest |h| and its ratio to the layer median; every (prompt, layer, pos, dim) over both thresholds."""
    max_abs = np.full(n_layers, np.nan)
    max_ratio = np.full(n_layers, np.nan)
    found, dims = [], set()
    for p_idx, prompt in enumerate(prompts):
        for layer, h in prompt.hidden.items():
            a = h.double().abs()
            median = float(a.median())
            top = float(a.max())
            max_abs[layer] = np.nanmax([max_abs[layer], top])
            max_ratio[layer] = np.nanmax([max_ratio[layer], top / max(median, 1e-12)])
            hits = ((a > ratio * median) & (a > abs_min)).nonzero().tolist()
            for pos, dim in hits:
                dims.add(dim)
                found.append({"prompt": p_idx, "layer": layer, "position": pos, "dim": dim,
                              "token": prompt.tokens[pos], "value": round(float(h[pos, dim]), 1)})
    return {"max_abs": max_abs, "max_ratio": max_ratio, "found": found, "dims": sorted(dims)}
