"""Causal validation (Wu et al.): ablate the top-k heads of a ranking vs k random heads, measure needle accuracy.

:func:`ablation_plan` picks the head sets (top-k of a score, and for each seed k random
heads drawn from the heads outside that top-k); :mod:`analyses.collect` decodes NIAH
trials with each set zero-ablated; :func:`ablation_scores` turns the accuracies into a
:class:`HeadScores` whose ``scores`` are the ranking and whose arrays hold the curves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnlens.analyses.result import Curves, HeadScores, Provenance
from attnlens.formats.errors import AnalysisError


class AblationError(AnalysisError):
    """An ablation plan that cannot be made (k out of range, no seeds)."""


def ablation_plan(scores: np.ndarray, ks: Sequence[int], seeds: Sequence[int]
                  ) -> dict[int, dict[str, list]]:
    """For each k: ``{"top": [(layer, head)...], "random": [[(layer, head)...] per seed]}``."""
    n_layers, n_heads = scores.shape
    total = n_layers * n_heads
    if not seeds:
        raise AblationError("seeds is empty: give at least one seed for the random-head baseline")
    flat = np.where(np.isnan(scores), -np.inf, scores).ravel()
    order = np.argsort(-flat, kind="stable")
    plan = {}
    for k in ks:
        if not 1 <= k <= total // 2:
            raise AblationError(f"k={k} is out of range: valid range is 1-{total // 2} for {total} heads")
        top = order[:k]
        rest = order[k:]
        rand = [np.random.default_rng(seed).choice(rest, size=k, replace=False) for seed in seeds]
        as_pairs = lambda idx: [(int(i // n_heads), int(i % n_heads)) for i in idx]  # noqa: E731
        plan[k] = {"top": as_pairs(top), "random": [as_pairs(r) for r in rand]}
    return plan


def ablation_scores(ranking: np.ndarray, *, ranking_name: str, ks: Sequence[int], seeds: Sequence[int],
                    full_accuracy: float, top_accuracy: Sequence[float], random_accuracy: Sequence[Sequence[float]],
                    n_trials: int, provenance: Provenance, plan: dict | None = None) -> list[HeadScores]:
    """``top_accuracy[i]`` for k = ks[i]; ``random_accuracy[i][s]`` for seed s.

    Returns the ranking as :class:`HeadScores` (with the accuracies in its summary and arrays)
    and the accuracy curves against k as :class:`Curves` (one run per seed for the random sets).
    """
    rand = np.asarray(random_accuracy, dtype=float).reshape(len(ks), len(seeds))
    rows = [{"k": int(k), "top_k_accuracy": float(t), "random_accuracy_mean": float(r.mean()),
             "random_accuracy_per_seed": [float(x) for x in r]} for k, t, r in zip(ks, top_accuracy, rand)]
    return [HeadScores(
        analysis="ablation", metric=f"{ranking_name}_ablation", scores=ranking, provenance=provenance,
        description=f"ranking used ({ranking_name}); needle accuracy (ROUGE-1 recall > 0.5) with its top-k heads "
                    "zero-ablated vs k random other heads",
        params={"ks": list(ks), "seeds": list(seeds), "n_trials": n_trials, "ablation": "zero",
                "heads": {str(k): v for k, v in (plan or {}).items()}},
        summary={"full_accuracy": full_accuracy, "rows": rows},
        arrays={"ks": np.asarray(ks, dtype=float), "top_accuracy": np.asarray(top_accuracy, dtype=float),
                "random_accuracy": rand}),
        Curves(analysis="ablation", metric=f"{ranking_name}_ablation", x=np.asarray(ks, dtype=float),
               series={f"top-k {ranking_name} heads": np.asarray(top_accuracy, dtype=float),
                       "k random heads": rand.T, "no ablation": np.full(len(ks), float(full_accuracy))},
               provenance=provenance, x_label="heads zero-ablated (k)", y_label="needle accuracy",
               description=f"needle accuracy with the top-k {ranking_name} heads zero-ablated, against k random "
                           f"heads ({len(seeds)} seeds)", params={"seeds": list(seeds), "n_trials": n_trials})]
