"""Circuit graphs: typed nodes in layers (:func:`dashboards.graph.circuit_layout`), arrows from
sender to receiver, edge weight as width, hover on nodes and edges. Labels are printed when
there are few nodes; with many, hover names them.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import Arrow, ColumnDataSource, HoverTool, LabelSet, VeeHead
from bokeh.plotting import figure

from dashboards.graph import KIND_COLORS, MAX_EDGES_DRAWN, circuit_layout
from formats import Circuit

MAX_LABELS = 40  # above this many nodes, names are on hover only


def circuit_figure(circuit: Circuit, width: int = 860, height: int = 520):
    pos, edges = circuit_layout(circuit)
    edges = sorted(edges, key=lambda e: -abs(e[2]))[:MAX_EDGES_DRAWN]
    wmax = max((abs(s) for _, _, s, _ in edges), default=1.0) or 1.0
    seg = {"x0": [], "y0": [], "x1": [], "y1": [], "w": [], "label": [], "color": []}
    for sender, target, score, receiver in edges:
        (x0, y0), (x1, y1) = pos[sender], pos[target]
        seg["x0"].append(x0), seg["y0"].append(y0), seg["x1"].append(x1), seg["y1"].append(y1)
        seg["w"].append(0.8 + 5 * abs(score) / wmax)
        seg["label"].append(f"{sender} → {receiver}: {score:.4g}")
        seg["color"].append("#3182bd" if score >= 0 else "#de2d26")
    n_layers = max((x for x, _ in pos.values()), default=1)
    p = figure(width=width, height=height, tools="pan,wheel_zoom,reset,save", toolbar_location="above",
               title=f"circuit {circuit.name}: {len(circuit.heads)} heads, {len(circuit.mlps)} MLPs, "
                     f"{len(circuit.edges)} edges ({circuit.method or 'method not recorded'})",
               x_axis_label="layer (embeddings left, logits right)", y_axis_label="", name="circuit_graph")
    src = ColumnDataSource(seg)
    r = p.segment("x0", "y0", "x1", "y1", source=src, line_width="w", line_color="color", alpha=0.25)
    p.add_layout(Arrow(end=VeeHead(size=9, fill_color="#555", line_color="#555"), x_start="x0", y_start="y0",
                       x_end="x1", y_end="y1", source=src, line_width="w", line_color="color", line_alpha=0.6))
    p.add_tools(HoverTool(renderers=[r], tooltips=[("edge", "@label")], line_policy="interp"))
    ordered = sorted(pos)
    nodes = ColumnDataSource({"x": [pos[n][0] for n in ordered], "y": [pos[n][1] for n in ordered],
                              "id": [str(n) for n in ordered], "color": [KIND_COLORS[n.kind] for n in ordered],
                              "kind": [n.kind.value for n in ordered]})
    nr = p.scatter("x", "y", source=nodes, size=13 if len(ordered) <= 64 else 9, color="color", line_color="black")
    p.add_tools(HoverTool(renderers=[nr], tooltips=[("node", "@id"), ("kind", "@kind")]))
    if len(ordered) <= MAX_LABELS:
        p.add_layout(LabelSet(x="x", y="y", text="id", source=nodes, x_offset=7, y_offset=4, text_font_size="8pt"))
    ticks = list(range(0, int(n_layers), max(1, int(n_layers) // 16)))
    p.xaxis.ticker = [-1, *ticks, int(n_layers)]
    p.xaxis.major_label_overrides = {-1: "embed", int(n_layers): "logits"}
    p.yaxis.visible = False
    p.ygrid.visible = False
    return p


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
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


class CircuitView(pn.viewable.Viewer):
    """One circuit of the folder: its graph, faithfulness and settings."""

    circuit = param.Selector(objects=[], doc="Circuit (its label in the folder)")

    def __init__(self, circuits: dict[str, Circuit], **params):
        self.circuits = circuits
        cur = params.pop("circuit", next(iter(circuits), None))
        super().__init__(**params)
        self.param.circuit.objects = list(circuits)
        with param.discard_events(self):
            self.circuit = cur

    @param.depends("circuit")
    def plot(self):
        c = self.circuits.get(self.circuit) if self.circuit else None
        if c is None:
            return pn.pane.HTML("<p>No circuits (<code>*.circuit.json</code>, written by <code>lens circuit</code>) "
                                "in this folder.</p>")
        return pn.Column(pn.pane.Bokeh(circuit_figure(c)), pn.pane.HTML(faithfulness_html(c), name="circuit_info"))

    def __panel__(self):
        return pn.Column(pn.widgets.Select.from_param(self.param.circuit, width=300),
                         pn.param.ParamMethod(self.plot, lazy=True), name="Circuits")
