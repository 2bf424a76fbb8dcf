"""Image + text input for LLaVA-style models: prompt and images -> input ids, pixel values, image spans.

A prompt marks where each image goes with the model's image placeholder (``<image>``,
or the tokenizer's ``image_token``). :func:`prepare` expands each placeholder into as
many image tokens as the vision tower yields features for that image, so the ids go
straight into ``LlavaForConditionalGeneration`` (``input_ids``, ``pixel_values``), and
records each image's :class:`ImageSpan`: the half-open positions ``[start, end)`` of
its tokens, which hold ``prefix`` tokens (CLS and registers, kept by
``vision_feature_select_strategy="full"``) and then the patch grid in row-major order.

Models loaded from a folder or hub id (``lens.load``) carry their family's processor
(``lm.extras["processor"]``): :func:`prepare` then lets it expand the placeholders (pooled,
pixel-shuffled, tiled, with the family's markers), passes every keyword it returns to the model
(:attr:`VlmInput.extra`) and finds the spans as the runs of the image token id in the processed
ids (:mod:`lens._processed`); a span that is not one patch grid over its image is
``mappable=False``.

Bad input fails with one-line :class:`~lens.errors.PromptError` messages: an image
that cannot be decoded, images given to a text-only model, a prompt without a
placeholder, more (or fewer) images than placeholders.

>>> x = prepare(lm, "<image>\\nWhat colour is the shape?", [scene.image], chat=True)
>>> x.spans[0]
ImageSpan(image=0, start=3, end=20, grid=(4, 4), prefix=1)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from lens.errors import PromptError
from lens.image_span import ImageSpan
from lens.loaded import Modality

DEFAULT_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class VlmInput:
    """One prompt ready for the model: ``input_ids [1, pos]``, ``pixel_values [image, 3, H, W]``
    (None for text only) and the image spans in ``input_ids``."""

    input_ids: Int[Tensor, "1 pos"]
    pixel_values: Tensor | None  # [image, 3, H, W]; tiled and patchified families have their own shapes
    spans: tuple[ImageSpan, ...]
    # every other keyword the family's processor returned (image_sizes, token_type_ids,
    # pixel_attention_mask, aspect_ratio_ids, cross_attention_mask...), passed to the model as they are
    extra: dict[str, Tensor] = field(default_factory=dict)
    model_type: str = ""  # the model's config.model_type, for per-family rules (how fed tokens extend masks)

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[-1])

    def image_mask(self) -> Bool[Tensor, " pos"]:
        """True at every image-token position."""
        mask = torch.zeros(self.n_tokens, dtype=torch.bool)
        for s in self.spans:
            mask[s.start:s.end] = True
        return mask

    def labelled(self, tokens: Sequence[str]) -> list[str]:
        """``tokens`` (one per position) with each image's tokens named ``img0:CLS``, ``img0:patch(r,c)``."""
        out = list(tokens)
        for s in self.spans:
            out[s.start:s.end] = s.labels()
        return out

    def model_kwargs(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Keyword arguments for the model's forward (``input_ids``, ``attention_mask``, ``pixel_values``)."""
        kw = {"input_ids": self.input_ids.to(device), "attention_mask": torch.ones_like(self.input_ids).to(device)}
        if self.pixel_values is not None:
            kw["pixel_values"] = self.pixel_values.to(device=device, dtype=dtype)
        kw.update(_extra_to(self.extra, device, dtype))
        return kw

    def extended(self, tokens: Int[Tensor, "1 new"]) -> VlmInput:
        """The same input with ``tokens`` appended as text that follows the prompt (answer tokens fed
        back): per-position keywords grow with them (see :func:`_extend_positions`)."""
        extra = {k: _extend_positions(k, v, tokens.shape[-1], self.model_type) if k in PER_POSITION else v
                 for k, v in self.extra.items()}
        return VlmInput(torch.cat([self.input_ids, tokens.to(self.input_ids)], dim=1), self.pixel_values, self.spans,
                        extra, self.model_type)


# keywords with one entry per token position (dim 1), padded and extended with the ids
PER_POSITION = ("token_type_ids", "mm_token_type_ids", "cross_attention_mask")


def _extra_to(extra: dict[str, Tensor], device, dtype) -> dict[str, Tensor]:
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() and dtype is not None else v.to(device)
            for k, v in extra.items()}


