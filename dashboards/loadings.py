"""QK head loadings view: which earlier heads a head's query and key read most, from ``lens heads
loadings`` results (:class:`formats.loadings.HeadLoadings`; never a model).

Two ``layer x head`` heatmaps side by side, the query-side and the key-side loadings on one symmetric
colour scale; the target head's cell is outlined (its layer and everything after it are blank: those
heads cannot write into its input). Hover gives a cell's value; a click picks a head and the line
under the maps gives both of its loadings.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import RdBu11
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import on_click
from attnlens.formats.loadings import HeadLoadings

SIDES = ("query", "key")


def loadings_limit(res: HeadLoadings) -> float:
    """One symmetric colour limit for both sides (the largest finite |loading|)."""
    both = np.concatenate([res.query[:res.layer].ravel(), res.key[:res.layer].ravel()])
    return max(1e-9, float(np.abs(both).max())) if both.size else 1.0


def summary_html(res: HeadLoadings) -> str:
    tops = " · ".join(f"{side} side: " + ", ".join(f"<code>{n}</code> {v:+.4f}" for n, v in res.top(side, 3))
                      for side in SIDES)
    return (f"<p><b>Head loadings of L{res.layer}H{res.head}</b> over {res.n_prompts} prompts "
            f"({html.escape(res.key_rule)}; mean summed score terms per earlier head). {tops}</p>")


def picked_html(res: HeadLoadings, layer: int, head: int) -> str:
    if layer >= res.layer:
        return (f"<p>L{layer}H{head} is at or after the target's layer {res.layer}: it cannot write into "
                "its input.</p>")
    return (f"<p>L{layer}H{head} → L{res.layer}H{res.head}: query side {float(res.query[layer, head]):+.4f}, "
            f"key side {float(res.key[layer, head]):+.4f}</p>")


class LoadingsView(pn.viewable.Viewer):
    """One head loadings result at a time; a click on either map picks an earlier head."""

    result = param.Selector(objects=[], doc="Head loadings result")
    picked = param.Tuple(default=(-1, -1), length=2, doc="(layer, head) clicked; (-1, -1): none")

    def __init__(self, results: dict[str, HeadLoadings], **params):
        self.results = dict(results)
        first = params.pop("result", next(iter(self.results), None))
        super().__init__(**params)
        self.param.result.objects = list(self.results)
        with param.discard_events(self):
            self.result = first
        self._maps = pn.pane.Bokeh(sizing_mode="fixed")
        self._info = pn.pane.HTML("", name="loadings_info", sizing_mode="stretch_width")
        self._picked = pn.pane.HTML("", name="loadings_picked", sizing_mode="stretch_width")
        self.figures: dict[str, object] = {}
        self._draw()

    @property
    def current(self) -> HeadLoadings | None:
        return self.results.get(self.result) if self.result is not None else None

    @param.depends("result", watch=True)
    def _draw(self) -> None:
        res = self.current
        if res is None:
            self._info.object = ("<p>No QK head loadings in this folder. Make them with <code>lens heads loadings "
                                 "MODEL --layer L --head H --file PROMPTS.txt --out DIR</code>.</p>")
            self._maps.object, self.figures = None, {}
            return
        with param.discard_events(self):
            self.picked = (-1, -1)
        lim = loadings_limit(res)
        self.figures = {side: self._map(res, side, lim) for side in SIDES}
        self._maps.object = _row(list(self.figures.values()))
        self._info.object = summary_html(res)
        self._picked.object = "<p>Click a head for both of its loadings.</p>"

    @staticmethod
    def map_data(res: HeadLoadings, side: str) -> dict[str, list]:
        g = res.query if side == "query" else res.key
        n_layers, n_heads = g.shape
        data: dict[str, list] = {"layer": [], "head": [], "v": [], "label": [], "line": []}
        for layer in range(n_layers):
            for head in range(n_heads):
                data["layer"].append(layer)
                data["head"].append(head)
                v = float(g[layer, head])
                data["v"].append(v if np.isfinite(v) else np.nan)
                data["label"].append(f"L{layer}H{head}" + ("" if layer < res.layer else " (not earlier)"))
                data["line"].append(3 if (layer, head) == (res.layer, res.head) else 0)
        return data

    def _map(self, res: HeadLoadings, side: str, lim: float):
        n_layers, n_heads = res.query.shape
        src = ColumnDataSource(self.map_data(res, side))
        mapper = LinearColorMapper(palette=RdBu11, low=-lim, high=lim, nan_color="#eeeeee")  # Bokeh's RdBu runs blue -> red: positive is red, as in the report
        fig = figure(width=120 + 30 * n_heads, height=110 + 22 * n_layers, x_range=(-0.5, n_heads - 0.5),
                     y_range=(n_layers - 0.5, -0.5), tools="", toolbar_location=None,
                     name=f"loadings_{side}_figure", title=f"{side} side of L{res.layer}H{res.head}")
        fig.rect("head", "layer", 1, 1, source=src, fill_color={"field": "v", "transform": mapper},
                 line_color="#111111", line_width="line")
        fig.add_tools(HoverTool(tooltips=[("head", "@label"), (f"{side} loading", "@v{+0.0000}")]))
        fig.xaxis.axis_label, fig.yaxis.axis_label = "head", "layer"
        fig.xaxis.ticker, fig.yaxis.ticker = list(range(n_heads)), list(range(n_layers))
        on_click(fig, self._on_click)
        return fig

    def _on_click(self, x: float, y: float) -> None:
        res = self.current
        layer, head = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
        if res is not None and 0 <= layer < res.query.shape[0] and 0 <= head < res.query.shape[1]:
            self.picked = (layer, head)

    @param.depends("picked", watch=True)
    def _show_picked(self) -> None:
        res = self.current
        if res is not None and self.picked[0] >= 0:
            self._picked.object = picked_html(res, *self.picked)

    def __panel__(self):
        return pn.Column(pn.widgets.Select.from_param(self.param.result, width=260), self._info, self._maps,
                         self._picked, name="loadings_view", sizing_mode="stretch_width")


def _row(figs: list):
    from bokeh.layouts import row

    return row(*figs)
