"""Head profiles and head types for the head map: one row of z-scored scores per head.

A head's *type* comes from the taxonomy when the folder has its scores: the largest of its
induction, duplicate-token and previous-token scores that reaches :data:`TYPE_THRESHOLD`,
else "local" when its local score does (local mass counts the previous token too, so it is
only the type of heads that are none of the others), else "sink" when its sink score
(taxonomy's, else the first-token mass) does, else "none above threshold".
Categorical results (a head type code) are not features: a code is not an amount.
Positional is left out: sinks and previous-token heads are positional too. Without taxonomy
scores the map says what it colours by: the score each head stands out in most (largest |z|
of at least :data:`STANDOUT_Z`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from attnlens.dashboards.selection import ModelResults

TYPE_THRESHOLD = 0.4  # the taxonomy's own summary counts heads above 0.4 (analyses/taxonomy.py)
STANDOUT_Z = 2.0
TAXONOMY_TYPES = ("induction", "duplicate_token", "previous_token", "local")  # the specific ones first
NO_TYPE = "none above threshold"
SINK = "sink"
SINK_SCORES = (("taxonomy", "sink"), ("sinks", "first_token_mass"), ("summary", "sink_mass"))  # first found is used
MIN_SCORES = 3  # a map of heads placed by fewer scores than this is an arc or a line, not a map
TYPICAL = "typical"


@dataclass
class HeadProfiles:
    """``features`` ``[n_layers * n_heads, n_scores]`` z-scored (NaN -> 0), row ``layer * n_heads + head``."""

    layers: np.ndarray  # [n]
    heads: np.ndarray  # [n]
    features: np.ndarray  # [n, f]
    feature_names: list[str]
    types: list[str]  # [n]
    color_by: str  # what `types` means, for the legend's title

    @property
    def n(self) -> int:
        return int(self.layers.size)


def head_profiles(sel: ModelResults) -> HeadProfiles:
    n_layers, n_heads = sel.shape
    n = n_layers * n_heads
    layers, heads = np.divmod(np.arange(n), max(n_heads, 1))
    cols, names = [], []
    dup = Counter(r.name for r in sel.results.values())
    for label, r in sel.results.items():
        if r.scale == "categorical":
            continue
        v = r.scores.ravel().astype(np.float64)
        finite = v[np.isfinite(v)]
        if finite.size == 0:
            continue
        sd = finite.std()
        z = (v - finite.mean()) / sd if sd > 0 else np.zeros_like(v)
        cols.append(np.nan_to_num(z))
        names.append(r.name if dup[r.name] == 1 else label)
    feats = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
    types = taxonomy_types(sel)
    if types is not None:
        color_by = (f"taxonomy type: the largest of the induction, duplicate-token and previous-token scores "
                    f"reaching {TYPE_THRESHOLD}, else local if its local score does, else sink if its sink score "
                    "does")
    else:
        color_by = f"the score each head stands out in most (|z| >= {STANDOUT_Z:g}; else typical)"
        types = []
        for row in feats:
            if row.size == 0 or np.max(np.abs(row)) < STANDOUT_Z:
                types.append(TYPICAL)
            else:
                j = int(np.argmax(np.abs(row)))
                types.append(f"{'high' if row[j] > 0 else 'low'} {names[j]}")
    return HeadProfiles(layers, heads, feats, names, types, color_by)


def taxonomy_types(sel: ModelResults) -> list[str] | None:
    """Per head (row-major), its taxonomy type, "none" below the threshold; None without taxonomy results."""
    grids = {}
    for r in sel.results.values():
        if r.analysis == "taxonomy" and r.metric in TAXONOMY_TYPES:
            grids.setdefault(r.metric, r.scores)
    if not grids:
        return None
    sink = next((r.scores for a, m in SINK_SCORES for r in sel.results.values() if (r.analysis, r.metric) == (a, m)),
                None)
    n = next(iter(grids.values())).size
    out = []
    for i in range(n):
        specific = [(float(grids[m].flat[i]), m) for m in TAXONOMY_TYPES[:3] if m in grids
                    and np.isfinite(grids[m].flat[i]) and grids[m].flat[i] >= TYPE_THRESHOLD]
        if specific:
            out.append(max(specific)[1].replace("_", "-"))
        elif "local" in grids and np.isfinite(grids["local"].flat[i]) and grids["local"].flat[i] >= TYPE_THRESHOLD:
            out.append("local")
        elif sink is not None and sink.size == n and np.isfinite(sink.flat[i]) and sink.flat[i] >= TYPE_THRESHOLD:
            out.append(SINK)  # after the others: in a sink-dominated model most heads also pass this
        else:
            out.append(NO_TYPE)
    return out
