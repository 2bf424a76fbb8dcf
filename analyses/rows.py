"""Per-query-row attention statistics: the common input of pattern-based and kernel-based analyses.

Analyses that only need row statistics (sink mass, entropy, top key) take a
:class:`RowStats` per layer, which comes either from a captured pattern
(:func:`row_stats_from_pattern`) or from the fused statistics kernel
(:func:`row_stats_from_kernel`), so the same analysis runs at long context without
building the N x N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class RowStats:
    """Statistics of each query row of one layer's attention, ``[batch, head, q]``."""

    sink_mass: Float[Tensor, "batch head q"]  # mass on the first `sink_tokens` keys
    entropy: Float[Tensor, "batch head q"]  # natural log
    max_weight: Float[Tensor, "batch head q"]
    argmax: Int[Tensor, "batch head q"]
    sink_tokens: int = 1


def row_stats_from_pattern(pattern: Float[Tensor, "batch head q k"], sink_tokens: int = 1) -> RowStats:
    p = pattern.double()
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    max_weight, argmax = p.max(-1)
    return RowStats(sink_mass=p[..., :sink_tokens].sum(-1).float(), entropy=entropy.float(),
                    max_weight=max_weight.float(), argmax=argmax, sink_tokens=sink_tokens)


def row_stats_from_kernel(stats, sink_tokens: int) -> RowStats:
    """From a :class:`kernels.AttnStats` computed with ``StatsSpec(sink_tokens=...)``."""
    return RowStats(sink_mass=stats.sink_mass.float(), entropy=stats.entropy.float(),
                    max_weight=stats.max_weight.float(), argmax=stats.argmax, sink_tokens=sink_tokens)
