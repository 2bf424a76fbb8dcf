"""Ablation sweeps (curves, and per-head effect heatmaps) and circuit graphs."""

from __future__ import annotations

import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, LabelSet
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from dashboards._bokeh import head_heatmap
from dashboards.data import Circuit, ResultsFolder, Sweep

ABLATION_ANALYSES = ("ablation", "ablate", "patching", "circuit")


def sweep_figure(sweep: Sweep, width: int = 560, height: int = 340):
    p = figure(width=width, height=height, title=sweep.result, x_axis_label=sweep.x_label, tools="pan,reset,save",
               toolbar_location="above", name="sweep_plot")
    i = 0
    for yname, ys in sweep.ys.items():
        for j, y in enumerate(ys):
            label = sweep.labels[j] if j < len(sweep.labels) and len(sweep.ys) == 1 else (
                yname if ys.shape[0] == 1 else f"{yname}[{j}]")
            p.line(sweep.x, y, color=Category10_10[i % 10], line_width=2, legend_label=label)
            p.scatter(sweep.x, y, color=Category10_10[i % 10], size=5)
            i += 1
    p.legend.location = "top_right"
    p.legend.label_text_font_size = "9pt"
    return p


def circuit_figure(circuit: Circuit, width: int = 640, height: int = 460):
    """Nodes at (layer, head); edges as segments whose width follows |weight|."""
    pos = circuit.layout()
    wmax = max((abs(e["weight"]) for e in circuit.edges), default=1.0) or 1.0
    seg = {"x0": [], "y0": [], "x1": [], "y1": [], "w": [], "label": [], "color": []}
    for e in circuit.edges:
        (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
        seg["x0"].append(x0), seg["y0"].append(y0), seg["x1"].append(x1), seg["y1"].append(y1)
        seg["w"].append(1 + 5 * abs(e["weight"]) / wmax)
        seg["label"].append(f"{e['source']} → {e['target']}: {e['weight']:.3g}")
        seg["color"].append("#3182bd" if e["weight"] >= 0 else "#de2d26")
    p = figure(width=width, height=height, title=f"circuit: {circuit.name}", tools="pan,wheel_zoom,reset,save",
               toolbar_location="above", x_axis_label="layer", y_axis_label="head", name="circuit_graph")
    r = p.segment("x0", "y0", "x1", "y1", source=ColumnDataSource(seg), line_width="w", line_color="color", alpha=0.6)
    p.add_tools(HoverTool(renderers=[r], tooltips=[("edge", "@label")], line_policy="interp"))
    nodes = ColumnDataSource({"x": [pos[n["id"]][0] for n in circuit.nodes], "y": [pos[n["id"]][1] for n in circuit.nodes],
                              "id": [n["id"] for n in circuit.nodes]})
    p.scatter("x", "y", source=nodes, size=14, color="#fdae6b", line_color="black")
    p.add_layout(LabelSet(x="x", y="y", text="id", source=nodes, x_offset=8, y_offset=4, text_font_size="8pt"))
    p.y_range.flipped = True
    return p


class SweepsView(pn.viewable.Viewer):
    """Every sweep curve in the folder, heatmaps of ablation-type results, and the circuits."""

    circuit = param.Selector(objects=[])

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        names = [c.name for c in folder.circuits]
        cur = params.pop("circuit", names[0] if names else None)
        super().__init__(**params)
        self.param.circuit.objects = names
        with param.discard_events(self):
            self.circuit = cur

    def sweep_plots(self) -> list:
        return [sweep_figure(s) for s in self.folder.sweeps]

    def ablation_heatmaps(self) -> list:
        return [head_heatmap(r.scores, r.name, width=420, height=360, tap=False)[0]
                for r in self.folder.results if r.analysis in ABLATION_ANALYSES]

    @param.depends("circuit")
    def circuit_plot(self):
        c = next((c for c in self.folder.circuits if c.name == self.circuit), None)
        if c is None:
            return pn.pane.Markdown("No circuit files (`*.circuit.json`) in this folder.")
        return pn.pane.Bokeh(circuit_figure(c))

    def __panel__(self):
        sweeps = self.sweep_plots()
        heat = self.ablation_heatmaps()
        parts = [pn.pane.Markdown("### Ablation sweeps")]
        parts += [pn.GridBox(*[pn.pane.Bokeh(f) for f in sweeps + heat], ncols=2)] if sweeps or heat else [
            pn.pane.Markdown("No ablation results or sweep curves in this folder (run `lens ablate`).")]
        parts += [pn.pane.Markdown("### Circuits"), pn.widgets.Select.from_param(self.param.circuit, width=200),
                  pn.param.ParamMethod(self.circuit_plot, lazy=True)]
        return pn.Column(*parts, name="Ablations & circuits")
