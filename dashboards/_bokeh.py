"""Bokeh figure builders shared by the views (private: the views are the public API)."""

from __future__ import annotations

import numpy as np
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    TapTool,
)
from bokeh.palettes import Category10_10, Category20_20, Viridis256
from bokeh.plotting import figure

NAN_COLOR = "#d9d9d9"


def head_grid_data(scores: np.ndarray) -> dict[str, list]:
    """Columns for a ``[layer, head]`` rect grid: one row per head, NaN kept (drawn grey)."""
    n_layers, n_heads = scores.shape
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    vals = scores.ravel().astype(float)
    return {"layer": layer.tolist(), "head": head.tolist(), "value": vals.tolist(),
            "label": ["not scored" if not np.isfinite(v) else f"{v:.4g}" for v in vals],
            "name": [f"L{la}H{h}" for la, h in zip(layer, head)]}


def head_heatmap(scores: np.ndarray, title: str, *, width: int = 520, height: int = 460,
                 tap: bool = True) -> tuple[figure, ColumnDataSource, LinearColorMapper, ColumnDataSource]:
    """A layer x head heatmap (layer 0 on top) with hover values; returns the figure, its data
    source, colour mapper and the source of the one-cell selection marker."""
    n_layers, n_heads = scores.shape
    source = ColumnDataSource(head_grid_data(scores))
    lo, hi = _finite_range(scores)
    mapper = LinearColorMapper(palette=Viridis256, low=lo, high=hi, nan_color=NAN_COLOR)
    p = figure(title=title, width=width, height=height, x_range=(-0.5, n_heads - 0.5), y_range=(n_layers - 0.5, -0.5),
               tools="tap,reset,save" if tap else "reset,save", toolbar_location="above", x_axis_label="head",
               y_axis_label="layer", name="head_heatmap")
    r = p.rect("head", "layer", 1, 1, source=source, fill_color={"field": "value", "transform": mapper},
               line_color=None, nonselection_fill_alpha=1.0, selection_fill_alpha=1.0)
    p.add_tools(HoverTool(renderers=[r], tooltips=[("head", "@name"), ("value", "@label")]))
    if tap:
        p.select_one(TapTool).renderers = [r]
    mark = ColumnDataSource({"layer": [], "head": []})
    p.rect("head", "layer", 1, 1, source=mark, fill_alpha=0, line_color="#ff2d55", line_width=3)
    p.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
    _int_ticks(p.xaxis, n_heads)
    _int_ticks(p.yaxis, n_layers)
    p.grid.visible = False
    return p, source, mapper, mark


def _int_ticks(axis, n: int, max_labels: int = 32) -> None:
    step = max(1, int(np.ceil(n / max_labels)))
    axis.ticker = FixedTicker(ticks=list(range(0, n, step)))


def _finite_range(a: np.ndarray) -> tuple[float, float]:
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def categorical_colors(labels: list[str]) -> dict[str, str]:
    uniq = sorted(set(labels))
    pal = Category10_10 if len(uniq) <= 10 else Category20_20
    return {u: pal[i % len(pal)] for i, u in enumerate(uniq)}
