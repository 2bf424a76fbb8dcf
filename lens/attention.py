"""The one switch of a model's attention implementation, with a stack so that modes nest.

Everything attnlens does inside attention goes through here: pattern and q/k/v capture
(:mod:`lens.recording`), stats mode (the fused statistics kernel), DuoAttention gating,
and attention-weight interventions (ACT calibration, VAR redistribution). Each is an
entry pushed on the model's stack by :func:`attention_mode`; entries nest in any order
and compose:

- an :class:`AttentionObserver` sees every selected layer's ``query [batch, head, q, d_head]``,
  ``key``/``value`` ``[batch, kv_head, k, d_head]``, and afterwards the output and (when it
  ``needs_weights``) the attention probabilities ``[batch, head, q, k]``; one that
  ``modifies_weights`` may replace the probabilities before they are applied to the values;
- an :class:`AttentionCompute` replaces the computation itself (stats mode, DuoAttention).
  At most one is active per layer (two nested computes raise :class:`BackendError`), and it
  must return probabilities when an observer needs them.

While the stack is not empty the model's implementation is a registered dispatcher
(``attnlens_eager`` when some entry needs probabilities, so that masks come additive,
else ``attnlens_fast``, whose masks are SDPA's; neither name contains "sdpa", which
transformers would check against the model's SDPA support). A layer no entry touches runs the
model's own implementation (its eager attention keeps soft-capping and learned sinks), or
SDPA where the model's own was SDPA or a kernel whose masks differ. The model's own
implementation is restored when the last entry leaves, also on error.

Families that compute attention in their own ``_attn`` method (GPT-J, CodeGen, GPT-Neo:
:data:`OWN_ATTN`, their scale and mask written out) reach the same dispatcher through a shim on
that method. Other families that bypass the interface (Falcon, BLOOM, MPT, ...) cannot be pushed
on the stack (:func:`check_interface` refuses in one line): their q/k/v come from their projections
(:mod:`lens.projected`) and their statistics from beside their attention (:mod:`lens.recording.stats`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnlens.formats.sites import Part
from lens.errors import BackendError, SelectionError

EAGER, FAST = "attnlens_eager", "attnlens_fast"
_STACK, _LAYER, _PART, _OWN = "_attnlens_stack", "_attnlens_layer", "_attnlens_part", "_attnlens_own"


class AttentionEntry:
    """Base of the stack's entries: ``layers`` selects where it applies (None: every layer) and
    ``part`` which attention (an encoder-decoder's encoder self-attention and decoder cross-attention
    are their own parts; every other model has only ``Part.SELF``)."""

    layers: frozenset[int] | None = None
    part: Part = Part.SELF

    def wants(self, layer: int | None) -> bool:
        return self.layers is None or layer in self.layers


class AttentionObserver(AttentionEntry):
    """Sees attention inputs and outputs; may modify the probabilities (``modifies_weights``)."""

    needs_weights: bool = False
    modifies_weights: bool = False

    def on_inputs(self, module: nn.Module, layer: int, query: Tensor, key: Tensor, value: Tensor) -> None:
        """``query [batch, head, q, d_head]``, ``key``/``value`` ``[batch, kv_head, k, d_head]`` (after rotary)."""

    def modify(self, layer: int, weights: Tensor) -> Tensor:
        """New probabilities ``[batch, head, q, k]`` from the model's (only if ``modifies_weights``)."""
        return weights

    def on_outputs(self, module: nn.Module, layer: int, query: Tensor, key: Tensor, value: Tensor,
                   out: Tensor, weights: Tensor | None) -> None:
        """``out [batch, q, head, d_head]`` and the probabilities (None unless someone needs them)."""


class AttentionCompute(AttentionEntry):
    """Replaces the attention computation of its layers."""

    name = "compute"

    def compute(self, module: nn.Module, layer: int, query: Tensor, key: Tensor, value: Tensor,
                attention_mask: Tensor | None, *, need_weights: bool, modify, **kwargs) -> tuple[Tensor, Tensor | None]:
        """``(out [batch, q, head, d_head], weights [batch, head, q, k] or None)``.

        ``modify`` is None, or the observers' weight modifiers as one function: apply it to the
        probabilities before the values (a compute that cannot must raise).
        """
        raise NotImplementedError


