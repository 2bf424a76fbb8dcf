"""The attention explorer: one head's pattern with token labels, a colour-scale choice and a
colour bar, a token view with hover in both directions, and the head's statistics.

Long sequences are cut to a window of at most :data:`~dashboards.compute.MAX_WINDOW` query
rows, with the keys outside it pooled, so one view never sends more than
:data:`MAX_CELLS` cells to the browser, whatever the capture's length.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColorBar, ColumnDataSource, FixedTicker, HoverTool
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import add_sink_legend, color_mapper, on_click
from attnlens.dashboards.compute import (
    CONTEXT_BINS,
    MAX_EXACT,
    MAX_WINDOW,
    SCALE_OPTIONS,
    ColorScale,
    PatternWindow,
    color_range,
    head_label,
    pattern_stats,
    score_rank,
    thin_ticks,
    token_label,
    window_pattern,
)
from attnlens.dashboards.selection import ModelResults
from attnlens.dashboards.tokens import MAX_TOKENS, TokenView
from attnlens.formats import AttnlensError, CaptureFile, Site

MAX_CELLS = MAX_WINDOW * (MAX_WINDOW + 3 * CONTEXT_BINS + 1 + MAX_EXACT)  # hard bound on heatmap cells sent
WIDTH, HEIGHT = 480, 500


class AttentionExplorer(pn.viewable.Viewer):
    """One head of one capture: pattern heatmap, token view, statistics.

    Parameters: ``layer``, ``head`` (set by the atlas), ``capture`` (a capture label),
    ``step`` and ``batch`` (for a capture made across ``generate()`` or of a batch: the step shown,
    whose new token is the last query row, and the prompt), ``query`` (the query the token view
    pins; a click on a heatmap row sets it; it starts on the last row again when the capture,
    step or batch changes),
    ``window_start``/``window_size`` (the query rows shown), ``scale`` (colour scale) and
    ``clicks`` (row clicks answered).
    """

    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Integer(default=0, bounds=(0, None))
    capture = param.Selector(objects=[], doc="Saved capture (its label in the folder)")
    step = param.Integer(default=0, bounds=(0, 0), doc="Generation step (0: the prompt; k: k tokens generated)")
    batch = param.Integer(default=0, bounds=(0, 0), doc="Prompt of the batch shown")
    query = param.Integer(default=0, bounds=(0, None), doc="Query position pinned in the token view")
    window_start = param.Integer(default=0, bounds=(0, None), doc="First query row shown")
    window_size = param.Integer(default=64, bounds=(4, MAX_WINDOW), doc="Query rows shown")
    scale = param.Selector(default=ColorScale.NO_SINK, objects=SCALE_OPTIONS, doc="Colour scale of the pattern")
    clicks = param.Integer(default=0, doc="Row clicks answered so far")

    def __init__(self, sel: ModelResults, **params):
        self.sel = sel
        names = sel.pattern_captures()
        cap = params.pop("capture", names[0] if names else None)
        super().__init__(**params)
        self.param.capture.objects = names
        with param.discard_events(self):
            self.capture = cap
        self._window: PatternWindow | None = None
        self._pattern: np.ndarray | None = None
        self._tokens: list[str] = []
        self._focus = None  # the capture's task rows and keys (formats.Focus)
        self._key_shown: int | None = None  # a key kept exact by "top key" (it may lie in the pooled context)
        self._first_draw = "query" not in params
        self._shown: tuple | None = None  # (capture, step, batch) drawn last
        self._head_shown: tuple | None = None  # (layer, head) drawn last
        self._source = ColumnDataSource(_empty_cells())
        self._qmark = ColumnDataSource({"y": [], "w": [], "n": []}, name="pattern_query_mark")
        self._kmark = ColumnDataSource({"x": [], "h": []}, name="pattern_key_mark")
        self._mapper = color_mapper(self.scale, 0.0, 1.0)
        self._mapper_scale = self.scale
        self._fig, self._renderer, self._bar = self._make_figure()
        on_click(self._fig, self._on_click)
        self._fig_pane = pn.pane.Bokeh(self._fig)
        self._message = pn.pane.HTML("", sizing_mode="stretch_width", name="explorer_message")
        self.tokens = TokenView(sizing_mode="stretch_width")
        self.tokens.param.watch(self._on_token_click, "query")
        self._top = pn.pane.HTML("", name="top_key", margin=(0, 5))
        self._jump = pn.widgets.Button(label="top key", width=80, description="Keep the pinned query's top key "
                                       "in view (exact, not pooled) and mark its column")
        self._jump.on_click(self.jump_to_top_key)
        self._stats = pn.pane.HTML("", sizing_mode="stretch_width", name="head_stats")
        self._step_widget = pn.widgets.IntInput.from_param(self.param.step, name="step", width=60)
        self._batch_widget = pn.widgets.IntInput.from_param(self.param.batch, name="prompt", width=60)
        self._boxes = {"step": self._step_widget, "batch": self._batch_widget,
                       "query": pn.widgets.IntInput.from_param(self.param.query, width=60),
                       "window_start": pn.widgets.IntInput.from_param(self.param.window_start, name="first row",
                                                                      width=60)}
        self._step_bounds()
        self._refresh()

    # ---- data --------------------------------------------------------------------------
    def _capture(self) -> CaptureFile | None:
        return self.sel.captures.get(self.capture) if self.capture else None

    @property
    def window(self) -> PatternWindow | None:
        """What the heatmap shows now (None when the head has no captured pattern)."""
        return self._window

    @property
    def cells(self) -> dict[str, list]:
        """The heatmap's data as sent to the browser."""
        return dict(self._source.data)

    @property
    def color_high(self) -> float:
        return float(self._mapper.high)

    @property
    def tokens_shown(self) -> list[str]:
        """The tokens of the pattern shown (prompt, then the tokens generated up to ``step``)."""
        return list(self._tokens)

    def _step_bounds(self, reset: bool = False) -> None:
        """Step and batch bounds of the capture shown (back to step 0, prompt 0 with ``reset``)."""
        cap = self._capture()
        n_steps, n_batch = (max(cap.n_steps, 1), cap.n_batch) if cap is not None else (1, 1)
        with param.discard_events(self):
            self.param.step.bounds = (0, n_steps - 1)
            self.param.batch.bounds = (0, n_batch - 1)
            self.step = 0 if reset else min(self.step, n_steps - 1)
            self.batch = 0 if reset else min(self.batch, n_batch - 1)
        if hasattr(self, "_step_widget"):
            self._step_widget.end, self._batch_widget.end = n_steps - 1, n_batch - 1
            self._step_widget.visible, self._batch_widget.visible = n_steps > 1, n_batch > 1

    def use_capture_for(self, result: str | None) -> None:
        """Show the current head on ``result``'s own example capture (the analysis' inputs) if it has one."""
        found = self.sel.capture_for(self.layer, self.head, result)
        if found is not None and found[0] != self.capture:
            self.capture = found[0]

    @param.depends("layer", "head", "capture", "step", "batch", "window_start", "window_size", "scale", watch=True)
    def _refresh(self) -> None:
        cap = self._capture()
        key = (self.capture, self.step, self.batch)
        if self._shown is not None and key != self._shown:  # the pinned query and window belong to the old view
            self._first_draw = True
            if key[0] != self._shown[0]:
                self._step_bounds(reset=True)
                with param.discard_events(self):
                    self.window_start = 0
                key = (self.capture, self.step, self.batch)
        if key != self._shown:
            self._key_shown = None
        head, f = (self.layer, self.head), self._focus
        if (key == self._shown and head != self._head_shown and f is not None and f.keys is not None
                and self.step == 0 and f.rows[0] <= self.query < f.rows[1]):
            self._first_draw = True  # on the task's rows, the row that matters is the new head's own
        self._shown, self._head_shown = key, head
        self._pattern, self._window, self._tokens, self._focus = None, None, [], None
        where = html.escape(self.capture or "")
        if cap is None:
            self._show_message(
                "No saved captures with attention patterns for this model, so no patterns to show. Save one with "
                "<code>lens capture MODEL -p TEXT --sites pattern,q,k --out RESULTS/captures</code>.")
            return
        if not cap.has(Site.PATTERN, self.layer, self.head):
            other = self.sel.capture_for(self.layer, self.head)
            hint = f" Capture <b>{html.escape(other[0])}</b> has it." if other else ""
            self._show_message(f"Capture <b>{where}</b> has no pattern for {head_label(self.layer, self.head)} "
                               f"(layers {cap.layers[:8]}, heads {cap.heads[:8]}).{hint}")
            return
        try:
            self._pattern = cap.pattern_through(self.layer, self.head, self.batch, self.step)
            self._tokens = cap.tokens_through(self.step, self.batch)
            self._focus = cap.focus
        except AttnlensError as err:
            self._show_message(f"<b>{where}</b>: {html.escape(str(err))}")
            return
        n_q = self._pattern.shape[0]
        start = self.window_start
        focus = self._focus_row(n_q)
        if self._first_draw and focus is not None and not start <= focus < start + self.window_size:
            start = max(0, min(focus - self.window_size // 2, n_q - self.window_size))
            with param.discard_events(self):
                self.window_start = start
        exact = [self._focus.keys] if self._focus is not None and self._focus.keys and self.step == 0 else []
        if self._key_shown is not None:
            exact.append((self._key_shown, self._key_shown + 1))
        w = self._window = window_pattern(self._pattern, start, self.window_size, exact)
        pooled = " (keys outside the window pooled)" if n_q > w.q_end - w.q_start else ""
        dtype = html.escape("/".join(sorted(cap.dtypes)))
        where_in = ""
        if cap.n_steps > 1:
            new = f": new token {html.escape(repr(self._tokens[-1]))}" if self.step > 0 else ": the prompt"
            where_in += f" · step {self.step} of {cap.n_steps - 1}{new}"
        if cap.n_batch > 1:
            where_in += f" · prompt {self.batch} of {cap.n_batch}"
        if self._focus is not None and self.step == 0:
            f = self._focus
            keys = f", keys {f.keys[0]}-{f.keys[1] - 1} kept exact" if f.keys else ""
            where_in += (f" · task rows {f.rows[0]}-{f.rows[1] - 1}{keys} "
                         f"({html.escape(f.why) or 'from the capture'})")
        self._message.object = (f"<b>{head_label(self.layer, self.head)}</b> · capture <b>{where}</b> ({dtype})"
                                f"{where_in} · queries {w.q_start}-{w.q_end - 1} of {n_q}{pooled}")
        self._draw(cap)
        if self._first_draw:  # start on the row that matters, else the last one shown (the most context)
            self._first_draw = False
            with param.discard_events(self):
                self.query = focus if focus is not None and w.q_start <= focus < w.q_end else w.q_end - 1
        q = min(max(self.query, w.q_start), w.q_end - 1)
        if q != self.query:
            self.query = q  # triggers _refresh_query
        else:
            self._refresh_query()
        self._stats.object = self._stats_html(cap)
        self._sync_widgets()

    def _sync_widgets(self) -> None:
        """Show in the boxes what was set without events (step, prompt, query and first row of a new view)."""
        for name, widget in self._boxes.items():
            if widget.value != getattr(self, name):
                widget.value = getattr(self, name)  # the same value goes back to the parameter: no event

    def _focus_row(self, n_q: int) -> int | None:
        """The query row a fresh view opens on: a later step's own token (the last row), else the
        task's row (of the capture's focus rows, the one that puts the most weight on its focus keys)."""
        if self.step > 0:
            return n_q - 1
        f, p = self._focus, self._pattern
        if f is None or p is None or f.rows[1] > n_q:
            return None
        lo, hi = f.rows
        if f.keys is None:
            return lo
        rows = p[lo:hi]
        top = rows.argmax(axis=1)
        inside = (top >= f.keys[0]) & (top < f.keys[1])  # rows whose top key is a focus key come first
        mass = rows[:, f.keys[0]:f.keys[1]].sum(axis=1)
        return lo + int(np.argmax(inside * 2.0 + mass))

    def _show_message(self, text: str) -> None:
        self._message.object = text
        self._source.data = _empty_cells()
        self._qmark.data = {"y": [], "w": [], "n": []}
        self._kmark.data = {"x": [], "h": []}
        self.tokens.clear()
        self._stats.object = self._stats_html(None)

    def _draw(self, cap: CaptureFile) -> None:
        w = self._window
        toks = self._tokens
        cols = [token_label(toks[a]) if b - a == 1 else f"[{a}-{b - 1}]" for a, b in w.col_ranges]
        col_desc = [f"{a}: {toks[a]!r}" if b - a == 1 else f"keys {a}-{b - 1} (pooled)" for a, b in w.col_ranges]
        n_rows, n_cols = w.values.shape
        yy, xx = np.divmod(np.arange(n_rows * n_cols), n_cols)
        vals = w.values.ravel()
        keep = vals > 0  # masked (future) keys carry nothing: don't send them
        qpos = w.q_start + yy[keep]
        self._source.data = {"x": xx[keep].tolist(), "y": yy[keep].tolist(), "value": vals[keep].tolist(),
                             "query": [f"{q}: {toks[q]!r}" for q in qpos], "key": [col_desc[i] for i in xx[keep]]}
        low, high = color_range(w.values, self.scale, w.sink_mask())
        self._set_mapper(low, high)
        self._fig.x_range.start, self._fig.x_range.end = -0.5, n_cols - 0.5
        self._fig.y_range.start, self._fig.y_range.end = n_rows - 0.5, -0.5
        xs = thin_ticks(n_cols, WIDTH // 14)
        ys = thin_ticks(n_rows, HEIGHT // 14)
        self._fig.xaxis.ticker = FixedTicker(ticks=xs)
        self._fig.xaxis.major_label_overrides = {i: cols[i] for i in xs}
        self._fig.yaxis.ticker = FixedTicker(ticks=ys)
        self._fig.yaxis.major_label_overrides = {i: f"{w.q_start + i} {token_label(toks[w.q_start + i])}" for i in ys}
        at = f" at step {self.step}" if self.step else ""
        at += f", prompt {self.batch}" if self.batch else ""
        self._fig.title.text = f"{self.sel.model} {head_label(self.layer, self.head)}: attention pattern{at}"

    def _set_mapper(self, low: float, high: float) -> None:
        if self._mapper_scale is not self.scale:
            self._mapper_scale = self.scale
            self._mapper = color_mapper(self.scale, low, high)
            self._renderer.glyph.fill_color = {"field": "value", "transform": self._mapper}
            self._bar.color_mapper = self._mapper
        else:
            self._mapper.update(low=low, high=high)
        self._bar.title = f"weight ({self.scale.value})"
        self._sink_legend.visible = self.scale is ColorScale.NO_SINK  # the sink colour is used on this scale only

    def _make_figure(self):
        p = figure(width=WIDTH, height=HEIGHT, tools="reset,save", toolbar_location="above", x_range=(-0.5, 0.5),
                   y_range=(0.5, -0.5), x_axis_label="key", y_axis_label="query", name="pattern_heatmap",
                   title="attention pattern")
        r = p.rect("x", "y", 1, 1, source=self._source, fill_color={"field": "value", "transform": self._mapper},
                   line_color=None)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("query", "@query"), ("key", "@key"), ("weight", "@value{0.0000}")]))
        p.rect(0, "y", "w", 1, source=self._qmark, fill_alpha=0, line_color="#ff2d55", line_width=2)
        p.rect("x", 0, 1, "h", source=self._kmark, fill_alpha=0, line_color="#00b3a4", line_width=2)
        bar = ColorBar(color_mapper=self._mapper, width=10, title="weight")
        p.add_layout(bar, "right")
        self._sink_legend = add_sink_legend(p)
        self._sink_legend.visible = self.scale is ColorScale.NO_SINK
        p.xaxis.major_label_orientation = 1.2
        p.grid.visible = False
        return p, r, bar

    def _on_click(self, x: float, y: float) -> None:
        w = self._window
        if w is None:
            return
        row = int(np.floor(y + 0.5))
        if not 0 <= row < w.q_end - w.q_start:
            return
        self.clicks += 1
        q = w.q_start + row
        if q != self.query:
            self.query = q
        else:
            self._refresh_query()

    # ---- token view ----------------------------------------------------------------------
    @param.depends("query", watch=True)
    def _refresh_query(self) -> None:
        cap, w, p = self._capture(), self._window, self._pattern
        if cap is None or w is None or p is None:
            return
        q = min(self.query, p.shape[0] - 1)
        n_cols = w.values.shape[1]
        self._qmark.data = {"y": [q - w.q_start], "w": [2 * n_cols], "n": [self.clicks]}
        k = self.top_key
        j = w.column_of(k) if k is not None else None
        exact = j is not None and w.col_ranges[j] == (k, k + 1)
        self._kmark.data = {"x": [j], "h": [2 * w.values.shape[0]]} if exact else {"x": [], "h": []}
        self._top.object = (f"top key of query {q}: <b>{k}</b> {html.escape(repr(self._tokens[k]))} "
                            f"({p[q, k]:.3f}){'' if exact else ' (pooled here: press <i>top key</i>)'}"
                            if k is not None else "")
        hi = w.q_end
        lo = max(0, hi - MAX_TOKENS)
        note = (f"tokens {lo}-{hi - 1} of {p.shape[0]}; attention to earlier tokens ({lo} of them) is not shaded"
                if lo > 0 else "")
        self.tokens.show(self._tokens[lo:hi], p[lo:hi, lo:hi], lo, q, note)

    @property
    def top_key(self) -> int | None:
        """The key the pinned query attends to most (None without a pattern)."""
        p = self._pattern
        if p is None or not 0 <= self.query < p.shape[0]:
            return None
        return int(np.argmax(p[self.query]))

    def jump_to_top_key(self, *_) -> None:
        """Keep the pinned query's top key exact (even in the pooled context) and mark its column."""
        k = self.top_key
        if k is None:
            return
        w = self._window
        j = w.column_of(k) if w is not None else None
        if j is not None and w.col_ranges[j] == (k, k + 1):
            self._refresh_query()
            return
        self._key_shown = k
        self._refresh()

    def _on_token_click(self, event) -> None:
        """A click on a token in the token view pins it as the query (moving the rows shown to it)."""
        q = int(event.new)
        if q < 0 or q == self.query or self._pattern is None:
            return
        w = self._window
        if w is not None and not w.q_start <= q < w.q_end:
            with param.discard_events(self):
                self.query = q
            self.window_start = max(0, q - self.window_size // 2)
        else:
            self.query = q

    def _stats_html(self, cap: CaptureFile | None) -> str:
        rows = []
        n_layers, n_heads = self.sel.shape
        for label, r in self.sel.results.items():
            if self.layer < r.shape[0] and self.head < r.shape[1]:
                rows.append((label, *score_rank(r.scores, self.layer, self.head, r.scale, r.categories)))
        if cap is not None and self._pattern is not None:
            for k, v in pattern_stats(self._pattern).items():
                rows.append((f"this capture: {k}", f"{v:.4g}", ""))
        body = "".join(f"<tr><td>{html.escape(a)}</td><td style='text-align:right'>{b}</td><td>{c}</td></tr>"
                       for a, b, c in rows)
        return (f"<b>{head_label(self.layer, self.head)} statistics</b> ({n_layers * n_heads} heads)"
                f"<table class='head-stats'><tr><th>score</th><th>value</th><th>rank</th></tr>{body}</table>")

    def __panel__(self):
        # a wrapping row: capture labels ("ioi-circuit/captures/task-000") and scale names shown whole
        controls = pn.FlexBox(pn.widgets.Select.from_param(self.param.capture, width=270),
                              pn.widgets.Select.from_param(self.param.scale, name="colour scale", width=200),
                              self._step_widget, self._batch_widget,
                              self._boxes["query"], self._boxes["window_start"],
                              pn.widgets.IntInput.from_param(self.param.window_size, name="rows", width=55),
                              width=WIDTH + 30)
        return pn.Column(controls, self._message, self._fig_pane, pn.Row(self._jump, self._top),
                         pn.pane.Markdown("**Token view**: hover a token; click a token or a pattern row to pin "
                                          "a query."),
                         self.tokens, self._stats, name="Attention explorer", width=WIDTH + 30)


def _empty_cells() -> dict[str, list]:
    return {"x": [], "y": [], "value": [], "query": [], "key": []}
