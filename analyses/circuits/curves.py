"""Faithfulness against circuit size: circuits of growing size from one ranking, and the
smallest that reaches a threshold (0.8 by default).

Edge circuits take the top-n edges by ``|score|`` (pruned to paths that reach the logits, so
a circuit may keep fewer edges than asked for: the kept counts are reported); head circuits
the top-n heads by ``|score|``. Sizes follow the literature's range on IOI: 50 to 5,000 edges
(Hanna et al. 2024), 5 to 60 heads (Wang et al.'s circuit has 26).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from attnlens.analyses.circuits.circuit import select_edges, select_nodes
from attnlens.analyses.circuits.eap import EdgeScores
from attnlens.analyses.circuits.tasks import TaskError
from attnlens.formats.circuit import Circuit
from attnlens.formats.curves import Curves
from attnlens.formats.provenance import Provenance

EDGE_SIZES = (50, 100, 200, 500, 1000, 2000, 5000)
HEAD_SIZES = (5, 10, 15, 20, 30, 40, 60)
THRESHOLD = 0.8


def check_sizes(sizes: Sequence[int], most: int, what: str) -> list[int]:
    """Sorted distinct sizes in 1..most (:class:`TaskError` naming ``what`` otherwise)."""
    out = sorted({int(s) for s in sizes})
    if not out or out[0] < 1 or out[-1] > most:
        raise TaskError(f"{what} sizes must be 1-{most}, got {list(sizes)}")
    return out


def edge_circuits(scores: EdgeScores, facts, sizes: Sequence[int]) -> list[Circuit]:
    """The top-n edge circuit of ``scores`` for each n in ``sizes``."""
    return [select_edges(scores, facts, top_n=n) for n in check_sizes(sizes, scores.n_edges, "edge")]


def head_circuits(head_scores: np.ndarray, facts, sizes: Sequence[int], method: str = "") -> list[Circuit]:
    """The top-n heads by ``|score|`` (``head_scores [layer, head]``) for each n in ``sizes``."""
    n_scored = int(np.isfinite(head_scores).sum())
    out = []
    for n in check_sizes(sizes, n_scored, "head"):
        c = select_nodes(head_scores, None, top_n=n, facts=facts)
        c.method = method or c.method
        out.append(c)
    return out


def smallest_reaching(sizes: Sequence[float], values: Sequence[float], threshold: float = THRESHOLD) -> float | None:
    """The smallest size whose value is at least ``threshold`` (None if none is)."""
    for s, v in zip(sizes, values):
        if np.isfinite(v) and v >= threshold:
            return float(s)
    return None


def stays_from(sizes: Sequence[float], values: Sequence[float], threshold: float = THRESHOLD) -> float | None:
    """The smallest size from which every larger size keeps the value at or above ``threshold``."""
    out = None
    for s, v in zip(reversed(list(sizes)), reversed(list(values))):
        if not (np.isfinite(v) and v >= threshold):
            break
        out = float(s)
    return out


def faithfulness_curves(rows: Mapping[str, Sequence[dict]], sizes: Sequence[int], *, unit: str, task: str,
                        provenance: Provenance, params: dict | None = None, threshold: float = THRESHOLD) -> Curves:
    """One :class:`Curves` (``circuit.TASK_faithfulness_UNIT``) from faithfulness rows
    (:func:`analyses.circuits.evaluation.faithfulness_of`, one row per size) per ranking label.

    Summary: per label the smallest size reaching ``threshold`` (faithfulness and normalized),
    the smallest from which every larger size stays there (curves need not be monotonic:
    adding a head that works against the answer lowers faithfulness), the normalized values
    and the kept edge / head counts.
    """
    sizes = list(sizes)
    for label, rs in rows.items():
        if len(rs) != len(sizes):
            raise TaskError(f"series {label!r} has {len(rs)} rows for {len(sizes)} sizes")
    series = {label: [r["faithfulness"] for r in rs] for label, rs in rows.items()}
    normalized = {label: [r["normalized_faithfulness"] for r in rs] for label, rs in rows.items()}
    first = next(iter(rows.values()))[0] if rows else {}
    setting_keys = ("setting", "level", "replacement", "ablated", "mean_over", "paper")
    summary = {
        "threshold": threshold,
        "smallest_reaching": {label: smallest_reaching(sizes, ys, threshold) for label, ys in series.items()},
        "smallest_reaching_normalized": {label: smallest_reaching(sizes, ys, threshold)
                                         for label, ys in normalized.items()},
        "stays_above_from": {label: stays_from(sizes, ys, threshold) for label, ys in series.items()},
        "normalized": normalized,
        "kept_edges": {label: [r["n_edges"] for r in rs] for label, rs in rows.items()},
        "kept_heads": {label: [r["n_heads"] for r in rs] for label, rs in rows.items()},
        "full": first.get("full"), "empty": first.get("empty"), "corrupted": first.get("corrupted"),
    }
    return Curves("circuit", f"{task}_faithfulness_{unit}", x=np.asarray(sizes, dtype=float), series=series,
                  provenance=provenance, x_label=f"circuit size ({unit})", y_label="faithfulness (circuit / full)",
                  description=f"faithfulness of the top-n {unit} circuits of each ranking on {task}",
                  params={**{k: first[k] for k in setting_keys if k in first}, "sizes": sizes,
                          "n_examples": first.get("n_examples"), **(params or {})},
                  summary=summary)
