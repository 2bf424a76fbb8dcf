"""2-D maps: every head placed by its score profile (coloured by head type), and an
AttentionViz-style joint map of one head's queries and keys.

The head map's UMAP embedding is computed once per folder and model, in a background
thread (``serve`` starts it with the server, so it is usually ready when the tab opens),
and cached on disk (:func:`dashboards.compute.embed_2d`); until it is ready the tab shows
a spinner with the elapsed time. ``method="pca"`` gives an instant linear map instead.
"""

from __future__ import annotations

import html
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import ABOVE_COLOR, categorical_colors
from attnlens.dashboards._pick import HeadPicker
from attnlens.dashboards.compute import embed_2d, head_label, qk_points, token_label
from attnlens.dashboards.profiles import (
    MIN_SCORES,
    NO_TYPE,
    SINK,
    TYPICAL,
    HeadProfiles,
    head_profiles,
)
from attnlens.dashboards.selection import ModelResults
from attnlens.formats import AttnlensError, Site

_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnlens-maps")
_JOBS: dict[tuple, Future] = {}
_LOCK = threading.Lock()


def embedding_job(sel: ModelResults, method: str) -> tuple[Future, HeadProfiles]:
    """The (shared, cached) computation of ``sel``'s head map: a future of ``xy [n, 2]``."""
    prof = head_profiles(sel)
    key = (str(sel.folder.path), sel.model, method, prof.features.shape, prof.features.tobytes().__hash__())
    with _LOCK:
        job = _JOBS.get(key)
        if job is None:
            job = _JOBS[key] = _POOL.submit(embed_2d, prof.features, method, cache=True)
    return job, prof