def _extend_positions(key: str, value: Tensor, n: int, model_type: str) -> Tensor:
    """``value [batch, pos, ...]`` grown by ``n`` positions of text after the prompt: PaliGemma marks the
    answer as suffix (token type 1, attended causally), other families as plain text (type 0); a
    cross-attention mask repeats its last row (the answer sees the images the prompt's end saw)."""
    if key == "cross_attention_mask":
        tail = value[:, -1:].expand(value.shape[0], n, *value.shape[2:])
    else:
        fill = 1 if (key == "token_type_ids" and model_type == "paligemma") else 0
        tail = torch.full((value.shape[0], n, *value.shape[2:]), fill, dtype=value.dtype)
    return torch.cat([value, tail.to(value)], dim=1)


def placeholder(lm) -> str:
    """The prompt text that marks an image for ``lm`` (Gemma 3's processor expands ``<start_of_image>``)."""
    proc = lm.extras.get("processor") if hasattr(lm, "extras") else None
    if proc is not None:
        mark = getattr(proc, "boi_token", None) or getattr(proc, "image_token", None)
        if mark:
            return mark
    return getattr(lm.tokenizer, "image_token", None) or DEFAULT_PLACEHOLDER


def read_image(image: Any):
    """A PIL RGB image from a path, bytes, a PIL image or a numpy array ``[H, W, 3]``.

    Raises :class:`PromptError` naming the file when it cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise PromptError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise PromptError(f"image file {str(path)!r} cannot be decoded as an image: {type(err).__name__}") from None
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError):
            raise PromptError(f"image bytes ({len(image)} bytes) cannot be decoded as an image") from None
    return image  # PIL image or array: lens.vision checks them


def image_token_count(lm, pixel_values: Tensor) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, (rows, cols)) that one image of ``pixel_values [.., 3, H, W]`` becomes."""
    cfg = lm.model.config
    vcfg = cfg.vision_config
    patch = vcfg.patch_size if isinstance(vcfg.patch_size, int) else vcfg.patch_size[0]
    registers = int(getattr(vcfg, "num_register_tokens", 0) or 0)
    strategy = getattr(cfg, "vision_feature_select_strategy", "default")
    prefix = 1 + registers if strategy == "full" else registers
    return prefix, (int(pixel_values.shape[-2]) // patch, int(pixel_values.shape[-1]) // patch)


def prepare(lm, prompt: str, images: Sequence[Any] | Any = (), *, chat: bool = False) -> VlmInput:
    """``prompt`` with its image placeholders expanded, the images' pixel values and spans.

    ``images`` is one image or a sequence (paths, bytes, PIL images, arrays), one per
    placeholder, in order. With ``chat`` the prompt is formatted by the chat template
    first. A text-only prompt on a vision-text model (no placeholder, no images) is fine.
    """
    from lens.vision import pixel_values as to_pixels

    if not prompt or not prompt.strip():
        raise PromptError("prompt is empty: give some text to run the model on")
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if lm.facts.modality is not Modality.VISION_TEXT:
        if images:
            raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model: it takes no images "
                              f"(got {len(images)}); use a vision-text model such as tiny-vlm")
        return VlmInput(input_ids=lm.encode(prompt, chat=chat), pixel_values=None, spans=())
    mark = placeholder(lm)
    n_marks = prompt.count(mark)
    if images and n_marks == 0:
        raise PromptError(f"prompt has no {mark} placeholder for the {len(images)} image(s) given: "
                          f"put {mark} where each image goes")
    if len(images) != n_marks:
        more = "more" if len(images) > n_marks else "fewer"
        raise PromptError(f"{more} images than {mark} placeholders: {len(images)} image(s), "
                          f"{n_marks} placeholder(s) in the prompt")
    tok = lm.tokenizer
    if lm.extras.get("processor") is not None:
        return _prepare_processed(lm, prompt, images, chat=chat)
    if chat:
        if not getattr(tok, "chat_template", None):
            raise PromptError(f"chat formatting was asked for, but {lm.facts.name} has no chat template")
        from lens._chat import apply_chat_template

        text = apply_chat_template(tok, [{"role": "user", "content": prompt}], model=lm.facts.name,
                                   add_generation_prompt=True)
        ids: list[int] = []
    else:
        text = prompt
        ids = list(tok("", add_special_tokens=True).input_ids)  # BOS where the tokenizer adds one
    pixels = to_pixels(lm, [read_image(i) for i in images]) if images else None
    pieces = text.split(mark)
    spans = []
    image_id = int(lm.model.config.image_token_id)
    for i, piece in enumerate(pieces):
        if piece:
            ids += tok(piece, add_special_tokens=False).input_ids
        if i < len(pieces) - 1:
            prefix, grid = image_token_count(lm, pixels[i])
            n = prefix + grid[0] * grid[1]
            spans.append(ImageSpan(image=i, start=len(ids), end=len(ids) + n, grid=grid, prefix=prefix))
            ids += [image_id] * n
    input_ids = lm.check_length(torch.tensor([ids], dtype=torch.long))
    return VlmInput(input_ids=input_ids, pixel_values=pixels, spans=tuple(spans))


