"""Retrieval heads (Wu et al. 2024): heads that copy the needle token they attend to.

Input is one :class:`DecodeTrace` per needle trial: the greedy tokens and, for every
decoding step, every layer and head, the key position with the highest attention from
the query that produced that token (top-1). The top-1 keys come from captured
patterns (``argmax`` of the row) or from the statistics kernel's ``argmax``; the
scorer does not care which.

Per trial and head: score = (number of steps whose top-1 key lies in the needle span
AND whose generated token equals the prompt token at that key) / |needle tokens|.
Trials count only when the answer's ROUGE-1 recall of the needle is above 0.5.
The head's retrieval score is the mean over counted trials (METHODS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError

RECALL_THRESHOLD = 0.5  # Wu et al.'s reference code: ROUGE-1 recall of the needle > 50
RETRIEVAL_THRESHOLD = 0.1  # "retrieval head" in the paper: score > 0.1


class RetrievalError(AnalysisError):
    """Retrieval scoring that cannot be done (no trial passed, inconsistent shapes)."""


@dataclass(frozen=True)
class DecodeTrace:
    """What one greedy NIAH decode recorded.

    ``top1[step, layer, head]`` is the key position the head attended most from the query
    that produced ``generated[step]``; ``prompt_ids`` are the prompt's ids ``[pos]``;
    ``needle_span`` is ``[start, end)`` in the prompt; ``recall`` the answer's ROUGE-1
    recall of the needle sentence.
    """

    prompt_ids: Int[Tensor, " pos"]
    generated: Int[Tensor, " step"]
    top1: Int[Tensor, "step layer head"]
    needle_span: tuple[int, int]
    recall: float
    answer: str = ""
    length: int = 0
    depth: float = 0.0


def copy_counts(trace: DecodeTrace) -> Tensor:
    """``[layer, head]`` number of copy events in one trace (top-1 in needle and token equal)."""
    start, end = trace.needle_span
    steps = trace.top1.shape[0]
    if trace.generated.shape[0] != steps:
        raise RetrievalError(f"trace has {trace.generated.shape[0]} generated tokens but {steps} top-1 steps")
    key = trace.top1.long()
    inside = (key >= start) & (key < end)
    prompt_tok = trace.prompt_ids[key.clamp(0, trace.prompt_ids.shape[0] - 1)]
    copies = inside & (prompt_tok == trace.generated.view(steps, 1, 1))
    return copies.sum(0)


def retrieval_scores(traces: Sequence[DecodeTrace], *, provenance: Provenance,
                     recall_threshold: float = RECALL_THRESHOLD) -> list[HeadScores]:
    """Mean per-trial retrieval score over the trials whose answer passes (ROUGE-1 recall > threshold).

    Raises :class:`RetrievalError` when no trace is given or none passes, naming the counts.
    """
    if not traces:
        raise RetrievalError("no needle trials given: need at least one decoded trial")
    n_layers, n_heads = traces[0].top1.shape[1:]
    passed = [t for t in traces if t.recall > recall_threshold]
    if not passed:
        best = max(t.recall for t in traces)
        raise RetrievalError(
            f"0 of {len(traces)} needle trials passed (ROUGE-1 recall > {recall_threshold}; best recall "
            f"{best:.2f}): the model does not retrieve the needle, so no retrieval score can be computed")
    per_trial = np.stack([copy_counts(t).double().numpy() / (t.needle_span[1] - t.needle_span[0]) for t in passed])
    scores = per_trial.mean(0)
    lengths = sorted({t.length for t in traces})
    depths = sorted({t.depth for t in traces})
    acc = _grid([(t.length, t.depth, float(t.recall > recall_threshold)) for t in traces], lengths, depths)
    n_above = int((scores > RETRIEVAL_THRESHOLD).sum())
    result = HeadScores(
        analysis="retrieval", metric="retrieval_score", scores=scores.reshape(n_layers, n_heads),
        provenance=provenance,
        description="mean share of needle tokens a head copies (top-1 attention in the needle and the generated "
                    "token equals the attended prompt token), over trials answered with ROUGE-1 recall "
                    f"> {recall_threshold}",
        params={"recall_threshold": recall_threshold, "lengths": lengths, "depths": depths,
                "n_trials": len(traces)},
        summary={"trials": len(traces), "trials_passed": len(passed), "needle_accuracy": len(passed) / len(traces),
                 "heads_above_0.1": n_above, "share_above_0.1": n_above / scores.size, "n_heads": int(scores.size),
                 "max": float(scores.max()), "mean": float(scores.mean())},
        arrays={"per_trial_scores": per_trial, "accuracy_by_length_depth": acc,
                "lengths": np.asarray(lengths, dtype=np.float64), "depths": np.asarray(depths, dtype=np.float64),
                "recall_per_trial": np.asarray([t.recall for t in traces], dtype=np.float64)},
    )
    return [result]


def _grid(rows, lengths, depths) -> np.ndarray:
    total = np.zeros((len(lengths), len(depths)))
    count = np.zeros_like(total)
    for n, d, v in rows:
        total[lengths.index(n), depths.index(d)] += v
        count[lengths.index(n), depths.index(d)] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def top1_from_pattern(pattern: Float[Tensor, "batch head q k"]) -> Int[Tensor, " head"]:
    """Top-1 key of each head for the last query row of the first batch item (first key on ties)."""
    return pattern[0, :, -1, :].argmax(-1)