class HeadMap(HeadPicker, pn.viewable.Viewer):
    """Heads embedded in 2-D from their z-scored profiles over every result of the model; a
    click on a point sets ``selected`` ``(layer, head)``."""

    method = param.Selector(default="umap", objects=["umap", "pca"])

    def __init__(self, sel: ModelResults, **params):
        self.sel = sel
        super().__init__(**params)
        self._source: ColumnDataSource | None = None
        self._area = pn.Column(sizing_mode="stretch_width", name="head_map_area")
        self._colour_note = pn.pane.HTML("", name="head_map_colour")
        self._poll = None
        self._started = 0.0

    def start(self) -> Future | None:
        """Start computing the embedding (no-op when the folder has no results)."""
        if not self.sel.results:
            return None
        return embedding_job(self.sel, self.method)[0]

    def embedding(self, timeout: float | None = None) -> tuple[np.ndarray, HeadProfiles]:
        """``(xy [n, 2], profiles)``, waiting for the computation."""
        job, prof = embedding_job(self.sel, self.method)
        return job.result(timeout), prof

    @param.depends("method", watch=True)
    def _show(self) -> None:
        if not self.sel.results:
            self._area.objects = [pn.pane.HTML("<p>No head scores for this model: nothing to map.</p>")]
            return
        prof = head_profiles(self.sel)
        if len(prof.feature_names) < MIN_SCORES:
            have = ", ".join(prof.feature_names) or "none"
            self._area.objects = [pn.pane.HTML(
                f"<p>The head map places heads by their profile over at least {MIN_SCORES} scores; this model has "
                f"{len(prof.feature_names)} ({html.escape(have)}), and a map of fewer is an arc, not a grouping. "
                "Run <code>lens scan</code> for its scores, or read the Heads tab.</p>", name="head_map_refused")]
            return
        job, prof = embedding_job(self.sel, self.method)
        if job.done():
            self._area.objects = [self._plot(job, prof)]
            return
        self._started = time.perf_counter()
        text = pn.pane.HTML(self._progress_text(prof), name="head_map_progress")
        self._area.objects = [pn.Row(pn.indicators.LoadingSpinner(value=True, size=28), text)]

        def poll():
            if job.done():
                self._stop_poll()
                self._area.objects = [self._plot(job, prof)]
            else:
                text.object = self._progress_text(prof)

        self._stop_poll()
        if pn.state.curdoc is not None:
            self._poll = pn.state.add_periodic_callback(poll, period=500)

    def _stop_poll(self) -> None:
        if self._poll is not None:
            self._poll.stop()
            self._poll = None

    def _progress_text(self, prof: HeadProfiles) -> str:
        return (f"<p>computing the {self.method.upper()} map of {prof.n} heads over {len(prof.feature_names)} scores: "
                f"{time.perf_counter() - self._started:.0f} s (computed once per folder, then cached)</p>")

    def _plot(self, job: Future, prof: HeadProfiles):
        try:
            xy = job.result()
        except Exception as err:  # UMAP failing on odd input must not take the dashboard down
            return pn.pane.HTML(f"<p>The head map could not be computed: {html.escape(type(err).__name__)}: "
                                f"{html.escape(str(err))[:300]}</p>")
        names = [head_label(int(la), int(h)) for la, h in zip(prof.layers, prof.heads)]
        colors = categorical_colors([t for t in prof.types if t not in (NO_TYPE, TYPICAL, SINK)])
        colors.update({t: "#c8c8c8" for t in (NO_TYPE, TYPICAL) if t in prof.types})  # the unremarkable stay grey
        if SINK in prof.types:
            colors[SINK] = ABOVE_COLOR  # the sink colour of the pattern views
        self._source = ColumnDataSource({"x": xy[:, 0], "y": xy[:, 1], "name": names, "type": prof.types,
                                         "layer": prof.layers.tolist(), "head": prof.heads.tolist(),
                                         "color": [colors[t] for t in prof.types]})
        p = figure(width=860, height=540, tools="pan,wheel_zoom,reset,save", toolbar_location="above",
                   title=f"{prof.n} heads by score profile ({self.method.upper()} of {len(prof.feature_names)} scores)",
                   name="head_map")
        r = p.scatter("x", "y", source=self._source, color="color", size=8, alpha=0.8)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("head", "@name"), ("type", "@type")]))
        self._mark = ColumnDataSource({"x": [], "y": [], "n": []}, name="head_map_mark")
        p.scatter("x", "y", source=self._mark, size=16, fill_alpha=0, line_color="#ff2d55", line_width=3)
        # the legend sits beside the plot, never on the points; one entry per type, largest first
        counts = {t: prof.types.count(t) for t in colors}
        items = []
        for t in sorted(colors, key=lambda t: -counts[t])[:20]:
            proxy = p.scatter([xy[0, 0]], [xy[0, 1]], color=colors[t], size=8, visible=False)
            items.append(LegendItem(label=f"{t} ({counts[t]})", renderers=[proxy]))
        legend = Legend(items=items, title="taxonomy type" if prof.color_by.startswith("taxonomy") else "stands out in",
                        label_text_font_size="8pt",
                        title_text_font_size="8pt", location="top_left")
        p.add_layout(legend, "right")
        self._colour_note.object = f"<p>Colour: {html.escape(prof.color_by)}.</p>"
        p.xaxis.axis_label, p.yaxis.axis_label = f"{self.method.upper()} 1", f"{self.method.upper()} 2"
        self.listen(p)
        self.mark_selected()
        return pn.pane.Bokeh(p)

    def head_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The head whose point is nearest to ``(x, y)``."""
        if self._source is None:
            return None
        xs, ys = np.asarray(self._source.data["x"]), np.asarray(self._source.data["y"])
        if xs.size == 0:
            return None
        i = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))
        return int(self._source.data["layer"][i]), int(self._source.data["head"][i])

    @param.depends("selected", watch=True)
    def mark_selected(self) -> None:
        if self._source is None:
            return
        layer, head = self.selected
        i = layer * self.sel.shape[1] + head
        if i < len(self._source.data["x"]):
            self._mark.data = {"x": [self._source.data["x"][i]], "y": [self._source.data["y"][i]], "n": [self.clicks]}

    def __panel__(self):
        if not self._area.objects:
            self._show()
        return pn.Column(pn.widgets.RadioButtonGroup.from_param(self.param.method),
                         pn.pane.HTML("<p>Each point is a head, placed by its profile over every saved score of the "
                                      "model (z-scored); hover for its name and type, click to select it.</p>"),
                         self._colour_note, self._area, name="Head map")


class QKMap(pn.viewable.Viewer):
    """Joint 2-D map of one head's queries and keys (AttentionViz): needs a capture with the
    ``q`` and ``k`` sites. Queries are circles, keys triangles; hover shows the token."""

    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Integer(default=0, bounds=(0, None))
    capture = param.Selector(objects=[])
    method = param.Selector(default="pca", objects=["umap", "pca"])
    max_points = param.Integer(default=300, bounds=(10, 1000), doc="Queries (and keys) shown at most")

    def __init__(self, sel: ModelResults, **params):
        self.sel = sel
        names = [k for k, c in sel.captures.items() if {Site.Q, Site.K} <= c.sites]
        longest = max(names, key=lambda k: len(sel.captures[k].tokens), default=None)  # the most points to map
        cap = params.pop("capture", longest)
        super().__init__(**params)
        self.param.capture.objects = names
        with param.discard_events(self):
            self.capture = cap

    def points(self) -> dict[str, list] | str:
        """The scatter's columns, or a sentence saying why there is nothing to show."""
        cap = self.sel.captures.get(self.capture) if self.capture else None
        if cap is None:
            return ("No capture with queries and keys for this model. Save one with "
                    "`lens capture MODEL -p TEXT --sites pattern,q,k --out RESULTS/captures`.")
        if not (cap.has(Site.Q, self.layer, self.head) and cap.has(Site.K, self.layer)):
            return f"Capture {cap.name} has no q/k for {head_label(self.layer, self.head)} (layers {cap.layers})."
        try:
            q, k = cap.queries(self.layer, self.head), cap.keys(self.layer, self.head)
        except AttnlensError as err:
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
            return pn.pane.HTML(f"<p>{html.escape(data)}</p>")
        p = figure(width=640, height=520, tools="pan,wheel_zoom,reset,save", toolbar_location="above",
                   title=f"{head_label(self.layer, self.head)}: queries and keys ({self.method.upper()})", name="qk_map")
        r = p.scatter("x", "y", source=ColumnDataSource(data), marker="marker", color="color", legend_field="role",
                      size=8, alpha=0.7)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("", "@role @pos"), ("token", "@token")]))
        p.legend.location = "top_left"
        return pn.pane.Bokeh(p)

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.capture, width=220),
                                pn.widgets.RadioButtonGroup.from_param(self.param.method),
                                pn.widgets.IntInput.from_param(self.param.max_points, width=110)),
                         pn.pane.HTML("<p>Queries and keys of the selected head in one space (keys moved to the "
                                      "queries' centroid and scale, as AttentionViz does).</p>"),
                         pn.param.ParamMethod(self.plot, lazy=True, loading_indicator=True), name="Q/K map")
