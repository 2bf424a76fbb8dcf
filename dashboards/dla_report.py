"""The report's direct logit attribution section: per ``lens heads dla`` result and target asked
for, the layer x head heatmap of the heads' direct shares of the logit, what MLPs, embeddings
and biases add, and the largest parts (read from result files only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlens.dashboards import figures as figs
from attnlens.dashboards.compute import token_label
from attnlens.formats import ResultsFolder
from attnlens.formats.dla import REST, REST_LABELS, DLAResult

MAX_RESULTS = 12
MAX_TARGETS = 3


def dla_figure(res: DLAResult, position: int, j: int, name: str) -> figs.Figure:
    i = res.positions.index(position)
    g = res.heads[i, j].astype(np.float64)
    lim = max(1e-9, float(np.nanmax(np.abs(g))) if np.isfinite(g).any() else 1.0)
    n_l, n_h = g.shape
    fig = figs._new(min(7.0, 2.2 + 0.35 * n_h), min(7.0, 1.4 + 0.22 * n_l))
    ax = fig.add_subplot()
    im = ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.set_title(f"direct logit attribution to {res.targets[j]!r} at position {position}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, label="logit")
    fig.tight_layout()
    return figs.Figure(name, figs._png(fig), f"direct logit attribution per head to {res.targets[j]!r}")


def dla_sections(folder: ResultsFolder) -> list[dict[str, Any]]:
    """One dict per result and target asked for (the first target when none was; at most
    :data:`MAX_RESULTS` results, :data:`MAX_TARGETS` targets each), at the result's first position."""
    out = []
    for label, res in list(folder.dla.items())[:MAX_RESULTS]:
        p = res.positions[0]
        for j in range(min(MAX_TARGETS, max(1, res.n_given))):
            i = 0
            g = res.heads[i, j].astype(np.float64)
            parts = {"heads": float(g.sum()), "MLPs": float(res.mlps[i, j].astype(np.float64).sum())}
            parts.update({REST_LABELS[k]: float(getattr(res, k)[i, j]) for k in REST})
            out.append({
                "label": label, "target": res.targets[j], "target_label": repr(token_label(res.targets[j])), "model": res.provenance.model,
                "headline": (f"logit of {res.targets[j]!r} at position {p} {token_label(res.tokens[p])!r}: "
                             f"{float(res.logits[i, j]):+.4f}, parts sum to {float(res.totals()[i, j]):+.4f}"),
                "parts": [(k, f"{v:+.4f}") for k, v in parts.items()],
                "top": [(k, f"{v:+.4f}") for k, v in res.top(10, p, j)],
                "linearisation": res.linearisation,
                "figure": dla_figure(res, p, j, f"dla_{figs.slug(label)}_{j}"),
            })
    return out
