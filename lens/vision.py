"""Image inputs for vision transformers: pixel values, the patch grid and token labels.

A ViT's sequence is ``prefix`` tokens (CLS, then any register tokens) followed by the
patches in row-major order: token ``prefix + r * cols + c`` is patch ``(r, c)``. Images
go in as a PIL image, a numpy array ``[H, W, 3]`` (uint8 0-255, or float 0-1), a list of
either (preprocessed by the model's image processor), or ready pixel values
``[batch, 3, H, W]`` (or ``[3, H, W]``), which are used as given.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.formats.layouts import ImageLayout
from lens.errors import PromptError


def layout_for(config, pixel_values: Tensor, *, image_file: str | None = None) -> ImageLayout:
    """The layout of ``pixel_values [batch, 3, H, W]`` for a ViT with ``config``."""
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    # a CLS token (plus DINOv2's registers) before the patches; SigLIP's tower has no CLS
    kind = str(getattr(config, "model_type", ""))
    cls = 0 if kind.startswith("siglip") else 2 if kind == "deit" else 1  # DeiT: CLS and distillation tokens
    prefix = cls + int(getattr(config, "num_register_tokens", 0) or 0)
    return ImageLayout(int(pixel_values.shape[-2]), int(pixel_values.shape[-1]), int(patch), prefix,
                       image_file=image_file)


def layout_of(capture) -> ImageLayout:
    """The image layout a vision capture recorded."""
    if capture.meta.layout is None:
        raise PromptError(f"this capture of {capture.meta.facts.name} is not of an image: it has no image layout")
    return capture.meta.layout


def input_png(lm, pixel_values: Tensor) -> bytes:
    """The first image of ``pixel_values [batch, 3, H, W]`` as the model saw it, as PNG bytes
    (normalisation undone with the image processor's mean and std, when it has them)."""
    from PIL import Image

    x = pixel_values[0].detach().float().cpu()
    proc = lm.processor
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def load_image(path) -> Any:
    """The image file at ``path`` as an RGB PIL image; :class:`PromptError` naming it if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.width * im.height > 100_000_000:
                raise PromptError(f"image {path} is {im.width}x{im.height} pixels: too large (at most 100 megapixels)")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise PromptError(f"image {path} cannot be decoded: {type(err).__name__}: {str(err)[:120]}") from None


def is_image(x: Any) -> bool:
    """Whether ``x`` looks like image input rather than text or token ids."""
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, Tensor):
        return x.is_floating_point()
    if isinstance(x, (list, tuple)) and x:
        return all(is_image(i) for i in x)
    return type(x).__module__.startswith("PIL.")


def pixel_values(lm, image) -> Float[Tensor, "batch 3 height width"]:
    """Pixel values for ``lm`` from any accepted image input (see the module docstring).

    Raises :class:`~lens.errors.PromptError` for input that is not an image or has the
    wrong number of channels.
    """
    if isinstance(image, Tensor):
        if not image.is_floating_point():
            raise PromptError(f"pixel values must be a float tensor [batch, 3, H, W], got dtype {image.dtype}")
        t = image.unsqueeze(0) if image.ndim == 3 else image
        if t.ndim != 4 or t.shape[1] != 3:
            raise PromptError(f"pixel values must be [batch, 3, H, W] or [3, H, W], got shape {tuple(image.shape)}")
        if t.numel() == 0:
            raise PromptError(f"pixel values are empty: shape {tuple(image.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise PromptError("pixel values hold NaN or inf: give a finite image")
        return t
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if isinstance(image, np.ndarray) and image.ndim == 4:
        images = list(image)
    if not images:
        raise PromptError("no images given")
    if lm.processor is None:
        raise PromptError(f"{lm.facts.name} has no image processor: give pixel values [batch, 3, H, W]")
    return lm.processor(images=[_as_pil(i) for i in images], return_tensors="pt").pixel_values


def _as_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise PromptError(f"an image array must be [H, W, 3] (or [H, W]), got shape {image.shape}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise PromptError(f"the image array is empty: shape {image.shape}")
        if a.dtype != np.uint8:
            if not np.isfinite(np.asarray(a, dtype=np.float64)).all():
                raise PromptError("the image array holds NaN or inf: give a finite image")
            a = np.clip(np.asarray(a, dtype=np.float64) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(a[..., :3])
    raise PromptError(f"expected a PIL image, a numpy array [H, W, 3] or pixel values, got {type(image).__name__}")


def cls_attention_map(pattern: Float[Tensor, "batch head q k"], layout: ImageLayout, *,
                      renormalize: bool = True) -> Float[Tensor, "batch head rows cols"]:
    """The CLS query's attention over the patches, on the patch grid.

    With ``renormalize`` the map sums to 1 per head (attention to CLS and registers left
    out); otherwise it keeps the raw probabilities.
    """
    rows, cols = layout.grid
    a = pattern[:, :, 0, layout.prefix:]
    if renormalize:
        a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return a.reshape(*a.shape[:2], rows, cols)


def upsample(maps: Float[Tensor, "... rows cols"], size: tuple[int, int]) -> Float[Tensor, "... height width"]:
    """Maps on the patch grid resized to ``size`` pixels (bilinear), for overlays on the image."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = torch.nn.functional.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def synthetic_image(size: int = 224, *, shape: str = "disc", center: tuple[float, float] = (0.4, 0.6),
                    radius: float = 0.18, seed: int = 0) -> np.ndarray:
    """A simple test image ``[size, size, 3]`` uint8: a red ``shape`` ("disc" or "square")
    at ``center`` (row, col as fractions) on a faint noisy grey-blue gradient."""
    if shape not in ("disc", "square"):
        raise PromptError(f"shape must be 'disc' or 'square', got {shape!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    bg = np.stack([0.55 + 0.1 * yy, 0.6 + 0.1 * xx, 0.75 - 0.1 * yy], axis=-1)
    img = bg + rng.normal(0, 0.03, size=bg.shape)
    dy, dx = yy - center[0], xx - center[1]
    inside = (dy**2 + dx**2 <= radius**2) if shape == "disc" else (np.maximum(abs(dy), abs(dx)) <= radius)
    shade = 0.85 - 0.5 * np.clip(np.sqrt(dy**2 + dx**2) / max(radius, 1e-6), 0, 1)[..., None]
    img = np.where(inside[..., None], np.array([0.9, 0.15, 0.1]) * (0.6 + shade * 0.5), img)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


__all__ = ["ImageLayout", "cls_attention_map", "input_png", "is_image", "load_image", "layout_for", "layout_of", "pixel_values",
           "synthetic_image", "upsample"]
