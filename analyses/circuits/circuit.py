"""Circuits from attribution scores: selection, faithfulness and overlap.

A circuit (:class:`formats.Circuit`, the file format ``lens circuit`` writes) is a set of
edges plus the heads and MLPs that lie on a path of selected edges to the logits (a key or
value receiver stands for every query head of its KV head), or a set of heads and MLPs.
Faithfulness follows METHODS.md: the task metric with everything outside the circuit
ablated, as a fraction of the full model's metric; what "outside" means, and what replaces
it, is an :class:`~analyses.circuits.evaluation.EvalSetting` (edge- or node-level, corrupted
or mean, heads only or heads and MLPs), by default the published one for the circuit's kind.
"""

from __future__ import annotations

import numpy as np

from attnlens.analyses.circuits.eap import EdgeScores
from attnlens.analyses.circuits.evaluation import (
    EvalSetting,
    faithfulness_of,
    prepare_setting,
    published_setting,
)
from attnlens.analyses.circuits.metrics import Metric
from attnlens.analyses.circuits.tasks import EncodedTask, TaskError
from attnlens.formats.circuit import Circuit, Node, NodeKind
from lens.heads import HeadRef, MlpRef


def select_edges(scores: EdgeScores, facts, *, top_n: int | None = None, threshold: float | None = None) -> Circuit:
    """The edges with the largest ``|score|`` (``top_n``) or ``|score| >= threshold``, pruned to paths to the logits."""
    if (top_n is None) == (threshold is None):
        raise TaskError("give exactly one of top_n and threshold")
    edges = scores.edges()
    if top_n is not None:
        if not 1 <= top_n <= len(edges):
            raise TaskError(f"top_n must be 1-{len(edges)} (the edges of the graph), got {top_n}")
        chosen = sorted(edges, key=lambda e: -abs(e.score))[:top_n]
    else:
        if not np.isfinite(threshold) or threshold < 0:
            raise TaskError(f"threshold must be a finite number >= 0, got {threshold}")
        chosen = [e for e in edges if abs(e.score) >= threshold]
    order = {s: i for i, s in enumerate(scores.senders)}
    active: set[Node] = {Node(NodeKind.LOGITS)}
    by_sender: dict[Node, list] = {}
    for e in chosen:
        by_sender.setdefault(e.sender, []).append(e)
    kept = []
    for sender in sorted(by_sender, key=lambda s: -order[s]):  # later senders first
        live = [e for e in by_sender[sender] if any(n in active for n in e.receiver.nodes(facts.group_size))]
        if live:
            active.add(sender)
            kept.extend(live)
    heads = sorted((c.layer, c.head) for c in (n.component for n in active) if isinstance(c, HeadRef))
    mlps = sorted(c.layer for c in (n.component for n in active) if isinstance(c, MlpRef))
    return Circuit(heads, mlps, sorted(kept, key=lambda e: -abs(e.score)), method=scores.method, metric=scores.metric,
                   n_layers=facts.n_layers, n_heads=facts.n_heads, group_size=facts.group_size,
                   params={"top_n": top_n, "threshold": threshold, "n_edges_scored": scores.n_edges})


def select_nodes(head_scores: np.ndarray, mlp_scores: np.ndarray | None, *, top_n: int, facts=None) -> Circuit:
    """A node-only circuit: the ``top_n`` heads and MLPs with the largest ``|score|`` (for per-head patching)."""
    items = [(abs(v), HeadRef(la, h)) for (la, h), v in np.ndenumerate(head_scores) if not np.isnan(v)]
    if mlp_scores is not None:
        items += [(abs(v), MlpRef(la)) for la, v in enumerate(mlp_scores) if not np.isnan(v)]
    if not 1 <= top_n <= len(items):
        raise TaskError(f"top_n must be 1-{len(items)} (the heads and MLPs scored), got {top_n}")
    top = [c for _, c in sorted(items, key=lambda x: -x[0])[:top_n]]
    n_layers, n_heads = head_scores.shape
    return Circuit(sorted((c.layer, c.head) for c in top if isinstance(c, HeadRef)),
                   sorted(c.layer for c in top if isinstance(c, MlpRef)), method="patching",
                   n_layers=n_layers, n_heads=n_heads, group_size=facts.group_size if facts else 1,
                   params={"top_n": top_n})


def faithfulness(lm, enc: EncodedTask, circuit: Circuit, metric: Metric | str = Metric.LOGIT_DIFF, *,
                 setting: EvalSetting | None = None, max_rows: int = 32) -> dict:
    """Metric of the full model, of the circuit and of the empty circuit under ``setting``
    (default: the published one for this kind of circuit, :func:`published_setting`), their
    ratios and the setting's choices."""
    setting = setting or published_setting(circuit)
    ctx = prepare_setting(lm, enc, metric, setting)
    return faithfulness_of(ctx, [circuit], setting, max_rows=max_rows)[0]


def overlap(a: Circuit, b: Circuit) -> dict:
    """Shared heads and edges of two circuits: Jaccard indices and the share of ``a``'s heads reused by ``b``."""
    ha, hb = set(a.heads), set(b.heads)
    ea, eb = {(e.sender, e.receiver) for e in a.edges}, {(e.sender, e.receiver) for e in b.edges}

    def jac(x, y):
        return len(x & y) / len(x | y) if x | y else float("nan")

    return {"heads_a": len(ha), "heads_b": len(hb), "shared_heads": sorted(f"L{la}H{h}" for la, h in ha & hb),
            "heads_jaccard": jac(ha, hb), "share_of_a_heads_in_b": len(ha & hb) / len(ha) if ha else float("nan"),
            "edges_a": len(ea), "edges_b": len(eb), "shared_edges": len(ea & eb), "edges_jaccard": jac(ea, eb)}