@dataclass
class _Stack:
    entries: list[AttentionEntry] = field(default_factory=list)
    previous: str | None = None
    modules: dict[tuple[Part, int], nn.Module] = field(default_factory=dict)

    def needs_weights(self) -> bool:
        return any(isinstance(e, AttentionObserver) and (e.needs_weights or e.modifies_weights) for e in self.entries)


class WeightsModifier(AttentionObserver):
    """An attention-weight intervention: ``fn(layer, weights) -> weights`` on the probabilities
    ``[batch, head, q, k]`` of the selected layers, before they multiply the values (VAR's
    redistribution, ACT-style calibration). Push it with :func:`modifying_weights`."""

    modifies_weights = True

    def __init__(self, fn, layers: frozenset[int] | None = None, part: Part = Part.SELF) -> None:
        self.fn, self.layers, self.part = fn, layers, part

    def modify(self, layer: int, weights: Tensor) -> Tensor:
        return self.fn(layer, weights)


# ---- the base computations ---------------------------------------------------------------
def _module_eager(module: nn.Module):
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def repeat_kv(x: Tensor, n_heads: int) -> Tensor:
    """``[batch, kv_head, k, d_head]`` -> ``[batch, head, k, d_head]`` (query head h reads KV head h // group)."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def additive_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A mask as an additive float bias (bool keep-masks become 0 / -inf)."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return attention_mask
    return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        ~attention_mask, torch.finfo(dtype).min)


def weights_and_output(module, query, key, value, attention_mask, *, scaling=None, modify=None, causal=None,
                       **kwargs) -> tuple[Tensor, Tensor]:
    """Plain softmax attention with the probabilities exposed: ``(out [batch, q, head, d_head], weights)``.

    ``modify(weights)`` runs between the softmax and the values. Without a mask and with
    ``causal`` (default: the module's ``is_causal``) an end-aligned causal mask is applied.
    """
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    k, v = repeat_kv(key, query.shape[1]), repeat_kv(value, query.shape[1])
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    mask = additive_mask(attention_mask, scores.dtype)
    if mask is not None:
        scores = scores + mask[..., : k.shape[-2]]
    elif causal if causal is not None else getattr(module, "is_causal", False):
        m, n = scores.shape[-2:]
        keep = torch.arange(n, device=scores.device)[None, :] <= (torch.arange(m, device=scores.device) + n - m)[:, None]
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if modify is not None:
        weights = modify(weights)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    return out, weights


def _own_attention(module, previous: str | None, query, key, value, attention_mask, **kwargs):
    """The attention the model ran before the stack: its own eager function (soft-capping, learned
    sinks and all) when that was eager, else SDPA (the masks here are SDPA's or additive)."""
    if previous == "eager":
        mask = additive_mask(attention_mask, query.dtype)
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", False) if causal is None else causal
        m, n = query.shape[2], key.shape[2]
        if mask is None and causal and m > 1:  # SDPA's masks leave plain causal attention to the kernel
            keep = torch.arange(n, device=query.device)[None, :] <= (torch.arange(m, device=query.device) + n - m)[:, None]
            mask = torch.zeros(m, n, dtype=query.dtype, device=query.device).masked_fill(
                ~keep, torch.finfo(query.dtype).min)[None, None]
        return _module_eager(module)(module, query, key, value, mask, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def model_attention(module, query, key, value, attention_mask, **kwargs) -> tuple[Tensor, Tensor]:
    """``(out [batch, q, head, d_head], weights)`` from the module's own eager attention (soft-capping,
    learned sinks and all), with masks as the stack receives them."""
    return _own_attention(module, "eager", query, key, value, attention_mask, **kwargs)


def _check_plain_softmax(module, kwargs) -> None:
    """Weight modifiers recompute attention as a plain softmax: refuse, in one line, what that would drop."""
    what = ("soft-capped logits" if kwargs.get("softcap") else
            "learned attention sinks (module.sinks)" if hasattr(module, "sinks") else None)
    if what is not None:
        raise BackendError(f"{type(module).__name__} has {what}: attention-weight interventions recompute a plain "
                           "softmax and would drop them; they are not supported for this family yet")


def _dispatcher(module, query, key, value, attention_mask, **kwargs):
    stack: _Stack | None = getattr(module, _STACK, None)
    if stack is None:  # a module the stack does not cover (e.g. a vision tower's own attention)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layer, part = getattr(module, _LAYER), getattr(module, _PART)
    mine = [e for e in stack.entries if e.part is part and e.wants(layer)]
    observers = [e for e in mine if isinstance(e, AttentionObserver)]
    computes = [e for e in mine if isinstance(e, AttentionCompute)]
    if len(computes) > 1:
        raise BackendError(f"{computes[0].name} and {computes[1].name} both replace the attention of layer {layer}: "
                           "they cannot be nested")
    for o in observers:
        o.on_inputs(module, layer, query, key, value)
    need = any(o.needs_weights or o.modifies_weights for o in observers)
    modifiers = [o for o in observers if o.modifies_weights]

    def modify(w: Tensor) -> Tensor:
        for o in modifiers:
            w = o.modify(layer, w)
        return w

    if computes:
        out, weights = computes[0].compute(module, layer, query, key, value, attention_mask, need_weights=need,
                                           modify=modify if modifiers else None, **kwargs)
    elif modifiers:
        _check_plain_softmax(module, kwargs)
        out, weights = weights_and_output(module, query, key, value, attention_mask, modify=modify, **kwargs)
    elif getattr(module, _OWN, False):  # its own `_attn`: plain softmax attention under the mask the shim built
        out, weights = weights_and_output(module, query, key, value, attention_mask, **kwargs)
    elif need:
        out, weights = _module_eager(module)(module, query, key, value, additive_mask(attention_mask, query.dtype),
                                             **kwargs)
    else:
        out, weights = _own_attention(module, stack.previous, query, key, value, attention_mask, **kwargs)
    for o in observers:
        o.on_outputs(module, layer, query, key, value, out, weights if need else None)
    return out, weights if need else None


def _register_once() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    if EAGER not in AttentionInterface._global_mapping:
        AttentionInterface.register(EAGER, _dispatcher)
        AttentionInterface.register(FAST, _dispatcher)
        AttentionMaskInterface.register(EAGER, eager_mask)
        AttentionMaskInterface.register(FAST, sdpa_mask)


# ---- families that compute attention in their own ``_attn`` -------------------------------
def _end_causal(q_len: int, k_len: int, dtype: torch.dtype, device) -> Tensor:
    keep = torch.arange(k_len, device=device)[None, :] <= (torch.arange(q_len, device=device) + k_len - q_len)[:, None]
    return torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)[None, None]


def _causal_or_given(module, query, key, attention_mask):
    """GPT-J, CodeGen: the model's additive causal (+ padding) mask, or end-aligned causal without one."""
    return attention_mask if attention_mask is not None else _end_causal(query.shape[2], key.shape[2], query.dtype,
                                                                         query.device)


def _gpt_neo_mask(module, query, key, attention_mask):
    """GPT-Neo: its causal or local (sliding-window) mask is the module's ``bias`` buffer, added to the model's."""
    m, n = query.shape[2], key.shape[2]
    keep = module.bias[:, :, n - m:n, :n]
    low = torch.finfo(query.dtype).min
    mask = torch.zeros(keep.shape, dtype=query.dtype, device=query.device).masked_fill(~keep, low)
    return mask if attention_mask is None else (mask + attention_mask).clamp_min(low)


@dataclass(frozen=True)
class OwnAttn:
    """How a family's ``_attn(query, key, value, attention_mask)`` computes attention: the factor on ``q . k``
    and the additive mask it applies (from the mask the model passes, which may be None)."""

    scale: Callable[[nn.Module], float]
    mask: Callable[[nn.Module, Tensor, Tensor, Tensor | None], Tensor]


#: attention classes that compute attention in ``_attn`` (queries and keys ``[batch, head, pos, d_head]``
#: after their rotary) instead of transformers' attention interface
OWN_ATTN = {
    "GPTJAttention": OwnAttn(lambda m: 1.0 / float(m.scale_attn), _causal_or_given),
    "CodeGenAttention": OwnAttn(lambda m: 1.0 / float(m.scale_attn), _causal_or_given),
    "GPTNeoSelfAttention": OwnAttn(lambda m: 1.0, _gpt_neo_mask),  # unscaled scores
}


def score_scale(module: nn.Module, d_head: int) -> float:
    """The factor an attention module multiplies ``q . k`` by before the softmax: its own ``_attn``'s
    (:data:`OWN_ATTN`), else the attribute it keeps it in (``scaling``; MPT's ``softmax_scale``; BLOOM's and
    Falcon's ``inv_norm_factor``), else ``d_head ** -0.5``."""
    own = OWN_ATTN.get(type(module).__name__)
    if own is not None:
        return own.scale(module)
    for name in ("scaling", "softmax_scale", "inv_norm_factor"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return d_head ** -0.5


def _own_attn_modules(model: nn.Module) -> list[nn.Module] | None:
    """The attention modules of a family in :data:`OWN_ATTN` (all of them), else None."""
    modules = list(attention_modules(model).values())
    if modules and all(type(m).__name__ in OWN_ATTN and callable(getattr(m, "_attn", None)) for m in modules):
        return modules
    return None


def _shim(module: nn.Module):
    """``module._attn`` that sends a layer some entry wants through the dispatcher (q/k/v, weights, stats and
    edits), and every other layer through the model's own ``_attn``."""
    original = type(module)._attn.__get__(module)
    own = OWN_ATTN[type(module).__name__]

    def _attn(query, key, value, attention_mask=None):
        stack: _Stack | None = getattr(module, _STACK, None)
        layer, part = getattr(module, _LAYER, None), getattr(module, _PART, Part.SELF)
        if stack is None or not any(e.part is part and e.wants(layer) for e in stack.entries):
            return original(query, key, value, attention_mask)
        mask = own.mask(module, query, key, attention_mask)
        out, weights = _dispatcher(module, query, key, value, mask, scaling=own.scale(module))
        return out.transpose(1, 2), weights

    return _attn


# ---- finding the attention modules -------------------------------------------------------
def attention_modules(model: nn.Module) -> dict[tuple[Part, int], nn.Module]:
    """``(part, layer)`` -> the attention module that calls the attention function (see :mod:`lens.adapters`)."""
    from lens.adapters import adapter_for

    return adapter_for(model).attention_modules()


def _model_of(obj) -> nn.Module:
    return obj.model if hasattr(obj, "facts") and hasattr(obj, "model") else obj


def check_layers(modules: dict[tuple[Part, int], nn.Module], layers: Sequence[int] | None,
                 part: Part = Part.SELF) -> frozenset[int] | None:
    if layers is None:
        return None
    have = {layer for p, layer in modules if p is part}
    if not have:
        raise SelectionError(f"the model has no {part.value} attention")
    unknown = sorted(set(layers) - have)
    if unknown:
        what = "layers" if part is Part.SELF else f"{part.value} attention layers"
        if have == set(range(max(have) + 1)):
            raise SelectionError(f"layers {unknown} do not exist: the model has {what} 0-{max(have)}")
        raise SelectionError(f"layers {unknown} have no {part.value} attention: the model has it in layers "
                             f"{sorted(have)} (a hybrid's other blocks have none)")
    return frozenset(int(x) for x in layers)


def family(model: nn.Module) -> str:
    """How errors name a model's family: its class and ``model_type``, e.g. ``GPTJForCausalLM (gptj)``."""
    return f"{type(model).__name__} ({getattr(model.config, 'model_type', None) or 'no model_type'})"


def uses_interface(model: nn.Module) -> bool:
    """False for a model whose attention does not go through transformers' attention interface
    (GPT-J, Falcon, BLOOM, MPT: they compute it in their own code and cannot switch implementation)."""
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    return can_set is None or bool(can_set())


def reaches_stack(model: nn.Module) -> bool:
    """True when entries on the stack run for this model: its attention goes through transformers'
    attention interface, or its family is in :data:`OWN_ATTN` (the stack wraps their ``_attn``)."""
    return uses_interface(model) or _own_attn_modules(model) is not None


def check_interface(model: nn.Module) -> None:
    """Raise :class:`BackendError` for a model the stack cannot reach (see :func:`reaches_stack`):
    nothing pushed on the stack would ever run, so q/k/v, edited weights and statistics would come
    back empty. (Their patterns are captured from the attention modules' own returned weights, by
    :mod:`lens.recording.native`.)"""
    if not reaches_stack(model):
        raise BackendError(f"{family(model)} computes attention without transformers' attention interface: "
                           "attention-weight edits and stats mode are not available for it (patterns, q/k/v from "
                           "its projections, z, residual and MLP sites and head edits are)")


@contextmanager
def attention_mode(model_or_lm, entry: AttentionEntry) -> Iterator[AttentionEntry]:
    """Push ``entry`` on the attention stack of a model (or :class:`lens.LoadedModel`) for the block.

    Raises :class:`BackendError` up front for a model whose attention bypasses transformers'
    attention interface (see :func:`check_interface`)."""
    model = _model_of(model_or_lm)
    check_interface(model)
    _register_once()
    stack: _Stack | None = getattr(model, _STACK, None)
    if stack is None:
        stack = _Stack(previous=model.config._attn_implementation, modules=attention_modules(model))
        setattr(model, _STACK, stack)
        own = not uses_interface(model) and _own_attn_modules(model) is not None  # a family of OWN_ATTN
        for (part, layer), m in stack.modules.items():
            setattr(m, _STACK, stack)
            setattr(m, _LAYER, layer)
            setattr(m, _PART, part)
            if own:
                setattr(m, _OWN, True)
                m._attn = _shim(m)
    stack.entries.append(entry)
    try:
        _apply(model, stack)
        yield entry
    finally:
        stack.entries.remove(entry)
        if stack.entries:
            _apply(model, stack)
        else:
            for m in stack.modules.values():
                for attr in (_STACK, _LAYER, _PART, _OWN):
                    if attr in vars(m):
                        delattr(m, attr)
                if "_attn" in vars(m):  # the class's own _attn again
                    del m._attn
            delattr(model, _STACK)
            if model.config._attn_implementation != stack.previous:
                model.set_attn_implementation(stack.previous)


def _apply(model: nn.Module, stack: _Stack) -> None:
    if not uses_interface(model):  # a family of OWN_ATTN: its shims send the layers to the dispatcher
        return
    impl = EAGER if stack.needs_weights() else FAST
    if model.config._attn_implementation != impl:
        model.set_attn_implementation(impl)


def active_entries(model_or_lm) -> list[AttentionEntry]:
    """The entries on a model's stack now, outermost first (for tests and error messages)."""
    stack = getattr(_model_of(model_or_lm), _STACK, None)
    return list(stack.entries) if stack else []


@contextmanager
def modifying_weights(model_or_lm, fn, *, layers: Sequence[int] | None = None) -> Iterator[WeightsModifier]:
    """Inside the block, the self-attention probabilities ``[batch, head, q, k]`` of ``layers``
    (None: every layer) go through ``fn(layer, weights) -> weights`` before the values."""
    model = _model_of(model_or_lm)
    chosen = check_layers(attention_modules(model), layers) if layers is not None else None
    with attention_mode(model, WeightsModifier(fn, chosen)) as entry:
        yield entry
