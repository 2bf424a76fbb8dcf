"""The attention explorer: one head's pattern with token labels, a CircuitsVis-style text view
and the head's statistics.

Long sequences are cut to a window of at most :data:`~dashboards.compute.MAX_WINDOW` query
rows, with the keys outside it pooled, so one view never sends more than
:data:`MAX_CELLS` cells to the browser, whatever the capture's length.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, FixedTicker, HoverTool, LinearColorMapper
from bokeh.palettes import Blues256
from bokeh.plotting import figure

from dashboards.compute import (
    CONTEXT_BINS,
    MAX_WINDOW,
    PatternWindow,
    pattern_stats,
    token_label,
    window_pattern,
)
from dashboards.data import CaptureFile, CaptureReadError, ResultsFolder, head_label

MAX_CELLS = MAX_WINDOW * (MAX_WINDOW + 2 * CONTEXT_BINS + 1)  # hard bound on heatmap cells sent
MAX_AXIS_LABELS = 48


class AttentionExplorer(pn.viewable.Viewer):
    """One head of one capture: pattern heatmap, text view, statistics.

    Parameters: ``layer``, ``head`` (set by the atlas), ``capture`` (which saved example),
    ``query`` (the query position the text view shows; a click on a heatmap row sets it),
    ``window_start``/``window_size`` (the query rows shown).
    """

    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Integer(default=0, bounds=(0, None))
    capture = param.Selector(objects=[], doc="Saved example capture (folder name under captures/)")
    query = param.Integer(default=0, bounds=(0, None), doc="Query position shown in the text view")
    window_start = param.Integer(default=0, bounds=(0, None), doc="First query row shown")
    window_size = param.Integer(default=64, bounds=(4, MAX_WINDOW), doc="Query rows shown")

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        names = [c.name for c in folder.captures if "pattern" in c.sites]
        cap = params.pop("capture", names[0] if names else None)
        super().__init__(**params)
        self.param.capture.objects = names
        with param.discard_events(self):
            self.capture = cap
        self._window: PatternWindow | None = None
        self._pattern: np.ndarray | None = None
        self._first_draw = "query" not in params
        self._source = ColumnDataSource(_empty_cells())
        self._qmark = ColumnDataSource({"y": [], "w": []})
        self._mapper = LinearColorMapper(palette=Blues256[::-1], low=0, high=1)
        self._fig = self._make_figure()
        self._source.selected.on_change("indices", self._on_tap)
        self._fig_pane = pn.pane.Bokeh(self._fig)
        self._message = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._text = pn.pane.HTML("", sizing_mode="stretch_width", styles={"max-height": "220px", "overflow-y": "auto"})
        self._stats = pn.pane.HTML("", sizing_mode="stretch_width")
        self._refresh()

    # ---- data --------------------------------------------------------------------------
    def _capture(self) -> CaptureFile | None:
        return next((c for c in self.folder.captures if c.name == self.capture), None)

    @property
    def window(self) -> PatternWindow | None:
        """What the heatmap shows now (None when the head has no captured pattern)."""
        return self._window

    @property
    def cells(self) -> dict[str, list]:
        """The heatmap's data as sent to the browser."""
        return dict(self._source.data)

    @param.depends("layer", "head", "capture", "window_start", "window_size", watch=True)
    def _refresh(self) -> None:
        cap = self._capture()
        self._pattern, self._window = None, None
        if cap is None:
            self._show_message(
                "No saved captures in this folder, so no patterns to show. Save a few with "
                f"`lens capture MODEL --sites pattern,q,k --out {self.folder.path}/captures`.")
            return
        if not cap.has("pattern", self.layer, self.head):
            other = self.folder.capture_for(self.layer, self.head)
            hint = f" Capture **{other.name}** has it." if other else ""
            self._show_message(f"Capture **{cap.name}** has no pattern for {head_label(self.layer, self.head)} "
                               f"(layers {cap.layers}, heads {cap.heads}).{hint}")
            return
        try:
            self._pattern = cap.pattern(self.layer, self.head)
        except CaptureReadError as err:
            self._show_message(f"**{cap.name}**: {err}")
            return
        n_q = self._pattern.shape[0]
        self._window = window_pattern(self._pattern, self.window_start, self.window_size)
        self._message.object = (f"**{head_label(self.layer, self.head)}** · capture {cap.name} · "
                                f"queries {self._window.q_start}-{self._window.q_end - 1} of {n_q}"
                                + (" (keys outside the window pooled)" if n_q > self._window.q_end - self._window.q_start else ""))
        self._draw(cap)
        if self._first_draw:  # start on the last query shown: it sees the most context
            self._first_draw = False
            self.param.update(query=self._window.q_end - 1)
        q = min(max(self.query, self._window.q_start), self._window.q_end - 1)
        if q != self.query:
            self.query = q  # triggers _refresh_query
        else:
            self._refresh_query()
        self._stats.object = self._stats_html(cap)

    def _show_message(self, text: str) -> None:
        self._message.object = text
        self._source.data = _empty_cells()
        self._qmark.data = {"y": [], "w": []}
        self._text.object = ""
        self._stats.object = self._stats_html(None)

    def _draw(self, cap: CaptureFile) -> None:
        w = self._window
        toks = cap.tokens
        cols = [token_label(toks[a]) if b - a == 1 else f"[{a}-{b - 1}]" for a, b in w.col_ranges]
        col_desc = [f"{a}: {toks[a]!r}" if b - a == 1 else f"keys {a}-{b - 1} (pooled)" for a, b in w.col_ranges]
        n_rows, n_cols = w.values.shape
        yy, xx = np.divmod(np.arange(n_rows * n_cols), n_cols)
        vals = w.values.ravel()
        keep = vals > 0  # masked (future) keys carry nothing: don't send them
        qpos = w.q_start + yy[keep]
        self._source.data = {"x": xx[keep].tolist(), "y": yy[keep].tolist(), "value": vals[keep].tolist(),
                             "query": [f"{q}: {toks[q]!r}" for q in qpos], "key": [col_desc[i] for i in xx[keep]]}
        self._mapper.high = float(max(vals.max(), 1e-6))
        self._fig.x_range.start, self._fig.x_range.end = -0.5, n_cols - 0.5
        self._fig.y_range.start, self._fig.y_range.end = n_rows - 0.5, -0.5
        xs = _label_ticks(n_cols)
        ys = _label_ticks(n_rows)
        self._fig.xaxis.ticker = FixedTicker(ticks=xs)
        self._fig.xaxis.major_label_overrides = {i: cols[i] for i in xs}
        self._fig.yaxis.ticker = FixedTicker(ticks=ys)
        self._fig.yaxis.major_label_overrides = {i: f"{w.q_start + i} {token_label(toks[w.q_start + i])}" for i in ys}
        self._fig.title.text = f"{self.folder.model} {head_label(self.layer, self.head)}: attention pattern"

    def _make_figure(self):
        p = figure(width=600, height=560, tools="tap,reset,save", toolbar_location="above", x_range=(-0.5, 0.5),
                   y_range=(0.5, -0.5), x_axis_label="key", y_axis_label="query", name="pattern_heatmap",
                   title="attention pattern")
        r = p.rect("x", "y", 1, 1, source=self._source, fill_color={"field": "value", "transform": self._mapper},
                   line_color=None, nonselection_fill_alpha=1.0)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("query", "@query"), ("key", "@key"), ("weight", "@value{0.000}")]))
        p.rect(0, "y", "w", 1, source=self._qmark, fill_alpha=0, line_color="#ff2d55", line_width=2)
        p.xaxis.major_label_orientation = 1.2
        p.grid.visible = False
        return p

    def _on_tap(self, attr, old, new) -> None:
        if new and self._window is not None:
            self.query = self._window.q_start + int(self._source.data["y"][new[0]])

    # ---- text view ---------------------------------------------------------------------
    @param.depends("query", watch=True)
    def _refresh_query(self) -> None:
        cap, w, p = self._capture(), self._window, self._pattern
        if cap is None or w is None or p is None:
            return
        q = min(self.query, p.shape[0] - 1)
        n_cols = w.values.shape[1]
        self._qmark.data = {"y": [q - w.q_start], "w": [2 * n_cols]}
        self._text.object = text_view_html(cap.tokens, p[q], q, w.q_start, w.q_end)

    def _stats_html(self, cap: CaptureFile | None) -> str:
        rows = []
        n = self.folder.shape[0] * self.folder.shape[1]
        for r in self.folder.results:
            if self.layer < r.shape[0] and self.head < r.shape[1]:
                v = r.scores[self.layer, self.head]
                finite = r.scores[np.isfinite(r.scores)]
                rank = int((finite > v).sum()) + 1 if np.isfinite(v) else None
                rows.append((r.name, "not scored" if not np.isfinite(v) else f"{v:.4g}",
                             f"{rank} of {finite.size}" if rank else "—"))
        if cap is not None and self._pattern is not None:
            for k, v in pattern_stats(self._pattern).items():
                rows.append((f"capture {cap.name}: {k}", f"{v:.4g}", ""))
        body = "".join(f"<tr><td>{html.escape(a)}</td><td style='text-align:right'>{b}</td><td>{c}</td></tr>"
                       for a, b, c in rows)
        return (f"<b>{head_label(self.layer, self.head)}</b> statistics ({n} heads)"
                f"<table class='head-stats'><tr><th>score</th><th>value</th><th>rank</th></tr>{body}</table>")

    def __panel__(self):
        controls = pn.Row(pn.widgets.Select.from_param(self.param.capture, width=120),
                          pn.widgets.IntInput.from_param(self.param.query, width=100),
                          pn.widgets.IntInput.from_param(self.param.window_start, name="first row", width=100),
                          pn.widgets.IntInput.from_param(self.param.window_size, name="rows", width=90))
        return pn.Column(controls, self._message, self._fig_pane, pn.pane.Markdown("**Text view** (pick a query: "
                         "click a heatmap row or type a position)"), self._text, self._stats, name="Attention explorer")


