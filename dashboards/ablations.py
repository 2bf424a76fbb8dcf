"""Ablations: curves (layer sweeps, accuracy against heads ablated) with their labelled axes
and the spread over seeds, single ablations against the histogram of random sets of the
same size, per-head ablation heatmaps, and sweeps still running."""

from __future__ import annotations

import html

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool, Legend, Span
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from attnlens.dashboards._bokeh import HeadGrid
from attnlens.dashboards.report import curves_caption
from attnlens.formats import AblationResult, Curves, HeadScores, ResultsFolder

ABLATION_ANALYSES = ("ablation", "circuit")


def curves_figure(c: Curves, width: int = 520, height: int = 380, name: str = "curves_plot"):
    """Each series' mean line; a series with several runs also gets a band from the lowest to
    the highest run and a thin line per run (the spread over seeds)."""
    p = figure(width=width, height=height, title=c.name, x_axis_label=c.x_label, y_axis_label=c.y_label,
               tools="pan,wheel_zoom,reset,save", toolbar_location="above", name=name)
    p.add_layout(Legend(label_text_font_size="8pt", click_policy="hide"), "below")  # beside the data, not on it
    for i, (label, y) in enumerate(c.series.items()):
        color = Category10_10[i % 10]
        runs = y.reshape(-1, c.x.size)
        mean = np.nanmean(runs, axis=0)
        legend = label if runs.shape[0] == 1 else f"{label} (mean of {runs.shape[0]} runs, band: min-max)"
        if runs.shape[0] > 1:
            p.varea(c.x, np.nanmin(runs, axis=0), np.nanmax(runs, axis=0), fill_color=color, fill_alpha=0.18)
            for run in runs:
                p.line(c.x, run, color=color, line_width=0.7, alpha=0.35)
        src = ColumnDataSource({"x": c.x, "y": mean, "series": [label] * c.x.size,
                                "tick": c.x_ticks or [f"{v:g}" for v in c.x]})
        r = p.line("x", "y", source=src, color=color, line_width=2, legend_label=legend)
        p.scatter("x", "y", source=src, color=color, size=5)
        p.add_tools(HoverTool(renderers=[r], tooltips=[("series", "@series"), (c.x_label, "@tick"),
                                                       (c.y_label, "@y{0.0000}")], mode="vline"))
    if c.x_ticks:
        p.xaxis.ticker = c.x.tolist()
        p.xaxis.major_label_overrides = {float(x): t[:12] for x, t in zip(c.x, c.x_ticks)}
    return p


def ablation_figure(a: AblationResult, width: int = 520, height: int = 340):
    """The set's effect (red line) against the histogram of the effects of random sets of the same size."""
    rand = np.asarray([r for r in a.random_effects if np.isfinite(r)], np.float64)
    p = figure(width=width, height=height, tools="reset,save", toolbar_location="above", name="ablation_plot",
               title=f"{len(a.heads)} heads + {len(a.mlps)} MLPs, {a.method}-ablated: effect on {a.metric}",
               x_axis_label=f"effect on {a.metric} (ablated - baseline)", y_axis_label="random sets")
    p.add_layout(Legend(label_text_font_size="8pt"), "below")
    if rand.size:
        lo, hi = min(rand.min(), a.effect), max(rand.max(), a.effect)
        pad = 0.05 * (hi - lo or 1.0)
        edges = np.linspace(lo - pad, hi + pad, min(20, max(4, rand.size)) + 1)
        counts, _ = np.histogram(rand, bins=edges)
        p.quad(left=edges[:-1], right=edges[1:], bottom=0, top=counts, fill_color="#9ecae1", line_color="white",
               legend_label=f"{rand.size} random sets of the same size")
        p.scatter(rand, np.zeros_like(rand), marker="dash", size=14, angle=np.pi / 2, color="#3182bd")
    p.add_layout(Span(location=a.effect, dimension="height", line_color="#de2d26", line_width=3))
    p.scatter([a.effect], [0], color="#de2d26", size=9, legend_label=f"this set: {a.effect:.4g}")
    return p


