"""Direct logit attribution results: ``NAME.dla.json`` (tokens, positions, targets, settings,
provenance) next to ``NAME.dla.safetensors`` (the attributions), written by ``lens heads dla``.

One result is one prompt: at each chosen position and for each target token (the ones asked
for, then the model's top predictions), every head's, MLP's and embedding's direct share of
the target's logit, with the final norm's scale frozen at its value on this input (see
:mod:`analyses.dla`). The parts sum to the model's logit:
``heads.sum((2, 3)) + mlps.sum(2) + embed + pos_embed + out_bias + bias == logits``. The JSON
is written last, so a result whose JSON exists is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnlens.formats import _json, _safetensors
from attnlens.formats.errors import CorruptFileError, ResultError, SelectionError
from attnlens.formats.provenance import Provenance

KIND = "direct_logit_attribution"
FORMAT_VERSION = 1
READS = (1,)
SUFFIX = ".dla.json"
LINEARISATION = ("final norm's scale frozen at its value on this input (standard linearisation); LayerNorm "
                 "centering folded into the unembedding directions")
REST = ("embed", "pos_embed", "out_bias", "bias")  # the [position, target] parts besides heads and MLPs
REST_LABELS = {"embed": "embed", "pos_embed": "pos", "out_bias": "b_O", "bias": "bias"}
MAX_ITEMS = 10_000


@dataclass
class DLAResult:
    """Per position and target: ``heads`` ``[position, target, layer, head]``, ``mlps``
    ``[position, target, layer]``, the rest (:data:`REST`) and the model's ``logits``
    ``[position, target]``; ``sigma`` ``[position]`` the frozen final-norm divisor. ``targets``
    are token strings (the first ``n_given`` asked for, the rest the model's top predictions)."""

    name: str
    tokens: list[str]
    positions: list[int]
    targets: list[str]
    target_ids: list[int]
    n_given: int
    heads: np.ndarray
    mlps: np.ndarray
    embed: np.ndarray
    pos_embed: np.ndarray
    out_bias: np.ndarray
    bias: np.ndarray
    logits: np.ndarray
    sigma: np.ndarray
    final_norm: str
    tied: bool
    provenance: Provenance
    linearisation: str = LINEARISATION

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise ResultError(f"a DLA result name must be a plain name, got {self.name!r}")
        n_p, n_t = len(self.positions), len(self.targets)
        if not n_p or not n_t:
            raise ResultError(f"a DLA result needs at least one position and one target, got {n_p} and {n_t}")
        if len(self.target_ids) != n_t or not 0 <= self.n_given <= n_t:
            raise ResultError(f"target_ids has {len(self.target_ids)} entries and n_given is {self.n_given}, "
                              f"expected {n_t} ids and 0-{n_t} given")
        if any(not 0 <= p < len(self.tokens) for p in self.positions):
            raise ResultError(f"positions {self.positions} are outside the {len(self.tokens)} tokens")
        self.heads = np.asarray(self.heads, np.float32)
        if self.heads.ndim != 4 or self.heads.shape[:2] != (n_p, n_t):
            raise ResultError(f"heads have shape {list(self.heads.shape)}, expected [{n_p}, {n_t}, layer, head]")
        n_l = self.heads.shape[2]
        self.mlps = self._check("mlps", self.mlps, (n_p, n_t, n_l))
        for k in (*REST, "logits"):
            setattr(self, k, self._check(k, getattr(self, k), (n_p, n_t)))
        self.sigma = self._check("sigma", self.sigma, (n_p,))

    @staticmethod
    def _check(what: str, arr, shape: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(arr, np.float32)
        if a.shape != shape:
            raise ResultError(f"{what} have shape {list(a.shape)}, expected {list(shape)}")
        return a

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``."""
        return self.heads.shape[2], self.heads.shape[3]

    def index(self, position: int | None = None, target: str | int | None = None) -> tuple[int, int]:
        """``(i, j)`` indices of a position (a token position; None: the first chosen) and a target (its
        string, its index in ``targets`` as an int, or None: the first)."""
        p = self.positions[0] if position is None else position
        if p not in self.positions:
            raise SelectionError(f"position {p} was not attributed: this result has positions {self.positions}")
        if target is None:
            t = 0
        elif isinstance(target, int):
            if not 0 <= target < len(self.targets):
                raise SelectionError(f"target index {target} is out of range: this result has targets "
                                     f"0-{len(self.targets) - 1}")
            t = target
        elif target in self.targets:
            t = self.targets.index(target)
        else:
            raise SelectionError(f"target {target!r} was not attributed: one of {', '.join(map(repr, self.targets))}")
        return self.positions.index(p), t

    def totals(self) -> np.ndarray:
        """``[position, target]``: every part summed (float64); equals ``logits`` up to float error."""
        out = self.heads.astype(np.float64).sum((2, 3)) + self.mlps.astype(np.float64).sum(2)
        for k in REST:
            out += getattr(self, k).astype(np.float64)
        return out

    def parts(self, position: int | None = None, target: str | int | None = None) -> list[tuple[str, float]]:
        """Every part at one position and target as ``("L3H1", value)``, ``("MLP2", ...)``, ``("embed", ...)``, in
        model order."""
        i, j = self.index(position, target)
        n_l, n_h = self.shape
        out = [(REST_LABELS["embed"], float(self.embed[i, j])), (REST_LABELS["pos_embed"], float(self.pos_embed[i, j]))]
        for la in range(n_l):
            out += [(f"L{la}H{h}", float(self.heads[i, j, la, h])) for h in range(n_h)]
            out.append((f"MLP{la}", float(self.mlps[i, j, la])))
        out += [(REST_LABELS[k], float(getattr(self, k)[i, j])) for k in ("out_bias", "bias")]
        return out

    def top(self, n: int = 10, position: int | None = None, target: str | int | None = None) -> list[tuple[str, float]]:
        """The ``n`` parts largest by magnitude (NaN parts, e.g. a hybrid's layers without attention, skipped)."""
        parts = [(k, v) for k, v in self.parts(position, target) if np.isfinite(v)]
        return sorted(parts, key=lambda kv: -abs(kv[1]))[:n]

    def __repr__(self) -> str:
        i, j = 0, 0
        top = "; ".join(f"{k} {v:+.3g}" for k, v in self.top(3))
        return (f"DLAResult({self.provenance.model}, position {self.positions[i]}, target {self.targets[j]!r}: logit "
                f"{float(self.logits[i, j]):.4g}; top {top})")

    # ---- storage -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``NAME.dla.safetensors`` then ``NAME.dla.json`` into ``folder``; returns the JSON path."""
        folder = Path(folder)
        arrays = {k: getattr(self, k) for k in ("heads", "mlps", *REST, "logits", "sigma")}
        _safetensors.write(folder / f"{self.name}.dla.safetensors", arrays)
        doc = {"kind": KIND, "format_version": FORMAT_VERSION, "name": self.name, "tokens": self.tokens,
               "positions": self.positions, "targets": self.targets, "target_ids": self.target_ids,
               "n_given": self.n_given, "final_norm": self.final_norm, "tied": self.tied,
               "linearisation": self.linearisation, "provenance": self.provenance.to_json()}
        return _json.write_json(folder / f"{self.name}{SUFFIX}", doc)

    @classmethod
    def load(cls, path: str | Path) -> DLAResult:
        """Read a result; :class:`ResultError` names the file and what is wrong."""
        path = Path(path)
        try:
            doc = _json.read_doc(path, kind=KIND, versions=READS, what="direct logit attribution file")
            tokens = _strings(_json.need(doc, "tokens", list, path), path, "tokens")
            targets = _strings(_json.need(doc, "targets", list, path), path, "targets")
            positions = _json.int_list(_json.need(doc, "positions", list, path), path, "positions", hi=len(tokens))
            ids = _json.int_list(_json.need(doc, "target_ids", list, path), path, "target_ids")
            if len(positions) > MAX_ITEMS or len(targets) > MAX_ITEMS:
                raise CorruptFileError(f"{path}: more than {MAX_ITEMS} positions or targets")
            tensors = _safetensors.SafetensorsFile(path.with_name(path.name.removesuffix(SUFFIX) + ".dla.safetensors"))
            arrays = {k: tensors.read(k) for k in ("heads", "mlps", *REST, "logits", "sigma")}
            return cls(name=str(doc.get("name") or path.name.removesuffix(SUFFIX)), tokens=tokens, positions=positions,
                       targets=targets, target_ids=ids, n_given=_json.need(doc, "n_given", int, path),
                       final_norm=_json.need(doc, "final_norm", str, path), tied=_json.need(doc, "tied", bool, path),
                       provenance=Provenance.from_json(doc.get("provenance"), str(path)),
                       linearisation=str(doc.get("linearisation") or ""), **arrays)
        except ResultError as err:
            if str(path) in str(err):
                raise
            raise ResultError(f"{path}: {err}") from None
        except CorruptFileError as err:
            raise ResultError(str(err)) from None


def _strings(value, path: Path, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptFileError(f"{path}: {what} must be a list of strings")
    return list(value)
