"""Numpy helpers behind the views: bounded windows of long patterns, colour scales, per-head
statistics, and the 2-D embeddings of the head map (cached on disk).

Everything takes and returns numpy arrays; nothing here draws, reads a model or imports
torch. Patterns are ``[q, k]`` (one head), scores ``[layer, head]``.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_WINDOW = 256  # query rows shown at once, whatever the user asks
CONTEXT_BINS = 16  # keys outside the window are pooled into at most this many columns per side
MAX_EXACT = 128  # keys a task is about (a needle) kept exact before the window, at most
LOG_FLOOR = 1e-4  # the lowest weight a log scale distinguishes from zero


class ColorScale(str, enum.Enum):
    """How attention weights map to colour.

    ``LINEAR``: 0 .. the largest weight. ``LOG``: log10 from :data:`LOG_FLOOR` (structure
    in small weights). ``NO_SINK``: linear up to the largest weight *off the sink column*
    (key 0), the sink drawn in the above-scale colour, so a sink-dominated head still shows
    its other structure (an induction stripe, a previous-token diagonal).
    """

    NO_SINK = "sink column excluded"
    LINEAR = "linear"
    LOG = "log"


SCALE_OPTIONS = {s.value: s for s in ColorScale}  # widget label -> scale


def token_label(tok: str, width: int = 10) -> str:
    """A token made visible on an axis: spaces as '␣', newlines as '↵', long ones cut."""
    t = tok.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return t if len(t) <= width else t[: width - 1] + "…"


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def score_rank(scores: np.ndarray, layer: int, head: int, scale: str = "sequential",
               categories: list[str] | None = None) -> tuple[str, str]:
    """``(value, rank)`` texts of one head's score: a sequential score ranked from the highest,
    a signed one by ``|score|`` (its sign kept in the value), a categorical one not ranked
    (its category named, with how many heads share it)."""
    v = float(scores[layer, head])
    if not np.isfinite(v):
        return "not scored", "—"
    finite = scores[np.isfinite(scores)]
    if scale == "categorical":
        cats = categories or []
        name = cats[int(v)] if 0 <= int(v) < len(cats) else f"{v:.4g}"
        return name, f"{int((finite == v).sum())} of {finite.size} heads"
    if scale == "signed":
        return f"{v:+.4g}", f"{int((np.abs(finite) > abs(v)).sum()) + 1} of {finite.size} by |score|"
    return f"{v:.4g}", f"{int((finite > v).sum()) + 1} of {finite.size}"


def color_range(values: np.ndarray, scale: ColorScale, sink_columns: np.ndarray | None = None) -> tuple[float, float]:
    """``(low, high)`` of the colour scale for ``values`` (any shape; NaN ignored).

    ``sink_columns``: a boolean mask of ``values``' shape marking the sink column's cells,
    left out of the range for :attr:`ColorScale.NO_SINK` (their colour saturates).
    """
    v = np.asarray(values, dtype=np.float64)
    if scale is ColorScale.NO_SINK and sink_columns is not None:
        rest = v[~np.asarray(sink_columns, bool) & np.isfinite(v)]
        if rest.size and rest.max() > 0:
            v = rest
    finite = v[np.isfinite(v)]
    hi = float(finite.max()) if finite.size else 1.0
    if scale is ColorScale.LOG:
        pos = finite[finite > 0]
        lo = max(LOG_FLOOR, float(pos.min())) if pos.size else LOG_FLOOR
        return lo, max(hi, lo * 10)
    return 0.0, max(hi, 1e-6)


def stripe_visibility(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, high: float) -> float:
    """Mean colour intensity (value / scale top, clipped to 1) of the cells ``(rows, cols)``:
    how dark a stripe of a pattern is drawn, 1 = the darkest colour."""
    v = np.asarray(values, np.float64)[rows, cols]
    return float(np.clip(v / max(high, 1e-12), 0, 1).mean()) if v.size else 0.0


def thin_ticks(n: int, max_labels: int) -> list[int]:
    """At most ``max_labels`` evenly spaced tick positions of ``0 .. n-1`` (labels that would
    overlap are dropped, not drawn on top of each other)."""
    step = max(1, int(np.ceil(n / max(1, max_labels))))
    return list(range(0, n, step))


@dataclass
class PatternWindow:
    """A bounded view of one head's pattern ``[q, k]``.

    Rows are the queries ``q_start <= q < q_end``; columns are the keys in the same range
    exactly, plus the keys outside it pooled into at most :data:`CONTEXT_BINS` ranges per side
    (each column's value is the attention *mass* on its keys). ``values`` is
    ``[n_rows, n_cols]``; ``col_ranges[j]`` is the half-open key range of column ``j``.
    """

    q_start: int
    q_end: int
    col_ranges: list[tuple[int, int]]
    values: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.values.size)

    def column_of(self, key: int) -> int | None:
        """The column that holds ``key`` (None when it is outside every column)."""
        for j, (a, b) in enumerate(self.col_ranges):
            if a <= key < b:
                return j
        return None

    def sink_mask(self) -> np.ndarray:
        """``[n_rows, n_cols]`` True in the column holding key 0 alone (the usual sink)."""
        m = np.zeros(self.values.shape, bool)
        j = self.column_of(0)
        if j is not None and self.col_ranges[j] == (0, 1):
            m[:, j] = True
        return m


def _bins(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    if hi <= lo:
        return []
    edges = np.unique(np.linspace(lo, hi, min(n, hi - lo) + 1).round().astype(int))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def window_pattern(pattern: np.ndarray, start: int, size: int,
                   exact: Sequence[tuple[int, int]] = ()) -> PatternWindow:
    """Cut ``pattern`` ``[q, k]`` to at most ``size`` (<= MAX_WINDOW) rows and
    ``size + 2 * CONTEXT_BINS + 1`` columns (+ at most :data:`MAX_EXACT` for ``exact``); the
    first key stays exact (it is the usual sink), and so do the keys in the ``exact`` ranges
    ``[lo, hi)`` (the first two) before the window (keys a task is about, e.g. a needle, or a
    query's top key)."""
    n_q, n_k = pattern.shape
    size = int(max(1, min(size, MAX_WINDOW, n_q)))
    start = int(min(max(0, start), n_q - size))
    end = start + size
    k_lo, k_hi = min(start, n_k), min(end, n_k)
    cols: list[tuple[int, int]] = []
    if k_lo > 0:
        cols.append((0, 1))
        keep = sorted({k for lo, hi in exact[:2] for k in range(max(1, lo), min(k_lo, hi))})[:MAX_EXACT]
        if not keep:
            cols += _bins(1, k_lo, CONTEXT_BINS)
        at = 1
        for k in keep:
            cols += _bins(at, k, max(1, CONTEXT_BINS // 2)) + [(k, k + 1)]
            at = k + 1
        if keep:
            cols += _bins(at, k_lo, max(1, CONTEXT_BINS // 2))
    cols += [(k, k + 1) for k in range(k_lo, k_hi)]
    cols += _bins(k_hi, n_k, CONTEXT_BINS)
    rows = pattern[start:end]
    values = np.stack([rows[:, a:b].sum(axis=1) for a, b in cols], axis=1) if cols else np.zeros((size, 0))
    return PatternWindow(start, end, cols, values.astype(np.float32))


def downsample(pattern: np.ndarray, size: int) -> np.ndarray:
    """``[q, k]`` pooled to at most ``[size, size]`` by summing key blocks and averaging query
    blocks (rows still sum to the attention mass), for small multiples of many heads."""
    p = np.asarray(pattern, np.float64)
    n_q, n_k = p.shape
    if n_q <= size and n_k <= size:
        return p.astype(np.float32)
    qe = np.unique(np.linspace(0, n_q, min(size, n_q) + 1).round().astype(int))
    ke = np.unique(np.linspace(0, n_k, min(size, n_k) + 1).round().astype(int))
    cols = np.add.reduceat(p, ke[:-1], axis=1)
    rows = np.add.reduceat(cols, qe[:-1], axis=0) / np.diff(qe)[:, None]
    return rows.astype(np.float32)


def pattern_stats(pattern: np.ndarray, skip: int = 1) -> dict[str, float]:
    """Summary numbers of one head's pattern ``[q, k]``, averaged over queries ``>= skip``.

    entropy (nats), first-token mass, previous-token mass, self mass, mean distance
    ``q - k`` weighted by attention, and the largest single weight.
    """
    p = np.asarray(pattern, dtype=np.float64)
    n_q, n_k = p.shape
    first = min(skip, n_q - 1)
    rows = p[first:]
    q_idx = np.arange(first, n_q)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1.0)), 0.0), axis=1)
    k_idx = np.arange(n_k)
    prev = np.array([rows[i, q - 1] if 0 < q <= n_k else 0.0 for i, q in enumerate(q_idx)])
    selfm = np.array([rows[i, q] if q < n_k else 0.0 for i, q in enumerate(q_idx)])
    dist = (rows * (q_idx[:, None] - k_idx[None, :])).sum(axis=1)
    return {
        "entropy": float(ent.mean()),
        "first_token_mass": float(rows[:, 0].mean()),
        "prev_token_mass": float(prev.mean()),
        "self_mass": float(selfm.mean()),
        "mean_distance": float(dist.mean()),
        "max_weight": float(rows.max()),
    }


# ---------------------------------------------------------------------------------------
# 2-D maps
# ---------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where head-map embeddings are cached ($ATTNLENS_CACHE or ~/.cache/attnlens, then dashboard-maps)."""
    root = os.environ.get("ATTNLENS_CACHE") or str(Path.home() / ".cache" / "attnlens")
    return Path(root) / "dashboard-maps"


def embed_2d(x: np.ndarray, method: str = "umap", seed: int = 0, n_neighbors: int = 15, *,
             cache: bool = False) -> np.ndarray:
    """``[n, f]`` -> ``[n, 2]``: UMAP (umap-learn) or PCA (numpy SVD, instant, for tests and
    for fewer than 4 points). Constant input gives points spread on a line.

    With ``cache``, a UMAP embedding is stored under :func:`cache_dir`, keyed by a hash of
    the input and the settings, so the same folder's map opens at once the next time.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if x.shape[1] == 0 or np.allclose(x, x[:1]):
        return np.stack([np.arange(n, dtype=float), np.zeros(n)], axis=1)
    if method == "umap" and n >= 4:
        key = hashlib.sha256(x.tobytes() + f"{x.shape}|{seed}|{n_neighbors}".encode()).hexdigest()[:24]
        path = cache_dir() / f"umap-{key}.npy"
        if cache and path.is_file():
            try:
                out = np.load(path)
                if out.shape == (n, 2):
                    return out
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed
        import umap  # slow import (numba): only when a UMAP map is computed

        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, n - 1)), random_state=seed,
                            n_jobs=1, init="random" if n < 10 else "spectral")
        out = np.asarray(reducer.fit_transform(x), dtype=np.float64)
        if cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, out)
                os.replace(tmp, path)
            except OSError:
                pass  # an unwritable cache only costs the recomputation
        return out
    xc = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    out = u[:, :2] * s[:2]
    return out if out.shape[1] == 2 else np.concatenate([out, np.zeros((n, 2 - out.shape[1]))], axis=1)


def qk_points(queries: np.ndarray, keys: np.ndarray, max_points: int = 400) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:
    """AttentionViz's joint space: keys translated so their centroid is the queries' and scaled
    to the queries' mean norm (dot products keep their ranking per query up to a constant).

    Returns ``(points [m, d_head], is_key [m] bool, position [m] int)``, evenly subsampled so
    that at most ``max_points`` queries and as many keys remain.
    """
    q, k = np.asarray(queries, np.float64), np.asarray(keys, np.float64)
    k = k - k.mean(axis=0) + q.mean(axis=0)
    qn, kn = np.linalg.norm(q, axis=1).mean(), np.linalg.norm(k, axis=1).mean()
    if kn > 0:
        k = k * (qn / kn)
    qi = np.unique(np.linspace(0, len(q) - 1, min(len(q), max_points)).round().astype(int))
    ki = np.unique(np.linspace(0, len(k) - 1, min(len(k), max_points)).round().astype(int))
    pts = np.concatenate([q[qi], k[ki]])
    is_key = np.concatenate([np.zeros(len(qi), bool), np.ones(len(ki), bool)])
    return pts, is_key, np.concatenate([qi, ki])
