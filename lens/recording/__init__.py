"""Capture attention and activations: :func:`capture` (a context manager) and :func:`run`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lens import _checks
from lens.backends import Backend
from lens.edits import Edit
from lens.errors import AttnlensError, BackendError, MemoryBudgetError
from lens.inputs import ModelInput, encode_batch, prepare
from lens.loaded import LoadedModel
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
    ``prompt`` may also be a :class:`lens.inputs.ModelInput` already prepared (:func:`lens.prepare`).

    The capture's size is estimated first; over ``budget_bytes`` it raises
    :class:`~lens.errors.MemoryBudgetError` before anything runs. ``remote`` (nnsight backend
    only, untested here) runs the trace on NDIF: see :mod:`lens.backends.nnsight_backend`.
    """
    a = _checks.run_args(lm, prompt, sites_=sites, layers=layers, heads=heads, dtype=dtype, device_=device,
                         budget_bytes=budget_bytes, edits_=edits, backend_=backend, chat=chat,
                         decoder_ids=decoder_ids, remote=remote)
    backend, edits, remote = a["backend"], a["edits"], a["remote"]
    if remote and backend is not Backend.NNSIGHT:
        raise BackendError(f"`remote=True` runs through nnsight: use `backend='nnsight'`, not {backend.value}")
    x = prompt if isinstance(prompt, ModelInput) else prepare(lm, prompt, image=image, chat=a["chat"],
                                                                decoder_ids=a["decoder_ids"])
    if backend is not Backend.TORCH and not x.text_only:
        what = {"speech": "take audio", "source-target": "run encoder-decoders"}.get(x.modality, "take images")
        raise BackendError(f"backend {backend.value!r} does not {what}: use backend 'torch' for {lm.facts.name}")
    spec = CaptureSpec.resolve(lm.facts, sites=a["sites"], layers=a["layers"], heads=a["heads"], dtype=a["dtype"],
                               device=a["device"], budget_bytes=a["budget_bytes"])
    check_budget(lm, spec, x)
    from lens.backends import backend_failure, check_backend_model

    check_backend_model(backend.value, lm.facts)
    hidden = None
    if backend is Backend.TORCH:
        with torch.no_grad(), native.capture(lm, spec, edits=edits) as session:
            out = lm.model(**x.model_kwargs(lm))
        steps = session.steps
        logits = getattr(out, "logits", None)
        if logits is None:  # an encoder without a head (BERT-style, a ViT): its hidden states are the output
            hidden = out.last_hidden_state.detach()
    elif backend is Backend.TRANSFORMER_LENS:
        from lens.backends import transformer_lens

        if getattr(lm.model, "hf_device_map", None):
            raise BackendError("backend transformer_lens builds its own copy of the model on one device: use backend "
                               "torch or nnsight with `device_map`")
        try:
            logits, steps = transformer_lens.run(lm, x.input_ids, spec, edits)
        except (AttnlensError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # the bridge's own failures on this family: one line naming it
            raise backend_failure(backend.value, lm.facts, err) from err
    else:
        from lens.backends import nnsight_backend

        try:
            logits, steps = nnsight_backend.run(lm, x.input_ids, spec, edits, remote=remote)
        except (AttnlensError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise backend_failure(backend.value, lm.facts, err) from err
    cap = native.build_capture(lm, spec, steps, x, backend=backend.value)
    return RunResult(logits=None if logits is None else logits.detach(), capture=cap, last_hidden_state=hidden)


def check_budget(lm: LoadedModel, spec: CaptureSpec, x: ModelInput | torch.Tensor) -> int:
    """The estimated bytes of capturing ``spec`` over ``x`` (a prepared input, or token ids of which
    only the shape ``[batch, pos]`` counts); raises if over budget. The one budget check of capture."""
    model_dtype = next(lm.model.parameters()).dtype
    if isinstance(x, ModelInput):
        batch, q_len, frames = x.batch, x.n_positions, x.frames
    else:
        batch, q_len, frames = x.shape[0], x.shape[1], None
    estimate = spec.estimate_bytes(lm.facts, batch=batch, q_len=q_len, model_dtype=model_dtype, frames=frames or 0)
    if estimate > spec.budget_bytes:
        raise MemoryBudgetError(
            f"capture would need about {format_bytes(estimate)}, over the budget of "
            f"{format_bytes(spec.budget_bytes)}: select fewer layers, heads or sites, a shorter prompt, "
            "or raise the budget"
        )
    return estimate


__all__ = ["Capture", "CaptureMeta", "CaptureSpec", "ModelInput", "RunResult", "capture", "check_budget", "encode_batch",
           "prepare", "run"]
