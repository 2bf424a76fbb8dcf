"""Per-token maps over an input axis, e.g. each decoder token's input saliency over a speech
encoder's frames, next to the capture of the same run (``params["capture"]``, a folder name
relative to the maps' own folder).

On disk: ``ANALYSIS.METRIC.maps.json`` (tokens, axis, settings) + ``.maps.safetensors``
(``map.NAME`` arrays ``[token, position]`` and the axis ``x [position]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats import _json, _safetensors
from attnlens.formats.errors import CorruptFileError, ResultError
from attnlens.formats.provenance import Provenance

KIND = "token_maps"
FORMAT_VERSION = 1
SUFFIX = ".maps.json"


@dataclass
class TokenMaps:
    analysis: str
    metric: str
    tokens: list[str]
    x: np.ndarray  # [position], e.g. seconds at each encoder frame
    maps: dict[str, np.ndarray]  # name -> [token, position]
    provenance: Provenance | None
    x_label: str = "position"
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        self.maps = {str(k): np.asarray(v, dtype=np.float32) for k, v in self.maps.items()}
        for name, m in self.maps.items():
            if m.shape != (len(self.tokens), self.x.size):
                raise ResultError(f"map {name!r} has shape {m.shape}, expected [{len(self.tokens)}, {self.x.size}]")

    @property
    def name(self) -> str:
        return f"{self.analysis}.{self.metric}"

    def __repr__(self) -> str:
        return f"TokenMaps({self.name}: {', '.join(self.maps)} over {len(self.tokens)} tokens x {self.x.size} {self.x_label})"

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        stem = folder / f"{self.name}{SUFFIX}"
        _safetensors.write(stem.with_suffix(".safetensors"), {"x": self.x, **{f"map.{k}": v for k, v in self.maps.items()}})
        doc = {"kind": KIND, "format_version": FORMAT_VERSION, "analysis": self.analysis, "metric": self.metric,
               "tokens": self.tokens, "maps": sorted(self.maps), "x_label": self.x_label,
               "description": self.description, "params": self.params,
               "provenance": None if self.provenance is None else self.provenance.to_json()}
        return _json.write_json(stem, doc)

    @classmethod
    def load(cls, path: str | Path) -> TokenMaps:
        path = Path(path)
        try:
            doc = _json.read_doc(path, kind=KIND, versions=(FORMAT_VERSION,), what="token maps file")
            tokens = _json.need(doc, "tokens", list, path)
            names = _json.need(doc, "maps", list, path)
            if not all(isinstance(t, str) for t in tokens) or not all(isinstance(n, str) for n in names):
                raise CorruptFileError(f"{path}: tokens and maps must be lists of strings")
            tensors = _safetensors.SafetensorsFile(path.with_suffix(".safetensors"))
            params = doc.get("params") or {}
            if not isinstance(params, dict):
                raise CorruptFileError(f"{path}: params must be an object")
            return cls(analysis=_json.need(doc, "analysis", str, path), metric=_json.need(doc, "metric", str, path),
                       tokens=tokens, x=tensors.read("x"), maps={n: tensors.read(f"map.{n}") for n in names},
                       provenance=None if doc.get("provenance") is None else
                       Provenance.from_json(doc.get("provenance"), str(path)),
                       x_label=str(doc.get("x_label", "position")), description=str(doc.get("description") or ""),
                       params=params)
        except ResultError:
            raise
        except CorruptFileError as err:
            raise ResultError(str(err)) from None
