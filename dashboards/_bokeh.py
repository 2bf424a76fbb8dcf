"""Bokeh figure builders and the click path shared by the views (private: the views are the API).

Clicks: BokehJS turns a pointer-up into exactly one of three events: ``tap``, ``doubletap``
(any pointer-up within 300 ms of the previous tap, wherever it is) or ``press_up`` (a
click held 300 ms or more). A TapTool with its selection listens to the first only, and
in its default "toggle" mode a second tap on the selected cell sends an empty selection.
:func:`on_click` listens to all three figure events and hands ``(x, y)`` in data
coordinates to the view, which maps them to its cell: every click is answered once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import panel as pn
from bokeh import events
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    FixedTicker,
    HoverTool,
    Legend,
    LegendItem,
    LinearColorMapper,
    LogColorMapper,
)
from bokeh.palettes import (
    Blues256,
    Category10_10,
    Category20_20,
    Reds256,
    Viridis256,
    diverging_palette,
)
from bokeh.plotting import figure

from attnlens.dashboards.compute import ColorScale, head_label, thin_ticks

NAN_COLOR = "#d9d9d9"
ABOVE_COLOR = "#c2185b"  # sink cells above a "sink column excluded" scale
PATTERN_PALETTE = Blues256[::-1]
# signed scores: red below zero, white at zero, blue above (as the circuit graph's edges)
DIVERGING_PALETTE = diverging_palette(Reds256, Blues256, 256, midpoint=0.5)
CLICK_EVENTS = (events.Tap, events.DoubleTap, events.PressUp)


def on_click(fig, handler: Callable[[float, float], None]) -> None:
    """Call ``handler(x, y)`` (data coordinates) for every click on ``fig``, whatever BokehJS
    calls it (tap, double tap, press); the view's updates are sent as one message."""

    def fire(event) -> None:
        if event.x is None or event.y is None:
            return
        with pn.io.hold():
            handler(float(event.x), float(event.y))

    for kind in CLICK_EVENTS:
        fig.on_event(kind, fire)


def trigger_click(fig, x: float, y: float, kind=events.Tap) -> None:
    """Deliver a click at data ``(x, y)`` to ``fig``'s Python handlers, as a browser would (for tests)."""
    fig._trigger_event(kind(model=fig, x=x, y=y, sx=0, sy=0))


def cell_at(x: float, y: float, n_cols: int, n_rows: int) -> tuple[int, int] | None:
    """The ``(row, col)`` of a grid of unit cells centred on integers that ``(x, y)`` falls in."""
    col, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    if 0 <= col < n_cols and 0 <= row < n_rows:
        return row, col
    return None


def color_mapper(scale: ColorScale, low: float, high: float, palette=PATTERN_PALETTE):
    if scale is ColorScale.LOG:
        return LogColorMapper(palette=palette, low=low, high=high, nan_color=NAN_COLOR, low_color=palette[0],
                              high_color=palette[-1])
    above = ABOVE_COLOR if scale is ColorScale.NO_SINK else palette[-1]
    return LinearColorMapper(palette=palette, low=low, high=high, nan_color=NAN_COLOR, high_color=above)


def head_grid_data(scores: np.ndarray, categories: list[str] | None = None) -> dict[str, list]:
    """Columns for a ``[layer, head]`` rect grid: one row per head, NaN kept (drawn grey); a
    categorical score's hover label is its category's name."""
    n_layers, n_heads = scores.shape
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    vals = scores.ravel().astype(float)

    def label(v: float) -> str:
        if not np.isfinite(v):
            return "not scored"
        if categories is not None:
            i = int(v)
            return f"{categories[i]} ({i})" if 0 <= i < len(categories) else f"{v:.4g}"
        return f"{v:.4g}"

    return {"layer": layer.tolist(), "head": head.tolist(), "value": vals.tolist(),
            "label": [label(v) for v in vals],
            "name": [head_label(la, h) for la, h in zip(layer, head)]}


