"""Circuit graphs people can read: a layered layout (:func:`dashboards.graph.circuit_layout`:
the layer across, the head index up), labelled nodes with their scores, one arrow per
sender and node with the inputs it reaches (q, k, v) written on it, colour legends for
nodes and edges, an edge-score threshold, a side table of heads sorted by ``|score|``, a
one-line warning when the circuit is not faithful, and a click on a head selecting it in
the other views.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import Arrow, ColumnDataSource, HoverTool, LabelSet, Legend, LegendItem, VeeHead
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import on_click
from attnlens.dashboards.graph import (
    KIND_COLORS,
    KIND_NAMES,
    MAX_EDGES_DRAWN,
    MLP_LANE,
    NEGATIVE,
    POSITIVE,
    DrawnEdge,
    circuit_layout,
    curves_of,
    drawn_edges,
    head_table,
    n_layers_of,
    node_scores,
)
from attnlens.formats import Circuit, Curves, NodeKind, faithfulness_warning

MAX_LABELS = 40  # at most this many nodes are labelled (the strongest); hover names the rest
MLP_LABEL_ROOM = 0.3  # share of the height below the MLP lane, for its labels running down


def circuit_figure(circuit: Circuit, width: int = 1180, height: int = 620, min_score: float = 0.0,
                   edges: list[DrawnEdge] | None = None, stretch: bool = False):
    """The circuit's graph, edges with ``|score| >= min_score`` (the strongest
    :data:`MAX_EDGES_DRAWN`); nodes that no drawn edge touches are left out (the embeddings
    and logits stay). ``stretch``: as wide as its container (``width`` otherwise)."""
    every = drawn_edges(circuit) if edges is None else edges
    shown = [d for d in every if abs(d.score) >= min_score][:MAX_EDGES_DRAWN]
    pos, _ = circuit_layout(circuit, every)
    scores = node_scores(every)
    wmax = max((abs(d.score) for d in shown), default=1.0) or 1.0
    seg = {k: [] for k in ("x0", "y0", "x1", "y1", "xm", "ym", "w", "label", "color", "letters")}
    for d in shown:
        (x0, y0), (x1, y1) = pos[d.sender], pos[d.target]
        seg["x0"].append(x0), seg["y0"].append(y0), seg["x1"].append(x1), seg["y1"].append(y1)
        seg["xm"].append(x0 + 0.55 * (x1 - x0)), seg["ym"].append(y0 + 0.55 * (y1 - y0))
        seg["w"].append(0.8 + 5 * abs(d.score) / wmax)
        seg["label"].append(d.describe())
        seg["color"].append(POSITIVE if d.score >= 0 else NEGATIVE)
        seg["letters"].append(d.letters)
    touched = {d.sender for d in shown} | {d.target for d in shown}
    ordered = sorted(n for n in pos if n in touched or n.kind in (NodeKind.EMBED, NodeKind.LOGITS))
    n_layers = n_layers_of(circuit)
    top_heads = max([n.head for n in pos if n.kind is NodeKind.HEAD] + [circuit.n_heads - 1, 0])
    p = figure(width=width, height=height, tools="pan,wheel_zoom,reset,save", toolbar_location="above",
               sizing_mode="stretch_width" if stretch else "fixed", min_width=480,
               title=f"circuit {circuit.name}: {len(circuit.heads)} heads, {len(circuit.mlps)} MLPs, "
                     f"{len(circuit.edges)} edges ({circuit.method or 'method not recorded'}); "
                     f"{len(shown)} drawn with |score| >= {min_score:.3g}",
               x_axis_label="layer (embeddings left, logits right)", y_axis_label="head",
               x_range=(-1.6, n_layers + 1.8), y_range=(MLP_LANE - 0.6 - MLP_LABEL_ROOM * (top_heads + 3), top_heads + 0.8),
               name="circuit_graph")
    src = ColumnDataSource(seg)
    p.segment("x0", "y0", "x1", "y1", source=src, line_width="w", line_color="color", alpha=0.3)
    p.add_layout(Arrow(end=VeeHead(size=9, fill_color="#555", line_color="#555"), x_start="x0", y_start="y0",
                       x_end="x1", y_end="y1", source=src, line_width="w", line_color="color", line_alpha=0.6))
    # one hover point per edge (its letter's place), not the whole line: crossing lines stack no tooltips
    mid = p.scatter("xm", "ym", source=src, size=9, fill_alpha=0.0, line_alpha=0.0)
    p.add_tools(HoverTool(renderers=[mid], tooltips=[("edge", "@label")], name="edge_hover"))
    p.add_layout(LabelSet(x="xm", y="ym", text="letters", source=src, text_font_size="9pt", text_color="color",
                          text_font_style="bold", x_offset=2, y_offset=2, name="edge_letters"))
    nodes = ColumnDataSource({
        "x": [pos[n][0] for n in ordered], "y": [pos[n][1] for n in ordered], "id": [str(n) for n in ordered],
        "layer": [n.layer for n in ordered], "head": [n.head for n in ordered],
        "color": [KIND_COLORS[n.kind] for n in ordered], "kind": [KIND_NAMES[n.kind] for n in ordered],
        "score": [f"{scores.get(n, 0.0):+.3g}" for n in ordered],
        "text": [_node_text(n, scores) for n in ordered]}, name="circuit_nodes")
    nr = p.scatter("x", "y", source=nodes, size=14 if len(ordered) <= 64 else 10, color="color", line_color="black")
    p.add_tools(HoverTool(renderers=[nr], tooltips=[("node", "@id"), ("kind", "@kind"),
                                                    ("summed out-edge score", "@score")], name="node_hover"))
    strongest = sorted(range(len(ordered)), key=lambda i: -abs(scores.get(ordered[i], 0.0)))[:MAX_LABELS]
    keep = sorted(strongest)
    # MLPs share one lane, a layer apart: their labels run down from the lane, not across each other
    angle = [-np.pi / 2 if ordered[i].kind is NodeKind.MLP else 0.0 for i in keep]
    labels = ColumnDataSource({**{k: [nodes.data[k][i] for i in keep] for k in ("x", "y", "text")}, "angle": angle,
                               "dx": [-4 if a else 8 for a in angle], "dy": [-10 if a else -4 for a in angle]})
    p.add_layout(LabelSet(x="x", y="y", text="text", source=labels, x_offset="dx", y_offset="dy", angle="angle",
                          text_font_size="8pt", name="node_labels"))
    # legend swatches: one point (or segment) off the data (NaN), so the legend has a row to draw
    nan = [float("nan")]
    items = [LegendItem(label=KIND_NAMES[k], renderers=[p.scatter(nan, nan, size=10, color=KIND_COLORS[k],
                                                                  line_color="black")])
             for k in (NodeKind.EMBED, NodeKind.HEAD, NodeKind.MLP, NodeKind.LOGITS)]
    items += [LegendItem(label=text, renderers=[p.line(nan * 2, nan * 2, line_width=4, line_color=c)])
              for text, c in (("edge score > 0 (helps)", POSITIVE), ("edge score < 0 (hurts)", NEGATIVE))]
    items.append(LegendItem(label="q k v on an edge: the input(s)", renderers=[p.line(nan * 2, nan * 2, line_alpha=0)]))
    items.append(LegendItem(label="  of the head it reaches", renderers=[p.line(nan * 2, nan * 2, line_alpha=0)]))
    p.add_layout(Legend(items=items, title="nodes and edges", label_text_font_size="8pt", title_text_font_size="8pt",
                        name="circuit_legend"), "right")
    step = max(1, n_layers // 16)
    p.xaxis.ticker = [-1, *range(0, n_layers, step), n_layers]
    p.xaxis.major_label_overrides = {-1: "embed", n_layers: "logits"}
    hstep = max(1, (top_heads + 1) // 16)
    p.yaxis.ticker = [MLP_LANE, *range(0, top_heads + 1, hstep)]
    p.yaxis.major_label_overrides = {MLP_LANE: "MLP", **{h: f"H{h}" for h in range(0, top_heads + 1, hstep)}}
    p.xgrid.ticker = list(range(0, n_layers))
    p.ygrid.visible = False
    return p


def _node_text(n, scores) -> str:
    if n.kind in (NodeKind.EMBED, NodeKind.LOGITS):
        return str(n)
    return f"{n} {scores.get(n, 0.0):+.2g}"


def heads_table_html(circuit: Circuit, edges: list[DrawnEdge] | None = None, limit: int = 40) -> str:
    """The circuit's heads and MLPs sorted by ``|summed out-edge score|`` (a strong negative
    head ranks as high as a strong positive one)."""
    rows = head_table(circuit, edges)
    body = "".join(f"<tr><td>{i + 1}</td><td><b>{html.escape(str(n))}</b></td>"
                   f"<td style='text-align:right;color:{POSITIVE if s >= 0 else NEGATIVE}'>{s:+.4g}</td>"
                   f"<td style='text-align:right'>{a}</td><td style='text-align:right'>{b}</td></tr>"
                   for i, (n, s, a, b) in enumerate(rows[:limit]))
    more = f"<p>… {len(rows) - limit} more</p>" if len(rows) > limit else ""
    return ("<table class='circuit-heads'><tr><th>#</th><th>node</th><th>score</th><th>in</th><th>out</th></tr>"
            f"{body}</table>{more}<p style='font-size:85%'>score: the summed score of the edges the node sends "
            "(sorted by |score|); in/out: edges drawn.</p>")


def faithfulness_html(circuit: Circuit) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td style='text-align:right'>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in circuit.faithfulness.items())
    details = []
    for k, v in circuit.details.items():
        if isinstance(v, (int, float, str, bool)):
            details.append(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))[:200]}</td></tr>")
        elif isinstance(v, dict):
            inner = ", ".join(f"{html.escape(str(a))} {html.escape(_fmt(b))[:60]}" for a, b in list(v.items())[:8])
            details.append(f"<tr><td>{html.escape(str(k))}</td><td>{inner}</td></tr>")
        elif isinstance(v, list):
            details.append(f"<tr><td>{html.escape(str(k))}</td><td>{len(v)} values</td></tr>")
    desc = html.escape(circuit.description or f"task {circuit.task}, metric {circuit.metric}")
    return (f"<p>{desc}</p><table><tr><th colspan=2>faithfulness</th></tr>{rows}</table>"
            + (f"<table><tr><th colspan=2>details</th></tr>{''.join(details)}</table>" if details else ""))


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in list(v.items())[:6])
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


class CircuitView(pn.viewable.Viewer):
    """One circuit of the folder: its graph (edges above ``min_score``), the heads by
    ``|score|``, a warning when it is not faithful, and its faithfulness and settings. A click
    on a head node sets ``selected`` ``(layer, head)``."""

    circuit = param.Selector(objects=[], doc="Circuit (its label in the folder)")
    min_score = param.Number(default=0.0, bounds=(0, None), doc="Edges drawn: |score| at least this")
    selected = param.Tuple(default=(0, 0), length=2, doc="(layer, head) of the last head node clicked")
    clicks = param.Integer(default=0)

    def __init__(self, circuits: dict[str, Circuit], curves: dict[str, Curves] | None = None, **params):
        self.circuits = circuits
        self.curves = curves or {}
        cur = params.pop("circuit", next(iter(circuits), None))
        super().__init__(**params)
        self.param.circuit.objects = list(circuits)
        self._slider = pn.widgets.FloatSlider(label="edges drawn: |score| at least", start=0.0, end=1.0, step=0.01,
                                              value=0.0, width=360)
        self._slider.param.watch(lambda e: setattr(self, "min_score", float(e.new)), "value_throttled")
        self._fig = None
        with param.discard_events(self):
            self.circuit = cur
        self._on_circuit()

    def _current(self) -> Circuit | None:
        return self.circuits.get(self.circuit) if self.circuit else None

    @param.depends("circuit", watch=True)
    def _on_circuit(self) -> None:
        c = self._current()
        edges = drawn_edges(c) if c is not None else []
        self._edges = edges
        top = max((abs(d.score) for d in edges), default=0.0)
        with param.discard_events(self):
            self.min_score = 0.0
        self._slider.param.update(start=0.0, end=float(top) if top > 0 else 1.0, step=(float(top) or 1.0) / 200,
                                  value=0.0)

    def head_result(self, labels: list[str]) -> str | None:
        """Of ``labels``, the head scores written with the shown circuit (same folder,
        ``circuit.NAME_METRIC``), whose example capture is the task's prompts; None if absent."""
        c = self._current()
        if c is None:
            return None
        folder = self.circuit.rsplit("/", 1)[0] + "/" if "/" in self.circuit else ""
        want = f"{folder}circuit.{c.name}_{c.metric}"
        return want if want in labels else None

    def warning(self) -> str:
        """The circuit's faithfulness warning ("" when faithful or not measured)."""
        c = self._current()
        return "" if c is None else faithfulness_warning(c, curves_of(self.circuit, self.curves))

    def figure(self):
        c = self._current()
        if c is None:
            return None
        self._fig = circuit_figure(c, min_score=self.min_score, edges=self._edges, stretch=True)
        on_click(self._fig, self._on_click)
        return self._fig

    def _on_click(self, x: float, y: float) -> None:
        c = self._current()
        if c is None:
            return
        pos, _ = circuit_layout(c, self._edges)
        heads = [(n, xy) for n, xy in pos.items() if n.kind is NodeKind.HEAD]
        if not heads:
            return
        n, (hx, hy) = min(heads, key=lambda t: (t[1][0] - x) ** 2 + (t[1][1] - y) ** 2)
        if (hx - x) ** 2 + (hy - y) ** 2 > 0.5 ** 2:
            return  # not on a head
        self.selected = (n.layer, n.head)
        self.clicks += 1  # last: watchers of clicks read the head selected

    @param.depends("circuit", "min_score")
    def plot(self):
        c = self._current()
        if c is None:
            return pn.pane.HTML("<p>No circuits (<code>*.circuit.json</code>, written by <code>lens circuit</code>) "
                                "in this folder.</p>")
        warn = self.warning()
        banner = pn.pane.HTML(f"<p style='color:#8a4b00;background:#fff4e0;padding:4px 8px;margin:2px 0'>"
                              f"⚠ {html.escape(warn)}</p>" if warn else "", name="circuit_warning",
                              sizing_mode="stretch_width")
        side = pn.pane.HTML(f"<h4 style='margin:4px 0'>heads and MLPs by |score|</h4>"
                            f"{heads_table_html(c, self._edges)}", name="circuit_heads", width=300)
        return pn.Column(banner, pn.Row(pn.pane.Bokeh(self.figure(), sizing_mode="stretch_width", min_width=480), side,
                                        sizing_mode="stretch_width"),
                         pn.pane.HTML("<p>Click a head to select it (the Heads tab shows its pattern).</p>"),
                         pn.pane.HTML(faithfulness_html(c), name="circuit_info"))

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.circuit, width=300), self._slider),
                         pn.param.ParamMethod(self.plot, lazy=True, sizing_mode="stretch_width"), name="Circuits",
                         sizing_mode="stretch_width")
