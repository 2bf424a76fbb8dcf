"""The report's QK attribution section: per ``lens heads qk`` result, the query-side x key-side
heatmap of its explained key and the top terms (read from result files only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlens.dashboards import figures as figs
from attnlens.dashboards.compute import token_label
from attnlens.dashboards.qk import qk_table
from attnlens.formats import ResultsFolder
from attnlens.formats.qk import QKResult

MAX_RESULTS = 12


def qk_figure(res: QKResult, name: str, n: int = 10) -> figs.Figure:
    rows, cols, m = qk_table(res, res.key_pos, n)
    lim = max(1e-9, float(np.abs(m).max()))
    fig = figs._new(min(8.0, 2.4 + 0.32 * len(cols)), min(7.0, 1.6 + 0.26 * len(rows)))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), [c[:16] for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [r[:16] for r in rows], fontsize=7)
    ax.set_xlabel("key side", fontsize=8)
    ax.set_ylabel("query side", fontsize=8)
    ax.set_title(f"L{res.layer}H{res.head}: score terms, query {res.query_pos} -> key {res.key_pos}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return figs.Figure(name, figs._png(fig), f"QK attribution of L{res.layer}H{res.head}: query-side x key-side terms")


def qk_sections(folder: ResultsFolder) -> list[dict[str, Any]]:
    """One dict per QK result (at most :data:`MAX_RESULTS`): label, headline, top terms, OV, figure."""
    out = []
    for label, res in list(folder.qk.items())[:MAX_RESULTS]:
        q, k = res.query_pos, res.key_pos
        score = float(res.scores[k])
        ov = [(a, f"{res.ov[i].sum():+.4f}") for i, a in enumerate(res.answers)]
        out.append({
            "label": label, "model": res.provenance.model,
            "headline": (f"L{res.layer}H{res.head} (KV head {res.kv_head}), query {q} {token_label(res.tokens[q])!r} "
                         f"-> key {k} {token_label(res.tokens[k])!r}: score {score:+.4f}, attention "
                         f"{float(res.pattern[k]):.3f}, terms sum to {float(res.terms[k].sum()):+.4f}"),
            "top": [(name, f"{v:+.4f}", f"{v / score:+.0%}" if score else "-") for name, v in res.top(10)],
            "ov": ov, "linearisation": res.linearisation,
            "figure": qk_figure(res, f"qk_{figs.slug(label)}"),
        })
    return out
