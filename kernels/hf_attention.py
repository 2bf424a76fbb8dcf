"""transformers (>= 5) integration: record :class:`AttnStats` from every attention call of a model.

``with stats_attention(model, spec) as rec: model(...)`` switches the model to the registered attention
implementation ``"attnlens_stats"`` for the duration of the block (the previous implementation is restored in
``finally``) and appends, per selected layer, one CPU :class:`AttnStats` per forward call (e.g. per generation
step) to ``rec.stats[layer]``.  Unselected layers run transformers' own SDPA function unchanged.

Masks.  The name is also registered in transformers' mask interface with ``sdpa_mask``, so layers receive either
``None`` (plain causal / full attention, handled like SDPA: ``module.is_causal``) or a 4-D boolean keep-mask
``[B, 1, M, N]`` (float additive masks, 0 = keep, are accepted too).  A mask that equals "end-aligned causal AND a
per-key padding mask" (left or right padding) or "padding only" runs the fast path (triton on CUDA) with
``key_padding_mask``.  Any other pattern (sliding window, packed sequences, prefix-LM, ...) is computed exactly by the
chunked PyTorch path with the explicit mask: correct, but O(N x chunk) torch code rather than the fused kernel.  In
that case ``window_mass`` still uses the query's position (``i + N - M``), independent of the mask.

Outputs equal SDPA's to float32 tolerance, so logits are unchanged; rows that see no key at all (left padding
under causal) output 0, which only affects padded positions.  ``dropout > 0`` (training) is rejected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .api import attention_with_stats
from .errors import KernelInputError
from .reference import chunked_attention_stats
from .spec import AttnStats, StatsSpec

ATTN_IMPLEMENTATION = "attnlens_stats"
_RECORDER_ATTR = "_attnlens_recorder"


@dataclass
class StatsRecorder:
    """Collected statistics: ``stats[layer]`` is a list with one CPU :class:`AttnStats` per forward call.

    Attributes:
        spec: what is measured.
        layers: selected layer indices, or None for all layers.
        backend: passed to :func:`kernels.attention_with_stats` on the fast path.
        stats: layer index -> list of AttnStats (``[B, H, q_len]`` etc. for that call).
        fallback_calls: how many calls used the explicit-mask chunked path (mask not causal+padding).
    """

    spec: StatsSpec
    layers: frozenset[int] | None = None
    backend: Literal["auto", "triton", "torch"] = "auto"
    stats: dict[int, list[AttnStats]] = field(default_factory=dict)
    fallback_calls: int = 0

    def wants(self, layer_idx: int | None) -> bool:
        return self.layers is None or layer_idx in self.layers

    def record(self, layer_idx: int, stats: AttnStats) -> None:
        self.stats.setdefault(layer_idx, []).append(stats.to("cpu"))

    def __getitem__(self, layer_idx: int) -> list[AttnStats]:
        return self.stats[layer_idx]


def _causal_keep(m: int, n: int, device: torch.device) -> torch.Tensor:
    """End-aligned causal keep-mask ``[M, N]``: query i sees keys ``j <= i + N - M``."""
    return torch.arange(n, device=device)[None, :] <= (torch.arange(m, device=device) + (n - m))[:, None]


def interpret_mask(
    attention_mask: torch.Tensor | None, q_len: int, k_len: int, module_causal: bool
) -> tuple[bool, torch.Tensor | None, torch.Tensor | None]:
    """Map a transformers attention mask to ``(causal, key_padding_mask [B, N] | None, explicit_keep [B,1|H,M,N] | None)``.

    Exactly one of the fast form (``causal`` + padding) or ``explicit_keep`` is meaningful: when ``explicit_keep`` is
    not None the caller must use it (with ``causal=False``).
    """
    if attention_mask is None:
        return module_causal, None, None
    if attention_mask.dim() != 4 or attention_mask.shape[-2:] != (q_len, k_len):
        raise KernelInputError(
            f"attention_mask shape {tuple(attention_mask.shape)} is not [batch, 1|heads, {q_len}, {k_len}]"
        )
    if attention_mask.dtype == torch.bool:
        keep = attention_mask
    else:
        keep = attention_mask == 0
        blocked = attention_mask <= torch.finfo(attention_mask.dtype).min / 2
        if not bool((keep | blocked).all()):
            raise KernelInputError("attention_mask holds additive biases other than 0 / -inf; not a pure mask")
    if keep.shape[1] == 1:
        kpm = keep[:, 0, -1, :]  # the last query sees every unpadded key under both causal and full attention
        kpm_or_none = None if bool(kpm.all()) else kpm
        causal_keep = _causal_keep(q_len, k_len, keep.device)
        if torch.equal(keep[:, 0], causal_keep[None] & kpm[:, None, :]):
            return True, kpm_or_none, None
        if torch.equal(keep[:, 0], kpm[:, None, :].expand(-1, q_len, -1)):
            return False, kpm_or_none, None
    return False, None, keep


def _stats_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``query [B, H, M, D]``, ``key``/``value`` ``[B, Hkv, N, D]`` (not repeated).

    Returns ``(attn_output [B, M, H, D], None)`` like SDPA, recording stats when the module's layer is selected.
    """
    recorder: StatsRecorder | None = getattr(module, _RECORDER_ATTR, None)
    layer_idx = getattr(module, "layer_idx", None)
    if recorder is None or not recorder.wants(layer_idx):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout and dropout > 0.0:
        raise KernelInputError(f"dropout={dropout} is not supported by stats attention: call model.eval()")
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        raise KernelInputError("stats attention does not support softcap / position_bias")
    is_causal = kwargs.get("is_causal")
    module_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is None and module_causal and 1 < q_len < k_len:
        # Same as SDPA's integration: only reachable on prefill into an empty static cache, whose tail is unused.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        k_len = q_len
    causal, kpm, explicit = interpret_mask(attention_mask, q_len, k_len, module_causal)
    if explicit is None:
        res = attention_with_stats(query, key, value, causal=causal, scale=scaling, spec=recorder.spec,
                                   key_padding_mask=kpm, backend=recorder.backend)
    else:
        recorder.fallback_calls += 1
        res = chunked_attention_stats(query, key, value, causal=False, scale=scaling, spec=recorder.spec,
                                      attn_mask=explicit)
    recorder.record(layer_idx, res.stats)
    return res.out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, _stats_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [mod for mod in model.modules() if isinstance(getattr(mod, "layer_idx", None), int)
            and hasattr(mod, "is_causal")]


