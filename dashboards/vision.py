"""Attention overlays on the input image, per head, for every capture with an image layout
(ViT or vision-language model): one query token's attention on each patch, laid over the
image (:mod:`dashboards.overlay`), one panel per head of a layer."""

from __future__ import annotations

import html

import panel as pn
import param

from dashboards.overlay import (
    default_query,
    has_image_layout,
    load_image,
    overlay_png,
    visual_sink_patches,
)
from formats import AttnlensError, CaptureFile, Site


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
                + ("" if load_image(cap) is not None else " · no image saved: attention alone") + "</p>")
        label, sinks = self.sink_patches()
        if label:
            where = ", ".join(f"({r},{c})" for r, c in sinks) or "none at this layer"
            note += (f"<p>Visual sinks (outlined; patches that are sinks in at least half the prompts of "
                     f"<code>{html.escape(label)}</code>): {where}</p>")
        try:
            png = overlay_png(cap, self.layer, heads, q, self.alpha, sinks=sinks, shared=self.shared_scale)
        except AttnlensError as err:
            return pn.pane.HTML(f"<p>{html.escape(str(err))}</p>")
        return pn.Column(pn.pane.HTML(note), pn.pane.PNG(png, name="vision_overlay"))

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.capture, width=200),
                                pn.widgets.IntInput.from_param(self.param.layer, width=80),
                                pn.widgets.Select.from_param(self.param.head, width=80),
                                pn.widgets.IntInput.from_param(self.param.query, width=90),
                                pn.widgets.FloatSlider.from_param(self.param.alpha, width=150),
                                pn.widgets.Checkbox.from_param(self.param.shared_scale, name="one colour scale")),
                         pn.param.ParamMethod(self.plot, lazy=True, loading_indicator=True), name="Vision")
