"""The head atlas: a layer x head heatmap of any saved score, with hover and click-to-select."""

from __future__ import annotations

import numpy as np
import panel as pn
import param

from dashboards._bokeh import _finite_range, head_grid_data, head_heatmap
from dashboards.data import ResultsFolder, head_label

PREFERRED = ("summary.sink_mass", "summary.entropy")  # shown first when present


class HeadAtlas(pn.viewable.Viewer):
    """Heatmap of ``metric``'s scores ``[layer, head]``; clicking a cell sets ``selected``.

    Inputs: a :class:`ResultsFolder`. Parameters: ``metric`` (one of the folder's result
    names) and ``selected`` ``(layer, head)``, which other views follow.
    """

    metric = param.Selector(objects=[], doc="Result shown, ANALYSIS.METRIC")
    selected = param.Tuple(default=(0, 0), length=2, doc="(layer, head) picked by a click")

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        names = folder.names
        first = next((n for n in PREFERRED if n in names), names[0] if names else None)
        metric = params.pop("metric", first)
        super().__init__(**params)
        self.param.metric.objects = names  # per instance: param copies parameters on first write
        with param.discard_events(self):
            self.metric = metric
        scores = self._scores()
        self._fig, self._source, self._mapper, self._mark = head_heatmap(scores, self._title())
        self._source.selected.on_change("indices", self._on_tap)
        self._pane = pn.pane.Bokeh(self._fig, sizing_mode="fixed")
        self._info = pn.pane.Markdown(self._info_text(), sizing_mode="stretch_width")
        self._mark_selected()

    # ---- state -----------------------------------------------------------------------
    def _scores(self) -> np.ndarray:
        r = self.folder.by_name.get(self.metric)
        if r is not None:
            return r.scores
        return np.full(self.folder.shape if all(self.folder.shape) else (1, 1), np.nan)

    def _title(self) -> str:
        r = self.folder.by_name.get(self.metric)
        return f"{self.folder.model}: {r.name}" if r else f"{self.folder.model}: no results"

    def _on_tap(self, attr, old, new) -> None:
        if new:
            i = new[0]
            self.selected = (int(self._source.data["layer"][i]), int(self._source.data["head"][i]))

    @param.depends("metric", watch=True)
    def _update_metric(self) -> None:
        scores = self._scores()
        if scores.shape != (max(self._source.data["layer"], default=-1) + 1,
                            max(self._source.data["head"], default=-1) + 1):
            self._fig, self._source, self._mapper, self._mark = head_heatmap(scores, self._title())
            self._source.selected.on_change("indices", self._on_tap)
            self._pane.object = self._fig
            self._mark_selected()
        else:
            self._source.data = head_grid_data(scores)
            self._mapper.low, self._mapper.high = _finite_range(scores)
            self._fig.title.text = self._title()
        self._info.object = self._info_text()

    @param.depends("selected", watch=True)
    def _mark_selected(self) -> None:
        layer, head = self.selected
        self._mark.data = {"layer": [layer], "head": [head]}
        self._info.object = self._info_text()

    def value(self, layer: int, head: int) -> float:
        """The shown score of one head (NaN when not scored or out of range)."""
        s = self._scores()
        return float(s[layer, head]) if layer < s.shape[0] and head < s.shape[1] else float("nan")

    def _info_text(self) -> str:
        r = self.folder.by_name.get(self.metric)
        if r is None:
            return "No readable results in this folder."
        layer, head = self.selected
        v = self.value(layer, head)
        return (f"**{r.name}**: {r.description or 'no description'}  \n"
                f"selected **{head_label(layer, head)}** = {v:.4g} · click a cell to explore a head")

    def __panel__(self):
        return pn.Column(pn.widgets.Select.from_param(self.param.metric, name="score", width=320),
                         self._pane, self._info, name="Head atlas")
