"""Attention overlays on the input image, per head, for every capture with an image layout
(ViT or vision-language model): one query token's attention on each patch, laid over the
image (:mod:`dashboards.overlay`), one panel per head of a layer; beside them a patch map (the
mean over the heads shown) where a click on a patch makes that patch the query."""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import Inferno256
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import add_color_bar, on_click
from attnlens.dashboards.overlay import (
    default_query,
    has_image_layout,
    load_image,
    overlay_png,
    patch_attention,
    visual_sink_patches,
)
from attnlens.formats import AttnlensError, CaptureFile, Site


class VisionOverlay(pn.viewable.Viewer):
    """Per-head attention overlays on a capture's image (any capture with an image layout)."""

    capture = param.Selector(objects=[])
    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Selector(default="all", objects=["all"], doc="One head, or all heads of the layer")
    query = param.Integer(default=-1, bounds=(-1, None), doc="Query token (-1: CLS for a ViT, the last token otherwise)")
    alpha = param.Number(default=0.6, bounds=(0.0, 1.0))
    shared_scale = param.Boolean(default=False, doc="One colour scale (with a colour bar) for all heads shown")

    def __init__(self, folder_or_sel, **params):
        caps = folder_or_sel.captures
        self._results = dict(getattr(folder_or_sel, "results", {}))
        self.captures = {k: c for k, c in caps.items() if has_image_layout(c)}
        names = list(self.captures)
        cap = params.pop("capture", names[0] if names else None)
        head = params.pop("head", "all")
        layer = params.pop("layer", None)  # default: the capture's last layer
        super().__init__(**params)
        self.param.capture.objects = names
        with param.discard_events(self):
            self.capture = cap
        self._heads()
        with param.discard_events(self):
            self.head = head if head in self.param.head.objects else "all"
            if layer is not None:
                self.layer = layer
            elif self._cap() is not None:
                self.layer = self._cap().layers[-1]

    def _cap(self) -> CaptureFile | None:
        return self.captures.get(self.capture) if self.capture else None

    @param.depends("capture", watch=True)
    def _heads(self) -> None:
        cap = self._cap()
        self.param.head.objects = ["all", *(cap.heads if cap else [])]
        if cap is not None and self.layer not in cap.layers:
            self.layer = cap.layers[-1]

    def sink_patches(self) -> tuple[str, list[tuple[int, int]]]:
        """The folder's visual-sinks result for this capture's model (label) and its visual-sink
        patches at the selected layer ("", [] when there is none)."""
        cap = self._cap()
        for label, r in self._results.items():
            if cap is not None and r.name == "visual_sinks.image_centric" and r.provenance.model == cap.model:
                return label, visual_sink_patches(r, self.layer, cap)
        return "", []

    def query_position(self) -> int:
        cap = self._cap()
        if cap is None:
            return 0
        return default_query(cap) if self.query < 0 else min(self.query, len(cap.tokens) - 1)

    def patch_at(self, x: float, y: float) -> int | None:
        """The token position of the patch drawn at data ``(x, y)`` of the patch map (None off the grid)."""
        cap = self._cap()
        if cap is None:
            return None
        rows, cols = cap.layout.grid
        r, c = int(np.floor(y)), int(np.floor(x))
        if 0 <= r < rows and 0 <= c < cols:
            return cap.layout.patch_span[0] + r * cols + c
        return None

    def _pick_patch(self, x: float, y: float) -> None:
        pos = self.patch_at(x, y)
        if pos is not None:
            self.query = pos

    def patch_map(self, cap: CaptureFile, heads: list[int], q: int):
        """Bokeh map of query ``q``'s attention on each patch (mean over ``heads``) over the image,
        the query's own patch outlined; a click on a patch makes it the query."""
        rows, cols = cap.layout.grid
        att = np.mean([patch_attention(cap, self.layer, h, q) for h in heads], axis=0)
        side = int(min(420, max(240, 36 * max(rows, cols))))
        what = "mean of the heads" if len(heads) > 1 else f"head {heads[0]}"
        p = figure(width=side + 60, height=int(side * rows / max(cols, rows)) + 40, x_range=(0, cols),
                   y_range=(rows, 0), tools="reset,save", toolbar_location="above", name="vision_patches",
                   title=f"query {q} on the patches")
        img = load_image(cap)
        if img is not None:
            rgba = np.asarray(img, dtype=np.float64)
            rgba = rgba * 255 if rgba.max() <= 1.0 else rgba
            if rgba.ndim == 2:
                rgba = np.stack([rgba] * 3, axis=-1)
            if rgba.shape[-1] == 3:
                rgba = np.concatenate([rgba, np.full(rgba.shape[:2] + (1,), 255.0)], axis=-1)
            packed = np.ascontiguousarray(rgba.astype(np.uint8)).view(np.uint32)[..., 0]
            p.image_rgba(image=[packed], x=0, y=0, dw=cols, dh=rows)  # row 0 at y=0: the top (y range flipped)
        rr, cc = np.divmod(np.arange(rows * cols), cols)
        start = cap.layout.patch_span[0]
        src = ColumnDataSource({"x": (cc + 0.5).tolist(), "y": (rr + 0.5).tolist(), "w": att.ravel().tolist(),
                                "patch": [f"({r},{c})" for r, c in zip(rr, cc)],
                                "pos": (start + rr * cols + cc).tolist()}, name="vision_patch_cells")
        mapper = LinearColorMapper(palette=Inferno256, low=0.0, high=max(float(att.max()), 1e-9))
        r = p.rect("x", "y", 1, 1, source=src, fill_color={"field": "w", "transform": mapper},
                   fill_alpha=self.alpha if img is not None else 1.0, line_color=None)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("patch", "@patch"), ("token", "@pos"),
                                                       ("weight", "@w{0.0000}")]))
        add_color_bar(p, mapper, f"weight ({what})")
        if start <= q < start + rows * cols:
            qr, qc = divmod(q - start, cols)
            p.rect([qc + 0.5], [qr + 0.5], 1, 1, fill_alpha=0, line_color="#00e5ff", line_width=3, name="vision_query")
        p.axis.visible = False
        p.grid.visible = False
        on_click(p, self._pick_patch)
        return p

    @param.depends("capture", "layer", "head", "query", "alpha", "shared_scale")
    def plot(self):
        cap = self._cap()
        if cap is None:
            return pn.pane.HTML("<p>No captures with an image layout in this folder (capture a vision model with "
                                "<code>lens capture MODEL --image IMG --out RESULTS/image</code>).</p>")
        if not cap.has(Site.PATTERN, self.layer):
            return pn.pane.HTML(f"<p>Capture {html.escape(self.capture)} has no pattern at layer {self.layer} "
                                f"(layers {cap.layers}).</p>")
        heads = cap.heads if self.head == "all" else [int(self.head)]
        q = self.query_position()
        lay = cap.layout
        rows, cols = lay.grid
        pooled = f" ({lay.pooled}x{lay.pooled} patches pooled per token)" if lay.pooled > 1 else ""
        note = (f"<p>{html.escape(cap.model)} · query {q} {html.escape(repr(cap.tokens[q]))} · {rows}x{cols} patches "
                f"of {lay.patch_size * lay.pooled} px{pooled} at positions {lay.patch_span[0]}-{lay.patch_span[1] - 1}"
                + ("" if load_image(cap) is not None else " · no image saved: attention alone")
                + " · click a patch on the map to make it the query</p>")
        label, sinks = self.sink_patches()
        if label:
            where = ", ".join(f"({r},{c})" for r, c in sinks) or "none at this layer"
            note += (f"<p>Visual sinks (outlined; patches that are sinks in at least half the prompts of "
                     f"<code>{html.escape(label)}</code>): {where}</p>")
        try:
            png = overlay_png(cap, self.layer, heads, q, self.alpha, sinks=sinks, shared=self.shared_scale)
        except AttnlensError as err:
            return pn.pane.HTML(f"<p>{html.escape(str(err))}</p>")
        # the overlays and the patch map side by side where the window is wide enough, else one below the other
        return pn.Column(pn.pane.HTML(note), pn.FlexBox(pn.pane.PNG(png, name="vision_overlay"),
                                                        pn.pane.Bokeh(self.patch_map(cap, heads, q))))

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.capture, width=200),
                                pn.widgets.IntInput.from_param(self.param.layer, width=80),
                                pn.widgets.Select.from_param(self.param.head, width=80),
                                pn.widgets.IntInput.from_param(self.param.query, width=90),
                                pn.widgets.FloatSlider.from_param(self.param.alpha, width=150),
                                pn.widgets.Checkbox.from_param(self.param.shared_scale, name="one colour scale")),
                         pn.param.ParamMethod(self.plot, lazy=True, loading_indicator=True), name="Vision")
