"""The one hook engine: read or replace activations at typed points of a model.

    with lens.hooked(lm, {Point(Where.Z, 3): fn, Point(Where.MLP_OUT, 3): other}):
        lm.model(ids)

A :class:`Point` is a :class:`Where` plus a layer (model-level places take none). Each
function gets the activation in the shape :class:`Where` documents and returns ``None``
(read only) or a tensor of the same shape that replaces it for the rest of the forward
pass. Rows a model flattens inside a block (OPT's ``[batch * pos, d]``) come as ``[batch, pos, d]``. Where each point lives in a given model is the site table's business
(:mod:`lens.adapters`); this module is the one place that installs hooks on it and removes
them, on exit and on error. Capture, edits, circuits, DLA and VLM head outputs all go
through here; hooks run in the order they were installed (an outer ``hooked`` block's
before an inner one's, and a mapping's in its order).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lens.adapters import MLP_ADDS_RESIDUAL
from lens.errors import BackendError, SelectionError


class Where(enum.Enum):
    """Hookable places. Shapes are what a hook function sees (and must return to replace)."""

    CALL = "call"  #: every forward call of the whole model: ``fn(args, kwargs)``, read only (no layer)
    EMBED = "embed"  #: token embeddings' output  [batch, pos, d_model] (no layer)
    POS_EMBED = "pos_embed"  #: learned position embeddings' output (GPT-2's wpe)  [batch?, pos, d_model] (no layer)
    BLOCK_IN = "block_in"  #: residual stream entering the block  [batch, pos, d_model]
    RESID_PRE = "resid_pre"  #: input of the attention norm  [batch, pos, d_model]
    ATTN_NORMED = "attn_normed"  #: output of the attention norm  [batch, pos, d_model]
    ROTARY = "rotary"  #: the (cos, sin) rotary tables the attention module is given, read only; absent: not called
    ATTN_CALL = "attn_call"  #: every call of the attention module: ``fn(arguments)``, its arguments by name, read only
    Q = "q"  #: query projection's output, before rotary  [batch, pos, head * d_head]
    K = "k"  #: key projection's output, before rotary  [batch, pos, kv_head * d_head]
    V = "v"  #: value projection's output  [batch, pos, kv_head * d_head]
    QKV = "qkv"  #: a fused q/k/v projection's output (GPT-2, GPT-NeoX, ...)  [batch, pos, features]
    Z = "z"  #: per-head attention output, the output projection's input  [batch, pos, head, d_head]
    ATTN_OUT = "attn_out"  #: attention module's output (after the output projection)  [batch, pos, d_model]
    RESID_MID = "resid_mid"  #: input of the MLP norm (parallel blocks: the attention norm)  [batch, pos, d_model]
    MLP_NORMED = "mlp_normed"  #: output of the MLP norm  [batch, pos, d_model]
    MLP_IN = "mlp_in"  #: the MLP's input  [batch, pos, d]
    MLP_OUT = "mlp_out"  #: the MLP's output  [batch, pos, d_model]
    BLOCK_OUT = "block_out"  #: residual stream leaving the block  [batch, pos, d_model]
    FINAL = "final"  #: input of the final norm  [batch, pos, d_model] (no layer)

    @property
    def per_layer(self) -> bool:
        return self not in _MODEL_LEVEL


_MODEL_LEVEL = frozenset({Where.CALL, Where.EMBED, Where.POS_EMBED, Where.FINAL})
# points whose rows a block may flatten to [batch * pos, d] (OPT, after attention): given back as [batch, pos, d]
_FLATTENED = frozenset({Where.RESID_MID, Where.MLP_NORMED, Where.MLP_IN, Where.MLP_OUT})


@dataclass(frozen=True)
class Point:
    """One hookable place: ``where`` of block ``layer`` (None for model-level places)."""

    where: Where
    layer: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.where, Where):
            raise SelectionError(f"a hook point's where must be a lens.Where, got {self.where!r}"[:200])
        if self.where.per_layer:
            if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
                raise SelectionError(f"hook point {self.where.value} needs a layer >= 0, got {self.layer!r}"[:200])
        elif self.layer is not None:
            raise SelectionError(f"hook point {self.where.value} is model-level: give no layer, got {self.layer!r}")

    def __str__(self) -> str:
        return self.where.value if self.layer is None else f"{self.where.value}@{self.layer}"


HookFn = Callable[[Tensor], "Tensor | None"]
# where -> (adapter method, the module's input (True) or output (False))
_TABLE: dict[Where, tuple[str, bool]] = {
    Where.EMBED: ("embed", False), Where.BLOCK_IN: ("block", True), Where.RESID_PRE: ("attn_norm", True),
    Where.ATTN_NORMED: ("attn_norm", False), Where.Q: ("q", False), Where.K: ("k", False), Where.V: ("v", False),
    Where.QKV: ("fused_qkv", False),
    Where.Z: ("out_proj", True), Where.ATTN_OUT: ("attention_output", False), Where.RESID_MID: ("mlp_norm", True),
    Where.MLP_NORMED: ("mlp_norm", False), Where.MLP_IN: ("mlp_input", True), Where.MLP_OUT: ("mlp", False),
    Where.BLOCK_OUT: ("block", False), Where.FINAL: ("final_norm", True),
}


def module_at(adapter, point: Point) -> nn.Module:
    """The module whose input or output ``point`` is (through the site table)."""
    if point.where is Where.POS_EMBED:
        module = adapter.position_embed()
        if module is None:
            raise BackendError(f"{type(adapter.model).__name__} has no learned position embeddings")
        return module
    if point.where in (Where.ROTARY, Where.ATTN_CALL):
        return adapter.attention(point.layer)
    name, _ = _TABLE[point.where]
    return getattr(adapter, name)() if point.layer is None else getattr(adapter, name)(point.layer)


def _pairs(points) -> list[tuple[Point, Callable]]:
    items = points.items() if isinstance(points, Mapping) else points
    out = []
    for point, fn in items:
        if not isinstance(point, Point):
            raise SelectionError(f"hook points must be lens.Point, got {type(point).__name__}")
        for f in (fn if isinstance(fn, (list, tuple)) else (fn,)):
            if not callable(f):
                raise SelectionError(f"the hook at {point} must be callable, got {type(f).__name__}")
            out.append((point, f))
    return out


def _replaced(point: Point, old: Tensor, new, view_shape=None) -> Tensor | None:
    if new is None:
        return None
    if not isinstance(new, Tensor):
        raise BackendError(f"the hook at {point} returned {type(new).__name__}: return None or a tensor")
    want = view_shape or old.shape
    if tuple(new.shape) != tuple(want):
        raise BackendError(f"the hook at {point} returned shape {tuple(new.shape)}, expected {tuple(want)}")
    return new if new.shape == old.shape else new.reshape(old.shape)


@contextmanager
def hooked(lm, points: Mapping[Point, HookFn | list[HookFn]] | Iterable[tuple[Point, HookFn]], *,
          adapter=None) -> Iterator[None]:
    """Run ``points``' functions inside the block on every forward pass of the model.

    ``lm`` is a :class:`lens.LoadedModel` (or a bare transformers model). ``points`` maps a
    :class:`Point` to a function (or a list of them), or is a sequence of ``(point, function)``
    pairs. ``adapter``: the site table to use (default: the model's).
    """
    from lens.adapters import adapter_for

    pairs = _pairs(points)
    facts = getattr(lm, "facts", None)
    model = lm.model if facts is not None else lm
    handles: list = []
    shapes: dict[int, torch.Size] = {}  # block -> its input's shape (flattened MLP rows are put back)
    try:
        for point, fn in pairs:
            if point.where is Where.CALL:
                handles.extend(_install(model, point, fn, 0, shapes))
                continue
            if adapter is None:
                adapter = adapter_for(model, facts.n_layers if facts is not None else None)
            if point.layer is not None and point.layer >= adapter.n_layers:
                raise SelectionError(f"hook point {point} is out of range: {type(model).__name__} has layers "
                                     f"0-{adapter.n_layers - 1}")
            if point.where in _FLATTENED and point.layer not in shapes:
                shapes[point.layer] = torch.Size()
                handles.append(adapter.block(point.layer).register_forward_pre_hook(
                    _shape_keeper(shapes, point.layer), with_kwargs=True))
            handles.extend(_install(module_at(adapter, point), point, fn, _n_heads(model, facts), shapes))
        yield
    finally:
        for h in handles:
            h.remove()


def _n_heads(model: nn.Module, facts) -> int:
    if facts is not None:
        return facts.n_heads
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return cfg.num_attention_heads


def _shape_keeper(shapes, layer):
    def keep(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, Tensor):
            shapes[layer] = x.shape
    return keep


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _install(module: nn.Module, point: Point, fn, n_heads: int, shapes) -> list:
    where = point.where
    if where is Where.CALL:
        def call(m, args, kwargs):
            fn(args, kwargs)
        return [module.register_forward_pre_hook(call, with_kwargs=True)]
    if where is Where.ATTN_CALL:
        signature = inspect.signature(module.forward)
        extra = next((n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), None)

        def attn_call(m, args, kwargs):
            bound = signature.bind_partial(*args, **kwargs).arguments
            fn({**{k: v for k, v in bound.items() if k != extra}, **bound.get(extra, {})})
        return [module.register_forward_pre_hook(attn_call, with_kwargs=True)]
    if where is Where.ROTARY:
        def rotary(m, args, kwargs):
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                fn(pe)
        return [module.register_forward_pre_hook(rotary, with_kwargs=True)]
    if where is Where.POS_EMBED:
        return [module.register_forward_hook(lambda m, a, out: _replaced(point, out, fn(out)))]

    def shaped(x: Tensor) -> tuple[Tensor, tuple | None]:
        if where is Where.Z:
            v = x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)
            return v, tuple(v.shape)
        block = shapes.get(point.layer, ())
        if x.ndim == 2 and len(block) == 3 and x.shape[0] == block[0] * block[1]:  # OPT's rows, flattened
            v = x.view(*block[:-1], x.shape[-1])
            return v, tuple(v.shape)
        return x, None

    if _TABLE[where][1]:
        def pre(m, args, kwargs):
            from_kwargs = not args
            x = kwargs.get("hidden_states") if from_kwargs else args[0]
            if not isinstance(x, Tensor):
                return None
            v, vs = shaped(x)
            new = _replaced(point, x, fn(v), vs)
            if new is None:
                return None
            if from_kwargs:
                return args, {**kwargs, "hidden_states": new}
            return (new, *args[1:]), kwargs
        return [module.register_forward_pre_hook(pre, with_kwargs=True)]

    # BLOOM's and MPT's MLPs add the residual stream (their second argument) themselves: the point is
    # the MLP's own output, and a replacement gets the residual added back
    adds_residual = where is Where.MLP_OUT and type(module).__name__ in MLP_ADDS_RESIDUAL

    def post(m, args, out):
        x = _first(out)
        if not isinstance(x, Tensor):
            return None
        residual = args[1] if adds_residual and len(args) > 1 and isinstance(args[1], Tensor) else None
        own = x if residual is None else x - residual
        v, vs = shaped(own)
        new = _replaced(point, own, fn(v), vs)
        if new is None:
            return None
        if residual is not None:
            new = new + residual
        return (new, *out[1:]) if isinstance(out, tuple) else new
    return [module.register_forward_hook(post)]
