"""ACT attention calibration (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks").

For a calibrated head and each prompt, key j is a sink when s_j = (sum over queries i of
A[i, j]) / (N - j) > ``threshold`` (0.1), the mean attention j receives from the queries that
can see it (METHODS.md). The first sink of each head (the first token, almost always) is
kept, as ACT's reference code keeps it. Calibration multiplies the other sink columns by
``beta`` (0.4) and gives the freed mass, row by row, to the remaining keys in proportion to
their attention, so rows still sum to 1. A row that sees no other key is left as it is.

:class:`ActCalibration` applies this inside the model as an attention-weights modifier on
:mod:`lens.attention`'s stack (it needs the whole prompt in one pass: ``q == k``). The
control (``Columns.RANDOM``) scales as many randomly drawn non-sink columns of each head
instead, so an effect of ACT can be told from an effect of perturbing attention at all.
The pure functions (:func:`sink_columns`, :func:`random_columns`, :func:`calibrate`) take
and return probabilities ``[batch, head, q, k]``.

ACT calibrates only heads chosen on a calibration set (those whose calibration alone helps);
:func:`select_heads` makes that choice from per-head effects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from attnlens.formats.errors import AnalysisError
from lens.attention import AttentionObserver

BETA, THRESHOLD = 0.4, 0.1


class CalibrationError(AnalysisError):
    """Calibration that cannot be applied: bad settings or a pattern without the full prompt."""


class Columns(str, Enum):
    SINKS = "sinks"  # ACT: the head's sink columns (s_j > threshold), the first kept
    RANDOM = "random"  # control: as many random non-sink columns, the first key kept


def received_mean(weights: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head k"]:
    """s_j: the mean attention key j receives from the queries that can see it (causal prefill, q == k)."""
    n = weights.shape[-1]
    if weights.shape[-2] != n:
        raise CalibrationError(f"ACT calibration needs the whole prompt in one pass (q == k), got q={weights.shape[-2]}, "
                               f"k={n}: apply it to the prefill, not to cached decoding steps")
    seen_by = torch.arange(n, 0, -1, device=weights.device, dtype=weights.dtype)
    return weights.sum(-2) / seen_by


def sink_columns(weights: Float[Tensor, "batch head q k"], *, threshold: float = THRESHOLD,
                 keep_first: bool = True) -> Bool[Tensor, "batch head k"]:
    """Keys with s_j > ``threshold`` per prompt and head, without the first of them (``keep_first``)."""
    sinks = received_mean(weights) > threshold
    if keep_first:
        first = sinks.float().argmax(-1, keepdim=True)  # index of the first sink (0 when there is none)
        sinks = sinks & ~torch.zeros_like(sinks).scatter(-1, first, True)
    return sinks


def random_columns(sinks: Bool[Tensor, "batch head k"], generator: torch.Generator) -> Bool[Tensor, "batch head k"]:
    """As many columns per prompt and head as ``sinks`` has, drawn among keys 1.. that are not sinks."""
    b, h, n = sinks.shape
    counts = sinks.sum(-1)
    out = torch.zeros_like(sinks)
    noise = torch.rand(b, h, n, generator=generator).to(sinks.device)
    noise[..., 0] = -1  # never the first key
    noise[sinks] = -1  # never a sink
    order = noise.argsort(-1, descending=True)
    eligible = (noise >= 0).sum(-1)
    take = torch.minimum(counts, eligible)
    rank = torch.arange(n, device=sinks.device).expand(b, h, n)
    out.scatter_(-1, order, rank < take.unsqueeze(-1))
    return out


def calibrate(weights: Float[Tensor, "batch head q k"], columns: Bool[Tensor, "batch head k"], *,
              beta: float = BETA) -> Float[Tensor, "batch head q k"]:
    """``weights`` with ``columns`` scaled by ``beta`` and the freed mass given to the other keys
    of each row in proportion to their attention (rows that see no other key are unchanged)."""
    if not 0 <= beta <= 1:
        raise CalibrationError(f"beta must be in [0, 1], got {beta}")
    w = weights.float()
    col = columns.unsqueeze(-2).float()  # [b, h, 1, k]
    on = w * col
    rest = w - on
    freed = (1 - beta) * on.sum(-1, keepdim=True)
    rest_total = rest.sum(-1, keepdim=True)
    ok = rest_total > 0
    new = beta * on + rest + freed * rest / rest_total.clamp_min(torch.finfo(w.dtype).tiny)
    return torch.where(ok, new, w).to(weights.dtype)


def select_heads(effects: np.ndarray, *, min_gain: float = 0.0, top_k: int | None = None,
                 first_layer: int = 0) -> dict[int, list[int]]:
    """ACT's head choice: the heads whose calibration alone raised the calibration metric by
    more than ``min_gain`` (``effects [layer, head]``, NaN = not tried), the ``top_k`` largest."""
    items = [(float(v), la, h) for (la, h), v in np.ndenumerate(effects)
             if la >= first_layer and np.isfinite(v) and v > min_gain]
    items.sort(reverse=True)
    out: dict[int, list[int]] = {}
    for _, la, h in items[:top_k]:
        out.setdefault(la, []).append(h)
    return {la: sorted(hs) for la, hs in sorted(out.items())}


class ActCalibration(AttentionObserver):
    """ACT as an attention-weights modifier: calibrate ``heads`` (layer -> query heads).

    ``groups``: for stacked batches (``G`` equal groups of rows), one head selection per group
    instead (the per-head search runs many selections in one forward). ``columns`` picks the
    sink columns (ACT) or the random control; ``seed`` seeds the control's draws. ``counts``
    records, per layer, how many (prompt, head, column) triples were scaled.
    """

    modifies_weights = True

    def __init__(self, heads: Mapping[int, Sequence[int]] | None = None, *, beta: float = BETA,
                 threshold: float = THRESHOLD, columns: Columns | str = Columns.SINKS, seed: int = 0,
                 groups: Sequence[Mapping[int, Sequence[int]]] | None = None):
        if (heads is None) == (groups is None):
            raise CalibrationError("give heads (one selection) or groups (one per stacked group), not both or neither")
        if not 0 <= beta <= 1 or not threshold > 0:
            raise CalibrationError(f"beta must be in [0, 1] and threshold > 0, got beta={beta}, threshold={threshold}")
        self.selections = [dict(heads)] if heads is not None else [dict(g) for g in groups]
        self.beta, self.threshold, self.columns = beta, threshold, Columns(columns)
        self.generator = torch.Generator().manual_seed(seed)
        layers = {int(la) for sel in self.selections for la in sel}
        self.layers = frozenset(layers)
        self.counts: dict[int, int] = {}

    def modify(self, layer: int, weights: Tensor) -> Tensor:
        n_groups = len(self.selections)
        rows = weights.shape[0]
        if rows % n_groups:
            raise CalibrationError(f"{rows} rows do not split into {n_groups} calibration groups")
        per = rows // n_groups
        out = weights.clone()
        for g, sel in enumerate(self.selections):
            heads = [int(h) for h in sel.get(layer, [])]
            if not heads:
                continue
            if max(heads) >= weights.shape[1]:
                raise CalibrationError(f"head {max(heads)} is out of range: layer {layer} has heads "
                                       f"0-{weights.shape[1] - 1}")
            part = weights[g * per:(g + 1) * per, heads]
            cols = sink_columns(part, threshold=self.threshold)
            if self.columns is Columns.RANDOM:
                cols = random_columns(cols, self.generator)
            self.counts[layer] = self.counts.get(layer, 0) + int(cols.sum())
            out[g * per:(g + 1) * per, heads] = calibrate(part, cols, beta=self.beta)
        return out
