"""QK attribution view: why a head attends where it does, from ``lens heads qk`` results.

The head's attention row from the query is drawn as a strip of cells, one per key; a click
on a cell picks that key, and the view shows the score's decomposition there: a heatmap of
the strongest query-side components (rows) x key-side components (columns), the rest of
each side folded into an ``other`` row and column so that the cells still add up to the
score, and a table of the top terms named like ``L17H3 x embed[Mary]``. Reads result files
only (:class:`formats.qk.QKResult`), never a model.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import RdBu11
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import PATTERN_PALETTE, on_click
from attnlens.dashboards.compute import token_label
from attnlens.formats.qk import QKResult

OTHER = "other"


def qk_table(res: QKResult, key_pos: int, n: int = 12) -> tuple[list[str], list[str], np.ndarray]:
    """``(row names, column names, [rows, cols] terms)`` at ``key_pos``: the ``n`` query-side and key-side
    components with the largest summed contribution, plus ``other`` folding the rest of each side in
    (the matrix still sums to the score)."""
    t = res.terms[key_pos].astype(np.float64)
    rows = _strongest(t.sum(1), n)
    cols = _strongest(t.sum(0), n)
    qn, kn = res.names(res.query_pos), res.names(key_pos)
    rest_r = np.setdiff1d(np.arange(t.shape[0]), rows)
    rest_c = np.setdiff1d(np.arange(t.shape[1]), cols)
    m = np.zeros((len(rows) + bool(rest_r.size), len(cols) + bool(rest_c.size)))
    m[:len(rows), :len(cols)] = t[np.ix_(rows, cols)]
    if rest_c.size:
        m[:len(rows), -1] = t[np.ix_(rows, rest_c)].sum(1)
    if rest_r.size:
        m[-1, :len(cols)] = t[np.ix_(rest_r, cols)].sum(0)
        if rest_c.size:
            m[-1, -1] = t[np.ix_(rest_r, rest_c)].sum()
    row_names = [qn[i] for i in rows] + ([OTHER] if rest_r.size else [])
    col_names = [kn[i] for i in cols] + ([OTHER] if rest_c.size else [])
    return row_names, col_names, m


def _strongest(v: np.ndarray, n: int) -> np.ndarray:
    return np.sort(np.argsort(-np.abs(v), kind="stable")[:n])


def top_terms_html(res: QKResult, key_pos: int, n: int = 10) -> str:
    """A table of the top terms (name, value, share of the score) at ``key_pos``."""
    score = float(res.scores[key_pos])
    rows = "".join(f"<tr><td>{i + 1}</td><td><code>{html.escape(name)}</code></td><td align='right'>{v:+.4f}</td>"
                   f"<td align='right'>{(v / score if score else np.nan):+.0%}</td></tr>"
                   for i, (name, v) in enumerate(res.top(n, key_pos)))
    return ("<table class='attnlens-qk-top'><tr><th>#</th><th>query side x key side</th><th>term</th>"
            f"<th>of score</th></tr>{rows}</table>")


def summary_html(res: QKResult, key_pos: int) -> str:
    q, k = res.query_pos, key_pos
    ov = ""
    if res.answers:
        ov = ("<br>OV (what the head writes at the query, through this key / all keys, on each answer's logit): "
              + ", ".join(f"<code>{html.escape(repr(a))}</code> {res.ov[i, k]:+.4f} / {res.ov[i].sum():+.4f}"
                          for i, a in enumerate(res.answers)))
    return (f"<p><b>L{res.layer}H{res.head}</b> (KV head {res.kv_head}) · query {q} "
            f"<code>{html.escape(token_label(res.tokens[q]))}</code> → key {k} "
            f"<code>{html.escape(token_label(res.tokens[k]))}</code>: score {float(res.scores[k]):+.4f}, attention "
            f"{float(res.pattern[k]):.3f}; the {res.terms.shape[1]}x{res.terms.shape[2]} terms sum to "
            f"{float(res.terms[k].sum()):+.4f}.{ov}<br><small>{html.escape(res.linearisation)}</small></p>")


class QKView(pn.viewable.Viewer):
    """One QK attribution result at a time; a click on the attention row picks the key."""

    result = param.Selector(objects=[], doc="QK attribution result")
    key_pos = param.Integer(default=-1, doc="Key position explained (-1: the result's own key)")
    n_top = param.Integer(default=12, bounds=(2, 60), doc="Components per side in the heatmap")

    def __init__(self, results: dict[str, QKResult], **params):
        self.results = dict(results)
        first = params.pop("result", next(iter(self.results), None))
        super().__init__(**params)
        self.param.result.objects = list(self.results)
        with param.discard_events(self):
            self.result = first
        self._row_pane = pn.pane.Bokeh(sizing_mode="fixed")  # unnamed: the figure keeps its own name
        self._heat_pane = pn.pane.Bokeh(sizing_mode="fixed")
        self._info = pn.pane.HTML("", name="qk_info", sizing_mode="stretch_width")
        self._top = pn.pane.HTML("", name="qk_top", sizing_mode="stretch_width")
        self.row_figure = self.heat_figure = None
        self._drawn = None
        self._refresh()

    @property
    def current(self) -> QKResult | None:
        return self.results.get(self.result) if self.result is not None else None

    def key(self) -> int:
        res = self.current
        return res.key_pos if self.key_pos < 0 or self.key_pos > res.query_pos else self.key_pos

    @param.depends("result", watch=True)
    def _new_result(self) -> None:
        with param.discard_events(self):
            self.key_pos = -1
        self._refresh()

    @param.depends("key_pos", "n_top", watch=True)
    def _refresh(self) -> None:
        res = self.current
        if res is None:
            self._info.object = ("<p>No QK attributions in this folder. Make one with <code>lens heads qk MODEL "
                                 "--layer L --head H --prompt TEXT --out DIR</code>.</p>")
            return
        k = self.key()
        if self._drawn != self.result:  # a new result: new figures; a new key: the same figures updated
            self.row_figure = self._row(res, k)
            self._row_pane.object = self.row_figure
            self.heat_figure = self._heat(res, k)
            self._heat_pane.object = self.heat_figure
            self._drawn = self.result
        else:
            self._row_src.data = self._row_data(res, k)
            self._update_heat(res, k)
        self._info.object = summary_html(res, k)
        self._top.object = top_terms_html(res, k, 10)

    @staticmethod
    def _row_data(res: QKResult, k: int) -> dict[str, list]:
        n = res.query_pos + 1
        return {"x": list(range(n)), "y": [0] * n, "p": res.pattern.tolist(), "score": res.scores.tolist(),
                "token": [f"{i} {token_label(t)}" for i, t in enumerate(res.tokens[:n])],
                "line": [3 if i == k else 0 for i in range(n)]}

    def _row(self, res: QKResult, k: int):
        n = res.query_pos + 1
        labels = [f"{i} {token_label(t)}" for i, t in enumerate(res.tokens[:n])]
        src = self._row_src = ColumnDataSource(self._row_data(res, k))
        fig = figure(width=min(1200, 80 + 28 * n), height=130, x_range=(-0.5, n - 0.5), y_range=(-0.5, 0.5),
                     tools="", toolbar_location=None, name="qk_row_figure",
                     title=f"attention of L{res.layer}H{res.head} from query {res.query_pos}: click a key")
        mapper = LinearColorMapper(palette=PATTERN_PALETTE, low=0, high=max(1e-9, float(res.pattern.max())))
        fig.rect("x", "y", 1, 1, source=src, fill_color={"field": "p", "transform": mapper}, line_color="#c2185b",
                 line_width="line")
        fig.add_tools(HoverTool(tooltips=[("key", "@token"), ("attention", "@p{0.000}"), ("score", "@score{+0.000}")]))
        fig.yaxis.visible = False
        fig.xaxis.ticker = list(range(n))
        fig.xaxis.major_label_overrides = {i: lab[:12] for i, lab in enumerate(labels)}
        fig.xaxis.major_label_orientation = 0.9
        on_click(fig, self._on_row_click)
        return fig

    def _on_row_click(self, x: float, y: float) -> None:
        res = self.current
        col = int(np.floor(x + 0.5))
        if res is not None and 0 <= col <= res.query_pos:
            self.key_pos = col

    def _heat_data(self, res: QKResult, k: int):
        rows, cols, m = qk_table(res, k, self.n_top)
        data: dict[str, list] = {"x": [], "y": [], "v": []}
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                data["x"].append(c)
                data["y"].append(r)
                data["v"].append(float(m[i, j]))
        return rows, cols, max(1e-9, float(np.abs(m).max())), data

    def _update_heat(self, res: QKResult, k: int) -> None:
        rows, cols, lim, data = self._heat_data(res, k)
        fig = self.heat_figure
        fig.x_range.factors, fig.y_range.factors = cols, rows[::-1]
        fig.width, fig.height = 140 + 44 * len(cols), 120 + 26 * len(rows)
        self._heat_src.data = data
        self._heat_mapper.update(low=-lim, high=lim)
        fig.title.text = f"score terms at key {k}: query side (rows) x key side (columns)"

    def _heat(self, res: QKResult, k: int):
        rows, cols, lim, data = self._heat_data(res, k)
        src = self._heat_src = ColumnDataSource(data)
        self._heat_mapper = LinearColorMapper(palette=RdBu11, low=-lim, high=lim)  # blue -> red: positive red, as in the report
        fig = figure(width=140 + 44 * len(cols), height=120 + 26 * len(rows), x_range=cols, y_range=rows[::-1],
                     tools="", toolbar_location=None, name="qk_heatmap_figure",
                     title=f"score terms at key {k}: query side (rows) x key side (columns)")
        fig.rect("x", "y", 1, 1, source=src, line_color="white",
                 fill_color={"field": "v", "transform": self._heat_mapper})
        fig.add_tools(HoverTool(tooltips=[("query side", "@y"), ("key side", "@x"), ("term", "@v{+0.0000}")]))
        fig.xaxis.major_label_orientation = 0.9
        fig.xaxis.axis_label = "key side"
        fig.yaxis.axis_label = "query side"
        return fig

    def __panel__(self):
        return pn.Column(pn.widgets.Select.from_param(self.param.result, width=260), self._info, self._row_pane,
                         pn.Row(self._heat_pane, self._top), name="qk_view", sizing_mode="stretch_width")
