"""The head atlas: a layer x head heatmap of any saved score of one model, with hover, a
colour bar and click-to-select."""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param

from attnlens.dashboards._bokeh import HeadGrid, cell_at
from attnlens.dashboards._pick import HeadPicker
from attnlens.dashboards.compute import head_label, score_rank
from attnlens.dashboards.selection import ModelResults, describe

PREFERRED = ("summary.sink_mass", "summary.entropy")  # shown first when present


class HeadAtlas(HeadPicker, pn.viewable.Viewer):
    """Heatmap of one result's scores ``[layer, head]``; a click on a cell sets ``selected``.

    Inputs: a :class:`ModelResults` (one model's results). Parameters: ``metric`` (a result
    label, e.g. ``scan/summary.sink_mass``), ``selected`` ``(layer, head)`` (other views
    follow it) and ``clicks`` (how many clicks were answered).
    """

    metric = param.Selector(objects=[], doc="Result shown (its label in the folder)")

    def __init__(self, sel: ModelResults, **params):
        self.sel = sel
        labels = sel.labels
        ranked = [k for name in PREFERRED for k in labels if k.rsplit("/", 1)[-1] == name]
        first = ranked[0] if ranked else (labels[0] if labels else None)
        metric = params.pop("metric", first)
        super().__init__(**params)
        self.param.metric.objects = labels  # per instance: param copies parameters on first write
        with param.discard_events(self):
            self.metric = metric
        self.grid = HeadGrid(self._scores(), self._title(), name="head_heatmap", **self._scale())
        self.listen(self.grid.figure)
        self._pane = pn.pane.Bokeh(self.grid.figure, sizing_mode="fixed")
        self._info = pn.pane.HTML("", sizing_mode="stretch_width", name="atlas_info")
        self.mark_selected()

    # ---- state -----------------------------------------------------------------------
    def _scores(self) -> np.ndarray:
        r = self.sel.results.get(self.metric)
        if r is not None:
            return r.scores
        return np.full(self.sel.shape if all(self.sel.shape) else (1, 1), np.nan)

    def _scale(self) -> dict:
        """How the shown result's numbers read (:attr:`formats.HeadScores.scale`), for the colours."""
        r = self.sel.results.get(self.metric)
        return {"scale": r.scale, "categories": r.categories} if r is not None else {}

    def _title(self) -> str:
        r = self.sel.results.get(self.metric)
        return f"{self.sel.model}: {r.name}" if r else f"{self.sel.model}: no head scores"

    def head_at(self, x: float, y: float) -> tuple[int, int] | None:
        return cell_at(x, y, *self.grid.shape[::-1])

    @param.depends("metric", watch=True)
    def _update_metric(self) -> None:
        self.grid.update(self._scores(), self._title(), **self._scale())
        self._info.object = self._info_html()

    @param.depends("selected", watch=True)
    def mark_selected(self) -> None:
        layer, head = self.selected
        self.grid.mark_cell(layer, head, self.clicks)
        self._info.object = self._info_html()

    def value(self, layer: int, head: int) -> float:
        """The shown score of one head (NaN when not scored or out of range)."""
        s = self._scores()
        return float(s[layer, head]) if layer < s.shape[0] and head < s.shape[1] else float("nan")

    def _info_html(self) -> str:
        r = self.sel.results.get(self.metric)
        if r is None:
            return "<p>No head scores for this model in this folder.</p>"
        layer, head = self.selected
        desc = html.escape(describe(self.sel, self.metric) or "no description")
        value, rank = ("not scored", "") if layer >= r.shape[0] or head >= r.shape[1] else \
            score_rank(r.scores, layer, head, r.scale, r.categories)
        how = {"signed": " · signed: red below zero, blue above, ranked by |score|",
               "categorical": " · categories: one colour each (named on the colour bar), not ranked"}.get(r.scale, "")
        return (f"<p><b>{html.escape(r.name)}</b>: {desc}{how}<br>selected <b>{head_label(layer, head)}</b> = "
                f"{html.escape(value)}{f' ({html.escape(rank)})' if rank and rank != '—' else ''}"
                f" · click a cell to explore a head</p>")

    def __panel__(self):
        return pn.Column(pn.widgets.Select.from_param(self.param.metric, name="score", width=380),
                         self._pane, self._info, name="Head atlas", width=410)
