"""Circuit reuse (Merullo et al. 2023): how much two tasks' circuits share, against chance.

The observed overlap of circuits A and B (:func:`analyses.circuits.circuit.overlap`) means
little alone: late layers hold most heads of any circuit, and a big circuit shares heads
with anything. :func:`random_overlap` draws random circuits the size of B and measures their
overlap with A in two ways:

- ``uniform``: B's number of heads drawn uniformly from every head (and B's number of edges
  from every edge of the graph);
- ``layer_matched``: in each layer, as many random heads of that layer as B has there (a
  stricter baseline: it keeps B's depth profile and asks only which heads within a layer).

For each it reports the mean and 95th percentile of the random overlaps and the share of
random circuits at least as overlapping as B (a permutation p-value, with the usual +1).
"""

from __future__ import annotations

import numpy as np

from attnlens.analyses.circuits.tasks import TaskError
from attnlens.formats.circuit import Circuit


def _share(a: set, b: set) -> float:
    return len(a & b) / len(a) if a else float("nan")


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def _stats(observed: float, draws: np.ndarray) -> dict:
    return {"observed": observed, "random_mean": float(np.mean(draws)), "random_p95": float(np.quantile(draws, 0.95)),
            "p_value": float((1 + np.sum(draws >= observed - 1e-12)) / (1 + draws.size))}


def random_overlap(a: Circuit, b: Circuit, facts, *, n: int = 1000, seed: int = 0) -> dict:
    """Overlap of ``a`` with ``b`` against ``n`` random circuits of ``b``'s size (see module docstring)."""
    if n < 1:
        raise TaskError(f"random circuits must be >= 1, got {n}")
    L, H = facts.n_layers, facts.n_heads
    ha, hb = set(map(tuple, a.heads)), set(map(tuple, b.heads))
    rng = np.random.default_rng(seed)
    everything = [(la, h) for la in range(L) for h in range(H)]
    per_layer = np.bincount([la for la, _ in hb], minlength=L) if hb else np.zeros(L, dtype=int)
    out: dict = {"n_random": n, "seed": seed, "heads_a": len(ha), "heads_b": len(hb)}
    for name, draw in (("uniform", lambda: {everything[i] for i in rng.choice(len(everything), len(hb),
                                                                              replace=False)}),
                       ("layer_matched", lambda: {(la, int(h)) for la in range(L) if per_layer[la]
                                                  for h in rng.choice(H, per_layer[la], replace=False)})):
        shares, jacs = np.empty(n), np.empty(n)
        for i in range(n):
            r = draw()
            shares[i], jacs[i] = _share(ha, r), _jaccard(ha, r)
        out[name] = {"share_of_a_heads": _stats(_share(ha, hb), shares), "heads_jaccard": _stats(_jaccard(ha, hb), jacs)}
    if a.edges and b.edges:
        from attnlens.analyses.circuits.evaluation import Graph

        g = Graph.of(facts)
        valid = np.flatnonzero(g.valid.ravel())
        s_idx, r_idx = g.sender_index(), g.receiver_index()
        n_r = len(g.receivers)
        ea = {s_idx[e.sender] * n_r + r_idx[e.receiver] for e in a.edges}
        eb = {s_idx[e.sender] * n_r + r_idx[e.receiver] for e in b.edges}
        jacs = np.array([_jaccard(ea, set(rng.choice(valid, len(eb), replace=False).tolist())) for _ in range(n)])
        out["uniform"]["edges_jaccard"] = _stats(_jaccard(ea, eb), jacs)
    return out
