"""Public value types of the stats attention: what to measure (:class:`StatsSpec`) and what comes back.

Semantics shared by every backend (naive oracle, chunked torch, triton):

* ``q``: ``[batch, head, q_len, d_head]``, ``k``/``v``: ``[batch, kv_head, k_len, d_head]``.
* Query ``i`` sits at absolute key position ``pos(i) = i + k_len - q_len`` (queries are aligned to the *end* of the
  keys, as when decoding with a KV cache).  With ``causal=True`` query ``i`` sees keys ``j <= pos(i)``; without it,
  all keys.  A ``key_padding_mask`` (``[batch, k_len]``, True = keep) removes keys for every query.
* ``A[i, j]`` is the softmax over the visible keys of the score ``s_ij = scale * q_i . k_j`` (computed in float32).
  With ``softcap`` the score is ``softcap * tanh(scale * q_i . k_j / softcap)`` (Gemma 2), applied before masking.
* With learned ``sinks`` (gpt-oss: one logit ``sink_h`` per query head) the softmax has one extra column per row
  holding ``sink_h``; it takes probability mass and contributes no value.  ``lse = log(sum_j exp s_ij + exp sink_h)``
  and ``A[i, j] = exp(s_ij - lse)``: the model's own probabilities over the real keys, *not renormalised*, so a row
  sums to ``1 - exp(sink_h - lse)``.  Every statistic is of these weights: ``entropy = -sum_j A log A`` over the real
  keys only, ``max_weight``, the masses and top-k weights are fractions of the whole softmax including the sink's
  share; ``out = sum_j A[i, j] v_j`` equals the model's.
* With a ``score_bias`` the scores gain it after soft-capping and before masking: ``[batch or 1, head, k_len]`` per key
  (ALiBi's ``slope_h * j``, MPT's position bias) or ``[batch or 1, head, q_len, k_len]`` per query and key (T5's
  relative position bias); ``lse`` is of these scores.
* A query row with no visible key (e.g. a left-padding position; with a sink too) has ``out = 0``, ``lse = -inf``, ``entropy = 0``,
  ``max_weight = 0``, ``argmax = -1``, masses 0 and top-k weights 0 with index -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .errors import KernelInputError

MAX_TOPK = 8


@dataclass(frozen=True)
class StatsSpec:
    """Which per-head statistics to compute besides lse/entropy/max/argmax (always computed).

    Attributes:
        sink_tokens: ``sink_mass[i] = sum_{j < sink_tokens} A[i, j]``.  0 disables (masses are then 0).
        window: ``window_mass[i] = sum_{pos(i) - window < j <= pos(i)} A[i, j]``: the mass on the ``window`` most
            recent keys up to and including the query's own position.  Without ``causal`` the same key range is used
            (keys after ``pos(i)`` are visible but never count towards the window).  0 disables.
        spans: half-open key ranges ``[start, end)`` (e.g. a needle or image-token span);
            ``span_mass[..., s] = sum_{start_s <= j < end_s} A[i, j]``.  Each must satisfy
            ``0 <= start < end <= k_len`` (checked at call time).
        topk: number (0..8) of largest attention weights per query to return, sorted descending.
        key_stats: compute per-key received mass (a second pass over the scores).
    """

    sink_tokens: int = 1
    window: int = 64
    spans: tuple[tuple[int, int], ...] = ()
    topk: int = 0
    key_stats: bool = True

    def __post_init__(self) -> None:
        for name in ("sink_tokens", "window", "topk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise KernelInputError(f"StatsSpec.{name} must be an int, got {value!r}")
        if self.sink_tokens < 0:
            raise KernelInputError(f"StatsSpec.sink_tokens={self.sink_tokens} is negative: valid range is >= 0")
        if self.window < 0:
            raise KernelInputError(f"StatsSpec.window={self.window} is negative: valid range is >= 0")
        if not 0 <= self.topk <= MAX_TOPK:
            raise KernelInputError(f"StatsSpec.topk={self.topk} is out of range: valid range is 0-{MAX_TOPK}")
        if not isinstance(self.key_stats, bool):
            raise KernelInputError(f"StatsSpec.key_stats must be a bool, got {self.key_stats!r}")
        # Accept lists from callers but store an immutable, hashable tuple of int pairs.
        try:
            pairs = [tuple(p) for p in self.spans]
        except TypeError:
            raise KernelInputError(f"StatsSpec.spans={self.spans!r} must be a sequence of (start, end) int pairs") from None
        if not all(len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in p) for p in pairs):
            raise KernelInputError(f"StatsSpec.spans={self.spans!r} must be a sequence of (start, end) int pairs")
        spans = tuple((int(s), int(e)) for s, e in pairs)
        for start, end in spans:
            if start < 0 or end <= start:
                raise KernelInputError(
                    f"StatsSpec.spans entry ({start}, {end}) is invalid: need 0 <= start < end (half-open, non-empty)"
                )
        object.__setattr__(self, "spans", spans)


class AttnStats(NamedTuple):
    """Per-head attention statistics; every field is always a tensor (absent ones have a 0-sized last dim).

    Shapes (``B`` batch, ``H`` query heads, ``M`` q_len, ``N`` k_len, ``S`` spans, ``K`` topk):

    * ``lse``, ``entropy`` (natural log), ``max_weight``, ``sink_mass``, ``window_mass``: ``[B, H, M]`` float32
    * ``argmax``: ``[B, H, M]`` int64 key index (first one on ties; -1 for a row with no visible key)
    * ``span_mass``: ``[B, H, M, S]`` float32
    * ``topk_weight``: ``[B, H, M, K]`` float32, ``topk_index``: ``[B, H, M, K]`` int64 (-1 where fewer keys)
    * ``received_sum``: ``[B, H, N]`` float32, ``sum_i A[i, j]`` (``[B, H, 0]`` when ``key_stats=False``)
    * ``received_mean``: ``[B, H, N]`` float32, ``received_sum[j] / #{i : i sees j}`` (0 where no query sees ``j``;
      with causal and ``M == N`` the divisor is ``N - j``)
    """

    lse: torch.Tensor
    entropy: torch.Tensor
    max_weight: torch.Tensor
    argmax: torch.Tensor
    sink_mass: torch.Tensor
    window_mass: torch.Tensor
    span_mass: torch.Tensor
    topk_weight: torch.Tensor
    topk_index: torch.Tensor
    received_sum: torch.Tensor
    received_mean: torch.Tensor

    def to(self, device: torch.device | str) -> "AttnStats":
        """Return a copy with every tensor moved to ``device``."""
        return AttnStats(*(t.to(device) for t in self))


class AttnOut(NamedTuple):
    """``out``: ``[B, H, M, d_head]`` in the input dtype; ``stats``: :class:`AttnStats`."""

    out: torch.Tensor
    stats: AttnStats