def _chat_text(lm, prompt: str) -> str:
    if not getattr(lm.tokenizer, "chat_template", None):
        raise PromptError(f"chat formatting was asked for, but {lm.facts.name} has no chat template")
    from lens._chat import apply_chat_template

    return apply_chat_template(lm.tokenizer, [{"role": "user", "content": prompt}], model=lm.facts.name,
                               add_generation_prompt=True)


def _prepare_processed(lm, prompt: str, images: list, *, chat: bool) -> VlmInput:
    """:func:`prepare` through the family's processor (models loaded from a folder or hub id)."""
    from lens import _processed

    text = _chat_text(lm, prompt) if chat else prompt
    model_type = getattr(lm.model.config, "model_type", "")
    if not images:
        ids, extra = _processed.text_only(lm, text)
        return VlmInput(lm.check_length(ids), None, (), extra, model_type)
    if model_type == "paligemma":  # its images come first, before the text
        text = placeholder(lm) * len(images) + text.replace(placeholder(lm), "")
    ids, pixels, extra = _processed.processed(lm, text, [read_image(i) for i in images])
    lm.check_length(ids)
    token = _processed.image_token_id(lm.model)
    if token is None:
        raise PromptError(f"{lm.facts.name}'s config names no image token id (image_token_id): its image "
                          "tokens cannot be found")
    # Mllama reads its images through cross-attention: no image tokens in the text sequence
    spans = () if model_type == "mllama" else _processed.spans_from_ids(
        ids[0].tolist(), token, len(images), max_prefix=_processed.max_prefix(lm.model),
        base=_processed.base_tokens(lm.model), global_last=model_type in ("idefics3", "smolvlm"))
    return VlmInput(ids, pixels, spans, extra, model_type)


def overlay_grid(x: VlmInput) -> tuple[ImageSpan | None, Tensor | None]:
    """The first image's patch grid and the pixels ``[1, 3, H, W]`` it lies on, or ``(None, None)`` when its
    tokens cannot be mapped onto the image (only tiles, or tokens read through cross-attention)."""
    span = next((s for s in x.spans if s.image == 0 and s.mappable), None)
    pv = x.pixel_values
    if span is None or pv is None:
        return None, None
    if pv.ndim == 4:
        return span, pv[:1]
    if pv.ndim == 5:  # tiles: LLaVA-NeXT puts the whole image first, Idefics3 last
        return span, pv[:1, -1 if x.model_type in ("idefics3", "smolvlm") else 0]
    return None, None


