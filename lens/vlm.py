"""Image + text input for LLaVA-style models: prompt and images -> input ids, pixel values, image spans.

A prompt marks where each image goes with the model's image placeholder (``<image>``,
or the tokenizer's ``image_token``). :func:`prepare` expands each placeholder into as
many image tokens as the vision tower yields features for that image, so the ids go
straight into ``LlavaForConditionalGeneration`` (``input_ids``, ``pixel_values``), and
records each image's :class:`ImageSpan`: the half-open positions ``[start, end)`` of
its tokens, which hold ``prefix`` tokens (CLS and registers, kept by
``vision_feature_select_strategy="full"``) and then the patch grid in row-major order.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens.errors import PromptError
from lens.loaded import Modality

DEFAULT_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ImageSpan:
    """Where one image's tokens sit in a sequence: ``[start, end)``, ``prefix`` CLS/register
    tokens first, then the ``grid`` (rows, cols) of patches row-major."""

    image: int  # which image of the prompt (0-based)
    start: int
    end: int
    grid: tuple[int, int]
    prefix: int

    def __post_init__(self) -> None:
        rows, cols = self.grid
        if self.end - self.start != self.prefix + rows * cols:
            raise PromptError(f"image span [{self.start}, {self.end}) has {self.end - self.start} tokens, "
                              f"expected {self.prefix} + {rows}x{cols}")

    @property
    def n_tokens(self) -> int:
        return self.end - self.start

    def patch_position(self, row: int, col: int) -> int:
        """The sequence position of patch ``(row, col)``."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise PromptError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
        return self.start + self.prefix + row * cols + col

    def labels(self) -> list[str]:
        """One label per token of the span: ``img0:CLS``, ``img0:reg0``..., then ``img0:patch(r,c)``."""
        rows, cols = self.grid
        pre = (["CLS"] + [f"reg{i}" for i in range(self.prefix - 1)]) if self.prefix else []
        return [f"img{self.image}:{t}" for t in pre + [f"patch({r},{c})" for r in range(rows) for c in range(cols)]]

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "start": self.start, "end": self.end, "grid": list(self.grid),
                "prefix": self.prefix}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageSpan:
        return cls(int(d["image"]), int(d["start"]), int(d["end"]), (int(d["grid"][0]), int(d["grid"][1])),
                   int(d["prefix"]))


@dataclass(frozen=True)
class VlmInput:
    """One prompt ready for the model: ``input_ids [1, pos]``, ``pixel_values [image, 3, H, W]``
    (None for text only) and the image spans in ``input_ids``."""

    input_ids: Int[Tensor, "1 pos"]
    pixel_values: Float[Tensor, "image 3 height width"] | None
    spans: tuple[ImageSpan, ...]

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
        return kw


def placeholder(lm) -> str:
    """The prompt text that marks an image for ``lm``."""
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


def without_images(lm, prompt: str) -> str:
    """``prompt`` with its image placeholders removed: the same text, nothing to see."""
    return prompt.replace(placeholder(lm), "")


@dataclass(frozen=True)
class Batch:
    """Left-padded prompts: ``input_ids``/``attention_mask [batch, pos]``, all images stacked
    ``[image, 3, H, W]`` (None if none) and each row's spans shifted by its padding."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    pixel_values: Float[Tensor, "image 3 height width"] | None
    spans: tuple[tuple[ImageSpan, ...], ...]

    def model_kwargs(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        kw = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if self.pixel_values is not None:
            kw["pixel_values"] = self.pixel_values.to(device=device, dtype=dtype)
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
        spans.append(tuple(ImageSpan(s.image, s.start + pad, s.end + pad, s.grid, s.prefix) for s in x.spans))
    pix = [x.pixel_values for x in inputs if x.pixel_values is not None]
    return Batch(input_ids=ids, attention_mask=mask, pixel_values=torch.cat(pix) if pix else None,
                 spans=tuple(spans))


__all__ = ["Batch", "ImageSpan", "VlmInput", "collate", "image_token_count", "placeholder", "prepare",
           "read_image", "without_images"]


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
