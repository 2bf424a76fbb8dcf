"""transformers (>= 5) integration: the statistics kernel as one call of a model's attention function.

:func:`stats_attention_call` takes what transformers passes to an attention function (``query [B, H, M, D]``,
``key``/``value`` ``[B, Hkv, N, D]`` not repeated, the layer's mask) and returns SDPA's output plus the
:class:`AttnStats` of that call. Switching a model into stats mode (the attention-implementation stack) is
``lens.attention``'s job: ``lens.stats_mode(model, spec)`` records every selected layer's statistics.

Masks.  Layers receive either ``None`` (plain causal / full attention, handled like SDPA: ``module.is_causal``), a
4-D boolean keep-mask ``[B, 1, M, N]`` or a float additive mask (0 = keep).  A mask that equals "end-aligned causal
AND a per-key padding mask" (left or right padding) or "padding only" runs the fast path (triton on CUDA) with
``key_padding_mask``.  Any other pattern (sliding window, packed sequences, prefix-LM, ...) is computed exactly by the
chunked PyTorch path with the explicit mask: correct, but O(N x chunk) torch code rather than the fused kernel.  In
that case ``window_mass`` still uses the query's position (``i + N - M``), independent of the mask.

Values of another width than queries and keys (MLA) are padded with zero columns (or queries and keys are), which
changes no score; the output is cut back to the values' width.

T5's relative position bias (the ``position_bias`` keyword its attention passes) goes to the kernel as its
``score_bias`` (the chunked torch path computes it).

Soft-capping and learned sinks come from the layer as its own eager attention takes them: ``softcap`` in the call's
keyword arguments (Gemma 2 passes ``attn_logit_softcapping``), the sinks as ``s_aux`` (gpt-oss passes
``module.sinks``) or, without it, the module's ``sinks`` parameter; both go to the kernel (see :mod:`kernels.spec`).

Outputs equal the model's own attention to float32 tolerance, so logits are unchanged; rows that see no key at all (left padding
under causal) output 0, which only affects padded positions.  ``dropout > 0`` (training) is rejected.
"""

from __future__ import annotations

from typing import Literal

import torch

from .api import attention_with_stats
from .errors import KernelInputError
from .reference import chunked_attention_stats
from .spec import AttnStats, StatsSpec


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


def _split_additive(attention_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A 4-D additive float mask as ``(bool keep-mask, its finite values other than 0 as a bias, or None)``
    (Doge's dynamic mask carries such values); any other mask unchanged, with no bias."""
    if attention_mask is None or attention_mask.dtype == torch.bool or attention_mask.dim() != 4:
        return attention_mask, None
    blocked = attention_mask <= torch.finfo(attention_mask.dtype).min / 2
    pure = bool(((attention_mask == 0) | blocked).all())
    return ~blocked, None if pure else attention_mask.masked_fill(blocked, 0)


def layer_sinks(module: torch.nn.Module, kwargs: dict) -> torch.Tensor | None:
    """A layer's learned sink logits ``[head]``: the ``s_aux`` its forward passes (gpt-oss), else its ``sinks``
    parameter, else None."""
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = getattr(module, "sinks", None)
    return sinks if isinstance(sinks, torch.Tensor) else None


def stats_attention_call(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    spec: StatsSpec,
    backend: Literal["auto", "triton", "torch"] = "auto",
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, AttnStats, bool]:
    """One attention call through the statistics kernel: ``(attn_output [B, M, H, D], stats, used_fallback)``.

    ``used_fallback`` is True when the mask was neither causal-with-padding nor padding only, so the explicit-mask
    chunked path ran (see the module docstring).
    """
    if dropout and dropout > 0.0:
        raise KernelInputError(f"dropout={dropout} is not supported by stats attention: call model.eval()")
    position_bias = kwargs.get("position_bias")  # T5's relative position bias, [1 or B, H, M, N]
    softcap = kwargs.get("softcap")
    sinks = layer_sinks(module, kwargs)
    is_causal = kwargs.get("is_causal")
    module_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is None and module_causal and 1 < q_len < k_len:
        # Same as SDPA's integration: only reachable on prefill into an empty static cache, whose tail is unused.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        k_len = q_len
    attention_mask, mask_bias = _split_additive(attention_mask)
    if mask_bias is not None:  # a mask that carries biases (Doge's dynamic mask): the finite part is a score bias
        position_bias = mask_bias if position_bias is None else position_bias + mask_bias
    if position_bias is not None and position_bias.shape[1] == 1:  # one bias for every head
        position_bias = position_bias.expand(-1, query.shape[1], -1, -1)
    causal, kpm, explicit = interpret_mask(attention_mask, q_len, k_len, module_causal)
    # MLA (DeepSeek-V2/V3): values narrower (or wider) than queries/keys. Zero columns change neither the
    # scores nor the statistics, so the narrower side is padded and the output cut back to the values' width.
    d_qk, d_v = query.shape[-1], value.shape[-1]
    if d_v != d_qk:
        scaling = d_qk ** -0.5 if scaling is None else scaling
        if d_v < d_qk:
            value = torch.nn.functional.pad(value, (0, d_qk - d_v))
        else:
            query = torch.nn.functional.pad(query, (0, d_v - d_qk))
            key = torch.nn.functional.pad(key, (0, d_v - d_qk))
    if explicit is None:
        res = attention_with_stats(query, key, value, causal=causal, scale=scaling, spec=spec, key_padding_mask=kpm,
                                   backend=backend, softcap=softcap, sinks=sinks, score_bias=position_bias)
    else:
        res = chunked_attention_stats(query, key, value, causal=False, scale=scaling, spec=spec, attn_mask=explicit,
                                      softcap=softcap, sinks=sinks, score_bias=position_bias)
    return res.out[..., :d_v].transpose(1, 2).contiguous(), res.stats, explicit is not None
