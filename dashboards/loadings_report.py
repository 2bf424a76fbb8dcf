"""The report's QK head loadings section: per ``lens heads loadings`` result, the query-side and key-side
``layer x head`` maps (the target head outlined) and the top earlier heads of each side (read from result
files only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlens.dashboards import figures as figs
from attnlens.dashboards.loadings import SIDES, loadings_limit
from attnlens.formats import ResultsFolder
from attnlens.formats.loadings import HeadLoadings

MAX_RESULTS = 12


def loadings_figure(res: HeadLoadings, name: str) -> figs.Figure:
    from matplotlib.patches import Rectangle

    n_layers, n_heads = res.query.shape
    lim = loadings_limit(res)
    fig = figs._new(min(11.0, 3.4 + 0.5 * n_heads), min(8.0, 2.2 + 0.22 * n_layers))
    fig.set_layout_engine("constrained")  # room for the axis labels and the colour bar's ticks
    axes = fig.subplots(1, 2, sharey=True)
    for ax, side in zip(axes, SIDES):
        g = np.ma.masked_invalid(res.query if side == "query" else res.key)
        im = ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.add_patch(Rectangle((res.head - 0.5, res.layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        ax.set_title(f"{side} side of L{res.layer}H{res.head}", fontsize=9)
        ax.set_xlabel("head", fontsize=8)
        ax.set_xticks(range(0, n_heads, max(1, n_heads // 12)))
        ax.set_yticks(range(0, n_layers, max(1, n_layers // 16)))
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("layer", fontsize=8)
    fig.colorbar(im, ax=list(axes), fraction=0.04).ax.tick_params(labelsize=7)
    return figs.Figure(name, figs._png(fig), f"QK head loadings of L{res.layer}H{res.head}: query side and key side "
                                             "per earlier head, the target outlined")


def loadings_sections(folder: ResultsFolder) -> list[dict[str, Any]]:
    """One dict per head loadings result (at most :data:`MAX_RESULTS`): label, headline, top heads, figure."""
    out = []
    for label, res in list(folder.loadings.items())[:MAX_RESULTS]:
        q, k = res.top("query", 5), res.top("key", 5)
        out.append({
            "label": label, "model": res.provenance.model,
            "headline": (f"L{res.layer}H{res.head} over {res.n_prompts} prompts ({res.key_rule}): strongest query "
                         f"side {q[0][0]} {q[0][1]:+.4f}, key side {k[0][0]} {k[0][1]:+.4f}" if q else
                         f"L{res.layer}H{res.head} over {res.n_prompts} prompts"),
            "rows": [(qn, f"{qv:+.4f}", kn, f"{kv:+.4f}") for (qn, qv), (kn, kv) in zip(q, k)],
            "figure": loadings_figure(res, f"loadings_{figs.slug(label)}"),
        })
    return out
