"""Attention of one query on an image's patches (pure: numpy and matplotlib, no Panel), for the
vision view and the report.

A capture's ``meta.layout`` (:class:`formats.ImageLayout`) says where the image's tokens
sit: ``start`` (0 for a ViT, after the text for a vision-language model), ``prefix`` (CLS
and register tokens) and the patch grid. The image is the one saved next to the capture,
its path confined to the capture folder by :mod:`formats`.
"""

from __future__ import annotations

import io

import numpy as np

from attnlens.dashboards.compute import head_label
from attnlens.formats import AttnlensError, CaptureFile, ImageLayout, Site


def has_image_layout(cap: CaptureFile) -> bool:
    return isinstance(cap.layout, ImageLayout) and Site.PATTERN in cap.sites


def default_query(cap: CaptureFile) -> int:
    """CLS for a ViT (a prefix token, bidirectional attention), else the last token (a VLM's text after the image)."""
    lay = cap.layout
    if lay is not None and lay.prefix > 0 and not cap.facts.causal:
        return lay.start
    return len(cap.tokens) - 1


def patch_attention(cap: CaptureFile, layer: int, head: int, query: int) -> np.ndarray:
    """``[rows, cols]`` attention of ``query`` on each image patch of one head."""
    lay = cap.layout
    rows, cols = lay.grid
    a, b = lay.patch_span
    row = cap.pattern(layer, head)[query]
    return np.asarray(row[a:b], dtype=np.float64).reshape(rows, cols)


def load_image(cap: CaptureFile):
    """The model-input image as an array, or None (no image saved, or unreadable)."""
    try:
        path = cap.image_path()
    except AttnlensError:
        return None
    if path is None or not path.is_file():
        return None
    try:
        import matplotlib.image as mpimg

        return mpimg.imread(path)
    except Exception:  # a damaged image is shown as missing, the attention still is
        return None


def visual_sink_patches(result, layer: int, cap: CaptureFile, *, share: float = 0.5) -> list[tuple[int, int]]:
    """The patches ``(row, col)`` that are visual sinks (VAR) at ``layer`` in at least ``share``
    of the prompts of a ``visual_sinks`` result (its ``sink_position_counts [layer, image
    token]``: the share of prompts in which each image token is one, prefix tokens first), on
    ``cap``'s patch grid; [] when the shapes disagree."""
    shares = result.arrays.get("sink_position_counts")
    lay = cap.layout
    rows, cols = lay.grid
    if shares is None or layer >= shares.shape[0] or shares.shape[1] != lay.prefix + rows * cols:
        return []
    hits = np.flatnonzero(shares[layer, lay.prefix:] >= share)
    return [(int(i) // cols, int(i) % cols) for i in hits]


def overlay_png(cap: CaptureFile, layer: int, heads: list[int], query: int, alpha: float = 0.6,
                panel_px: int = 150, sinks: list[tuple[int, int]] = (), shared: bool = False) -> bytes:
    """PNG of one overlay per head in ``heads`` (small multiples, at most 6 per row); ``sinks``:
    patches outlined in cyan (visual sinks). Each head has its own colour scale (0 to its
    largest weight), or with ``shared`` one scale for all (0 to the largest weight of any
    head shown) with a colour bar, so that 1% and 99% image attention look different."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    img = load_image(cap)
    n = len(heads)
    ncol = min(6, n)
    nrow = int(np.ceil(n / ncol))
    dpi = 100
    atts = [patch_attention(cap, layer, h, query) for h in heads]
    vmax = max(max(float(a.max()) for a in atts), 1e-9) if shared else None
    fig = Figure(figsize=(ncol * panel_px / dpi + (0.8 if shared else 0), nrow * (panel_px + 18) / dpi), dpi=dpi)
    axes, im = [], None
    for i, (h, att) in enumerate(zip(heads, atts)):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        axes.append(ax)
        rows, cols = att.shape
        if img is not None:
            ax.imshow(img, extent=(0, cols, rows, 0))
        im = ax.imshow(att, extent=(0, cols, rows, 0), cmap="inferno", alpha=alpha if img is not None else 1.0,
                       interpolation="nearest", vmin=0.0 if shared else None, vmax=vmax)
        for r, c in sinks:
            # inset, so that neighbouring sinks stay two boxes and a non-sink between them stays unmarked
            ax.add_patch(Rectangle((c + 0.1, r + 0.1), 0.8, 0.8, fill=False, edgecolor="#00e5ff", linewidth=1.4))
        ax.set_title(f"{head_label(layer, h)} (max {att.max():.2f}, sum {att.sum():.2f})", fontsize=7)
        ax.set_axis_off()
    fig.tight_layout(pad=0.3)
    if shared and im is not None:
        bar = fig.colorbar(im, ax=axes, fraction=0.04, pad=0.02)
        bar.set_label("attention weight (one scale for all heads)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.05)  # titles included
    return buf.getvalue()
