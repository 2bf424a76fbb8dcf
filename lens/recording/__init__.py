"""Capture attention and activations: :func:`capture` (a context manager) and :func:`run`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from formats.layouts import ImageLayout
from lens import _checks
from lens.backends import Backend
from lens.edits import Edit
from lens.errors import AttnlensError, BackendError, MemoryBudgetError, PromptError
from lens.loaded import LoadedModel, Modality
from lens.recording import native
from lens.recording.record import Capture, CaptureMeta
from lens.recording.spec import CaptureSpec, format_bytes
from lens.sites import Site


@contextmanager
def capture(lm: LoadedModel, *, sites: Iterable[Site] = (Site.PATTERN,), layers: Sequence[int] | None = None,
            heads: Sequence[int] | None = None, dtype: torch.dtype | None = None, device: str = "cpu",
            budget_bytes: int | None = None, edits: Sequence[Edit] = ()) -> Iterator[Capture]:
    """Record ``sites`` at ``layers`` (all by default) for every forward pass inside the block.

    >>> with lens.capture(lm, sites=[Site.PATTERN, Site.Z], layers=[3]) as cap:
    ...     lm.model.generate(ids, max_new_tokens=5)
    >>> cap.pattern(3, step=0).shape   # the prompt's pass; steps 1.. are the new tokens
    torch.Size([1, 9, 12, 12])

    Hooks are removed when the block exits, also on error. The yielded capture's steps
    fill as the block runs; its metadata is set when the block exits (``meta`` is None
    until then). ``edits`` are applied while recording (see :mod:`lens.edits`).

    Only forward passes run by the thread that opened the block are recorded; a capture on a
    model that another thread is capturing from raises :class:`~lens.errors.BackendError`
    (load a second copy of the model for parallel captures).
    """
    a = _checks.capture_args(lm, sites_=sites, layers=layers, heads=heads, dtype=dtype, device_=device,
                             budget_bytes=budget_bytes, edits_=edits)
    edits = a.pop("edits")
    spec = CaptureSpec.resolve(lm.facts, **a)
    live = Capture(meta=None, steps=[])  # type: ignore[arg-type]  # set on exit
    with native.capture(lm, spec, edits=edits) as session:
        live.steps = session.steps
        try:
            yield live
        finally:
            live.meta = native.finish(session, lm).meta


@dataclass
class RunResult:
    logits: torch.Tensor | None  # [batch, pos, vocab]; None for encoders without a head (ViT)
    capture: Capture
    last_hidden_state: torch.Tensor | None = None  # [batch, pos, d_model], for encoders without logits


def run(lm: LoadedModel, prompt, *, sites: Iterable[Site] = (Site.PATTERN,),
        layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, dtype: torch.dtype | None = None,
        device: str = "cpu", budget_bytes: int | None = None, edits: Sequence[Edit] = (),
        backend: Backend | str = Backend.TORCH, chat: bool = False,
        decoder_ids: Sequence[int] | None = None, remote: bool = False, image=None) -> RunResult:
    """One forward pass over ``prompt`` (text, several texts of equal token length, or ids
    ``[batch, pos]``) through ``backend``, returning logits and the capture.

    For a speech model ``prompt`` is audio (a WAV/FLAC path or 16 kHz samples) and the decoder
    runs over ``decoder_ids`` (default: the greedy transcript); see :mod:`lens.speech`.
    For a text encoder-decoder (T5, BART) ``prompt`` is the source and the decoder runs over
    ``decoder_ids`` (start token first; default: the greedy output); see :mod:`lens.seq2seq`.
    For a vision model ``prompt`` is an image: a PIL image, a numpy array ``[H, W, 3]``,
    a list of those, or pixel values ``[batch, 3, H, W]`` (see :mod:`lens.vision`); the
    result has ``last_hidden_state`` and no logits, and the capture's tokens are "CLS",
    "patch(r,c)", ... (torch backend only).
    For a vision-language (LLaVA-style) model ``prompt`` is text with an ``<image>``
    placeholder and ``image`` the image (path, PIL image or array; see :mod:`lens.vlm`): the
    capture's layout says where the image tokens sit (``start``, ``prefix``, patch grid) and
    its tokens label them ``img0:patch(r,c)`` (torch backend only).

    The capture's size is estimated first; over ``budget_bytes`` it raises
    :class:`~lens.errors.MemoryBudgetError` before anything runs. ``remote`` (nnsight backend
    only, untested here) runs the trace on NDIF: see :mod:`lens.backends.nnsight_backend`.
    """
    a = _checks.run_args(lm, prompt, sites_=sites, layers=layers, heads=heads, dtype=dtype, device_=device,
                         budget_bytes=budget_bytes, edits_=edits, backend_=backend, chat=chat,
                         decoder_ids=decoder_ids, remote=remote)
    sites, layers, heads, dtype, device = a["sites"], a["layers"], a["heads"], a["dtype"], a["device"]
    budget_bytes, edits, backend, chat, remote = a["budget_bytes"], a["edits"], a["backend"], a["chat"], a["remote"]
    decoder_ids = a["decoder_ids"]
    if remote and backend is not Backend.NNSIGHT:
        raise BackendError(f"--remote runs through nnsight: use backend nnsight, not {backend.value}")
    if lm.facts.modality is Modality.SPEECH:
        from lens import speech

        return speech.run_audio(lm, prompt, sites=sites, layers=layers, heads=heads, dtype=dtype, device=device,
                                budget_bytes=budget_bytes, edits=edits, backend=backend, decoder_ids=decoder_ids)
    if lm.facts.modality is Modality.TEXT and lm.facts.encoder_layers:  # T5, BART: source in, target decoded
        from lens import seq2seq

        return seq2seq.run_text(lm, prompt, sites=sites, layers=layers, heads=heads, dtype=dtype, device=device,
                                budget_bytes=budget_bytes, edits=edits, backend=backend, decoder_ids=decoder_ids)
    if lm.facts.modality is Modality.VISION_TEXT and (image is not None or isinstance(prompt, str)):
        # text prompts go through the image-text input (placeholders expanded); token ids
        # without an image are the language model's own input and take the text path below
        return _run_image_text(lm, prompt, image, sites=sites, layers=layers, heads=heads, dtype=dtype,
                               device=device, budget_bytes=budget_bytes, edits=edits, backend=backend, chat=chat)
    if image is not None:
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model: it takes no image= "
                          "(use a vision-text model such as tiny-vlm)")
    if lm.facts.modality is Modality.VISION:
        return _run_image(lm, prompt, sites=sites, layers=layers, heads=heads, dtype=dtype, device=device,
                          budget_bytes=budget_bytes, edits=edits, backend=backend)
    input_ids = encode_batch(lm, prompt, chat=chat)
    spec = CaptureSpec.resolve(lm.facts, sites=sites, layers=layers, heads=heads, dtype=dtype,
                               device=device, budget_bytes=budget_bytes)
    check_budget(lm, spec, input_ids)
    from lens.backends import backend_failure, check_backend_model

    check_backend_model(backend.value, lm.facts)
    hidden = None
    if backend is Backend.TORCH:
        with torch.no_grad(), native.capture(lm, spec, edits=edits) as session:
            out = lm.model(input_ids.to(lm.device))
        steps = session.steps
        logits = getattr(out, "logits", None)
        if logits is None:  # an encoder without a head (BERT-style): its hidden states are the output
            hidden = out.last_hidden_state.detach()
    elif backend is Backend.TRANSFORMER_LENS:
        from lens.backends import transformer_lens

        if getattr(lm.model, "hf_device_map", None):
            raise BackendError("backend transformer_lens builds its own copy of the model on one device: use backend "
                               "torch or nnsight with --device-map")
        try:
            logits, steps = transformer_lens.run(lm, input_ids, spec, edits)
        except (AttnlensError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # the bridge's own failures on this family: one line naming it
            raise backend_failure(backend.value, lm.facts, err) from err
    else:
        from lens.backends import nnsight_backend

        try:
            logits, steps = nnsight_backend.run(lm, input_ids, spec, edits, remote=remote)
        except (AttnlensError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise backend_failure(backend.value, lm.facts, err) from err
    cap = native.build_capture(lm, spec, steps, input_ids, backend=backend.value)
    return RunResult(logits=None if logits is None else logits.detach(), capture=cap, last_hidden_state=hidden)


def _run_image(lm: LoadedModel, image, *, sites, layers, heads, dtype, device, budget_bytes, edits,
               backend: Backend) -> RunResult:
    from lens import vision

    if backend is not Backend.TORCH:
        raise BackendError(f"backend {backend.value!r} does not take images: use backend 'torch' for {lm.facts.name}")
    if not vision.is_image(image):
        raise PromptError(f"{lm.facts.name} is a vision model: give an image (PIL, numpy [H, W, 3] or pixel "
                          f"values [batch, 3, H, W]), got {type(image).__name__}")
    pixels = vision.pixel_values(lm, image)
    layout = vision.layout_for(lm.model.config, pixels)
    spec = CaptureSpec.resolve(lm.facts, sites=sites, layers=layers, heads=heads, dtype=dtype,
                               device=device, budget_bytes=budget_bytes)
    check_budget(lm, spec, torch.empty(pixels.shape[0], layout.n_tokens, device="meta"))
    model_dtype = next(lm.model.parameters()).dtype
    with torch.no_grad(), native.capture(lm, spec, edits=edits) as session:
        out = lm.model(pixel_values=pixels.to(device=lm.device, dtype=model_dtype))
    cap = native.build_capture(lm, spec, session.steps, None, backend=backend.value,
                               pixel_shape=tuple(pixels.shape), image_png=vision.input_png(lm, pixels))
    logits = getattr(out, "logits", None)
    return RunResult(logits=None if logits is None else logits.detach(), capture=cap,
                     last_hidden_state=out.last_hidden_state.detach() if hasattr(out, "last_hidden_state") else None)


def _run_image_text(lm: LoadedModel, prompt, image, *, sites, layers, heads, dtype, device, budget_bytes, edits,
                    backend: Backend, chat: bool) -> RunResult:
    from lens import vision, vlm

    if backend is not Backend.TORCH:
        raise BackendError(f"backend {backend.value!r} does not take images: use backend 'torch' for {lm.facts.name}")
    if not isinstance(prompt, str):
        raise PromptError(f"{lm.facts.name} is a vision-language model: give the prompt as text with "
                          f"{vlm.placeholder(lm)} where the image goes, got {type(prompt).__name__}")
    images = [] if image is None else (list(image) if isinstance(image, (list, tuple)) else [image])
    if len(images) > 1:
        raise PromptError(f"a capture takes one image, got {len(images)}")
    x = vlm.prepare(lm, prompt, images, chat=chat)
    spec = CaptureSpec.resolve(lm.facts, sites=sites, layers=layers, heads=heads, dtype=dtype,
                               device=device, budget_bytes=budget_bytes)
    check_budget(lm, spec, x.input_ids)
    model_dtype = next(lm.model.parameters()).dtype
    with torch.no_grad(), native.capture(lm, spec, edits=edits) as session:
        out = lm.model(**x.model_kwargs(lm.device, model_dtype))
    cap = native.build_capture(lm, spec, session.steps, x.input_ids, backend=backend.value)
    if x.spans:
        # the image layout: token start + prefix + r * cols + c is patch (r, c)
        span = x.spans[0]
        height, width = int(x.pixel_values.shape[-2]), int(x.pixel_values.shape[-1])
        layout = ImageLayout(height, width, width // span.grid[1], prefix=span.prefix, start=span.start,
                             image_file="image.png")
        cap = Capture(meta=replace(cap.meta, layout=layout, tokens=[x.labelled(cap.meta.tokens[0])]), steps=cap.steps,
                      image_png=vision.input_png(lm, x.pixel_values))
    return RunResult(logits=out.logits.detach(), capture=cap)


def check_budget(lm: LoadedModel, spec: CaptureSpec, input_ids: torch.Tensor) -> int:
    """The estimated bytes of capturing ``spec`` over ``input_ids`` (only its shape
    ``[batch, pos]`` counts); raises if over budget."""
    model_dtype = next(lm.model.parameters()).dtype
    estimate = spec.estimate_bytes(lm.facts, batch=input_ids.shape[0], q_len=input_ids.shape[1],
                                   model_dtype=model_dtype)
    if estimate > spec.budget_bytes:
        raise MemoryBudgetError(
            f"capture would need about {format_bytes(estimate)}, over the budget of "
            f"{format_bytes(spec.budget_bytes)}: select fewer layers, heads or sites, a shorter prompt, "
            "or raise the budget"
        )
    return estimate


def encode_batch(lm: LoadedModel, prompt, *, chat: bool = False) -> torch.Tensor:
    """Token ids ``[batch, pos]``; several texts must tokenize to the same length."""
    from lens import vision

    if lm.tokenizer is None:
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model without a tokenizer: give it "
                          "its own input (an image), not text or token ids")
    if isinstance(prompt, torch.Tensor) and not prompt.is_floating_point():
        ids = _checks.token_ids(prompt)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= lm.facts.vocab_size):
            raise PromptError(f"token ids must be in 0-{lm.facts.vocab_size - 1} (the vocabulary of "
                              f"{lm.facts.name}), got {int(ids.min())}-{int(ids.max())}")
        return lm.check_length(ids.long())
    if vision.is_image(prompt):
        raise PromptError(f"{lm.facts.name} is a text model: give it text or token ids, not an image")
    if isinstance(prompt, str):
        return lm.encode(prompt, chat=chat)
    rows = [lm.encode(p, chat=chat) for p in prompt]
    if not rows:
        raise PromptError("no prompts given")
    lengths = {r.shape[-1] for r in rows}
    if len(lengths) > 1:
        raise PromptError(f"prompts tokenize to different lengths {sorted(lengths)}: run them one by one or give ids")
    return torch.cat(rows, dim=0)


__all__ = ["Capture", "CaptureMeta", "CaptureSpec", "RunResult", "capture", "check_budget", "encode_batch", "run"]