@contextmanager
def stats_attention(
    model: torch.nn.Module,
    spec: StatsSpec,
    layers: Sequence[int] | None = None,
    *,
    backend: Literal["auto", "triton", "torch"] = "auto",
) -> Iterator[StatsRecorder]:
    """Record per-head :class:`AttnStats` of ``model``'s attention layers inside the ``with`` block.

    Args:
        model: a transformers ``PreTrainedModel`` whose attention goes through ``AttentionInterface``.
        spec: statistics to compute (spans are checked against each call's k_len).
        layers: layer indices to record; None = all.  Other layers run SDPA.
        backend: backend of the fast path ("auto": triton on CUDA, else chunked torch).
    Yields:
        :class:`StatsRecorder`; ``rec.stats[layer][call]`` is an :class:`AttnStats` on CPU.
    """
    if not isinstance(spec, StatsSpec):
        raise KernelInputError(f"spec must be a StatsSpec, got {type(spec).__name__}")
    modules = _attention_modules(model)
    if not modules:
        raise KernelInputError(f"{type(model).__name__} has no attention modules with a layer_idx")
    known = {mod.layer_idx for mod in modules}
    if layers is not None:
        unknown = sorted(set(layers) - known)
        if unknown:
            raise KernelInputError(f"layers {unknown} do not exist: the model has layers 0-{max(known)}")
    recorder = StatsRecorder(spec=spec, layers=None if layers is None else frozenset(layers), backend=backend)
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    for mod in modules:
        setattr(mod, _RECORDER_ATTR, recorder)
    try:
        yield recorder
    finally:
        for mod in modules:
            if hasattr(mod, _RECORDER_ATTR):
                delattr(mod, _RECORDER_ATTR)
        model.set_attn_implementation(previous)
