"""The report's figures, drawn with matplotlib (Agg, no display) into PNG bytes.

Each builder takes what :mod:`formats` read and returns a :class:`Figure`: a file stem, the
PNG and an alt text; pattern thumbnails also keep the array drawn and the top of their
colour scale (``data``, ``vmax``), so tests can check what the reader sees.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

from attnlens.dashboards.compute import ColorScale, color_range, downsample
from attnlens.dashboards.graph import (
    KIND_COLORS,
    KIND_NAMES,
    MAX_EDGES_DRAWN,
    MLP_LANE,
    NEGATIVE,
    POSITIVE,
    circuit_layout,
    n_layers_of,
    node_scores,
)
from attnlens.formats import AblationResult, Circuit, Curves, NodeKind, StatsFile

THUMB_TOKENS = 96  # thumbnails pool longer patterns to this many tokens a side
ABOVE = "#c2185b"  # sink cells above a "sink column excluded" scale, as in the dashboard
CATEGORY_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf")  # Category10, as in the dashboard


@dataclass
class Figure:
    name: str  # file stem, unique in the report
    png: bytes
    alt: str
    data: np.ndarray | None = None  # the array drawn (thumbnails)
    vmax: float | None = None  # the top of its colour scale

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _new(w: float, h: float, dpi: int = 110):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(w, h), dpi=dpi)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def heatmap(scores: np.ndarray, title: str, name: str, scale: str = "sequential",
            categories: list[str] | None = None) -> Figure:
    """A layer x head map: viridis for a sequential score, a red-blue scale centred on zero for
    a signed one, one colour per category with a legend for a categorical one."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    n_layers, n_heads = scores.shape
    fig = _new(min(7.0, 2.6 + 0.16 * n_heads) + (1.2 if scale == "categorical" else 0),
               min(5.5, 1.6 + 0.14 * n_layers))
    ax = fig.add_subplot()
    data = np.ma.masked_invalid(scores)
    if scale == "categorical":
        names = list(categories or [])
        colors = [CATEGORY_COLORS[i % len(CATEGORY_COLORS)] for i in range(max(1, len(names)))]
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=ListedColormap(colors),
                       norm=BoundaryNorm(np.arange(len(colors) + 1) - 0.5, len(colors)))
        counts = [int(np.sum(scores == i)) for i in range(len(names))]
        ax.legend(handles=[Patch(color=colors[i], label=f"{n} ({counts[i]})") for i, n in enumerate(names)],
                  fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, title="category",
                  title_fontsize=7)
    elif scale == "signed":
        finite = scores[np.isfinite(scores)]
        m = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=colormaps["RdBu"], vmin=-m, vmax=m)
        fig.colorbar(im, ax=ax, fraction=0.05, label="< 0 red, 0 white, > 0 blue")
    else:
        im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.05)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title[:80], fontsize=9)
    fig.tight_layout()
    return Figure(name, _png(fig), f"{title} per layer and head")


def task_rows(pattern: np.ndarray, rows: tuple[int, int]) -> np.ndarray:
    """The query rows ``[start, end)`` of ``pattern`` a task is about, with the keys they can see
    (a causal pattern's rows see no key after ``end - 1``): ``[end - start, k]``."""
    r0, r1 = rows
    crop = np.asarray(pattern)[r0:r1]
    visible = r1 if not np.any(crop[:, r1:]) else crop.shape[1]
    return crop[:, :visible]


def pattern_thumb(pattern: np.ndarray, name: str, alt: str, rows: tuple[int, int] | None = None) -> Figure:
    """The pattern (pooled to THUMB_TOKENS) scaled to its largest weight off the sink column;
    sink cells above that are drawn in the above-scale colour, as in the dashboard. With
    ``rows`` (a capture's task rows, :attr:`formats.CaptureFile.focus`), only those query rows
    and the keys they see, each row a band of the thumbnail (a needle's answer rows on its keys,
    the IOI end position on its names), instead of the whole prompt where they are a few pixels."""
    from matplotlib import colormaps

    shown = task_rows(pattern, rows) if rows is not None else pattern
    p = downsample(shown, THUMB_TOKENS)
    mask = np.zeros(p.shape, bool)
    mask[:, 0] = True
    _, vmax = color_range(p, ColorScale.NO_SINK, mask)
    cmap = colormaps["Blues"].with_extremes(over=ABOVE)
    fig = _new(1.0, 1.0, dpi=96)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(p, cmap=cmap, interpolation="nearest", vmin=0, vmax=vmax, aspect="auto")
    ax.set_axis_off()
    return Figure(name, _png(fig), alt, data=p, vmax=vmax)


