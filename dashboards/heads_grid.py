"""All heads of one prompt as a grid of small patterns (CircuitsVis' ``attention_heads``,
BertViz' ``model_view``): one thumbnail per ``[layer, head]``, a click selects the head. A capture
made across ``generate()`` shows the step chosen (the prompt's rows, then one row per token
generated so far), a batch capture the prompt chosen.

Each thumbnail is scaled to its own largest weight off the sink column (the sink drawn in
the above-scale colour), so heads with little mass still show their shape. Thumbnails are
pooled to at most ``cell`` tokens a side so that the grid stays below :data:`MAX_PIXELS`
values, whatever the number of heads and tokens.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import ABOVE_COLOR, NAN_COLOR, PATTERN_PALETTE, add_sink_legend
from attnlens.dashboards._pick import HeadPicker
from attnlens.dashboards.compute import ColorScale, color_range, downsample, head_label
from attnlens.dashboards.selection import ModelResults
from attnlens.formats import AttnlensError, CaptureFile, Site

MAX_PIXELS = 400_000
MAX_CELL = 32
THUMB_PX = 80  # thumbnail side on screen at least (CircuitsVis draws ~80-100 px), where MAX_WIDTH allows
MAX_WIDTH, MAX_HEIGHT = 900, 2400  # fits a 1,024 px window; a tall grid scrolls with the page


def grid_image(cap: CaptureFile, layers: list[int], heads: list[int], cell: int, *, step: int = 0,
               batch: int = 0) -> tuple[np.ndarray, int]:
    """``[len(layers) * (s + 1), len(heads) * (s + 1)]`` thumbnails of batch row ``batch`` as of
    generation step ``step`` (each scaled to [0, 1+], NaN between them and where a head was not
    captured) and the side ``s`` used."""
    n_tok = len(cap.tokens_through(step, batch))
    s = min(cell, n_tok)
    img = np.full((len(layers) * (s + 1), len(heads) * (s + 1)), np.nan, np.float32)
    for i, layer in enumerate(layers):
        if not cap.has(Site.PATTERN, layer):
            continue
        for j, head in enumerate(heads):
            if head not in cap.heads:
                continue
            p = downsample(cap.pattern_through(layer, head, batch, step), s)
            mask = np.zeros(p.shape, bool)
            mask[:, 0] = True
            _, hi = color_range(p, ColorScale.NO_SINK, mask)
            block = np.where(p > 0, p / hi, np.nan)
            img[i * (s + 1):i * (s + 1) + p.shape[0], j * (s + 1):j * (s + 1) + p.shape[1]] = block
    return img, s


class HeadsGrid(HeadPicker, pn.viewable.Viewer):
    """Every head of one capture (all layers, or one) as small patterns; a click sets ``selected``."""

    capture = param.Selector(objects=[], doc="Saved capture (its label in the folder)")
    layers = param.Selector(default="all", objects=["all"], doc="All layers, or one")
    step = param.Integer(default=0, bounds=(0, 0), doc="Generation step (0: the prompt; k: k tokens generated)")
    batch = param.Integer(default=0, bounds=(0, 0), doc="Prompt of the batch shown")

    def __init__(self, sel: ModelResults, **params):
        self.sel = sel
        names = sel.pattern_captures()
        cap = params.pop("capture", names[0] if names else None)
        super().__init__(**params)
        self.param.capture.objects = names
        with param.discard_events(self):
            self.capture = cap
        self._step_widget = pn.widgets.IntInput.from_param(self.param.step, name="step", width=60)
        self._batch_widget = pn.widgets.IntInput.from_param(self.param.batch, name="prompt", width=60)
        self._layer_choices()
        self._layout: tuple[list[int], list[int], int] = ([], [], 0)

    def _cap(self) -> CaptureFile | None:
        return self.sel.captures.get(self.capture) if self.capture else None

    @param.depends("capture", watch=True)
    def _layer_choices(self) -> None:
        cap = self._cap()
        self.param.layers.objects = ["all", *(cap.layers if cap else [])]
        n_steps, n_batch = (max(cap.n_steps, 1), cap.n_batch) if cap is not None else (1, 1)
        with param.discard_events(self):  # a new capture opens on its prompt, step 0
            if self.layers not in self.param.layers.objects:
                self.layers = "all"
            self.param.step.bounds, self.param.batch.bounds = (0, n_steps - 1), (0, n_batch - 1)
            self.step = self.batch = 0
        self._step_widget.param.update(end=n_steps - 1, value=0, visible=n_steps > 1)
        self._batch_widget.param.update(end=n_batch - 1, value=0, visible=n_batch > 1)

    def layout(self) -> tuple[list[int], list[int], int]:
        """``(layers, heads, cell side)`` drawn now."""
        cap = self._cap()
        if cap is None:
            return [], [], 0
        layers = cap.layers if self.layers == "all" else [int(self.layers)]
        heads = list(range(cap.facts.n_heads))
        per = MAX_PIXELS / max(1, len(layers) * len(heads))
        cell = int(max(4, min(MAX_CELL, np.sqrt(per) - 1)))
        return layers, heads, cell

    def _where(self, cap: CaptureFile) -> str:
        """What the grid shows of a generation or batch capture ("" for a single forward pass)."""
        out = ""
        if cap.n_steps > 1:
            toks = cap.tokens_through(self.step, self.batch)
            new = f": new token {toks[-1]!r}" if self.step > 0 else ": the prompt"
            out += f", step {self.step} of {cap.n_steps - 1}{new}"
        if cap.n_batch > 1:
            out += f", prompt {self.batch} of {cap.n_batch}"
        return out

    @param.depends("capture", "layers", "step", "batch")
    def caption(self) -> str:
        """What the grid shows, in a sentence (its title keeps only the capture, step and tokens)."""
        cap = self._cap()
        if cap is None:
            return ""
        layers, heads, _ = self.layout()
        n_tok = len(cap.tokens_through(self.step, self.batch))
        return (f"<p>{html.escape(self.sel.model)}: {len(layers)} layers x {len(heads)} heads on "
                f"{html.escape(cap.name)}{html.escape(self._where(cap))}, {n_tok} tokens; each head to its own scale "
                "(its largest weight off the sink column; the sink column above the scale). Click a head to select "
                "it.</p>")

    @param.depends("capture", "layers", "step", "batch")
    def plot(self):
        cap = self._cap()
        if cap is None:
            return pn.pane.HTML("<p>No saved captures with attention patterns for this model.</p>")
        layers, heads, cell = self.layout()
        try:
            img, s = grid_image(cap, layers, heads, cell, step=self.step, batch=self.batch)
        except AttnlensError as err:
            return pn.pane.HTML(f"<p>{html.escape(str(err))}</p>")
        self._layout = (layers, heads, s)
        h_px, w_px = img.shape
        # thumbnails of at least THUMB_PX a side where MAX_WIDTH x MAX_HEIGHT allows
        unit = min(max(2.2, THUMB_PX / (s + 1)), MAX_WIDTH / max(w_px, 1), MAX_HEIGHT / max(h_px, 1))
        n_tok = len(cap.tokens_through(self.step, self.batch))
        p = figure(frame_width=int(w_px * unit), frame_height=int(h_px * unit), x_range=(0, w_px), y_range=(h_px, 0),
                   tools="reset,save", toolbar_location="above", name="heads_grid",
                   title=f"{cap.name}{self._where(cap)} ({n_tok} tokens)")
        mapper = LinearColorMapper(palette=PATTERN_PALETTE, low=0, high=1, nan_color="white", high_color=ABOVE_COLOR)
        p.image(image=[img], x=0, y=0, dw=w_px, dh=h_px, color_mapper=mapper)  # row 0 at y=0: the top, the y range is flipped
        ll, hh = np.meshgrid(np.arange(len(layers)), np.arange(len(heads)), indexing="ij")
        boxes = ColumnDataSource({"x": (hh.ravel() * (s + 1) + s / 2).tolist(), "y": (ll.ravel() * (s + 1) + s / 2).tolist(),
                                  "name": [head_label(layers[i], heads[j]) for i, j in zip(ll.ravel(), hh.ravel())]})
        r = p.rect("x", "y", s, s, source=boxes, fill_alpha=0, line_color=NAN_COLOR, line_alpha=0.6)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("head", "@name")]))
        self._mark = ColumnDataSource({"x": [], "y": [], "n": []}, name="heads_grid_mark")
        p.rect("x", "y", s + 1, s + 1, source=self._mark, fill_alpha=0, line_color="#ff2d55", line_width=2)
        p.add_layout(ColorBar(color_mapper=mapper, width=10, title="weight / own max"), "right")
        add_sink_legend(p)
        p.xaxis.ticker = [j * (s + 1) + s / 2 for j in range(0, len(heads), max(1, len(heads) // 16))]
        p.xaxis.major_label_overrides = {j * (s + 1) + s / 2: str(heads[j]) for j in range(len(heads))}
        p.yaxis.ticker = [i * (s + 1) + s / 2 for i in range(0, len(layers), max(1, len(layers) // 16))]
        p.yaxis.major_label_overrides = {i * (s + 1) + s / 2: str(layers[i]) for i in range(len(layers))}
        p.xaxis.axis_label, p.yaxis.axis_label = "head", "layer"
        p.grid.visible = False
        self.listen(p)
        self._figure = p
        self.mark_selected()
        return pn.pane.Bokeh(p)

    def head_at(self, x: float, y: float) -> tuple[int, int] | None:
        layers, heads, s = self._layout
        if not s:
            return None
        j, i = int(x // (s + 1)), int(y // (s + 1))
        if 0 <= i < len(layers) and 0 <= j < len(heads):
            return layers[i], heads[j]
        return None

    @param.depends("selected", watch=True)
    def mark_selected(self) -> None:
        layers, heads, s = self._layout
        if not s or not hasattr(self, "_mark"):
            return
        layer, head = self.selected
        if layer in layers and head in heads:
            i, j = layers.index(layer), heads.index(head)
            self._mark.data = {"x": [j * (s + 1) + s / 2], "y": [i * (s + 1) + s / 2], "n": [self.clicks]}

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.capture, width=220),
                                pn.widgets.Select.from_param(self.param.layers, width=90),
                                self._step_widget, self._batch_widget),
                         pn.pane.HTML(self.caption, sizing_mode="stretch_width", name="heads_grid_caption"),
                         pn.param.ParamMethod(self.plot, lazy=True, loading_indicator=True), name="All heads")
