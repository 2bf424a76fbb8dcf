"""One input preparation for every modality: :func:`prepare` turns what a user gives (text, token
ids, an image, an image with a prompt, audio) into a :class:`ModelInput`: the keyword arguments of
the model's forward, the token ids and labels a capture records, the layout of image or audio
positions and the media saved beside a capture.

Capture (:func:`lens.run`), statistics (:func:`lens.run_stats`) and the CLI all start here, so a
modality is handled in one place: the model-specific pieces stay in :mod:`lens.vision` (pixels and
patch grids), :mod:`lens.vlm` (image placeholders and spans) and :mod:`lens.speech` (features and
the decoder's transcript).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from attnlens.formats.layouts import AudioLayout, ImageLayout
from lens import _checks
from lens.errors import PromptError
from lens.loaded import LoadedModel, Modality


@dataclass(frozen=True)
class ModelInput:
    """One forward pass's input, whatever its modality.

    ``kwargs`` are the model's forward arguments (tensors on the CPU; :meth:`model_kwargs` moves
    them); ``token_ids`` ``[batch][pos]`` are what the capture records (positions for an image),
    ``tokens`` their labels and ``text`` the decoded prompt. ``frames`` is a speech encoder's
    length (the memory estimate counts its patterns), ``spans`` the image tokens' ranges (the
    statistics' span mass) and ``one_step`` says the model runs several passes that make one step
    (a speech model's encoder and decoder).
    """

    kwargs: dict[str, Any]
    token_ids: list[list[int]]
    tokens: list[list[str]]
    text: list[str]
    layout: ImageLayout | AudioLayout | None = None
    image_png: bytes | None = None
    audio_wav: bytes | None = None
    frames: int | None = None
    spans: tuple[tuple[int, int], ...] = ()
    one_step: bool = False
    modality: str = "text"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return len(self.token_ids)

    @property
    def n_positions(self) -> int:
        return len(self.token_ids[0]) if self.token_ids else 0

    @property
    def input_ids(self) -> Tensor | None:
        """The token ids ``[batch, pos]`` a text-only backend runs on (None for an image)."""
        ids = self.kwargs.get("decoder_input_ids", self.kwargs.get("input_ids"))
        return ids if self.modality in ("text", "image-text", "speech", "source-target") else None

    @property
    def text_only(self) -> bool:
        """Only token ids: what every backend (TransformerLens, nnsight) takes."""
        return self.modality == "text"

    def model_kwargs(self, lm: LoadedModel) -> dict[str, Any]:
        """``kwargs`` on the model's device, floating tensors in the model's dtype."""
        dtype = next(lm.model.parameters()).dtype
        out = {}
        for name, value in self.kwargs.items():
            if isinstance(value, Tensor):
                value = value.to(device=lm.device, dtype=dtype) if value.is_floating_point() else value.to(lm.device)
            out[name] = value
        return out


def prepare(lm: LoadedModel, prompt: Any = None, *, image: Any = None, audio: Any = None, chat: bool = False,
            decoder_ids=None) -> ModelInput:
    """The :class:`ModelInput` of ``prompt`` (and ``image`` / ``audio``) for ``lm``.

    Text models take text, several texts of one token length, or ids ``[batch, pos]``; vision
    models an image (``prompt`` or ``image``: PIL, numpy ``[H, W, 3]``, pixel values); image-text
    models a prompt with the image placeholder and ``image``; speech models audio (``prompt`` or
    ``audio``: a WAV/FLAC path or 16 kHz samples), the decoder running over ``decoder_ids``
    (default: the greedy transcript). A wrong kind of input raises :class:`~lens.errors.PromptError`
    naming the parameter.
    """
    modality = lm.facts.modality
    if audio is not None and modality is not Modality.SPEECH:
        raise PromptError(f"{lm.facts.name} is a {modality.value} model: it takes no audio (`audio` needs a speech "
                          "model)")
    if modality is Modality.SPEECH:
        if image is not None:
            raise PromptError(f"{lm.facts.name} is a speech model: it takes no images (`image` needs a vision model)")
        if audio is not None and prompt is not None:
            raise PromptError("give the audio once: as `prompt` or as `audio`, not both")
        return _audio_input(lm, audio if audio is not None else prompt, decoder_ids)
    if modality is Modality.TEXT and lm.facts.encoder_layers:  # T5, BART: a source in, the decoder over a target
        return _source_input(lm, prompt, decoder_ids)
    if decoder_ids is not None:
        raise PromptError(f"`decoder_ids` is for encoder-decoders (speech, T5/BART); {lm.facts.name} is a "
                          f"{modality.value} model")
    if modality is Modality.VISION_TEXT:
        from lens.vlm import VlmInput

        if isinstance(prompt, VlmInput):
            return from_vlm(lm, prompt)
    if modality is Modality.VISION_TEXT and (image is not None or isinstance(prompt, str)):
        # token ids without an image are the language model's own input: the text path below
        return _image_text_input(lm, prompt, image, chat=chat)
    if image is not None and modality is not Modality.VISION:
        why = ("`image` with `prompt` needs a vision-language model such as tiny-vlm" if prompt is not None else
               "`image` needs a vision model, or a vision-language model with `prompt`")
        raise PromptError(f"{lm.facts.name} is a {modality.value} model: it takes no images ({why})")
    if modality is Modality.VISION:
        if image is not None and prompt is not None:
            raise PromptError("give the image once: as `prompt` or as `image`, not both")
        return _image_input(lm, image if image is not None else prompt)
    return text_input(lm, encode_batch(lm, prompt, chat=chat))


def text_input(lm: LoadedModel, input_ids: Tensor) -> ModelInput:
    """The input of token ids ``[batch, pos]`` already checked against the model."""
    return ModelInput(kwargs={"input_ids": input_ids}, token_ids=input_ids.tolist(),
                      tokens=[lm.tokens(row) for row in input_ids],
                      text=[lm.tokenizer.decode(row) for row in input_ids])


def encode_batch(lm: LoadedModel, prompt, *, chat: bool = False) -> Tensor:
    """Token ids ``[batch, pos]``; several texts must tokenize to the same length."""
    from lens import vision

    if lm.tokenizer is None:
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model without a tokenizer: give it "
                          "its own input (an image), not text or token ids")
    if isinstance(prompt, Tensor) and not prompt.is_floating_point():
        ids = _checks.token_ids(prompt)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= lm.facts.vocab_size):
            raise PromptError(f"token ids must be in 0-{lm.facts.vocab_size - 1} (the vocabulary of "
                              f"{lm.facts.name}), got {int(ids.min())}-{int(ids.max())}")
        return lm.check_length(ids.long())
    if vision.is_image(prompt):
        raise PromptError(f"{lm.facts.name} is a text model: give it text or token ids, not an image")
    if isinstance(prompt, str):
        return lm.encode(prompt, chat=chat)
    if prompt is None:
        raise PromptError("no prompt given")
    rows = [lm.encode(p, chat=chat) for p in prompt]
    if not rows:
        raise PromptError("no prompts given")
    lengths = {r.shape[-1] for r in rows}
    if len(lengths) > 1:
        raise PromptError(f"prompts tokenize to different lengths {sorted(lengths)}: run them one by one or give ids")
    return torch.cat(rows, dim=0)


def _image_input(lm: LoadedModel, image) -> ModelInput:
    from lens import vision

    if not vision.is_image(image):
        raise PromptError(f"{lm.facts.name} is a vision model: give an image (PIL, numpy [H, W, 3] or pixel "
                          f"values [batch, 3, H, W]), got {type(image).__name__}")
    pixels = vision.pixel_values(lm, image)
    png = vision.input_png(lm, pixels)
    layout = vision.layout_for(lm.model.config, pixels, image_file="image.png" if png is not None else None)
    batch, labels = int(pixels.shape[0]), layout.tokens()
    return ModelInput(kwargs={"pixel_values": pixels}, modality="image",
                      token_ids=[list(range(layout.n_tokens)) for _ in range(batch)],  # images have no ids
                      tokens=[list(labels) for _ in range(batch)],
                      text=[f"<image {layout.height}x{layout.width}>"] * batch, layout=layout, image_png=png)


def _image_text_input(lm: LoadedModel, prompt, image, *, chat: bool) -> ModelInput:
    from lens import vlm

    if prompt is None:
        raise PromptError(f"{lm.facts.name} is a vision-language model: give `prompt` with {vlm.placeholder(lm)} "
                          "where the image goes, together with `image`")
    if not isinstance(prompt, str):
        raise PromptError(f"{lm.facts.name} is a vision-language model: give the prompt as text with "
                          f"{vlm.placeholder(lm)} where the image goes, got {type(prompt).__name__}")
    images = [] if image is None else (list(image) if isinstance(image, (list, tuple)) else [image])
    if len(images) > 1:
        raise PromptError(f"`image` takes one image, got {len(images)}")
    return from_vlm(lm, vlm.prepare(lm, prompt, images, chat=chat))


def from_vlm(lm: LoadedModel, x) -> ModelInput:
    """The :class:`ModelInput` of a :class:`lens.vlm.VlmInput` (image spans labelled, the overlay's layout)."""
    from lens import vision, vlm

    ids = x.input_ids
    base = text_input(lm, ids)
    layout, png = None, None
    span, pixels = vlm.overlay_grid(x)
    if span is not None:
        # the image layout: token start + prefix + r * cols + c is patch (r, c)
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        patch, pooled = vlm.patch_pooling(lm, width, span.grid[1])
        layout = ImageLayout(height, width, patch, prefix=span.prefix, start=span.start, image_file="image.png",
                             pooled=pooled)
        png = vision.input_png(lm, pixels)
    return replace(base, kwargs=x.model_kwargs("cpu"), tokens=[x.labelled(base.tokens[0])], layout=layout, image_png=png,
                   spans=tuple((s.start, s.end) for s in x.spans), modality="image-text", extras={"vlm": x})


def _source_input(lm: LoadedModel, source, decoder_ids) -> ModelInput:
    """A text encoder-decoder's input: the encoder reads ``source``, the decoder the start token and the
    target (``decoder_ids``, default: the greedy output); encoder positions are labelled by the source
    tokens (:class:`~formats.SourceLayout`)."""
    from attnlens.formats.layouts import SourceLayout
    from lens import seq2seq

    src = encode_batch(lm, source)  # with the tokenizer's special tokens
    if src.shape[0] != 1:
        raise PromptError(f"an encoder-decoder capture takes one source at a time, got {src.shape[0]}")
    ids = list(decoder_ids) if decoder_ids is not None else seq2seq.generate(lm, src)
    if any(not 0 <= int(i) < lm.facts.vocab_size for i in ids):
        raise PromptError(f"`decoder_ids` must be in 0-{lm.facts.vocab_size - 1}")
    target = lm.check_length(torch.tensor([ids], dtype=torch.long))
    text = source if isinstance(source, str) else lm.tokenizer.decode(src[0], skip_special_tokens=True)
    layout = SourceLayout(tokens=tuple(lm.tokens(src[0])), token_ids=tuple(int(t) for t in src[0]), text=text)
    return replace(text_input(lm, target), kwargs={"input_ids": src, "decoder_input_ids": target, "use_cache": False},
                   layout=layout, frames=int(src.shape[1]), one_step=True, modality="source-target")


def _audio_input(lm: LoadedModel, audio, decoder_ids) -> ModelInput:
    from attnlens.formats.capture import AUDIO_FILE
    from lens import speech
    from lens.audio import layout_for, load_audio

    if audio is None or (isinstance(audio, str) and not audio.lower().endswith((".wav", ".flac", ".wave"))):
        raise PromptError(f"{lm.facts.name} is a speech model: give it `audio` (a .wav or .flac file or 16 kHz "
                          f"samples), not {'text' if isinstance(audio, str) else 'nothing'}")
    samples = load_audio(audio)
    enc = speech.encoder_of(lm)
    if decoder_ids is None:
        ids = list(speech.transcribe(lm, samples).ids)
    else:
        ids = list(decoder_ids)
    if any(not 0 <= int(i) < lm.facts.vocab_size for i in ids):
        raise PromptError(f"`decoder_ids` must be in 0-{lm.facts.vocab_size - 1}")
    input_ids = lm.check_length(torch.tensor([ids], dtype=torch.long))
    n_prompt = len(speech.prompt_ids(lm))
    return ModelInput(
        kwargs={"input_features": speech.features(lm, samples).cpu(), "decoder_input_ids": input_ids,
                "use_cache": False},
        token_ids=[ids], tokens=[lm.tokens(input_ids[0])],
        text=[lm.tokenizer.decode(ids[n_prompt:], skip_special_tokens=True).strip()],
        layout=replace(layout_for(samples, enc), audio_file=AUDIO_FILE),
        audio_wav=speech.wav_bytes(samples, enc.sampling_rate), frames=enc.n_frames, one_step=True,
        modality="speech")


__all__ = ["ModelInput", "encode_batch", "from_vlm", "prepare", "text_input"]
