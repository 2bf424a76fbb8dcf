"""2-D maps: every head placed by its score profile (coloured by head type), and an
AttentionViz-style joint map of one head's queries and keys.

Both compute only when shown (UMAP's first call compiles with numba and takes a while);
``method="pca"`` gives an instant linear map instead.
"""

from __future__ import annotations

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure

from dashboards._bokeh import categorical_colors
from dashboards.compute import embed_2d, head_profiles, qk_points, token_label
from dashboards.data import CaptureReadError, ResultsFolder, head_label


class HeadMap(pn.viewable.Viewer):
    """Heads embedded in 2-D from their z-scored profiles over every result; clicking a point
    sets ``selected`` ``(layer, head)``."""

    method = param.Selector(default="umap", objects=["umap", "pca"])
    selected = param.Tuple(default=(0, 0), length=2)

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        super().__init__(**params)
        self._cache: dict[str, tuple] = {}
        self._source: ColumnDataSource | None = None

    def embedding(self) -> tuple[np.ndarray, list[str], list[str]]:
        """``(xy [n, 2], head labels [n], types [n])`` for the current method (cached)."""
        if self.method not in self._cache:
            prof = head_profiles(self.folder)
            xy = embed_2d(prof.features, self.method)
            names = [head_label(int(la), int(h)) for la, h in zip(prof.layers, prof.heads)]
            self._cache[self.method] = (xy, names, prof.types, prof.layers, prof.heads, prof.feature_names)
        xy, names, types, *_ = self._cache[self.method]
        return xy, names, types

    @param.depends("method")
    def plot(self):
        if not self.folder.results:
            return pn.pane.Markdown("No results to map.")
        xy, names, types = self.embedding()
        _, _, _, layers, heads, feats = self._cache[self.method]
        colors = categorical_colors(types)
        self._source = ColumnDataSource({"x": xy[:, 0], "y": xy[:, 1], "name": names, "type": types,
                                         "layer": layers.tolist(), "head": heads.tolist(),
                                         "color": [colors[t] for t in types]})
        p = figure(width=640, height=520, tools="tap,pan,wheel_zoom,reset,save", toolbar_location="above",
                   title=f"{len(names)} heads by score profile ({self.method.upper()} of {len(feats)} scores)",
                   name="head_map")
        r = p.scatter("x", "y", source=self._source, color="color", legend_field="type", size=8, alpha=0.8)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("head", "@name"), ("type", "@type")]))
        p.legend.location = "top_left"
        p.legend.label_text_font_size = "9pt"
        self._source.selected.on_change("indices", self._on_tap)
        return pn.pane.Bokeh(p)

    def _on_tap(self, attr, old, new) -> None:
        if new and self._source is not None:
            i = new[0]
            self.selected = (int(self._source.data["layer"][i]), int(self._source.data["head"][i]))

    def __panel__(self):
        return pn.Column(pn.widgets.RadioButtonGroup.from_param(self.param.method),
                         pn.pane.Markdown("Each point is a head, placed by its profile over every saved score "
                                          "(z-scored). Colour: head type. Click a point to select that head."),
                         pn.param.ParamMethod(self.plot, lazy=True), name="Head map")


class QKMap(pn.viewable.Viewer):
    """Joint 2-D map of one head's queries and keys (AttentionViz): needs a capture with the
    ``q`` and ``k`` sites. Queries are circles, keys triangles; hover shows the token."""

    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Integer(default=0, bounds=(0, None))
    capture = param.Selector(objects=[])
    method = param.Selector(default="umap", objects=["umap", "pca"])
    max_points = param.Integer(default=300, bounds=(10, 1000), doc="Queries (and keys) shown at most")

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        names = [c.name for c in folder.captures if {"q", "k"} <= c.sites]
        cap = params.pop("capture", names[0] if names else None)
        super().__init__(**params)
        self.param.capture.objects = names
        with param.discard_events(self):
            self.capture = cap

    def points(self) -> dict[str, list] | str:
        """The scatter's columns, or a sentence saying why there is nothing to show."""
        cap = next((c for c in self.folder.captures if c.name == self.capture), None)
        if cap is None:
            return ("No capture with queries and keys. Save one with `lens capture MODEL --sites pattern,q,k "
                    f"--out {self.folder.path}/captures`.")
        if not (cap.has("q", self.layer, self.head) and cap.has("k", self.layer)):
            return f"Capture {cap.name} has no q/k for {head_label(self.layer, self.head)} (layers {cap.layers})."
        try:
            q, k = cap.queries(self.layer, self.head), cap.keys(self.layer, self.head)
        except CaptureReadError as err:
            return str(err)
        pts, is_key, pos = qk_points(q, k, self.max_points)
        xy = embed_2d(pts, self.method)
        toks = cap.tokens
        return {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "role": ["key" if b else "query" for b in is_key],
                "pos": pos.tolist(), "token": [token_label(toks[i], 16) for i in pos],
                "marker": ["triangle" if b else "circle" for b in is_key],
                "color": ["#e6550d" if b else "#3182bd" for b in is_key]}

    @param.depends("layer", "head", "capture", "method", "max_points")
    def plot(self):
        data = self.points()
        if isinstance(data, str):
            return pn.pane.Markdown(data)
        p = figure(width=640, height=520, tools="pan,wheel_zoom,reset,save", toolbar_location="above",
                   title=f"{head_label(self.layer, self.head)}: queries and keys ({self.method.upper()})", name="qk_map")
        r = p.scatter("x", "y", source=ColumnDataSource(data), marker="marker", color="color", legend_field="role",
                      size=8, alpha=0.7)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("", "@role @pos"), ("token", "@token")]))
        return pn.pane.Bokeh(p)

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.capture, width=120),
                                pn.widgets.RadioButtonGroup.from_param(self.param.method),
                                pn.widgets.IntInput.from_param(self.param.max_points, width=110)),
                         pn.pane.Markdown("Queries and keys of the selected head in one space (keys moved to the "
                                          "queries' centroid and scale, as AttentionViz does)."),
                         pn.param.ParamMethod(self.plot, lazy=True), name="Q/K map")
