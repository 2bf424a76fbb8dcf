"""Attention overlays on the input image, per head, for vision captures.

A vision capture is an ordinary capture whose facts say ``modality: "vision"`` (or
``"vision-text"``) and whose ``meta.extra`` gives the patch layout::

    {"patch_grid": [rows, cols],   # patches in row-major token order
     "prefix_tokens": 1,           # CLS / register tokens before the patches
     "image": "image.png"}         # the input image, saved next to capture.json

The overlay shows, for one query token (CLS by default), its attention on every patch,
reshaped to the grid and laid over the image, one panel per head of the layer.
"""

from __future__ import annotations

import io

import numpy as np
import panel as pn
import param

from dashboards.data import CaptureFile, ResultsFolder, head_label


def is_vision(cap: CaptureFile) -> bool:
    return cap.modality.startswith("vision") and "patch_grid" in cap.extra


def patch_attention(cap: CaptureFile, layer: int, head: int, query: int = 0) -> np.ndarray:
    """``[rows, cols]`` attention of ``query`` on each image patch of one head."""
    rows, cols = (int(x) for x in cap.extra["patch_grid"])
    prefix = int(cap.extra.get("prefix_tokens", 0))
    row = cap.pattern(layer, head)[query]
    return np.asarray(row[prefix:prefix + rows * cols], dtype=np.float64).reshape(rows, cols)


def overlay_png(cap: CaptureFile, layer: int, heads: list[int], query: int = 0, alpha: float = 0.6,
                panel_px: int = 160) -> bytes:
    """PNG of one overlay per head in ``heads`` (small multiples, at most 4 per row)."""
    from matplotlib.figure import Figure

    img = None
    path = cap.image_path()
    if path is not None and path.is_file():
        import matplotlib.image as mpimg

        img = mpimg.imread(path)
    n = len(heads)
    ncol = min(4, n)
    nrow = int(np.ceil(n / ncol))
    dpi = 100
    fig = Figure(figsize=(ncol * panel_px / dpi, nrow * (panel_px + 18) / dpi), dpi=dpi)
    for i, h in enumerate(heads):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        att = patch_attention(cap, layer, h, query)
        rows, cols = att.shape
        if img is not None:
            ax.imshow(img, extent=(0, cols, rows, 0))
        ax.imshow(att, extent=(0, cols, rows, 0), cmap="inferno", alpha=alpha if img is not None else 1.0,
                  interpolation="nearest")
        ax.set_title(f"{head_label(layer, h)} (max {att.max():.2f})", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class VisionOverlay(pn.viewable.Viewer):
    """Per-head attention overlays on a vision capture's image."""

    capture = param.Selector(objects=[])
    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Selector(default="all", objects=["all"], doc="One head, or all heads of the layer")
    query = param.Integer(default=0, bounds=(0, None), doc="Query token (0: CLS)")
    alpha = param.Number(default=0.6, bounds=(0.0, 1.0))

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        self.captures = [c for c in folder.captures if is_vision(c)]
        names = [c.name for c in self.captures]
        cap = params.pop("capture", names[0] if names else None)
        head = params.pop("head", "all")
        super().__init__(**params)
        self.param.capture.objects = names
        heads = self.captures[0].heads if self.captures else []
        self.param.head.objects = ["all", *heads]
        with param.discard_events(self):
            self.capture, self.head = cap, head

    def _cap(self) -> CaptureFile | None:
        return next((c for c in self.captures if c.name == self.capture), None)

    @param.depends("capture", "layer", "head", "query", "alpha")
    def plot(self):
        cap = self._cap()
        if cap is None:
            return pn.pane.Markdown("No vision captures in this folder. A vision capture's `capture.json` has "
                                    "modality `vision` and `extra.patch_grid`; see `dashboards/vision.py`.")
        if not cap.has("pattern", self.layer):
            return pn.pane.Markdown(f"Capture {cap.name} has no pattern at layer {self.layer} (layers {cap.layers}).")
        heads = cap.heads if self.head == "all" else [int(self.head)]
        q = min(self.query, len(cap.tokens) - 1)
        return pn.pane.PNG(overlay_png(cap, self.layer, heads, q, self.alpha), name="vision_overlay")

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.capture, width=120),
                                pn.widgets.IntInput.from_param(self.param.layer, width=90),
                                pn.widgets.Select.from_param(self.param.head, width=90),
                                pn.widgets.IntInput.from_param(self.param.query, width=90),
                                pn.widgets.FloatSlider.from_param(self.param.alpha, width=160)),
                         pn.param.ParamMethod(self.plot, lazy=True), name="Vision")
