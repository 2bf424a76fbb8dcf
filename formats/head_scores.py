"""Head scores: one number per ``[layer, head]`` for one analysis metric, the result type of
every head analysis.

On disk: ``ANALYSIS.METRIC.json`` (everything small and human-readable: description,
params, summary, provenance) next to ``ANALYSIS.METRIC.safetensors`` (the score grid and any
further arrays). The JSON is written last, so a result whose JSON exists is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats import _json, _safetensors
from attnlens.formats.errors import CorruptFileError, ResultError
from attnlens.formats.provenance import Provenance

KIND = "head_scores"
FORMAT_VERSION = 2
READS = (1, 2)  # version 1: the same fields, NaN written as bare NaN
MAX_LAYERS_HEADS = 100_000
SCALES = ("sequential", "signed", "categorical")  # how the numbers read (see HeadScores.scale)
LEGACY_SIGNED = ("circuit", "ablation")  # their files from before ``scale`` was written hold effects


@dataclass
class HeadScores:
    """One score per ``[layer, head]`` for one analysis metric.

    ``scores`` is ``[n_layers, n_heads]`` float (NaN where a head was not scored);
    ``arrays`` holds further named arrays of any shape (per-layer curves, positions);
    ``params`` the settings; ``summary`` a few headline numbers for tables.
    ``scale`` says how the numbers read, so views draw and rank them right: ``"sequential"``
    (more is more), ``"signed"`` (an effect either way around zero: ranked by ``|score|``,
    drawn on a scale centred on zero) or ``"categorical"`` (codes ``0..len(categories)-1``
    naming ``categories``: not ranked, drawn with a legend).
    """

    analysis: str  # registry name, e.g. "sinks"
    metric: str  # e.g. "first_token_mass"
    scores: np.ndarray
    provenance: Provenance
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    scale: str = "sequential"
    categories: list[str] = field(default_factory=list)  # categorical: the name of code i

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.scale not in SCALES:
            raise ResultError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        self.categories = [str(c) for c in self.categories]
        if self.scale == "categorical" and not self.categories:
            codes = self.scores[np.isfinite(self.scores)]
            self.categories = [str(i) for i in range(int(codes.max()) + 1 if codes.size else 0)]
        if self.scores.ndim != 2:
            raise ResultError(f"scores must be [layer, head], got shape {self.scores.shape}")
        for part in (self.analysis, self.metric):
            if not part or "/" in part or "\\" in part or part.startswith("."):
                raise ResultError(f"analysis and metric must be plain names, got {self.analysis!r}.{self.metric!r}")

    @property
    def name(self) -> str:
        return f"{self.analysis}.{self.metric}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape  # type: ignore[return-value]

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads as ``(layer, head, score)``, NaNs last; for a signed
        scale the ``k`` largest ``|score|`` (the strongest negative heads too)."""
        key = np.abs(self.scores) if self.scale == "signed" else self.scores
        flat = np.where(np.isnan(key), -np.inf, key).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        n_heads = self.scores.shape[1]
        return [(int(i // n_heads), int(i % n_heads), float(self.scores.flat[i])) for i in order]

    def __repr__(self) -> str:
        finite = self.scores[np.isfinite(self.scores)]
        rng = f"{finite.min():.3g}..{finite.max():.3g}" if finite.size else "no finite scores"
        top = ", ".join(f"L{la}H{h} {v:.3g}" for la, h, v in self.top(3) if np.isfinite(v))
        return f"HeadScores({self.name}, {self.shape[0]}x{self.shape[1]} heads, {rng}; top {top})"

    # ---- storage -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``NAME.safetensors`` then ``NAME.json`` into ``folder``; returns the JSON path."""
        folder = Path(folder)
        arrays = {"scores": self.scores}
        for k, v in self.arrays.items():
            arrays[f"array.{k}"] = np.asarray(v)
        _safetensors.write(folder / f"{self.name}.safetensors", arrays)
        doc = {
            "kind": KIND, "format_version": FORMAT_VERSION, "analysis": self.analysis, "metric": self.metric,
            "description": self.description, "shape": list(self.shape), "params": self.params,
            "summary": self.summary, "arrays": sorted(self.arrays), "provenance": self.provenance.to_json(),
            "scale": self.scale, "categories": self.categories,
        }
        return _json.write_json(folder / f"{self.name}.json", doc)

    @classmethod
    def load(cls, json_path: str | Path) -> HeadScores:
        """Read a result; :class:`ResultError` names the file and what is wrong."""
        json_path = Path(json_path)
        try:
            doc = _json.read_doc(json_path, kind=KIND, versions=READS, what="head scores file")
            analysis = _json.need(doc, "analysis", str, json_path)
            metric = _json.need(doc, "metric", str, json_path)
            shape = _json.int_list(_json.need(doc, "shape", list, json_path), json_path, "shape", hi=MAX_LAYERS_HEADS)
            names = doc.get("arrays", [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CorruptFileError(f"{json_path}: arrays must be a list of names")
            for key in ("params", "summary"):
                if not isinstance(doc.get(key, {}), dict):
                    raise CorruptFileError(f"{json_path}: {key} must be an object")
            tensors = _safetensors.SafetensorsFile(json_path.with_suffix(".safetensors"))
            scores = tensors.read("scores")
            if list(scores.shape) != shape or len(shape) != 2:
                raise CorruptFileError(f"{tensors.path}: scores have shape {list(scores.shape)}, the JSON says {shape}")
            arrays = {n: tensors.read(f"array.{n}") for n in names}
            scale, categories = _scale_of(doc, json_path)
            return cls(analysis=analysis, metric=metric, scores=scores.astype(np.float64),
                       provenance=Provenance.from_json(doc.get("provenance"), str(json_path)),
                       description=str(doc.get("description") or ""), params=doc.get("params", {}),
                       summary=doc.get("summary", {}), arrays=arrays, scale=scale, categories=categories)
        except ResultError:
            raise
        except CorruptFileError as err:
            raise ResultError(str(err)) from None


def _scale_of(doc: dict, path: Path) -> tuple[str, list[str]]:
    """``(scale, categories)`` of a file; files written before the field existed: taxonomy's
    head types (their ``type_names`` param) are categorical, circuit and ablation effects
    (written only by ``lens circuit`` and ``lens ablate``) signed, everything else sequential."""
    scale = doc.get("scale")
    categories = doc.get("categories", [])
    if scale is None:
        names = (doc.get("params") or {}).get("type_names")
        if isinstance(names, list) and names:
            return "categorical", [str(n) for n in names]
        return ("signed" if doc.get("analysis") in LEGACY_SIGNED else "sequential"), []
    if scale not in SCALES:
        raise CorruptFileError(f"{path}: scale must be one of {', '.join(SCALES)}, got {scale!r}"[:200])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise CorruptFileError(f"{path}: categories must be a list of names")
    return scale, categories