def curves(c: Curves, name: str) -> Figure:
    fig = _new(5.6, 3.2)
    ax = fig.add_subplot()
    for label, y in c.series.items():
        runs = y.reshape(-1, c.x.size)
        mean = np.nanmean(runs, axis=0)
        line, = ax.plot(c.x, mean, marker="o", markersize=3,
                        label=label if runs.shape[0] == 1 else f"{label} (mean of {runs.shape[0]}; band min-max)")
        if runs.shape[0] > 1:
            ax.fill_between(c.x, np.nanmin(runs, axis=0), np.nanmax(runs, axis=0), color=line.get_color(), alpha=0.2)
    if c.x_ticks:
        ax.set_xticks(c.x, [t[:10] for t in c.x_ticks], fontsize=7, rotation=45)
    ax.set_xlabel(c.x_label)
    ax.set_ylabel(c.y_label)
    ax.set_title(c.name[:80], fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure(name, _png(fig), f"{c.name}: {c.y_label} against {c.x_label}")


def ablation(a: AblationResult, name: str) -> Figure:
    fig = _new(5.2, 2.8)
    ax = fig.add_subplot()
    rand = np.asarray([r for r in a.random_effects if np.isfinite(r)], np.float64)
    if rand.size:
        ax.hist(rand, bins=min(20, max(4, rand.size)), color="#9ecae1", edgecolor="white",
                label=f"{rand.size} random sets of the same size")
    ax.axvline(a.effect, color="#de2d26", lw=2.5, label=f"this set: {a.effect:.4g}")
    ax.set_xlabel(f"effect on {a.metric} (ablated - baseline)")
    ax.set_ylabel("random sets")
    ax.set_title(f"{len(a.heads)} heads + {len(a.mlps)} MLPs, {a.method}-ablated", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return Figure(name, _png(fig), f"ablation effect against {rand.size} random sets")


def circuit(c: Circuit, name: str) -> Figure:
    """The circuit in the dashboard's layered layout: layer across, head index up, labelled
    nodes with their scores (the strongest 40), q/k/v on the edges, a legend."""
    from matplotlib.lines import Line2D

    pos, edges = circuit_layout(c)
    scores = node_scores(edges)
    shown = edges[:MAX_EDGES_DRAWN]
    wmax = max((abs(d.score) for d in shown), default=1.0) or 1.0
    n_layers = n_layers_of(c)
    top = max([n.head for n in pos if n.kind is NodeKind.HEAD] + [c.n_heads - 1, 0])
    fig = _new(8.0, 4.8)
    ax = fig.add_subplot()
    for d in shown:
        (x0, y0), (x1, y1) = pos[d.sender], pos[d.target]
        color = POSITIVE if d.score >= 0 else NEGATIVE
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "-|>", "lw": 0.5 + 3 * abs(d.score) / wmax, "alpha": 0.55,
                                "color": color, "shrinkA": 5, "shrinkB": 5})
        if d.letters:
            ax.text(x0 + 0.55 * (x1 - x0), y0 + 0.55 * (y1 - y0), d.letters, fontsize=6, color=color,
                    fontweight="bold")
    touched = {d.sender for d in shown} | {d.target for d in shown}
    nodes = sorted(n for n in pos if n in touched or n.kind in (NodeKind.EMBED, NodeKind.LOGITS))
    ax.scatter([pos[n][0] for n in nodes], [pos[n][1] for n in nodes], s=70 if len(nodes) <= 64 else 25,
               c=[KIND_COLORS[n.kind] for n in nodes], edgecolors="black", zorder=3)
    for n in sorted(nodes, key=lambda n: -abs(scores.get(n, 0.0)))[:40]:
        text = str(n) if n.kind in (NodeKind.EMBED, NodeKind.LOGITS) else f"{n} {scores.get(n, 0.0):+.2g}"
        ax.annotate(text, pos[n], xytext=(5, -3), textcoords="offset points", fontsize=6, zorder=4)
    step = max(1, n_layers // 12)
    ax.set_xticks([-1, *range(0, n_layers, step), n_layers],
                  ["embed", *map(str, range(0, n_layers, step)), "logits"], fontsize=7)
    hstep = max(1, (top + 1) // 12)
    ax.set_yticks([MLP_LANE, *range(0, top + 1, hstep)], ["MLP", *(f"H{h}" for h in range(0, top + 1, hstep))],
                  fontsize=7)
    ax.set_xlim(-1.6, n_layers + 0.9)
    ax.set_ylim(MLP_LANE - 0.8, top + 0.8)
    ax.set_xlabel("layer")
    handles = [Line2D([], [], marker="o", ls="", mfc=KIND_COLORS[k], mec="black", label=KIND_NAMES[k])
               for k in (NodeKind.EMBED, NodeKind.HEAD, NodeKind.MLP, NodeKind.LOGITS)]
    handles += [Line2D([], [], color=POSITIVE, lw=2.5, label="edge > 0 (helps)"),
                Line2D([], [], color=NEGATIVE, lw=2.5, label="edge < 0 (hurts)")]
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title="q/k/v on an edge:\nthe input it reaches", title_fontsize=6)
    ax.set_title(f"circuit {c.name}: {len(c.heads)} heads, {len(c.mlps)} MLPs, {len(c.edges)} edges"[:90], fontsize=9)
    fig.tight_layout()
    return Figure(name, _png(fig), f"circuit graph {c.name}")


def stats_run(s: StatsFile, name: str) -> Figure:
    """Head means of entropy, sink mass and window mass side by side."""
    fields = [("entropy", "entropy (nats)"), ("sink_mass", "sink mass"), ("window_mass", "window mass")]
    fig = _new(7.2, 2.6)
    for i, (key, label) in enumerate(fields):
        ax = fig.add_subplot(1, 3, i + 1)
        im = ax.imshow(np.ma.masked_invalid(s.head_means(key)), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("head", fontsize=7)
        if i == 0:
            ax.set_ylabel("layer", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return Figure(name, _png(fig), f"stats run {s.name}: per-head means")
