"""QK head loadings: ``NAME.loadings.json`` (target head, prompt count, settings, provenance) next to
``NAME.loadings.safetensors`` (the ``[layer, head]`` query-side and key-side loadings), written by
``lens heads loadings``.

One result is one target head over a prompt set: ``query[l, h]`` is the mean over prompts of earlier
head ``(l, h)``'s summed terms on the query side of the target's pre-softmax score (the row sums of
:mod:`analyses.qk_attribution`'s terms, query = the last token, key = the head's argmax key), ``key[l, h]``
the same on the key side (column sums). Heads at or after the target's layer are NaN (they cannot
write into its input). The JSON is written last, so a result whose JSON exists is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnlens.formats import _json, _safetensors
from attnlens.formats.errors import CorruptFileError, ResultError
from attnlens.formats.provenance import Provenance

KIND = "qk_head_loadings"
FORMAT_VERSION = 1
READS = (1,)
SUFFIX = ".loadings.json"
TENSORS = ".loadings.safetensors"


@dataclass
class HeadLoadings:
    """Head ``(layer, head)``'s loadings on every earlier head over ``n_prompts`` prompts.

    ``query``, ``key``: ``[n_layers, n_heads]``, NaN from row ``layer`` on; ``key_rule`` says which key
    each prompt's score was explained at.
    """

    name: str
    layer: int
    head: int
    n_prompts: int
    query: np.ndarray
    key: np.ndarray
    provenance: Provenance
    key_rule: str = "the head's argmax key from the last token"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise ResultError(f"a head loadings name must be a plain name, got {self.name!r}")
        self.query, self.key = np.asarray(self.query, np.float32), np.asarray(self.key, np.float32)
        if self.query.ndim != 2 or self.key.shape != self.query.shape:
            raise ResultError(f"query and key loadings must both be [layer, head], got {list(self.query.shape)} "
                              f"and {list(self.key.shape)}")
        n_layers, n_heads = self.query.shape
        if not 0 <= self.layer < n_layers or not 0 <= self.head < n_heads:
            raise ResultError(f"target head L{self.layer}H{self.head} is outside the {n_layers} x {n_heads} loadings")
        if self.n_prompts < 1:
            raise ResultError(f"head loadings need at least one prompt, got {self.n_prompts}")
        for what, arr in (("query", self.query), ("key", self.key)):
            if not np.isfinite(arr[:self.layer]).all():
                raise ResultError(f"{what} loadings of layers 0-{self.layer - 1} must be finite")

    def top(self, side: str, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` earlier heads with the largest loadings by magnitude on ``side`` (``"query"`` or ``"key"``)."""
        if side not in ("query", "key"):
            raise ResultError(f"`side` must be 'query' or 'key', got {side!r}")
        g = (self.query if side == "query" else self.key)[:self.layer].astype(np.float64)
        order = np.argsort(-np.abs(g).ravel(), kind="stable")[:n]
        nh = g.shape[1]
        return [(f"L{int(i) // nh}H{int(i) % nh}", float(g.flat[i])) for i in order]

    def __repr__(self) -> str:
        q = "; ".join(f"{n} {v:+.3g}" for n, v in self.top("query", 3))
        k = "; ".join(f"{n} {v:+.3g}" for n, v in self.top("key", 3))
        return f"HeadLoadings(L{self.layer}H{self.head}, {self.n_prompts} prompts; query side {q}; key side {k})"

    # ---- storage -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``NAME.loadings.safetensors`` then ``NAME.loadings.json`` into ``folder``; returns the JSON path."""
        folder = Path(folder)
        _safetensors.write(folder / f"{self.name}{TENSORS}", {"query": self.query, "key": self.key})
        doc = {"kind": KIND, "format_version": FORMAT_VERSION, "name": self.name, "layer": self.layer,
               "head": self.head, "n_prompts": self.n_prompts, "key_rule": self.key_rule,
               "provenance": self.provenance.to_json()}
        return _json.write_json(folder / f"{self.name}{SUFFIX}", doc)

    @classmethod
    def load(cls, path: str | Path) -> HeadLoadings:
        """Read a result; :class:`ResultError` names the file and what is wrong."""
        path = Path(path)
        try:
            doc = _json.read_doc(path, kind=KIND, versions=READS, what="head loadings file")
            ints = {k: _json.need(doc, k, int, path) for k in ("layer", "head", "n_prompts")}
            tensors = _safetensors.SafetensorsFile(path.with_name(path.name.removesuffix(SUFFIX) + TENSORS))
            arrays = {k: tensors.read(k) for k in ("query", "key")}
            return cls(name=str(doc.get("name") or path.name.removesuffix(SUFFIX)),
                       provenance=Provenance.from_json(doc.get("provenance"), str(path)),
                       key_rule=str(doc.get("key_rule") or ""), **ints, **arrays)
        except ResultError as err:
            if str(path) in str(err):
                raise
            raise ResultError(f"{path}: {err}") from None
        except CorruptFileError as err:
            raise ResultError(str(err)) from None
