"""Circuits from attribution scores: selection, faithfulness and overlap.

A :class:`Circuit` is a set of edges plus the heads and MLPs that lie on a path of
selected edges to the logits (a key or value receiver stands for every query head of its
KV head). Faithfulness follows METHODS.md: the task metric with every head and MLP outside
the circuit mean-ablated (per-position mean over the task's corrupted prompts), as a
fraction of the full model's metric. This is node-level ablation: an edge between two
circuit nodes that was not selected is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from analyses.circuits.ablation import all_heads, prepare, score_sets
from analyses.circuits.eap import EdgeScores
from analyses.circuits.metrics import Metric
from analyses.circuits.tasks import EncodedTask, TaskError
from lens.heads import HeadRef, MlpRef

_HEAD = re.compile(r"^L(\d+)H(\d+)(?:\.q)?$")
_KV = re.compile(r"^L(\d+)KV(\d+)\.[kv]$")
_MLP = re.compile(r"^L(\d+)\.mlp$")


@dataclass
class Circuit:
    heads: list[HeadRef]
    mlps: list[int]
    edges: list[tuple[str, str, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"n_heads": len(self.heads), "n_mlps": len(self.mlps), "n_edges": len(self.edges),
                "heads": [str(h) for h in self.heads], "mlps": self.mlps,
                "edges": [{"sender": s, "receiver": r, "score": v} for s, r, v in self.edges]}


def _nodes_of(name: str, facts) -> list[str]:
    """The node names (``L3H4``, ``L3.mlp``, ``logits``) a sender or receiver stands for."""
    if m := _KV.match(name):
        layer, kv = int(m.group(1)), int(m.group(2))
        return [f"L{layer}H{h}" for h in facts.query_heads_of(kv)]
    if m := _HEAD.match(name):
        return [f"L{m.group(1)}H{m.group(2)}"]
    return [name]


def select_edges(scores: EdgeScores, facts, *, top_n: int | None = None, threshold: float | None = None) -> Circuit:
    """The edges with the largest ``|score|`` (``top_n``) or ``|score| >= threshold``, pruned to paths to the logits."""
    if (top_n is None) == (threshold is None):
        raise TaskError("give exactly one of --top-n and --threshold")
    edges = scores.edges()
    if top_n is not None:
        if top_n < 1:
            raise TaskError(f"--top-n must be >= 1, got {top_n}")
        chosen = sorted(edges, key=lambda e: -abs(e[2]))[:top_n]
    else:
        chosen = [e for e in edges if abs(e[2]) >= threshold]
    order = {s: i for i, s in enumerate(scores.senders)}
    active = {"logits"}
    by_sender: dict[str, list] = {}
    for e in chosen:
        by_sender.setdefault(e[0], []).append(e)
    kept = []
    for sender in sorted(by_sender, key=lambda s: -order[s]):  # later senders first
        live = [e for e in by_sender[sender] if any(n in active for n in _nodes_of(e[1], facts))]
        if live:
            active.add(sender)
            kept.extend(live)
    heads = sorted(HeadRef(int(m.group(1)), int(m.group(2))) for n in active if (m := _HEAD.match(n)))
    mlps = sorted(int(m.group(1)) for n in active if (m := _MLP.match(n)))
    return Circuit(heads, mlps, sorted(kept, key=lambda e: -abs(e[2])))


def select_nodes(head_scores: np.ndarray, mlp_scores: np.ndarray | None, *, top_n: int) -> Circuit:
    """A node-only circuit: the ``top_n`` heads and MLPs with the largest ``|score|`` (for per-head patching)."""
    items = [(abs(v), HeadRef(l, h)) for (l, h), v in np.ndenumerate(head_scores) if not np.isnan(v)]
    if mlp_scores is not None:
        items += [(abs(v), MlpRef(l)) for l, v in enumerate(mlp_scores) if not np.isnan(v)]
    top = [c for _, c in sorted(items, key=lambda x: -x[0])[:top_n]]
    return Circuit(sorted(c for c in top if isinstance(c, HeadRef)), sorted(c.layer for c in top if isinstance(c, MlpRef)))


def faithfulness(lm, enc: EncodedTask, circuit: Circuit, metric: Metric | str = Metric.LOGIT_DIFF, *,
                 max_rows: int = 64) -> dict:
    """Metric of the full model, of the circuit (rest mean-ablated) and of nothing (all mean-ablated)."""
    ctx = prepare(lm, enc, "mean", metric)
    facts = lm.facts
    inside = set(circuit.heads)
    everything = all_heads(facts) + [MlpRef(l) for l in range(facts.n_layers)]
    outside = [h for h in all_heads(facts) if h not in inside] + [MlpRef(l) for l in range(facts.n_layers)
                                                                  if l not in circuit.mlps]
    circ, empty = score_sets(ctx, [outside, everything], max_rows=max_rows)
    full = ctx.baseline
    return {"full": full, "circuit": float(circ), "empty": float(empty),
            "faithfulness": float(circ / full) if full else float("nan"),
            "normalized_faithfulness": float((circ - empty) / (full - empty)) if full != empty else float("nan"),
            "n_heads": len(circuit.heads), "n_mlps": len(circuit.mlps), "n_edges": len(circuit.edges)}


def overlap(a: Circuit, b: Circuit) -> dict:
    """Shared heads and edges of two circuits: Jaccard indices and the share of ``a``'s heads reused by ``b``."""
    ha, hb = set(a.heads), set(b.heads)
    ea, eb = {(s, r) for s, r, _ in a.edges}, {(s, r) for s, r, _ in b.edges}

    def jac(x, y):
        return len(x & y) / len(x | y) if x | y else float("nan")

    return {"heads_a": len(ha), "heads_b": len(hb), "shared_heads": sorted(str(h) for h in ha & hb),
            "heads_jaccard": jac(ha, hb), "share_of_a_heads_in_b": len(ha & hb) / len(ha) if ha else float("nan"),
            "edges_a": len(ea), "edges_b": len(eb), "shared_edges": len(ea & eb), "edges_jaccard": jac(ea, eb)}
