"""Image-text input through a family's own processor: ids, every keyword the model takes, and image spans
found in the processed ids (never computed from patch counts).

The processor expands each image placeholder into the family's tokens (pooled, pixel-shuffled, tiled,
with markers around them); the image's tokens are the runs of the model's image token id in the ids.
A run is a patch grid over its image (:attr:`ImageSpan.mappable`) when it is the only run of that image
and its length is a square number of patches after at most the vision tower's CLS and register tokens;
tiles, newline tokens and split images are kept as unmapped spans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lens.errors import PromptError
from lens.image_span import ImageSpan

_DROP = ("labels",)  # what processors return for training only


def image_token_id(model) -> int | None:
    cfg = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    return None


def runs(ids: Sequence[int], token: int) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` of every maximal run of ``token`` in ``ids``."""
    out, start = [], None
    for i, t in enumerate([*ids, None]):
        if t == token and start is None:
            start = i
        elif t != token and start is not None:
            out.append((start, i))
            start = None
    return out


def spans_from_ids(ids: Sequence[int], token: int, n_images: int, *, max_prefix: int = 1, base: int | None = None,
                   global_last: bool = False):
    """The :class:`~lens.image_span.ImageSpan` s of the runs of ``token``, each assigned to its image in order.

    ``base``: tiled families whose run starts with the whole image's patches (LLaVA-NeXT: ``base``
    tokens, then tiles and newline tokens): the run is split into that grid and the rest.
    ``global_last``: split images whose last run per image is the whole image (Idefics3).
    """

    found = runs(ids, token)
    if not n_images:
        return ()
    if len(found) % n_images:
        raise PromptError(f"cannot tell which image tokens belong to which image: {len(found)} runs of image "
                          f"tokens for {n_images} images")
    per = len(found) // n_images
    spans = []
    for i, (start, end) in enumerate(found):
        image, n = i // per, end - start
        whole = per == 1 or (global_last and i % per == per - 1)
        if base is not None and whole and n > base and math.isqrt(base) ** 2 == base:
            side = math.isqrt(base)
            spans += [ImageSpan(image, start, start + base, (side, side), 0),
                      ImageSpan(image, start + base, end, (1, n - base), 0, mappable=False)]
            continue
        side = math.isqrt(n)
        if whole and side > 0 and n - side * side <= max_prefix:
            spans.append(ImageSpan(image, start, end, (side, side), n - side * side))
        else:
            spans.append(ImageSpan(image, start, end, (1, n), 0, mappable=False))
    return tuple(spans)


def base_tokens(model) -> int | None:
    """Tokens of the whole-image grid at the start of a tiled family's run (LLaVA-NeXT, OneVision)."""
    cfg = model.config
    if getattr(cfg, "model_type", "") not in ("llava_next", "llava_onevision"):
        return None
    v = cfg.vision_config
    patch = v.patch_size if isinstance(v.patch_size, int) else v.patch_size[0]
    return (v.image_size // patch) ** 2


def max_prefix(model) -> int:
    """How many non-patch tokens (CLS, registers) the vision tower may put before an image's patches."""
    cfg = model.config
    registers = int(getattr(getattr(cfg, "vision_config", None), "num_register_tokens", 0) or 0)
    return registers + (1 if getattr(cfg, "vision_feature_select_strategy", None) == "full" else 0)


def processed(lm, text: str, images: list[Any]) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """``(input_ids [1, pos], pixel_values or None, other keywords)`` from the family's processor."""
    proc = lm.extras["processor"]
    kw: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kw["images"] = [images] if _nested(proc) else images
    try:
        out = dict(proc(**kw))
    except (ValueError, TypeError, IndexError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PromptError(f"{type(proc).__name__} cannot process this prompt and {len(images)} image(s): "
                          f"{first}") from None
    ids = out.pop("input_ids")
    out.pop("attention_mask", None)
    pixels = out.pop("pixel_values", None)
    for key in _DROP:
        out.pop(key, None)
    return ids.long(), pixels, {k: v for k, v in out.items() if isinstance(v, Tensor)}


def _nested(proc) -> bool:
    """Processors that take one list of images per prompt (Idefics3, Mllama)."""
    return type(proc).__name__ in ("Idefics3Processor", "SmolVLMProcessor", "MllamaProcessor", "Idefics2Processor")


def text_only(lm, text: str) -> tuple[Tensor, dict[str, Tensor]]:
    """Ids (and keywords) of ``text`` without images: the processor where it takes text alone, else the
    tokenizer (PaliGemma's processor wants images; its text-only prefix is then the whole prompt)."""
    proc = lm.extras["processor"]
    try:
        ids, _, extra = processed(lm, text, [])
        return ids, extra
    except PromptError:
        ids = torch.tensor([lm.tokenizer(text, add_special_tokens=True).input_ids], dtype=torch.long)
        extra = {}
        if "token_type_ids" in getattr(proc, "model_input_names", ()):
            extra["token_type_ids"] = torch.zeros_like(ids)
        return ids, extra
