"""Capture through plain PyTorch hooks on a transformers model.

Queries, keys, values and patterns are taken inside transformers' attention interface:
for the run, the model's attention implementation is switched to a registered wrapper
around the model's own eager attention (when patterns are asked for) or SDPA, which
sees q and k after rotary embedding and k/v including the KV cache. ``z`` is the input
of the output projection, taken (and edited, for interventions) by a forward pre-hook.
Everything is undone in ``finally``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from lens.adapters import DecoderAdapter, ModelAdapter
from lens.capture.record import Capture, CaptureMeta
from lens.capture.spec import CaptureSpec, format_bytes
from lens.errors import MemoryBudgetError
from lens.interventions import HeadEdit, edit_z, edits_by_layer
from lens.loaded import LoadedModel
from lens.sites import Site, SiteKey

_EAGER, _SDPA = "attnlens_eager", "attnlens_sdpa"
_SESSION_ATTR = "_attnlens_session"
_LAYER_ATTR = "_attnlens_layer"  # set with the session: encoders (ViT) have no layer_idx


def _eager_for(module: nn.Module):
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _wrapped(kind: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        if kind == _EAGER:
            out, weights = _eager_for(module)(module, query, key, value, attention_mask, **kwargs)
        else:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        session = getattr(module, _SESSION_ATTR, None)
        if session is not None:
            session.on_attention(getattr(module, _LAYER_ATTR, None), query, key, value, weights)
        return out, weights

    return attention


def _register_once() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    if _EAGER not in AttentionInterface._global_mapping:
        AttentionInterface.register(_EAGER, _wrapped(_EAGER))
        AttentionInterface.register(_SDPA, _wrapped(_SDPA))
        AttentionMaskInterface.register(_EAGER, eager_mask)
        AttentionMaskInterface.register(_SDPA, sdpa_mask)


class _Session:
    """Hook callbacks of one capture: records into ``steps`` and applies edits."""

    def __init__(self, spec: CaptureSpec, edits: Sequence[HeadEdit], n_heads: int):
        self.spec = spec
        self.n_heads = n_heads
        self.layers = set(spec.layers)
        self.edits = edits_by_layer(edits)
        self.steps: list[dict[SiteKey, torch.Tensor]] = []
        self.n_bytes = 0
        # None where every head is kept in order: no copy needed to select them.
        # (all query heads in order implies all KV heads in order)
        every_head = spec.heads == tuple(range(n_heads))
        self._head_idx = None if every_head else torch.tensor(spec.heads)
        self._kv_idx = None if every_head else torch.tensor(spec.kv_heads)
        self.input_ids: list[torch.Tensor] = []  # the ids each forward pass was given
        self.pixel_shapes: list[tuple[int, ...]] = []  # the pixel values' shapes, for vision models

    def new_step(self, module, args, kwargs) -> None:
        first = args[0] if args else None
        ids = kwargs.get("input_ids", first)
        if isinstance(ids, torch.Tensor) and not ids.is_floating_point():
            self.input_ids.append(ids.detach().cpu())
        pixels = kwargs.get("pixel_values", first)
        if isinstance(pixels, torch.Tensor) and pixels.is_floating_point() and pixels.ndim == 4:
            self.pixel_shapes.append(tuple(pixels.shape))
        self.steps.append({})

    def store(self, site: Site, layer: int, t: torch.Tensor) -> None:
        if site not in self.spec.sites or layer not in self.layers:
            return
        idx = (self._kv_idx if site.per_kv_head else self._head_idx) if site.per_head else None
        if idx is not None:  # [batch, head, pos, ...]
            t = t.index_select(1, idx.to(t.device))
        stored = t.detach().to(device=self.spec.device, dtype=self.spec.dtype or t.dtype)
        if stored.data_ptr() == t.data_ptr():  # never keep a reference the model may reuse
            stored = stored.clone()
        t = stored
        self.n_bytes += t.numel() * t.element_size()
        if self.n_bytes > self.spec.budget_bytes:
            raise MemoryBudgetError(
                f"capture exceeded its memory budget of {format_bytes(self.spec.budget_bytes)} "
                f"(at {site.value} of layer {layer}, step {len(self.steps) - 1}); "
                "select fewer layers, heads or sites, or raise budget_bytes"
            )
        if not self.steps:
            self.steps.append({})
        self.steps[-1][SiteKey(site, layer)] = t

    def on_attention(self, layer, query, key, value, weights) -> None:
        self.store(Site.Q, layer, query)
        self.store(Site.K, layer, key)
        self.store(Site.V, layer, value)
        if weights is not None:
            self.store(Site.PATTERN, layer, weights)


@contextmanager
def capture(lm: LoadedModel, spec: CaptureSpec, *, edits: Sequence[HeadEdit] = (),
            adapter: ModelAdapter | None = None) -> Iterator[_Session]:
    """Record ``spec`` from every forward pass of ``lm.model`` inside the block.

    Yields the live session; :func:`finish` turns it into a :class:`Capture`. Each
    forward call (a plain forward, or each step of ``generate()``) is one step.
    """
    model = lm.model
    adapter = adapter or DecoderAdapter(model, lm.facts.n_layers)
    session = _Session(spec, edits, lm.facts.n_heads)
    needs_attention = any(s in spec.sites for s in (Site.PATTERN, Site.Q, Site.K, Site.V))
    previous_impl = model.config._attn_implementation
    handles: list[torch.utils.hooks.RemovableHandle] = []
    attn_modules: list[nn.Module] = []
    try:
        handles.append(model.register_forward_pre_hook(session.new_step, with_kwargs=True))
        if needs_attention:
            _register_once()
            model.set_attn_implementation(_EAGER if Site.PATTERN in spec.sites else _SDPA)
            for layer in spec.layers:
                attn = adapter.attention(layer)
                setattr(attn, _SESSION_ATTR, session)
                setattr(attn, _LAYER_ATTR, layer)
                attn_modules.append(attn)
        for layer in range(lm.facts.n_layers):
            handles.extend(_layer_hooks(session, adapter, layer))
        yield session
    finally:
        for h in handles:
            h.remove()
        for attn in attn_modules:
            for attr in (_SESSION_ATTR, _LAYER_ATTR):
                if hasattr(attn, attr):
                    delattr(attn, attr)
        if model.config._attn_implementation != previous_impl:
            model.set_attn_implementation(previous_impl)


def _layer_hooks(session: _Session, adapter: ModelAdapter, layer: int):
    spec, edits = session.spec, session.edits.get(layer, [])
    wanted = set(spec.sites) if layer in session.layers else set()

    def z_hook(module, args):
        (x, *rest) = args
        batch, pos, width = x.shape
        z = x.view(batch, pos, session.n_heads, width // session.n_heads)
        z = edit_z(z, edits)
        session.store(Site.Z, layer, z.transpose(1, 2))
        return (z.reshape(batch, pos, width), *rest)

    handles = []
    if Site.Z in wanted or edits:
        handles.append(adapter.out_proj(layer).register_forward_pre_hook(z_hook))
    if Site.ATTN_OUT in wanted:
        handles.append(adapter.attention(layer).register_forward_hook(
            lambda m, a, out: session.store(Site.ATTN_OUT, layer, out[0] if isinstance(out, tuple) else out)))
    if Site.MLP_OUT in wanted:
        handles.append(adapter.mlp(layer).register_forward_hook(
            lambda m, a, out: session.store(Site.MLP_OUT, layer, out[0] if isinstance(out, tuple) else out)))
    if Site.RESID_PRE in wanted:
        handles.append(adapter.block(layer).register_forward_pre_hook(
            lambda m, args, kwargs: session.store(Site.RESID_PRE, layer, args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
    if Site.RESID_POST in wanted:
        handles.append(adapter.block(layer).register_forward_hook(
            lambda m, a, out: session.store(Site.RESID_POST, layer, out[0] if isinstance(out, tuple) else out)))
    return handles


def finish(session: _Session, lm: LoadedModel, *, backend: str = "torch") -> Capture:
    """The :class:`Capture` of a finished session (prompt = the first pass's ids or image)."""
    if lm.tokenizer is None and session.pixel_shapes:
        return build_capture(lm, session.spec, session.steps, None, backend=backend,
                             pixel_shape=session.pixel_shapes[0])
    ids = session.input_ids
    input_ids = ids[0] if ids else torch.zeros(1, 0, dtype=torch.long)
    generated = torch.cat(ids[1:], dim=-1) if len(ids) > 1 else None
    return build_capture(lm, session.spec, session.steps, input_ids, backend=backend, generated=generated)


def build_capture(lm: LoadedModel, spec: CaptureSpec, steps, input_ids: torch.Tensor | None, *,
                  backend: str, generated: torch.Tensor | None = None,
                  pixel_shape: tuple[int, ...] | None = None) -> Capture:
    """The capture of ``steps``; an image run gives ``pixel_shape`` ``(batch, 3, H, W)`` instead
    of ids, and gets tokens "CLS", "patch(r,c)" and its layout in ``meta.extra["image"]``."""
    if pixel_shape is not None:
        return _image_capture(lm, spec, steps, pixel_shape, backend=backend)
    meta = CaptureMeta(
        facts=lm.facts,
        token_ids=input_ids.tolist(),
        tokens=[lm.tokens(row) for row in input_ids],
        text=[lm.tokenizer.decode(row) for row in input_ids],
        sites=list(spec.sites), layers=list(spec.layers), heads=list(spec.heads),
        kv_heads=list(spec.kv_heads), backend=backend,
        generated=[] if generated is None else generated.tolist(),
    )
    return Capture(meta=meta, steps=steps)


def _image_capture(lm: LoadedModel, spec: CaptureSpec, steps, pixel_shape, *, backend: str) -> Capture:
    from lens.vision import layout_for

    layout = layout_for(lm.model.config, torch.empty(pixel_shape, device="meta"))
    batch, tokens = pixel_shape[0], layout.tokens()
    meta = CaptureMeta(
        facts=lm.facts,
        token_ids=[list(range(layout.n_tokens)) for _ in range(batch)],  # positions: images have no ids
        tokens=[list(tokens) for _ in range(batch)],
        text=[f"<image {layout.height}x{layout.width}>"] * batch,
        sites=list(spec.sites), layers=list(spec.layers), heads=list(spec.heads),
        kv_heads=list(spec.kv_heads), backend=backend, extra={"image": layout.to_json()},
    )
    return Capture(meta=meta, steps=steps)