def text_view_html(tokens: list[str], row: np.ndarray, q: int, lo: int, hi: int) -> str:
    """Tokens ``lo..hi-1`` with each key's background shaded by query ``q``'s weight on it
    (scaled to the largest weight shown); the query is boxed. Attention outside the range
    is summed in a note, so the text stays bounded for long sequences."""
    row = np.asarray(row, dtype=np.float64)
    shown = row[lo:hi]
    top = float(shown.max()) if shown.size and shown.max() > 0 else 1.0
    spans = []
    for i in range(lo, hi):
        w = float(row[i]) if i < row.size else 0.0
        a = min(1.0, w / top)
        style = f"background: rgba(30, 100, 220, {a:.3f}); color: {'white' if a > 0.6 else 'black'};"
        if i == q:
            style += " outline: 2px solid #ff2d55;"
        tok = html.escape(tokens[i]).replace("\n", "↵<br>")
        spans.append(f"<span class='tok' data-pos='{i}' title='{i}: {w:.4f}' style='{style}'>{tok}</span>")
    before, after = float(row[:lo].sum()), float(row[hi:].sum())
    notes = []
    if lo > 0:
        notes.append(f"{lo} earlier tokens hold {before:.1%} of this query's attention "
                     f"(token 0 {html.escape(repr(tokens[0]))}: {float(row[0]):.1%})")
    if after > 0:
        notes.append(f"later tokens hold {after:.1%}")
    note = f"<div class='note'>{'; '.join(notes)}</div>" if notes else ""
    return (f"<div class='text-view'>query {q} {html.escape(repr(tokens[q]))}{note}"
            f"<div style='font-family: monospace; white-space: pre-wrap; line-height: 1.6'>{''.join(spans)}</div></div>")


def _empty_cells() -> dict[str, list]:
    return {"x": [], "y": [], "value": [], "query": [], "key": []}


def _label_ticks(n: int) -> list[int]:
    step = max(1, int(np.ceil(n / MAX_AXIS_LABELS)))
    return list(range(0, n, step))
