"""QK attribution results: ``NAME.qk.json`` (tokens, components, settings, provenance) next to
``NAME.qk.safetensors`` (the terms and per-key arrays), written by ``lens heads qk``.

One result is one head, one query position and every key ``0..q``: ``terms[k, i, j]`` is the
part of the pre-softmax score from query-side component ``i`` times key-side component ``j``
(see :mod:`analyses.qk_attribution` for the linearisation). Components are small typed ids
(:class:`Contributor`), never strings parsed back; their labels (``L17H3``, ``embed[Mary]``)
are made when shown. The JSON is written last, so a result whose JSON exists is complete.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats import _json, _safetensors
from attnlens.formats.errors import CorruptFileError, ResultError
from attnlens.formats.provenance import Provenance

KIND = "qk_attribution"
FORMAT_VERSION = 1
READS = (1,)
SUFFIX = ".qk.json"
MAX_COMPONENTS = 100_000


class Kind(str, enum.Enum):
    EMBED = "embed"  # token embedding (with any embedding scale the family applies)
    POS = "pos"  # learned position embedding (GPT-2 style)
    HEAD = "head"
    MLP = "mlp"
    OUT_BIAS = "b_O"  # the output projections' biases of all earlier layers
    BIAS = "bias"  # the attributed layer's norm bias and query/key projection bias


@dataclass(frozen=True)
class Contributor:
    """One contributor to the residual stream entering the attributed layer (a head, an MLP, the embedding, ...)."""

    kind: Kind
    layer: int = -1
    head: int = -1

    def label(self, token: str | None = None, pos: int | None = None) -> str:
        """``L17H3``, ``MLP5``, ``embed[Mary]``, ``pos[3]``, ``b_O``, ``bias``."""
        if self.kind is Kind.HEAD:
            return f"L{self.layer}H{self.head}"
        if self.kind is Kind.MLP:
            return f"MLP{self.layer}"
        if self.kind is Kind.EMBED and token is not None:
            return f"embed[{token}]"
        if self.kind is Kind.POS and pos is not None:
            return f"pos[{pos}]"
        return self.kind.value

    def to_json(self) -> list:
        return [self.kind.value, self.layer, self.head]


@dataclass
class QKResult:
    """One head's score decomposition from ``query_pos`` to keys ``0..query_pos``.

    ``terms``: ``[k, comp, comp]`` (query-side x key-side); ``scores``, ``pattern``: ``[k]``
    (the model's pre-softmax scores and probabilities); ``ov``: ``[answer, k]`` what the head
    writes at the query through each key on each answer's unembedding direction.
    """

    name: str
    layer: int
    head: int
    kv_head: int
    query_pos: int
    key_pos: int
    tokens: list[str]
    components: list[Contributor]
    terms: np.ndarray
    scores: np.ndarray
    pattern: np.ndarray
    provenance: Provenance
    scale: float = 1.0
    answers: list[str] = field(default_factory=list)
    ov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    linearisation: str = ""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise ResultError(f"a QK result name must be a plain name, got {self.name!r}")
        n_k, n_c = self.query_pos + 1, len(self.components)
        self.terms = np.asarray(self.terms, np.float32)
        self.scores, self.pattern = np.asarray(self.scores, np.float32), np.asarray(self.pattern, np.float32)
        if self.terms.shape != (n_k, n_c, n_c):
            raise ResultError(f"terms have shape {list(self.terms.shape)}, expected [{n_k}, {n_c}, {n_c}] "
                              f"(keys 0-{self.query_pos} x {n_c} components x {n_c})")
        for what, arr in (("scores", self.scores), ("pattern", self.pattern)):
            if arr.shape != (n_k,):
                raise ResultError(f"{what} have shape {list(arr.shape)}, expected [{n_k}] (keys 0-{self.query_pos})")
        if len(self.tokens) <= self.query_pos:
            raise ResultError(f"query position {self.query_pos} is past the {len(self.tokens)} tokens")
        if not 0 <= self.key_pos <= self.query_pos:
            raise ResultError(f"key position {self.key_pos} is outside keys 0-{self.query_pos}")
        self.ov = np.asarray(self.ov, np.float32).reshape(len(self.answers), n_k) if self.answers else np.zeros((0, n_k), np.float32)

    def names(self, pos: int) -> list[str]:
        """Contributor labels at position ``pos``."""
        return [c.label(self.tokens[pos], pos) for c in self.components]

    def top(self, n: int = 10, key_pos: int | None = None) -> list[tuple[str, float]]:
        """The ``n`` largest terms by magnitude as ``("L17H3 x embed[Mary]", value)``."""
        k = self.key_pos if key_pos is None else key_pos
        t = self.terms[k]
        order = np.argsort(-np.abs(t).ravel(), kind="stable")[:n]
        qn, kn, nc = self.names(self.query_pos), self.names(k), t.shape[1]
        return [(f"{qn[i // nc]} x {kn[i % nc]}", float(t.flat[i])) for i in order]

    def sides(self, key_pos: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(query_side [comp], key_side [comp])``: row and column sums of the terms at ``key_pos``."""
        t = self.terms[self.key_pos if key_pos is None else key_pos].astype(np.float64)
        return t.sum(1), t.sum(0)

    def __repr__(self) -> str:
        top = "; ".join(f"{n} {v:+.3g}" for n, v in self.top(3))
        return (f"QKResult(L{self.layer}H{self.head}, query {self.query_pos} -> key {self.key_pos}, score "
                f"{float(self.scores[self.key_pos]):.4g}; top {top})")

    # ---- storage -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``NAME.qk.safetensors`` then ``NAME.qk.json`` into ``folder``; returns the JSON path."""
        folder = Path(folder)
        _safetensors.write(folder / f"{self.name}.qk.safetensors",
                           {"terms": self.terms, "scores": self.scores, "pattern": self.pattern, "ov": self.ov})
        doc = {"kind": KIND, "format_version": FORMAT_VERSION, "name": self.name, "layer": self.layer,
               "head": self.head, "kv_head": self.kv_head, "query_pos": self.query_pos, "key_pos": self.key_pos,
               "tokens": self.tokens, "components": [c.to_json() for c in self.components], "scale": self.scale,
               "answers": self.answers, "linearisation": self.linearisation,
               "provenance": self.provenance.to_json()}
        return _json.write_json(folder / f"{self.name}{SUFFIX}", doc)

    @classmethod
    def load(cls, path: str | Path) -> QKResult:
        """Read a result; :class:`ResultError` names the file and what is wrong."""
        path = Path(path)
        try:
            doc = _json.read_doc(path, kind=KIND, versions=READS, what="QK attribution file")
            ints = {k: _json.need(doc, k, int, path) for k in ("layer", "head", "kv_head", "query_pos", "key_pos")}
            tokens = _strings(_json.need(doc, "tokens", list, path), path, "tokens")
            answers = _strings(doc.get("answers", []), path, "answers")
            comps = _components(_json.need(doc, "components", list, path), path)
            tensors = _safetensors.SafetensorsFile(path.with_name(path.name.removesuffix(SUFFIX) + ".qk.safetensors"))
            arrays = {k: tensors.read(k) for k in ("terms", "scores", "pattern", "ov")}
            scale = _json.need(doc, "scale", (int, float), path)
            return cls(name=str(doc.get("name") or path.name.removesuffix(SUFFIX)), tokens=tokens, components=comps,
                       provenance=Provenance.from_json(doc.get("provenance"), str(path)), scale=float(scale),
                       answers=answers, linearisation=str(doc.get("linearisation") or ""), **ints, **arrays)
        except ResultError as err:
            if str(path) in str(err):
                raise
            raise ResultError(f"{path}: {err}") from None
        except CorruptFileError as err:
            raise ResultError(str(err)) from None


def _strings(value: Any, path: Path, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptFileError(f"{path}: {what} must be a list of strings")
    return list(value)


def _components(value: list, path: Path) -> list[Contributor]:
    if len(value) > MAX_COMPONENTS:
        raise CorruptFileError(f"{path}: {len(value)} components, more than {MAX_COMPONENTS}")
    kinds = {k.value: k for k in Kind}
    out = []
    for i, c in enumerate(value):
        if (not isinstance(c, list) or len(c) != 3 or c[0] not in kinds
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in c[1:])):
            raise CorruptFileError(f"{path}: components[{i}] must be [kind, layer, head] with kind one of "
                                   f"{', '.join(kinds)}, got {str(c)[:60]}")
        out.append(Contributor(kinds[c[0]], c[1], c[2]))
    return out