def ablation_html(a: AblationResult) -> str:
    share = a.share_of_random_with_larger_drop
    heads = ", ".join(f"L{la}H{h}" for la, h in a.heads[:24]) + (f" … ({len(a.heads)} in all)" if len(a.heads) > 24 else "")
    return (f"<p>task <code>{html.escape(a.task)}</code>, {a.n_examples} examples: {html.escape(a.metric)} "
            f"{a.baseline:.4g} → {a.ablated:.4g} (effect {a.effect:.4g}); "
            + (f"{share:.0%} of {len(a.random_effects)} random sets drop it at least as much" if np.isfinite(share)
               else "no random sets compared") + f".<br>heads: {html.escape(heads) or 'none'}"
            + (f"; MLPs: {', '.join(map(str, a.mlps))}" if a.mlps else "") + "</p>")


def ablation_heatmap(r: HeadScores, label: str):
    return HeadGrid(r.scores, label, width=400, height=340, name="ablation_heatmap", value_name=r.metric,
                    scale=r.scale, categories=r.categories).figure


def sweep_status_html(folder: ResultsFolder) -> str:
    if not folder.sweeps:
        return ""
    rows = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(str(v.get('status')))}, "
                   f"{int(v.get('done', 0))} items done</li>" for k, v in folder.sweeps.items())
    return f"<p><b>Sweeps not finished</b> (rerun the same command to resume):</p><ul>{rows}</ul>"


class AblationsView(pn.viewable.Viewer):
    """Every curve, ablation and per-head ablation result of the folder (all models)."""

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        super().__init__(**params)

    def curve_figures(self) -> list:
        """One figure per curves file, named ``curves_plot_0``, ``_1``, ... in the folder's order
        (Bokeh finds a model by a name only when it is unique)."""
        return [curves_figure(c, name=f"curves_plot_{i}") for i, c in enumerate(self.folder.curves.values())]

    def ablation_figures(self) -> list:
        return [ablation_figure(a) for a in self.folder.ablations.values()]

    def heatmaps(self) -> list:
        return [ablation_heatmap(r, label) for label, r in self.folder.results.items()
                if r.analysis in ABLATION_ANALYSES]

    def __panel__(self):
        f = self.folder
        parts = []
        status = sweep_status_html(f)
        if status:
            parts.append(pn.pane.HTML(status, name="sweep_status"))
        if f.curves:
            parts.append(pn.pane.HTML("<h3>Curves</h3>"))
            cards = []
            for (label, c), fig in zip(f.curves.items(), self.curve_figures()):
                desc = html.escape(curves_caption(c))
                cards.append(pn.Column(pn.pane.Bokeh(fig), pn.pane.HTML(f"<p><code>{html.escape(label)}</code> {desc}</p>",
                                                                         width=520)))
            parts.append(pn.GridBox(*cards, ncols=2))
        if f.ablations:
            parts.append(pn.pane.HTML("<h3>Ablations against random sets</h3>"))
            parts.append(pn.GridBox(*[pn.Column(pn.pane.Bokeh(fig), pn.pane.HTML(ablation_html(a), width=520))
                                      for a, fig in zip(f.ablations.values(), self.ablation_figures())], ncols=2))
        heat = self.heatmaps()
        if heat:
            parts.append(pn.pane.HTML("<h3>Per-head ablation and attribution scores</h3>"))
            parts.append(pn.GridBox(*[pn.pane.Bokeh(h) for h in heat], ncols=2))
        if not parts:
            parts.append(pn.pane.HTML("<p>No ablation results, curves or sweeps in this folder (run <code>lens ablate"
                                      "</code> or <code>lens circuit</code>).</p>"))
        return pn.Column(*parts, name="Ablations")
