"""ViT heads ("How Does Attention Work in Vision Transformers? A Visual Analytics Attempt").

Four per-head views of a vision transformer, each a pure function to :class:`HeadScores`:

- **mean attention distance**: for every patch query, the attention-weighted Euclidean
  distance (in patches) to the patch keys, averaged over queries and images. CLS and
  register tokens are left out on both sides and each query's patch attention is
  renormalised to 1, so the number says how far a head looks *when* it looks at patches
  (``patch_mass`` keeps how much it does). The per-distance breakdown is the head's
  **distance profile**: attention mass at distances [0, 1), [1, 2), ... patches.
- **CLS attention concentration**: the entropy (nats) of the CLS query's attention over
  the patches, renormalised; low entropy = the CLS token reads a few patches.
- **pattern families**: k-means (numpy, deterministic) over the heads' distance profiles;
  family 0 is the most local, the last the most global.
- **head importance by pruning**: ``1 - cosine(CLS embedding, CLS embedding with the head
  zero-ablated)``, from embeddings that :func:`pruned_cls_embeddings` collects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError
from lens.vision import ImageLayout


class VitHeadsError(AnalysisError):
    """Patterns or parameters that do not fit the image layout or the model."""


def patch_distances(layout: ImageLayout) -> Float[np.ndarray, "patch patch"]:
    """Euclidean distance in patches between every two patches of ``layout``'s grid (row-major)."""
    rows, cols = layout.grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.sqrt((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2)


def _check(pattern: Tensor, layout: ImageLayout, layer: int) -> None:
    if pattern.ndim != 4 or pattern.shape[-1] != layout.n_tokens or pattern.shape[-2] != layout.n_tokens:
        raise VitHeadsError(
            f"pattern of layer {layer} has shape {tuple(pattern.shape)}, expected [batch, head, "
            f"{layout.n_tokens}, {layout.n_tokens}] for a {layout.grid[0]}x{layout.grid[1]} grid "
            f"with {layout.prefix} prefix token(s)"
        )


def _grid(n_layers: int, n_heads: int, *extra: int) -> np.ndarray:
    return np.full((n_layers, n_heads, *extra), np.nan)


def attention_distance(patterns: Mapping[int, Float[Tensor, "batch head q k"]], layout: ImageLayout, *,
                       n_layers: int, n_heads: int, provenance: Provenance) -> HeadScores:
    """Mean attention distance per ``[layer, head]`` (in patches), from full patterns.

    ``patterns`` maps layer to a captured pattern over images with ``layout``. Arrays:
    ``profile [layer, head, bin]`` (mean renormalised mass at distance [b, b + 1) patches),
    ``patch_mass [layer, head]`` (mean share of a patch query's attention on patches) and
    ``mean_distance_per_layer [layer]``.
    """
    dist = torch.from_numpy(patch_distances(layout))
    bins = torch.from_numpy(np.floor(patch_distances(layout)).astype(np.int64)).reshape(-1)
    n_bins = int(bins.max()) + 1
    mean, mass, profile = _grid(n_layers, n_heads), _grid(n_layers, n_heads), _grid(n_layers, n_heads, n_bins)
    p = layout.prefix
    for layer, pattern in patterns.items():
        _check(pattern, layout, layer)
        a = pattern[:, :, p:, p:].double()  # patch queries -> patch keys
        m = a.sum(-1, keepdim=True)
        a = a / m.clamp_min(1e-30)
        mean[layer] = (a * dist).sum(-1).mean(dim=(0, 2)).numpy()
        mass[layer] = m[..., 0].mean(dim=(0, 2)).numpy()
        flat = a.reshape(*a.shape[:2], -1)
        per_bin = torch.zeros(*a.shape[:2], n_bins, dtype=torch.float64).index_add_(-1, bins, flat)
        profile[layer] = (per_bin / layout.n_patches).mean(0).numpy()
    return HeadScores(
        analysis="vit_distance", metric="mean_distance", scores=mean, provenance=provenance,
        description="attention-weighted distance (patches) from patch queries to patch keys, "
                    "patch attention renormalised, mean over queries and images",
        params={"grid": list(layout.grid), "patch_size": layout.patch_size, "prefix_tokens": p,
                "bin_width_patches": 1},
        summary={"mean": float(np.nanmean(mean)), "min": float(np.nanmin(mean)), "max": float(np.nanmax(mean)),
                 "max_possible": float(dist.max())},
        arrays={"profile": profile, "patch_mass": mass, "mean_distance_per_layer": np.nanmean(mean, axis=1)},
    )


def cls_concentration(patterns: Mapping[int, Float[Tensor, "batch head q k"]], layout: ImageLayout, *,
                      n_layers: int, n_heads: int, provenance: Provenance) -> HeadScores:
    """Entropy (nats) of CLS -> patch attention (renormalised) per ``[layer, head]``, mean over images.

    Arrays: ``normalized_entropy`` (divided by log(n_patches), 1 = uniform),
    ``cls_patch_mass`` (raw share of CLS attention on patches) and
    ``cls_map [layer, head, rows, cols]`` (mean renormalised CLS attention on the grid).
    """
    rows, cols = layout.grid
    ent, mass, cls_map = _grid(n_layers, n_heads), _grid(n_layers, n_heads), _grid(n_layers, n_heads, rows, cols)
    for layer, pattern in patterns.items():
        _check(pattern, layout, layer)
        a = pattern[:, :, 0, layout.prefix:].double()
        m = a.sum(-1, keepdim=True)
        a = a / m.clamp_min(1e-30)
        ent[layer] = -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean(0).numpy()
        mass[layer] = m[..., 0].mean(0).numpy()
        cls_map[layer] = a.mean(0).reshape(-1, rows, cols).numpy()
    uniform = float(np.log(layout.n_patches))
    return HeadScores(
        analysis="vit_cls", metric="cls_entropy", scores=ent, provenance=provenance,
        description="entropy (nats) of the CLS query's attention over patches, renormalised; "
                    f"uniform = log({layout.n_patches}) = {uniform:.2f}",
        params={"grid": [rows, cols], "prefix_tokens": layout.prefix},
        summary={"uniform_entropy": uniform, "mean": float(np.nanmean(ent)), "min": float(np.nanmin(ent))},
        arrays={"normalized_entropy": ent / uniform, "cls_patch_mass": mass, "cls_map": cls_map},
    )


def kmeans(x: Float[np.ndarray, "n d"], k: int, *, seed: int = 0, n_init: int = 8,
           max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """Deterministic k-means (k-means++ seeding from ``seed``, best of ``n_init``):
    ``(labels [n], centroids [k, d], inertia)``."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise VitHeadsError(f"k must be between 1 and the number of heads ({n}), got {k}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d2 = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
            total = d2.sum()
            idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
            centres.append(x[idx])
        c = np.array(centres)
        labels = None
        for _ in range(max_iter):
            new = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            c = np.array([x[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(k)])
        inertia = float(((x - c[labels]) ** 2).sum())
        if best is None or inertia < best[2] - 1e-12:
            best = (labels, c, inertia)
    return best


def pattern_families(distance: HeadScores, *, k: int = 4, seed: int = 0) -> HeadScores:
    """Cluster heads by the ``profile`` array of :func:`attention_distance` into ``k`` families.

    Families are numbered by their centroid's mean distance (0 = most local). Scores are
    the family per ``[layer, head]`` (NaN where a head has no profile). Arrays:
    ``centroids [k, bin]``, ``family_mean_distance [k]``.
    """
    if "profile" not in distance.arrays:
        raise VitHeadsError(f"{distance.name} has no 'profile' array: give the result of attention_distance")
    profile = distance.arrays["profile"]
    n_layers, n_heads, n_bins = profile.shape
    flat = profile.reshape(-1, n_bins)
    ok = ~np.isnan(flat).any(axis=1)
    labels, centres, inertia = kmeans(flat[ok], k, seed=seed)
    centre_distance = centres @ (np.arange(n_bins) + 0.5)  # bin midpoints
    order = np.argsort(centre_distance, kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    family = np.full(flat.shape[0], np.nan)
    family[ok] = rank[labels]
    sizes = np.bincount(rank[labels], minlength=k)
    return HeadScores(
        analysis="vit_families", metric="family", scores=family.reshape(n_layers, n_heads),
        provenance=distance.provenance, scale="categorical",
        categories=[f"family {i} ({'most local' if i == 0 else 'most global' if i == k - 1 else 'between'})"
                    for i in range(k)],
        description=f"k-means family (0 = most local, {k - 1} = most global) of each head's distance profile",
        params={"k": k, "seed": seed, "features": "vit_distance.profile", **distance.params},
        summary={"sizes": sizes.tolist(), "inertia": inertia},
        arrays={"centroids": centres[order], "family_mean_distance": centre_distance[order]},
    )


def pruning_importance(clean: Float[Tensor, "batch d_model"],
                       pruned: Mapping[tuple[int, int], Float[Tensor, "batch d_model"]], *,
                       n_layers: int, n_heads: int, provenance: Provenance) -> HeadScores:
    """``1 - cos(clean, pruned[(layer, head)])`` per head, mean over images (NaN if not pruned)."""
    scores = _grid(n_layers, n_heads)
    for (layer, head), emb in pruned.items():
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise VitHeadsError(f"pruned head L{layer}H{head} is outside {n_layers} layers x {n_heads} heads")
        if emb.shape != clean.shape:
            raise VitHeadsError(f"pruned L{layer}H{head} embedding has shape {tuple(emb.shape)}, "
                                f"clean has {tuple(clean.shape)}")
        cos = torch.nn.functional.cosine_similarity(clean.double(), emb.double(), dim=-1)
        scores[layer, head] = float((1 - cos).mean())
    return HeadScores(
        analysis="vit_pruning", metric="cls_cosine_drop", scores=scores, provenance=provenance,
        description="1 - cosine similarity of the final CLS embedding with the head zero-ablated vs intact",
        params={"ablation": "zero", "metric": "cosine of last_hidden_state[:, 0]"},
        summary={"n_pruned": len(pruned), "max": float(np.nanmax(scores)) if pruned else float("nan")},
    )


@torch.no_grad()
def pruned_cls_embeddings(lm, image, heads: Iterable[tuple[int, int]]
                          ) -> tuple[Tensor, dict[tuple[int, int], Tensor]]:
    """Run ``lm`` on ``image`` intact and with each head zero-ablated in turn (one forward
    pass per head); returns the CLS embeddings ``[batch, d_model]``, clean and per head.
    Model-side collection for :func:`pruning_importance`."""
    import lens
    from lens import vision

    pixels = vision.pixel_values(lm, image)
    clean = lens.run(lm, pixels, sites=[lens.Site.Z], layers=[0]).last_hidden_state[:, 0]
    out = {}
    for layer, head in heads:
        res = lens.run(lm, pixels, sites=[lens.Site.Z], layers=[layer], edits=lens.zero_ablation([(layer, head)]))
        out[(layer, head)] = res.last_hidden_state[:, 0]
    return clean, out


def vit_head_scores(patterns: Mapping[int, Float[Tensor, "batch head q k"]], layout: ImageLayout, *,
                    n_layers: int, n_heads: int, provenance: Provenance, k: int = 4,
                    seed: int = 0) -> list[HeadScores]:
    """Distance, CLS entropy and families in one call: ``[mean_distance, cls_entropy, family]``."""
    distance = attention_distance(patterns, layout, n_layers=n_layers, n_heads=n_heads, provenance=provenance)
    cls = cls_concentration(patterns, layout, n_layers=n_layers, n_heads=n_heads, provenance=provenance)
    return [distance, cls, pattern_families(distance, k=k, seed=seed)]


__all__ = ["VitHeadsError", "attention_distance", "cls_concentration", "kmeans", "pattern_families",
           "patch_distances", "pruned_cls_embeddings", "pruning_importance", "vit_head_scores"]
