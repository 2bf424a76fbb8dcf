"""The two edits the vision-language analyses need, each in one small function (to be ported onto
the project's edit system and attention-implementation stack).

- :func:`scale_head_outputs`: multiply each head's output ``z`` (its slice of the input
  of ``o_proj``) by a per-``[layer, head]`` factor. VHR uses it.
- :func:`modify_attention_weights`: run the language model's attention through an eager
  implementation that passes the softmaxed weights ``[batch, head, q, k]`` to
  ``modifier(layer, weights) -> weights`` before they multiply the values. VAR's
  redistribution uses it.

Both act on the language model only (the vision tower is untouched) and undo themselves
when the ``with`` block ends, also on errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ATTN_IMPLEMENTATION = "attnlens_modified_eager"
_MODIFIER_ATTR = "_attnlens_weights_modifier"

WeightsModifier = Callable[[int, Float[Tensor, "batch head q k"]], Float[Tensor, "batch head q k"]]


class EditError(ValueError):
    """An edit that does not fit the model (wrong [layer, head] shape, no decoder layers)."""


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack of a causal LM or of a LLaVA-style model (the module holding ``.layers``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or not hasattr(decoder, "layers"):
        raise EditError(f"{type(model).__name__} has no decoder with .layers to edit")
    return decoder


@contextmanager
def scale_head_outputs(model: torch.nn.Module, scales: Float[np.ndarray, "layer head"]) -> Iterator[None]:
    """Inside the block, head ``h`` of layer ``l`` writes ``scales[l, h] * z`` to ``o_proj``."""
    layers = language_model(model).layers
    scales = np.asarray(scales, dtype=np.float64)
    n_heads = layers[0].self_attn.config.num_attention_heads
    if scales.shape != (len(layers), n_heads):
        raise EditError(f"scales must be [layer, head] = [{len(layers)}, {n_heads}], got {list(scales.shape)}")
    handles = []
    for layer, block in enumerate(layers):
        row = scales[layer]
        if np.all(row == 1.0):
            continue
        factor = torch.tensor(row, dtype=torch.float32)

        def pre_hook(module, args, factor=factor):
            (z,) = args
            heads = z.unflatten(-1, (factor.numel(), -1))  # [batch, pos, head, d_head]
            return ((heads * factor.to(z)[:, None]).flatten(-2),)

        handles.append(block.self_attn.o_proj.register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _modified_eager_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # GQA: query head h reads KV head h // groups
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
    modifier = getattr(module, _MODIFIER_ATTR, None)
    if modifier is not None:
        weights = modifier(module.layer_idx, weights)
    out = torch.matmul(weights.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTN_IMPLEMENTATION, _modified_eager_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, eager_mask)


@contextmanager
def modify_attention_weights(model: torch.nn.Module, modifier: WeightsModifier) -> Iterator[None]:
    """Inside the block, every language-model attention layer's weights go through ``modifier``."""
    decoder = language_model(model)
    modules = [block.self_attn for block in decoder.layers]
    previous = decoder.config._attn_implementation
    decoder.set_attn_implementation(ATTN_IMPLEMENTATION)
    for mod in modules:
        setattr(mod, _MODIFIER_ATTR, modifier)
    try:
        yield
    finally:
        for mod in modules:
            if hasattr(mod, _MODIFIER_ATTR):
                delattr(mod, _MODIFIER_ATTR)
        decoder.set_attn_implementation(previous)
