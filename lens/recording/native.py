"""Capture through plain PyTorch hooks on a transformers model.

Queries, keys, values and patterns are taken inside transformers' attention interface,
through an observer on the attention stack (:mod:`lens.attention`): it sees q and k after
rotary embedding, k/v including the KV cache, and the probabilities of the layers whose
pattern is captured (only those layers run eager attention). Families that compute attention in
their own code the stack cannot reach (Falcon, BLOOM, MPT, XGLM, ...) give their pattern from the
weights their attention modules return and q/k/v from their projections (rotated as they rotate
them). ``z`` (the input of the output
projection), the block's and MLP's outputs are taken by module hooks, after the edits of
:mod:`lens.edits` (so a capture records what the edited model computed). Everything is
undone on exit.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from attnlens.formats.capture import CaptureMeta
from attnlens.formats.layouts import ImageLayout
from lens import _exclusive
from lens.adapters import ModelAdapter, adapter_for
from lens.attention import AttentionObserver, attention_mode, reaches_stack
from lens.edits import Edit, editing
from lens.errors import BackendError, MemoryBudgetError
from lens.hooks import Point, Where, hooked
from lens.inputs import ModelInput
from lens.loaded import LoadedModel
from lens.projected import projected_qkv_points
from lens.recording.record import Capture
from lens.recording.spec import CaptureSpec, format_bytes
from lens.sites import Part, Site, SiteKey


class _Session(AttentionObserver):
    """The callbacks of one capture: records into ``steps`` (one dict per forward pass)."""

    def __init__(self, spec: CaptureSpec, n_heads: int):
        self.spec = spec
        self.layers = frozenset(spec.layers)
        self.needs_weights = Site.PATTERN in spec.sites
        self.steps: list[dict[SiteKey, torch.Tensor]] = []
        self.n_bytes = 0
        # None where every head is kept in order: no copy needed to select them.
        # (all query heads in order implies all KV heads in order)
        every_head = spec.heads == tuple(range(n_heads))
        self._head_idx = None if every_head else torch.tensor(spec.heads)
        self._kv_idx = None if every_head else torch.tensor(spec.kv_heads)
        self.recorded: set[SiteKey] = set()  # every key stored so far (callers may empty steps as they read them)
        self.passes = 0  # forward passes of the model seen
        self.input_ids: list[torch.Tensor] = []  # the ids each forward pass was given
        self.pixel_shapes: list[tuple[int, ...]] = []  # the pixel values' shapes, for vision models
        self.thread = threading.get_ident()  # passes run by other threads are theirs, not this capture's

    def new_step(self, args, kwargs) -> None:
        if threading.get_ident() != self.thread:
            return
        first = args[0] if args else None
        ids = kwargs.get("input_ids", first)
        if isinstance(ids, torch.Tensor) and not ids.is_floating_point():
            self.input_ids.append(ids.detach().cpu())
        pixels = kwargs.get("pixel_values", first)
        if isinstance(pixels, torch.Tensor) and pixels.is_floating_point() and pixels.ndim == 4:
            self.pixel_shapes.append(tuple(pixels.shape))
        self.passes += 1
        self.steps.append({})

    def store(self, site: Site, layer: int, t: torch.Tensor) -> None:
        if site not in self.spec.sites or layer not in self.layers or threading.get_ident() != self.thread:
            return
        idx = (self._kv_idx if site.per_kv_head else self._head_idx) if site.per_head else None
        if idx is not None:  # [batch, head, pos, ...]
            t = t.index_select(1, idx.to(t.device))
        stored = t.detach().to(device=self.spec.device, dtype=self.spec.dtype or t.dtype)
        if stored.data_ptr() == t.data_ptr():  # never keep a reference the model may reuse
            stored = stored.clone()
        self.n_bytes += stored.numel() * stored.element_size()
        if self.n_bytes > self.spec.budget_bytes:
            raise MemoryBudgetError(
                f"capture exceeded its memory budget of {format_bytes(self.spec.budget_bytes)} "
                f"(at {site.value} of layer {layer}, step {len(self.steps) - 1}); "
                "select fewer layers, heads or sites, or raise budget_bytes")
        if not self.steps:
            self.steps.append({})
        self.steps[-1][SiteKey(site, layer)] = stored
        self.recorded.add(SiteKey(site, layer))

    # ---- the attention observer ------------------------------------------------------
    def on_inputs(self, module, layer, query, key, value) -> None:
        self.store(Site.Q, layer, query)
        self.store(Site.K, layer, key)
        self.store(Site.V, layer, value)

    def on_outputs(self, module, layer, query, key, value, out, weights) -> None:
        if weights is not None:
            self.store(Site.PATTERN, layer, weights)


class _PartPatterns(AttentionObserver):
    """Records the probabilities of another attention part (encoder self-attention, cross-attention)."""

    needs_weights = True

    def __init__(self, session: _Session, site: Site):
        self.session, self.site, self.part = session, site, site.part
        self.layers = session.layers

    def on_outputs(self, module, layer, query, key, value, out, weights) -> None:
        if weights is not None:
            self.session.store(self.site, layer, weights)


@contextmanager
def capture(lm: LoadedModel, spec: CaptureSpec, *, edits: Sequence[Edit] = (),
            adapter: ModelAdapter | None = None) -> Iterator[_Session]:
    """Record ``spec`` from every forward pass of ``lm.model`` inside the block, with ``edits`` applied.

    Yields the live session; :func:`finish` turns it into a :class:`Capture`. Each
    forward call (a plain forward, or each step of ``generate()``) is one step.
    """
    adapter = adapter or adapter_for(lm.model, lm.facts.n_layers)
    _check_attention_layers(lm, spec, adapter)
    session = _Session(spec, lm.facts.n_heads)
    with ExitStack() as stack:
        stack.enter_context(_exclusive.recording(lm.model))  # another thread's capture would mix into this one
        stack.enter_context(editing(lm, edits, adapter=adapter))  # first: the recording hooks see edited values
        handles: list = []
        stack.callback(lambda: [h.remove() for h in handles])
        points = [(Point(Where.CALL), session.new_step)]
        in_attention = [s for s in spec.sites if s.in_attention and s.part is Part.SELF]
        own = not reaches_stack(lm.model)
        if own:  # patterns of every part from the attention modules' own returned weights
            sdpa = getattr(lm.model.config, "_attn_implementation", None) == "sdpa"
            modules = adapter.attention_modules()
            for site in (s for s in spec.sites if s.is_pattern):
                for layer in spec.layers:
                    handles.extend(_own_pattern_hooks(session, site, layer, modules[(site.part, layer)], sdpa))
            if {Site.Q, Site.K, Site.V} & set(spec.sites):  # q/k/v from their projections
                for layer in spec.layers:
                    points.extend(projected_qkv_points(lm, adapter, layer, lambda q, k, v, call, layer=layer:
                                                       session.on_inputs(None, layer, q, k, v)))
        elif in_attention:
            stack.enter_context(attention_mode(lm.model, session))
        for site in spec.sites:
            if site.part is not Part.SELF and not own:
                stack.enter_context(attention_mode(lm.model, _PartPatterns(session, site)))
        for layer in spec.layers:
            points.extend(_layer_points(session, layer))
        stack.enter_context(hooked(lm, points, adapter=adapter))
        yield session
        check_recorded(session, lm.model)


def check_recorded(session: _Session, model) -> None:
    """After the block: every requested (site, layer) was recorded by some forward pass, or
    :class:`BackendError` (a capture that ran and recorded nothing somewhere is never a success)."""
    if not session.passes and not session.recorded:
        return  # no forward pass ran inside the block
    missing = [SiteKey(site, layer) for site in session.spec.sites for layer in session.spec.layers
               if SiteKey(site, layer) not in session.recorded]
    if missing:
        from lens.attention import family

        shown = ", ".join(str(k) for k in missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise BackendError(f"{family(model)} ran but recorded nothing at {shown}: this model computes them "
                           "somewhere attnlens does not hook")


def _check_attention_layers(lm: LoadedModel, spec: CaptureSpec, adapter: ModelAdapter) -> None:
    """Attention sites only at layers that have attention (a hybrid's other blocks give residual and MLP sites)."""
    from lens.errors import SelectionError

    cross = {layer for part, layer in adapter.attention_modules() if part is Part.CROSS}
    lacking = [layer for layer in spec.layers if layer not in cross]
    if Site.CROSS_PATTERN in spec.sites and lacking:
        raise SelectionError(f"layers {lacking} of {lm.facts.name} have no cross-attention: site cross_pattern "
                             f"needs one of layers {sorted(cross)}")
    wanted = [s.value for s in spec.sites if s.part is Part.SELF and (s.in_attention or s in (Site.Z, Site.ATTN_OUT))]
    if not wanted:
        return
    have = {layer for part, layer in adapter.attention_modules() if part is Part.SELF}
    lacking = [layer for layer in spec.layers if layer not in have]
    if lacking:
        raise SelectionError(f"layers {lacking} of {lm.facts.name} have no attention: sites {', '.join(wanted)} "
                             f"need one of layers {sorted(have)}")


def _own_pattern_hooks(session: _Session, site: Site, layer: int, attention: torch.nn.Module, sdpa: bool):
    """The pattern ``site`` of a family that computes attention in its own code (GPT-J, Falcon, BLOOM, MPT;
    MVP's encoder, decoder and cross-attention):
    its attention module returns ``(output, weights)``, weights ``[batch, head, q, k]`` after its own
    position scheme (rotary, ALiBi) and mask. Asking it for them (``output_attentions=True``) keeps
    Falcon off its SDPA branch for this layer only (the others compute them anyway); its eager branch
    adds the mask to the scores, so under SDPA the boolean mask (True = attend) becomes the additive
    one; with ALiBi, Falcon's SDPA mask already holds the bias that its eager branch adds again, so
    only the mask's masked entries are kept (the pattern is the one the SDPA run computes, and the
    logits do not move). MPT's eager code takes a boolean mask, True = masked: masks are left alone
    outside SDPA."""
    params = list(inspect.signature(attention.forward).parameters)
    at = params.index("output_attentions") if "output_attentions" in params else len(params)

    def ask(module, args, kwargs):
        if at < len(args):  # passed by position (DeBERTa-v2)
            args = (*args[:at], True, *args[at + 1:])
        else:
            kwargs = {**kwargs, "output_attentions": True}
        mask = kwargs.get("attention_mask")
        if not sdpa or not isinstance(mask, torch.Tensor):
            return args, kwargs
        if mask.dtype == torch.bool:
            dtype = args[0].dtype if args else kwargs["hidden_states"].dtype
            kwargs["attention_mask"] = torch.zeros((), dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min)
        elif kwargs.get("alibi") is not None:
            low = torch.finfo(mask.dtype).min
            kwargs["attention_mask"] = torch.zeros_like(mask).masked_fill(mask == low, low)
        return args, kwargs

    def take(module, args, kwargs, out):
        weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if isinstance(weights, torch.Tensor) and weights.ndim == 4:
            session.store(site, layer, weights)

    return [attention.register_forward_pre_hook(ask, with_kwargs=True),
            attention.register_forward_hook(take, with_kwargs=True)]


def _layer_points(session: _Session, layer: int) -> list:
    """The hook points of ``layer``'s sites outside attention (z, attention and MLP outputs, residuals)."""
    wanted = set(session.spec.sites)
    store = session.store
    # the engine gives z as [batch, pos, head, d_head]; the site is [batch, head, pos, d_head]
    table = [(Site.Z, Where.Z, lambda t: store(Site.Z, layer, t.transpose(1, 2))),
             (Site.ATTN_OUT, Where.ATTN_OUT, lambda t: store(Site.ATTN_OUT, layer, t)),
             (Site.MLP_OUT, Where.MLP_OUT, lambda t: store(Site.MLP_OUT, layer, t)),
             (Site.RESID_PRE, Where.BLOCK_IN, lambda t: store(Site.RESID_PRE, layer, t)),
             (Site.RESID_POST, Where.BLOCK_OUT, lambda t: store(Site.RESID_POST, layer, t))]
    return [(Point(where, layer), fn) for site, where, fn in table if site in wanted]


def finish(session: _Session, lm: LoadedModel, *, backend: str = "torch") -> Capture:
    """The :class:`Capture` of a finished session (prompt = the first pass's ids or image)."""
    if lm.tokenizer is None and session.pixel_shapes:
        return build_capture(lm, session.spec, session.steps, None, backend=backend,
                             pixel_shape=session.pixel_shapes[0])
    ids = session.input_ids
    input_ids = ids[0] if ids else torch.zeros(1, 0, dtype=torch.long)
    generated = torch.cat(ids[1:], dim=-1) if len(ids) > 1 else None
    return build_capture(lm, session.spec, session.steps, input_ids, backend=backend, generated=generated)


def build_capture(lm: LoadedModel, spec: CaptureSpec, steps, input_ids, *,
                  backend: str, generated: torch.Tensor | None = None,
                  pixel_shape: tuple[int, ...] | None = None, image_png: bytes | None = None) -> Capture:
    """The capture of ``steps`` over ``input_ids`` (token ids, or a prepared :class:`lens.inputs.ModelInput`
    whose labels, layout and media it keeps); a vision model run inside :func:`lens.capture` gives
    ``pixel_shape`` ``(batch, 3, H, W)`` instead of ids, and gets tokens "CLS", "patch(r,c)" and its
    image layout."""
    if isinstance(input_ids, ModelInput):
        x = input_ids
        if x.one_step:  # several passes (a speech model's encoder and decoder) make one step
            steps = [{k: v for s in steps for k, v in s.items()}]
        meta = CaptureMeta(facts=lm.facts, token_ids=x.token_ids, tokens=x.tokens, text=x.text,
                           sites=list(spec.sites), layers=list(spec.layers), heads=list(spec.heads),
                           kv_heads=list(spec.kv_heads), backend=backend, layout=x.layout)
        return Capture(meta=meta, steps=steps, image_png=x.image_png, audio_wav=x.audio_wav)
    if pixel_shape is not None:
        return _image_capture(lm, spec, steps, pixel_shape, backend=backend, image_png=image_png)
    meta = CaptureMeta(
        facts=lm.facts,
        token_ids=input_ids.tolist(),
        tokens=[lm.tokens(row) for row in input_ids],
        text=[lm.tokenizer.decode(row) for row in input_ids],
        sites=list(spec.sites), layers=list(spec.layers), heads=list(spec.heads),
        kv_heads=list(spec.kv_heads), backend=backend,
        generated=[] if generated is None else generated.tolist(),
        generated_tokens=[] if generated is None else [lm.tokens(row) for row in generated],
    )
    return Capture(meta=meta, steps=steps)


def _image_capture(lm: LoadedModel, spec: CaptureSpec, steps, pixel_shape, *, backend: str,
                   image_png: bytes | None) -> Capture:
    from lens.vision import layout_for

    layout: ImageLayout = layout_for(lm.model.config, torch.empty(pixel_shape, device="meta"),
                                     image_file="image.png" if image_png is not None else None)
    batch, tokens = pixel_shape[0], layout.tokens()
    meta = CaptureMeta(
        facts=lm.facts,
        token_ids=[list(range(layout.n_tokens)) for _ in range(batch)],  # positions: images have no ids
        tokens=[list(tokens) for _ in range(batch)],
        text=[f"<image {layout.height}x{layout.width}>"] * batch,
        sites=list(spec.sites), layers=list(spec.layers), heads=list(spec.heads),
        kv_heads=list(spec.kv_heads), backend=backend, layout=layout,
    )
    return Capture(meta=meta, steps=steps, image_png=image_png)
