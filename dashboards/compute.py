"""Numpy helpers behind the views: bounded windows of long patterns, per-head statistics,
head profiles and types, and 2-D embeddings (UMAP, or PCA where UMAP is not wanted).

Everything takes and returns numpy arrays; nothing here draws or loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dashboards.data import ResultsFolder

MAX_WINDOW = 256  # query rows shown at once, whatever the user asks
CONTEXT_BINS = 16  # keys outside the window are pooled into at most this many columns per side


def token_label(tok: str, width: int = 10) -> str:
    """A token made visible on an axis: spaces as '␣', newlines as '↵', long ones cut."""
    t = tok.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return t if len(t) <= width else t[: width - 1] + "…"


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


def _bins(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    if hi <= lo:
        return []
    edges = np.unique(np.linspace(lo, hi, min(n, hi - lo) + 1).round().astype(int))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def window_pattern(pattern: np.ndarray, start: int, size: int) -> PatternWindow:
    """Cut ``pattern`` ``[q, k]`` to at most ``size`` (<= MAX_WINDOW) rows and
    ``size + 2 * CONTEXT_BINS + 1`` columns; the first key stays exact (it is the usual sink)."""
    n_q, n_k = pattern.shape
    size = int(max(1, min(size, MAX_WINDOW, n_q)))
    start = int(min(max(0, start), n_q - size))
    end = start + size
    k_lo, k_hi = min(start, n_k), min(end, n_k)
    cols: list[tuple[int, int]] = []
    if k_lo > 0:
        cols.append((0, 1))
        cols += _bins(1, k_lo, CONTEXT_BINS)
    cols += [(k, k + 1) for k in range(k_lo, k_hi)]
    cols += _bins(k_hi, n_k, CONTEXT_BINS)
    rows = pattern[start:end]
    values = np.stack([rows[:, a:b].sum(axis=1) for a, b in cols], axis=1) if cols else np.zeros((size, 0))
    return PatternWindow(start, end, cols, values.astype(np.float32))


def pattern_stats(pattern: np.ndarray, skip: int = 1) -> dict[str, float]:
    """Summary numbers of one head's pattern ``[q, k]``, averaged over queries ``>= skip``.

    entropy (nats), first-token mass, previous-token mass, self mass, mean distance
    ``q - k`` weighted by attention, and the largest single weight.
    """
    p = np.asarray(pattern, dtype=np.float64)
    n_q, n_k = p.shape
    rows = p[min(skip, n_q - 1):]
    q_idx = np.arange(min(skip, n_q - 1), n_q)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(rows > 0, rows * np.log(rows), 0.0), axis=1)
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
# head profiles, types and 2-D maps
# ---------------------------------------------------------------------------------------
@dataclass
class HeadProfiles:
    """One row per head: ``features`` ``[n_heads_total, n_features]`` z-scored, NaN -> 0."""

    layers: np.ndarray  # [n]
    heads: np.ndarray  # [n]
    features: np.ndarray  # [n, f]
    feature_names: list[str]
    types: list[str]  # [n] a head type per head


def head_profiles(folder: ResultsFolder) -> HeadProfiles:
    """Profiles of every head from every result of the folder's main shape.

    Head types come from a ``taxonomy`` result whose scores are type codes named by
    ``params["type_names"]`` when the folder has one; otherwise each head is typed by the metric
    it stands out most in (largest |z|, marked high or low), or "typical" when none does.
    """
    n_layers, n_heads = folder.shape
    rs = [r for r in folder.results if r.shape == (n_layers, n_heads)]
    layers, heads = np.divmod(np.arange(n_layers * n_heads), max(n_heads, 1))
    cols, names = [], []
    for r in rs:
        if _is_type_codes(r):
            continue
        v = r.scores.ravel()
        mu, sd = np.nanmean(v) if np.isfinite(v).any() else 0.0, np.nanstd(v) if np.isfinite(v).any() else 0.0
        z = (v - mu) / sd if sd > 0 else np.zeros_like(v)
        cols.append(np.nan_to_num(z))
        names.append(r.name)
    feats = np.stack(cols, axis=1) if cols else np.zeros((n_layers * n_heads, 0))
    types = _taxonomy_types(folder, n_layers, n_heads)
    if types is None:
        types = []
        for row in feats:
            if row.size == 0 or np.max(np.abs(row)) < 1.0:
                types.append("typical")
            else:
                j = int(np.argmax(np.abs(row)))
                types.append(f"{names[j].split('.', 1)[-1]} {'high' if row[j] > 0 else 'low'}")
    return HeadProfiles(layers, heads, feats, names, types)


def _is_type_codes(r) -> bool:
    """A taxonomy result whose scores are type codes named by ``params["type_names"]``."""
    return r.analysis == "taxonomy" and bool(r.params.get("type_names"))


def _taxonomy_types(folder: ResultsFolder, n_layers: int, n_heads: int) -> list[str] | None:
    tax = next((r for r in folder.results if _is_type_codes(r) and r.shape == (n_layers, n_heads)), None)
    if tax is None:
        return None
    names = [str(s) for s in tax.params.get("type_names", [])]
    out = []
    for v in tax.scores.ravel():
        if not np.isfinite(v):
            out.append("unscored")
        else:
            i = int(v)
            out.append(names[i] if 0 <= i < len(names) else f"type {i}")
    return out


def embed_2d(x: np.ndarray, method: str = "umap", seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """``[n, f]`` -> ``[n, 2]``: UMAP (umap-learn) or PCA (numpy SVD, instant, for tests and
    for fewer than 4 points). Constant input gives points spread on a line."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if x.shape[1] == 0 or np.allclose(x, x[:1]):
        return np.stack([np.arange(n, dtype=float), np.zeros(n)], axis=1)
    if method == "umap" and n >= 4:
        import umap  # slow import (numba): only when a UMAP view is shown

        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, n - 1)), random_state=seed,
                            n_jobs=1, init="random" if n < 10 else "spectral")
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)
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