def patch_pooling(lm, width: int, cols: int) -> tuple[int, int]:
    """``(patch_size, pooled)`` of an image ``width`` pixels wide whose tokens form ``cols`` columns: the
    vision tower's patch and how many patches per side one token merges (Gemma 3's pooling, Idefics3's
    pixel shuffle), or one token per ``width // cols`` pixels when the patches do not divide evenly."""
    vcfg = getattr(lm.model.config, "vision_config", None)
    patch = getattr(vcfg, "patch_size", None)
    patch = patch if isinstance(patch, int) else (patch[0] if patch else None)
    if patch and width % patch == 0 and (width // patch) % cols == 0:
        return patch, (width // patch) // cols
    return width // cols, 1


def without_images(lm, prompt: str) -> str:
    """``prompt`` with its image placeholders removed: the same text, nothing to see."""
    return prompt.replace(placeholder(lm), "")


@dataclass(frozen=True)
class Batch:
    """Left-padded prompts: ``input_ids``/``attention_mask [batch, pos]``, all images stacked
    ``[image, 3, H, W]`` (None if none), each row's spans shifted by its padding and the processors'
    other keywords (per-position ones left-padded, the others concatenated over images)."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    pixel_values: Tensor | None
    spans: tuple[tuple[ImageSpan, ...], ...]
    extra: dict[str, Tensor] = field(default_factory=dict)

    def model_kwargs(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        kw = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if self.pixel_values is not None:
            kw["pixel_values"] = self.pixel_values.to(device=device, dtype=dtype)
        kw.update(_extra_to(self.extra, device, dtype))
        return kw


def collate(inputs: Sequence[VlmInput], pad_id: int) -> Batch:
    """Left-pad ``inputs`` to one batch (the last position of every row is its last real token)."""
    if not inputs:
        raise PromptError("no prompts to batch")
    width = max(x.n_tokens for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    spans = []
    for row, x in enumerate(inputs):
        pad = width - x.n_tokens
        ids[row, pad:] = x.input_ids[0]
        mask[row, pad:] = 1
        spans.append(tuple(s.shifted(pad) for s in x.spans))
    pix = [x.pixel_values for x in inputs if x.pixel_values is not None]
    return Batch(input_ids=ids, attention_mask=mask, pixel_values=_cat("pixel_values", pix) if pix else None,
                 spans=tuple(spans), extra=_collate_extra(inputs, width))


def _cat(key: str, values: list[Tensor]) -> Tensor:
    """``values`` concatenated over dim 0; tiled pixels (``[batch, tile, ...]``, LLaVA-NeXT, Idefics3) of
    images with different tile counts are zero-padded to the most tiles, as the processors pad a batch
    (the models drop all-zero tiles, or those past ``image_sizes``)."""
    if key in ("pixel_values", "pixel_attention_mask") and len({v.shape[2:] for v in values}) == 1 \
            and all(v.ndim >= 4 for v in values):
        most = max(v.shape[1] for v in values)
        values = [torch.cat([v, v.new_zeros((v.shape[0], most - v.shape[1], *v.shape[2:]))], dim=1)
                  if v.shape[1] < most else v for v in values]
    try:
        return torch.cat(values)
    except RuntimeError:
        shapes = sorted({tuple(v.shape[1:]) for v in values})
        raise PromptError(f"the prompts of a batch give {key} of different shapes {shapes} (images of "
                          "different sizes or tile counts): batch them one at a time") from None


def _collate_extra(inputs: Sequence[VlmInput], width: int) -> dict[str, Tensor]:
    keys = list(dict.fromkeys(k for x in inputs for k in x.extra))
    out = {}
    for key in keys:
        have = [x for x in inputs if key in x.extra]
        if key in PER_POSITION:
            if len(have) != len(inputs):
                raise PromptError(f"some prompts of a batch have {key} and some not: batch them one at a time")
            first = inputs[0].extra[key]
            value = torch.zeros((len(inputs), width, *first.shape[2:]), dtype=first.dtype)
            for row, x in enumerate(inputs):
                value[row, width - x.n_tokens:] = x.extra[key][0]
            out[key] = value
        else:
            out[key] = _cat(key, [x.extra[key] for x in have])
    return out


__all__ = ["Batch", "ImageSpan", "VlmInput", "collate", "image_token_count", "overlay_grid", "placeholder",
           "prepare", "read_image", "without_images"]


@torch.no_grad()
def generate(lm, prompt: str, images: Sequence[Any] | Any = (), *, max_new_tokens: int = 32, chat: bool = True) -> str:
    """Greedy answer of a vision-language model to ``prompt`` with ``images`` at its placeholders
    (chat-formatted when the model has a template); the errors of :func:`prepare`."""
    chat = chat and bool(getattr(lm.tokenizer, "chat_template", None))
    x = prepare(lm, prompt, images, chat=chat)
    lm.check_length(x.input_ids, extra=max_new_tokens)
    dtype = next(lm.model.parameters()).dtype
    tok = lm.tokenizer
    out = lm.model.generate(**x.model_kwargs(lm.device, dtype), max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return tok.decode(out[0, x.n_tokens:], skip_special_tokens=True).strip()
