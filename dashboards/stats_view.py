"""Stats runs (``lens stats``): the fused kernel's per-query statistics of every head, without
patterns.

Three parts: a layer x head heatmap of one statistic's mean over queries (entropy, sink,
window or span mass, largest weight; a span's mass is averaged over the queries that can see
the span, those at or after its first key); the per-query curves of the selected head
(masses and largest weight, entropy, and the top keys on hover; toggles pick the series); the
attention mass each key receives from the selected head (``received_sum`` / ``received_mean``,
when key statistics were on), with all keys, without the sink tokens, or on a log scale.
Spans are named by their key range ``a:b`` (half-open, as ``lens stats --span`` takes it).
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Legend, LinearAxis, Range1d
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import HeadGrid, cell_at
from attnlens.dashboards._pick import HeadPicker
from attnlens.dashboards.compute import head_label, token_label
from attnlens.formats import AttnlensError, StatsFile

MEANS = {"entropy": "entropy (nats)", "sink_mass": "sink mass", "window_mass": "window mass",
         "max_weight": "largest weight"}
MASS_FIELDS = ("sink_mass", "window_mass", "max_weight")


RECEIVED = ("all keys", "without sink tokens", "log scale")  # how the received-mass plot shows the keys


def span_name(span) -> str:
    """``span 120:135``: a span by its half-open key range, as ``--span`` takes it."""
    a, b = span
    return f"span {a}:{b}"


def field_options(run: StatsFile) -> dict[str, str]:
    """Widget label -> statistic key: the row statistics and one entry per span."""
    out = {label: key for key, label in MEANS.items()}
    for i, span in enumerate(run.settings["spans"]):
        out[f"{span_name(span)} mass"] = f"span_mass:{i}"
    return out


def head_means(run: StatsFile, key: str) -> np.ndarray:
    """``[n_layers, n_heads]`` mean over batch and queries >= 1 of a statistic (NaN for layers not
    recorded); a span's mass over the queries that can see it (``q >=`` the span's first key)."""
    if not key.startswith("span_mass:"):
        return run.head_means(key)
    i = int(key.split(":", 1)[1])
    first = max(1, int(run.settings["spans"][i][0]))
    f = run.meta.facts
    out = np.full((f.n_layers, f.n_heads), np.nan)
    for layer in run.layers:
        a = run.read(layer, "span_mass")[..., i].astype(np.float64)
        out[layer] = (a[:, :, first:] if a.shape[-1] > first else a[:, :, -1:]).mean(axis=(0, 2))
    return out


def query_curves(run: StatsFile, layer: int, head: int, batch: int = 0) -> dict[str, list]:
    """Columns of the per-query curves of one head: position, token, each row statistic, top keys."""
    n = len(run.meta.tokens[batch])
    toks = run.meta.tokens[batch]
    cols: dict[str, list] = {"q": list(range(n)), "token": [token_label(t, 14) for t in toks]}
    for name in ("entropy", *MASS_FIELDS):
        cols[name] = run.read(layer, name)[batch, head].astype(np.float64).tolist()
    fields = run.fields(layer)
    if "span_mass" in fields:
        spans = run.read(layer, "span_mass")[batch, head]
        for i, (a, _) in enumerate(run.settings["spans"]):
            v = spans[:, i].astype(np.float64)
            v[:a] = np.nan  # queries before the span cannot see it: no point, not a 0
            cols[f"span{i}"] = v.tolist()
    if "topk_index" in fields and "topk_weight" in fields:
        idx, w = run.read(layer, "topk_index")[batch, head], run.read(layer, "topk_weight")[batch, head]
        cols["top"] = [", ".join(f"{int(k)} {token_label(toks[int(k)], 8)!s} ({float(v):.2f})"
                                 for k, v in zip(ik, wk) if 0 <= int(k) < n) for ik, wk in zip(idx, w)]
    else:
        cols["top"] = [""] * n
    return cols


def received(run: StatsFile, layer: int, head: int, batch: int = 0, skip: int = 0) -> dict[str, list] | None:
    """Columns of the mass each key ``>= skip`` receives from one head (None without key statistics)."""
    fields = run.fields(layer)
    if "received_sum" not in fields:
        return None
    toks = run.meta.tokens[batch]
    s = run.read(layer, "received_sum")[batch, head].astype(np.float64)
    m = run.read(layer, "received_mean")[batch, head].astype(np.float64) if "received_mean" in fields else s * np.nan
    keep = range(min(skip, s.size), s.size)
    return {"k": list(keep), "sum": s[skip:].tolist(), "mean": m[skip:].tolist(),
            "token": [token_label(toks[i], 14) if i < len(toks) else "" for i in keep]}


def series_names(run: StatsFile) -> dict[str, str]:
    """Legend label -> column of :func:`query_curves`, for every series the per-query plot can show."""
    out = {MEANS[name]: name for name in MASS_FIELDS}
    for i, span in enumerate(run.settings["spans"]):
        out[f"{span_name(span)} mass"] = f"span{i}"
    out["entropy (right axis)"] = "entropy"
    return out


class StatsRunView(HeadPicker, pn.viewable.Viewer):
    """One stats run: head means, the selected head's per-query curves and received mass per key."""

    run = param.Selector(objects=[], doc="Stats run (its label in the folder)")
    statistic = param.Selector(objects=[], doc="Statistic of the heatmap")
    series = param.ListSelector(default=[], objects=[], doc="Series of the per-query plot")
    keys = param.Selector(default=RECEIVED[0], objects=list(RECEIVED), doc="Keys of the received-mass plot")

    def __init__(self, runs: dict[str, StatsFile], **params):
        self.runs = runs
        cur = params.pop("run", next(iter(runs), None))
        super().__init__(**params)
        self.param.run.objects = list(runs)
        with param.discard_events(self):
            self.run = cur
        self._grid: HeadGrid | None = None
        self._grid_pane = pn.pane.Bokeh(sizing_mode="fixed")
        self._curves = pn.Column()
        self._info = pn.pane.HTML("", name="stats_info", sizing_mode="stretch_width")
        self._set_run()

    def _stats(self) -> StatsFile | None:
        return self.runs.get(self.run) if self.run else None

    @param.depends("run", watch=True)
    def _set_run(self) -> None:
        s = self._stats()
        if s is None:
            return
        opts = field_options(s)
        self.param.statistic.objects = opts
        names = series_names(s)
        self.param.series.objects = list(names)
        spans = [n for n in names if n.startswith("span ")]
        with param.discard_events(self):
            self.statistic = next(iter(opts.values()))
            # a few series by default: the spans and the sink mass (six at once tangle on long inputs)
            self.series = [*spans, MEANS["sink_mass"]] if spans else [MEANS["sink_mass"], MEANS["max_weight"]]
        f = s.meta.facts
        layer, head = self.selected
        if not (layer in s.layers and head < f.n_heads):
            with param.discard_events(self):
                self.selected = (s.layers[0] if s.layers else 0, 0)
        self._grid = HeadGrid(self._means(), self._title(), name="stats_heatmap", width=420, height=380,
                              value_name="mean")
        self.listen(self._grid.figure)
        self._grid_pane.object = self._grid.figure
        self._show_head()

    def _means(self) -> np.ndarray:
        s = self._stats()
        return head_means(s, self.statistic) if s is not None else np.full((1, 1), np.nan)

    def _title(self) -> str:
        s = self._stats()
        label = next((k for k, v in field_options(s).items() if v == self.statistic), self.statistic) if s else ""
        return f"{s.model if s else ''}: mean {label} over queries"

    @param.depends("statistic", watch=True)
    def _set_statistic(self) -> None:
        if self._grid is not None:
            self._grid.update(self._means(), self._title())

    def head_at(self, x: float, y: float) -> tuple[int, int] | None:
        return None if self._grid is None else cell_at(x, y, *self._grid.shape[::-1])

    def mark_selected(self) -> None:
        self._show_head()

    @param.depends("selected", "series", "keys", watch=True)
    def _show_head(self) -> None:
        s = self._stats()
        if s is None or self._grid is None:
            return
        layer, head = self.selected
        self._grid.mark_cell(layer, head, self.clicks)
        if layer not in s.layers:
            self._curves.objects = [pn.pane.HTML(f"<p>Layer {layer} was not recorded in this run (layers "
                                                 f"{s.layers[:12]}).</p>")]
            return
        try:
            self._curves.objects = self._head_figures(s, layer, head)
        except AttnlensError as err:
            self._curves.objects = [pn.pane.HTML(f"<p>{html.escape(str(err))}</p>")]
        st = s.settings
        spans = ", ".join(f"{a}-{b - 1}" for a, b in st["spans"]) or "none"
        self._info.object = (f"<p><b>{head_label(layer, head)}</b> · {len(s.tokens)} tokens · sink tokens "
                             f"{st['sink_tokens']}, window {st['window']}, spans {html.escape(spans)}, top-{st['topk']} "
                             f"keys, key statistics {'on' if st['key_stats'] else 'off'}</p>")

    def _head_figures(self, s: StatsFile, layer: int, head: int) -> list:
        cols = query_curves(s, layer, head)
        src = ColumnDataSource(cols)
        labels = series_names(s)
        p = figure(width=600, height=280, title=f"{head_label(layer, head)}: per-query statistics", name="stats_curves",
                   x_axis_label="query position", y_axis_label="mass / weight", tools="pan,wheel_zoom,reset,save",
                   toolbar_location="above", y_range=(0, 1.02))
        p.add_layout(Legend(label_text_font_size="8pt", click_policy="hide"), "right")
        lines = []
        p.extra_y_ranges = {"ent": Range1d(0, max(1e-3, float(np.nanmax(cols["entropy"])) * 1.05))}
        p.add_layout(LinearAxis(y_range_name="ent", axis_label="entropy (nats)"), "right")
        for i, (label, name) in enumerate(labels.items()):
            if name == "entropy":
                line = p.line("q", "entropy", source=src, y_range_name="ent", color="black", line_dash="dashed",
                              legend_label=label)
            else:
                line = p.line("q", name, source=src, color=Category10_10[i % 10], line_width=1.6, legend_label=label)
            line.visible = label in self.series
            lines.append(line)
        p.add_tools(HoverTool(renderers=lines[:1], mode="vline", tooltips=[
            ("query", "@q @token"), ("entropy", "@entropy{0.000}"), ("sink", "@sink_mass{0.000}"),
            ("window", "@window_mass{0.000}"), ("largest", "@max_weight{0.000}"), ("top keys", "@top")]))
        out = [pn.pane.Bokeh(p)]
        sink = int(s.settings.get("sink_tokens", 1) or 0)
        rec = received(s, layer, head, skip=sink if self.keys == RECEIVED[1] else 0)
        if rec is not None:
            log = self.keys == RECEIVED[2]
            what = {RECEIVED[1]: f" (keys from {sink}: the sink left out)", RECEIVED[2]: " (log scale)"}.get(self.keys, "")
            r = figure(width=560, height=220, title=f"{head_label(layer, head)}: attention each key receives{what}",
                       name="stats_received", x_axis_label="key position", y_axis_label="summed over queries",
                       tools="pan,wheel_zoom,reset,save", toolbar_location="above",
                       y_axis_type="log" if log else "linear")
            if log:  # bars from a floor below the smallest positive mass (log has no 0)
                pos = [v for v in rec["sum"] if v > 0]
                floor = min(pos) / 2 if pos else 1e-6
                rec["sum"] = [max(v, floor) for v in rec["sum"]]
                bars = r.vbar("k", bottom=floor, top="sum", width=0.8, source=ColumnDataSource(rec), color="#6baed6")
            else:
                bars = r.vbar("k", top="sum", width=0.8, source=ColumnDataSource(rec), color="#6baed6")
            r.add_tools(HoverTool(renderers=[bars], tooltips=[("key", "@k @token"), ("sum", "@sum{0.000}"),
                                                             ("mean over queries that see it", "@mean{0.0000}")]))
            out.append(pn.pane.Bokeh(r))
        else:
            out.append(pn.pane.HTML("<p>This run was made without key statistics (received mass per key).</p>"))
        return out

    def __panel__(self):
        if not self.runs:
            return pn.pane.HTML("<p>No stats runs in this folder (run <code>lens stats MODEL --prompt TEXT --out "
                                "RESULTS/stats</code>).</p>", name="Stats")
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.run, width=220),
                                pn.widgets.Select.from_param(self.param.statistic, width=240),
                                pn.widgets.RadioButtonGroup.from_param(self.param.keys, name="received by keys")),
                         pn.widgets.CheckButtonGroup.from_param(self.param.series, name="series"), self._info,
                         pn.Row(self._grid_pane, self._curves), name="Stats")