def finite_range(a: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(a, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


class HeadGrid:
    """A layer x head heatmap (layer 0 on top) with hover values, a colour bar and a
    selection marker. ``figure``, ``source``, ``mapper``, ``bar`` and ``mark`` are the Bokeh
    models. ``scale`` (a :attr:`formats.HeadScores.scale`) picks the colours: viridis for a
    sequential score, a diverging red-blue scale centred on zero for a signed one, one colour
    per category (the colour bar naming them) for a categorical one."""

    def __init__(self, scores: np.ndarray, title: str, *, width: int = 400, height: int = 400,
                 name: str = "head_heatmap", palette=Viridis256, value_name: str = "score",
                 scale: str = "sequential", categories: list[str] | None = None):
        self.shape = scores.shape
        self.sequential_palette = palette
        n_layers, n_heads = scores.shape
        self.source = ColumnDataSource(head_grid_data(scores))
        self.mapper = LinearColorMapper(palette=palette, low=0, high=1, nan_color=NAN_COLOR)
        p = figure(title=title, width=width, height=height, x_range=(-0.5, n_heads - 0.5),
                   y_range=(n_layers - 0.5, -0.5), tools="reset,save", toolbar_location="above",
                   x_axis_label="head", y_axis_label="layer", name=name)
        r = p.rect("head", "layer", 1, 1, source=self.source, fill_color={"field": "value", "transform": self.mapper},
                   line_color=None)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("head", "@name"), (value_name, "@label")]))
        self.mark = ColumnDataSource({"layer": [], "head": [], "n": []}, name=f"{name}_mark")
        p.rect("head", "layer", 1, 1, source=self.mark, fill_alpha=0, line_color="#ff2d55", line_width=3)
        self.bar = ColorBar(color_mapper=self.mapper, width=10, title=value_name, name=f"{name}_colorbar")
        p.add_layout(self.bar, "right")
        p.xaxis.ticker = FixedTicker(ticks=thin_ticks(n_heads, max(2, width // 28)))
        p.yaxis.ticker = FixedTicker(ticks=thin_ticks(n_layers, max(2, height // 22)))
        p.grid.visible = False
        self.figure = p
        self.update(scores, title, scale=scale, categories=categories)

    def update(self, scores: np.ndarray, title: str, *, scale: str = "sequential",
               categories: list[str] | None = None) -> None:
        self.scale = scale
        cats = list(categories or []) if scale == "categorical" else None
        self.source.data = head_grid_data(scores, cats)
        if cats is not None:
            n = max(1, len(cats))
            pal = Category10_10 if n <= 10 else Category20_20
            self.mapper.update(palette=[pal[i % len(pal)] for i in range(n)], low=-0.5, high=n - 0.5)
            self.bar.update(ticker=FixedTicker(ticks=list(range(n))), major_label_overrides=dict(enumerate(cats)),
                            title="category", height=min(400, 24 * n))
        else:
            if scale == "signed":
                m = float(np.nanmax(np.abs(scores))) if np.isfinite(scores).any() else 1.0
                m = m if m > 0 else 1.0
                self.mapper.update(palette=DIVERGING_PALETTE, low=-m, high=m)
            else:
                lo, hi = finite_range(scores)
                self.mapper.update(palette=self.sequential_palette, low=lo, high=hi)
            self.bar.update(ticker="auto", major_label_overrides={}, height="auto",
                            title="signed score (0 = white)" if scale == "signed" else "score")
        self.figure.title.text = title

    def mark_cell(self, layer: int, head: int, n: int) -> None:
        """Outline one head; ``n`` counts the clicks answered (so a re-click is an update too)."""
        self.mark.data = {"layer": [layer], "head": [head], "n": [n]}


def categorical_colors(labels: list[str]) -> dict[str, str]:
    uniq = sorted(set(labels))
    pal = Category10_10 if len(uniq) <= 10 else Category20_20
    return {u: pal[i % len(pal)] for i, u in enumerate(uniq)}


def add_sink_legend(fig, text: str = "above the scale: the sink (first-token) column") -> Legend:
    """A legend row for :data:`ABOVE_COLOR`, which a colour bar does not show, below ``fig``."""
    nan = [float("nan")]
    swatch = fig.scatter(nan, nan, marker="square", size=12, color=ABOVE_COLOR)
    legend = Legend(items=[LegendItem(label=text, renderers=[swatch])], orientation="horizontal",
                    label_text_font_size="8pt", name=f"{fig.name}_sink_legend", margin=2, padding=2)
    fig.add_layout(legend, "below")
    return legend


def add_color_bar(fig, mapper, title: str) -> ColorBar:
    bar = ColorBar(color_mapper=mapper, width=10, title=title)
    fig.add_layout(bar, "right")
    return bar
