"""Cross-attention as explanation ("Cross-Attention is Half Explanation in Speech-to-Text Models").

Two pure analyses of a speech encoder-decoder's decoder cross-attention over encoder
frames (time), from data :mod:`analyses.speech_collect` gathers:

**Agreement with input saliency** (:func:`cross_attention_agreement`). For every explained
decoder token ``t`` (the row of the decoder position that *predicts* it), compare a head's
attention ``a_t [frame]`` with the token's saliency ``s_t [frame]`` (gradient x input on the
log-mel features, magnitudes pooled to the encoder frame rate), over the frames that hold
audio (padding frames are left out). Per token:

- ``pearson``: Pearson correlation of ``a_t`` and ``s_t`` over frames;
- ``spearman``: Pearson correlation of their ranks (ties share their mean rank);
- ``saliency_share``: how much of the relevance the attention captures, as the saliency
  mass that the attention also puts on the same frames: with both maps normalised to sum 1
  over the frames, ``sum_f min(a_f, s_f)`` (= 1 - total variation distance). 1 means the
  attention distributes its mass exactly as the saliency does, 0 that they share no frame.
  Its chance level (``summary["chance"]``) is the same number for uniform attention, so a
  diffuse saliency map rewards diffuse attention: read it next to ``saliency_in_focus``;
- ``saliency_in_focus``: the saliency mass on the attention's focus, the smallest set of
  frames that holds ``focus_mass`` (default 0.5) of the attention; ``arrays["focus_size"]``
  is that set's share of the frames, which is what saliency spread evenly would score
  (``summary["chance"]``: the focus size of the all-heads mean attention).

A token whose maps are constant over frames has no correlation and is skipped (NaN).
Per-token values are averaged over all tokens of all utterances (each token counts once).
Scores are per ``[decoder layer, head]``; the aggregated views average the attention
first, as the paper does: ``summary["layer_mean"][l]`` for the mean over layer ``l``'s
heads, ``summary["all_heads"]`` for the mean over every layer and head, and
``summary["best_head"]`` is the best single head ``[layer, head, value]``.

**Alignment heads** (:func:`alignment_head_scores`). A head is a good alignment head when,
for each word token, its attention peak (arg max over the audio frames) falls inside the
word's time span (from the synthesiser's word timings, or any forced alignment). Score:
the share of word tokens whose peak is within ``tolerance`` frames of the span; the mean
distance of the peak from the span (seconds) breaks ties. The top heads are compared with
the alignment heads the model's config ships (overlap of the top ``k`` and each config
head's rank).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError


class CrossAttentionError(AnalysisError):
    """Maps whose shapes do not fit each other or the model, or bad parameters."""


@dataclass(frozen=True)
class UtteranceMaps:
    """One utterance: the explained tokens, cross-attention and saliency over encoder frames.

    ``cross_attention[layer]`` is ``[head, token, frame]`` (rows = the decoder positions that
    predict each token), ``saliency`` is ``[token, frame]`` and non-negative; only the first
    ``n_valid`` frames (those holding audio) are compared.
    """

    tokens: tuple[str, ...]
    cross_attention: Mapping[int, Float[Tensor, "head token frame"]]
    saliency: Float[Tensor, "token frame"]
    n_valid: int


@dataclass(frozen=True)
class TimedTokens:
    """One utterance's decoder tokens with the encoder-frame span ``[first, stop)`` of the word
    each belongs to (None for tokens outside words: punctuation, special tokens), and the
    cross-attention ``[head, token, frame]`` per decoder layer of the positions predicting them."""

    tokens: tuple[str, ...]
    spans: tuple[tuple[int, int] | None, ...]
    cross_attention: Mapping[int, Float[Tensor, "head token frame"]]
    n_valid: int
    frame_seconds: float = 0.02


METRICS = ("pearson", "spearman", "saliency_share", "saliency_in_focus")


# ---- per-token measures (rows of the last axis are frames) -----------------------------
def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis; NaN where either side is constant."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-300, (x * y).sum(-1) / np.where(den > 1e-300, den, 1.0), np.nan)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their mean rank (as Spearman needs)."""
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat, dtype=np.float64)
    for i, row in enumerate(flat):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        top = np.cumsum(counts)
        out[i] = (top - (counts - 1) / 2.0)[inverse]
    return out.reshape(x.shape)


