"""Curves: y against x for one or more labelled series, e.g. an ablation sweep over layers,
needle accuracy against the number of heads ablated, faithfulness against circuit size.

On disk: one ``ANALYSIS.METRIC.curves.json`` (curves are small, so the numbers sit in the JSON).
A series is ``[n_points]`` or ``[n_runs, n_points]`` (several seeds: views show the mean and
the spread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats import _json
from attnlens.formats.errors import CorruptFileError, ResultError
from attnlens.formats.provenance import Provenance

KIND = "curves"
FORMAT_VERSION = 1
SUFFIX = ".curves.json"
MAX_POINTS = 100_000


@dataclass
class Curves:
    analysis: str
    metric: str
    x: np.ndarray  # [n_points]
    series: dict[str, np.ndarray]  # label -> [n_points] or [n_runs, n_points]
    provenance: Provenance
    x_label: str = "x"
    y_label: str = "y"
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    x_ticks: list[str] = field(default_factory=list)  # optional labels of the x points

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        self.series = {str(k): np.asarray(v, dtype=np.float64) for k, v in self.series.items()}
        for label, y in self.series.items():
            if y.ndim not in (1, 2) or y.shape[-1] != self.x.size:
                raise ResultError(f"series {label!r} has shape {y.shape}, expected [{self.x.size}] or "
                                  f"[runs, {self.x.size}]")
        if self.x_ticks and len(self.x_ticks) != self.x.size:
            raise ResultError(f"x_ticks has {len(self.x_ticks)} labels for {self.x.size} points")

    @property
    def name(self) -> str:
        return f"{self.analysis}.{self.metric}"

    def __repr__(self) -> str:
        return f"Curves({self.name}, {len(self.series)} series over {self.x.size} points of {self.x_label})"

    def save(self, folder: str | Path) -> Path:
        doc = {"kind": KIND, "format_version": FORMAT_VERSION, "analysis": self.analysis, "metric": self.metric,
               "description": self.description, "x_label": self.x_label, "y_label": self.y_label,
               "x": self.x, "x_ticks": list(self.x_ticks), "series": self.series, "params": self.params,
               "summary": self.summary, "provenance": self.provenance.to_json()}
        return _json.write_json(Path(folder) / f"{self.name}{SUFFIX}", doc)

    @classmethod
    def load(cls, path: str | Path) -> Curves:
        path = Path(path)
        try:
            doc = _json.read_doc(path, kind=KIND, versions=(FORMAT_VERSION,), what="curves file")
            x = _numbers(_json.need(doc, "x", list, path), path, "x")
            series = _json.need(doc, "series", dict, path)
            ys = {}
            for label, values in series.items():
                if not isinstance(values, list):
                    raise CorruptFileError(f"{path}: series {label!r} must be a list")
                ys[label] = _numbers(values, path, f"series {label!r}")
            ticks = doc.get("x_ticks") or []
            if not isinstance(ticks, list):
                raise CorruptFileError(f"{path}: x_ticks must be a list")
            return cls(analysis=_json.need(doc, "analysis", str, path), metric=_json.need(doc, "metric", str, path),
                       x=x, series=ys, provenance=Provenance.from_json(doc.get("provenance"), str(path)),
                       x_label=str(doc.get("x_label", "x")), y_label=str(doc.get("y_label", "y")),
                       description=str(doc.get("description") or ""), params=_obj(doc, "params", path),
                       summary=_obj(doc, "summary", path), x_ticks=[str(t) for t in ticks])
        except ResultError:
            raise
        except CorruptFileError as err:
            raise ResultError(str(err)) from None


def _obj(doc: dict, key: str, path: Path) -> dict:
    v = doc.get(key, {})
    if not isinstance(v, dict):
        raise CorruptFileError(f"{path}: {key} must be an object")
    return v


def _numbers(values: list, path: Path, field: str) -> np.ndarray:
    """A 1-D or 2-D list of numbers (null = NaN)."""
    try:
        a = np.asarray([[np.nan if v is None else v for v in row] if isinstance(row, list) else
                        (np.nan if row is None else row) for row in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise CorruptFileError(f"{path}: {field} must hold numbers") from None
    if a.ndim not in (1, 2) or a.size > MAX_POINTS:
        raise CorruptFileError(f"{path}: {field} must be a list of at most {MAX_POINTS} numbers (or of such lists)")
    return a