def _normalised(x: np.ndarray) -> np.ndarray:
    total = x.sum(-1, keepdims=True)
    return np.where(total > 0, x / np.where(total > 0, total, 1.0), np.nan)


def _share(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.minimum(_normalised(a), _normalised(s)).sum(-1)


def _in_focus(a: np.ndarray, s: np.ndarray, focus_mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Saliency mass on the smallest frame set holding ``focus_mass`` of the attention, and that set's size share."""
    a, s = _normalised(a), _normalised(s)
    order = np.argsort(-a, axis=-1, kind="stable")
    a_sorted = np.take_along_axis(a, order, -1)
    before = np.cumsum(a_sorted, -1) - a_sorted  # mass of the frames ranked above each frame
    keep_sorted = before < focus_mass - 1e-12  # a frame is needed while the mass so far is short
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return (s * keep).sum(-1), keep.mean(-1)


def token_measures(attention: np.ndarray, saliency: np.ndarray, *, focus_mass: float = 0.5) -> dict[str, np.ndarray]:
    """The four per-token measures of ``attention [..., token, frame]`` against ``saliency [token, frame]``.

    Returns arrays of shape ``[..., token]`` keyed by metric, plus ``focus_size``.
    """
    s = np.broadcast_to(saliency, attention.shape)
    in_focus, size = _in_focus(attention, s, focus_mass)
    return {"pearson": _pearson(attention, s), "spearman": _pearson(ranks(attention), ranks(s)),
            "saliency_share": _share(attention, s), "saliency_in_focus": in_focus, "focus_size": size}


def saliency_agreement(a: Float[Tensor, "token frame"], b: Float[Tensor, "token frame"]) -> dict[str, float]:
    """Mean per-token Pearson and Spearman between two saliency maps (an occlusion check of gradient x input)."""
    x, y = _np(a), _np(b)
    if x.shape != y.shape or x.ndim != 2:
        raise CrossAttentionError(f"saliency maps must both be [token, frame], got {x.shape} and {y.shape}")
    return {"pearson": float(np.nanmean(_pearson(x, y))), "spearman": float(np.nanmean(_pearson(ranks(x), ranks(y)))),
            "n_tokens": int(x.shape[0])}


def _np(t) -> np.ndarray:
    return t.detach().double().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t, dtype=np.float64)


def _check_utterance(u: UtteranceMaps, i: int, n_layers: int, n_heads: int) -> None:
    n_tok, n_frames = u.saliency.shape if u.saliency.ndim == 2 else (-1, -1)
    if u.saliency.ndim != 2 or n_tok != len(u.tokens):
        raise CrossAttentionError(f"utterance {i}: saliency must be [token={len(u.tokens)}, frame], "
                                  f"got {tuple(u.saliency.shape)}")
    if not 2 <= u.n_valid <= n_frames:
        raise CrossAttentionError(f"utterance {i}: n_valid must be in 2-{n_frames} (frames), got {u.n_valid}")
    if bool((u.saliency[:, :u.n_valid] < 0).any()):
        raise CrossAttentionError(f"utterance {i}: saliency must be non-negative (magnitudes)")
    if sorted(u.cross_attention) != list(range(n_layers)):
        raise CrossAttentionError(f"utterance {i}: cross-attention layers {sorted(u.cross_attention)}, "
                                  f"expected 0-{n_layers - 1}")
    for layer, a in u.cross_attention.items():
        if tuple(a.shape) != (n_heads, n_tok, n_frames):
            raise CrossAttentionError(f"utterance {i}: cross-attention of layer {layer} has shape {tuple(a.shape)}, "
                                      f"expected [head={n_heads}, token={n_tok}, frame={n_frames}]")


def cross_attention_agreement(utterances: Sequence[UtteranceMaps], *, n_layers: int, n_heads: int,
                              provenance: Provenance, focus_mass: float = 0.5) -> list[HeadScores]:
    """One :class:`HeadScores` per metric in :data:`METRICS` (see the module docstring).

    Each has ``scores [layer, head]`` and ``summary`` with ``layer_mean`` (per layer, the
    heads' attention averaged first), ``all_heads``, ``best_head`` ``[layer, head, value]``,
    ``head_mean`` (mean of the per-head scores), ``n_tokens``, ``n_utterances`` and, for the
    share metrics, ``chance`` (see the module docstring). Arrays: ``layer_mean [layer]``, and for
    ``saliency_in_focus`` also ``focus_size [layer, head]``.
    """
    if not utterances:
        raise CrossAttentionError("no utterances given")
    if not 0 < focus_mass < 1:
        raise CrossAttentionError(f"focus_mass must be in (0, 1), got {focus_mass}")
    per_head: dict[str, list[np.ndarray]] = {m: [] for m in (*METRICS, "focus_size")}
    per_layer: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    overall: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    chance: dict[str, list[np.ndarray]] = {"saliency_share": [], "saliency_in_focus": []}
    for i, u in enumerate(utterances):
        _check_utterance(u, i, n_layers, n_heads)
        v = u.n_valid
        s = _np(u.saliency)[:, :v]
        att = np.stack([_np(u.cross_attention[layer])[:, :, :v] for layer in range(n_layers)])  # layer head tok frame
        heads = token_measures(att, s, focus_mass=focus_mass)
        layers = token_measures(att.mean(1), s, focus_mass=focus_mass)
        both = token_measures(att.mean((0, 1)), s, focus_mass=focus_mass)
        for m in per_head:
            per_head[m].append(heads[m])
        for m in METRICS:
            per_layer[m].append(layers[m])
            overall[m].append(both[m])
        # chance levels: uniform attention for the share; for the focus, saliency spread
        # evenly, which puts on the (all-heads) focus exactly the focus's share of the frames
        chance["saliency_share"].append(token_measures(np.ones_like(s), s, focus_mass=focus_mass)["saliency_share"])
        chance["saliency_in_focus"].append(both["focus_size"])
    n_tokens = sum(len(u.tokens) for u in utterances)
    results = []
    for m in METRICS:
        with np.errstate(all="ignore"), _quiet():
            scores = np.nanmean(np.concatenate(per_head[m], axis=-1), axis=-1)
            layer_mean = np.nanmean(np.concatenate(per_layer[m], axis=-1), axis=-1)
            all_heads = float(np.nanmean(np.concatenate(overall[m])))
        finite = np.where(np.isnan(scores), -np.inf, scores)
        best = np.unravel_index(int(np.argmax(finite)), scores.shape)
        summary = {"layer_mean": [float(x) for x in layer_mean], "all_heads": all_heads,
                   "best_head": [int(best[0]), int(best[1]), float(scores[best])],
                   "head_mean": float(np.nanmean(scores)), "n_tokens": n_tokens, "n_utterances": len(utterances)}
        arrays = {"layer_mean": layer_mean}
        if m in chance:
            summary["chance"] = float(np.nanmean(np.concatenate(chance[m])))
        if m == "saliency_in_focus":
            with _quiet():
                arrays["focus_size"] = np.nanmean(np.concatenate(per_head["focus_size"], axis=-1), axis=-1)
        results.append(HeadScores(
            analysis="cross_attention", metric=m, scores=scores, provenance=provenance,
            description=f"cross-attention vs input saliency: {m.replace('_', ' ')} per decoder head, "
                        "mean over tokens", params={"focus_mass": focus_mass, "frames": "audio frames only"},
            summary=summary, arrays=arrays))
    return results


@contextlib.contextmanager
def _quiet():
    """Silence numpy's "mean of empty slice" for heads with no scorable token (NaN is the answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ---- alignment heads -------------------------------------------------------------------
def peak_distance(peaks: np.ndarray, first: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Frames from each peak to the span ``[first, stop)``: 0 inside, else to the nearest edge."""
    return np.maximum(0, np.maximum(first - peaks, peaks - (stop - 1)))


def alignment_head_scores(utterances: Sequence[TimedTokens], *, n_layers: int, n_heads: int,
                          provenance: Provenance, config_heads: Sequence[tuple[int, int]] = (),
                          tolerance: int = 1, top_k: int | None = None) -> HeadScores:
    """Per ``[layer, head]``: the share of word tokens whose attention peak lies within
    ``tolerance`` frames of the word's span (see the module docstring).

    ``summary``: ``top_heads`` (the ``top_k`` best, default as many as ``config_heads``,
    ranked by hit rate then by mean distance), ``config_heads``, ``overlap`` (how many
    config heads are among the top), ``config_ranks`` (1 = best of all heads), the mean
    hit rate of the top and of the config heads, ``chance`` (the hit rate of a peak placed
    uniformly at random over the audio frames), ``n_tokens`` and ``dtw_onset_error_s``: the mean
    word-onset error (seconds) of :func:`dtw_onset_errors` for the top, the config and all
    heads. Arrays: ``mean_distance_s
    [layer, head]`` (seconds from the peak to the span) and ``rank [layer, head]``.
    """
    if not utterances:
        raise CrossAttentionError("no utterances given")
    if tolerance < 0:
        raise CrossAttentionError(f"tolerance must be >= 0 frames, got {tolerance}")
    hits, dists, chance = [], [], []
    frame_seconds = utterances[0].frame_seconds
    for i, u in enumerate(utterances):
        if len(u.spans) != len(u.tokens):
            raise CrossAttentionError(f"utterance {i}: {len(u.spans)} spans for {len(u.tokens)} tokens")
        rows = [j for j, s in enumerate(u.spans) if s is not None]
        if not rows:
            continue
        if sorted(u.cross_attention) != list(range(n_layers)):
            raise CrossAttentionError(f"utterance {i}: cross-attention layers {sorted(u.cross_attention)}, "
                                      f"expected 0-{n_layers - 1}")
        att = np.stack([_np(u.cross_attention[layer]) for layer in range(n_layers)])
        if att.shape[1] != n_heads or att.shape[2] != len(u.tokens) or not 1 <= u.n_valid <= att.shape[3]:
            raise CrossAttentionError(f"utterance {i}: cross-attention is {att.shape[1:]}, expected [head={n_heads}, "
                                      f"token={len(u.tokens)}, frame >= n_valid={u.n_valid}]")
        peaks = att[:, :, rows, :u.n_valid].argmax(-1)  # layer head word-token
        first = np.array([u.spans[j][0] for j in rows])
        stop = np.array([u.spans[j][1] for j in rows])
        d = peak_distance(peaks, first, stop)
        hits.append(d <= tolerance)
        dists.append(d * u.frame_seconds)
        lo, hi = np.maximum(first - tolerance, 0), np.minimum(stop + tolerance, u.n_valid)
        chance.append((hi - lo) / u.n_valid)
    if not hits:
        raise CrossAttentionError("no utterance has a word token with a time span")
    hit_rate = np.concatenate(hits, -1).mean(-1)
    mean_dist = np.concatenate(dists, -1).mean(-1)
    order = np.lexsort((mean_dist.ravel(), -hit_rate.ravel()))  # by hit rate, then by distance
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(1, order.size + 1)
    rank = rank.reshape(hit_rate.shape)
    config = [(int(a), int(b)) for a, b in config_heads]
    for layer, head in config:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise CrossAttentionError(f"config head ({layer}, {head}) is outside {n_layers} layers x {n_heads} heads")
    k = top_k or len(config) or 5
    top = [(int(i // n_heads), int(i % n_heads)) for i in order[:k]]
    summary = {
        "top_heads": [list(h) for h in top], "config_heads": [list(h) for h in config],
        "overlap": len(set(top) & set(config)), "top_k": k,
        "config_ranks": [int(rank[h]) for h in config],
        "top_mean_hit_rate": float(np.mean([hit_rate[h] for h in top])),
        "config_mean_hit_rate": float(np.mean([hit_rate[h] for h in config])) if config else float("nan"),
        "chance": float(np.concatenate(chance).mean()), "n_tokens": int(sum(h.shape[-1] for h in hits)),
        "frame_seconds": frame_seconds,
    }
    # how well each head set times words the way Whisper does it (DTW on their mean attention)
    scorable = [u for u in utterances if any(sp is not None for sp in u.spans)]
    sets = {"top": top, "config": config, "all": [(a, b) for a in range(n_layers) for b in range(n_heads)]}
    summary["dtw_onset_error_s"] = {
        name: float(np.mean(np.concatenate([dtw_onset_errors(u, heads) for u in scorable])))
        for name, heads in sets.items() if heads}
    return HeadScores(analysis="alignment_heads", metric="hit_rate", scores=hit_rate, provenance=provenance,
                      description="share of word tokens whose cross-attention peak falls in the word's time span",
                      params={"tolerance_frames": tolerance}, summary=summary,
                      arrays={"mean_distance_s": mean_dist, "rank": rank.astype(np.float64)})


def dtw_path(cost: Float[np.ndarray, "token frame"]) -> tuple[np.ndarray, np.ndarray]:
    """The monotonic alignment of tokens to frames with the least total ``cost`` (steps: next
    token and next frame, same token next frame, next token same frame), from (0, 0) to the
    last token and frame. Returns the path's token and frame indices."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    i, j, tokens, frames = n, m, [], []
    while i > 0 and j > 0:
        tokens.append(i - 1), frames.append(j - 1)
        step = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return np.array(tokens[::-1]), np.array(frames[::-1])


def dtw_onset_errors(u: TimedTokens, heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Word-onset errors (seconds) of a DTW alignment on the mean attention of ``heads``, as
    Whisper times words: each head's attention over the audio frames is standardised per frame
    across the word tokens, the heads are averaged, and DTW runs on minus that matrix. A word's
    onset is the first frame the path gives its first token; its true onset is its span's start."""
    rows = [j for j, sp in enumerate(u.spans) if sp is not None]
    a = np.stack([_np(u.cross_attention[layer][head])[rows, :u.n_valid] for layer, head in heads])
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-9)
    tokens, frames = dtw_path(-a.mean(0))
    starts = [k for k, j in enumerate(rows) if k == 0 or u.spans[rows[k - 1]] != u.spans[j]]  # first token of a word
    onset = {k: frames[tokens == k].min() for k in starts}
    return np.array([abs(onset[k] - u.spans[rows[k]][0]) * u.frame_seconds for k in starts])


def head_mean(cross_attention: Mapping[int, Float[Tensor, "head token frame"]],
              heads: Sequence[tuple[int, int]]) -> Float[Tensor, "token frame"]:
    """The mean attention of the given ``(layer, head)`` pairs (e.g. the config's alignment heads)."""
    if not heads:
        raise CrossAttentionError("no heads given to average")
    return torch.stack([cross_attention[layer][head].float() for layer, head in heads]).mean(0)


__all__ = ["CrossAttentionError", "METRICS", "TimedTokens", "UtteranceMaps", "alignment_head_scores",
           "cross_attention_agreement", "dtw_onset_errors", "dtw_path", "head_mean", "peak_distance", "ranks", "saliency_agreement",
           "token_measures"]
