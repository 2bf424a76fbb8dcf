"""The result objects every analysis returns, and how they are saved.

A :class:`HeadScores` holds one number per (layer, head) plus named extra arrays and
the parameters and provenance that produced it. A results folder holds any number of
them as ``NAME.json`` (everything small, human-readable) next to ``NAME.safetensors``
(the arrays). Dashboards and reports read these files and never load a model.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


class ResultError(ValueError):
    """A results file that is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: enough to reproduce it."""

    model: str
    weights_sha256: str | None = None
    seeds: tuple[int, ...] = ()
    prompts: str = ""  # a short description of the inputs (e.g. "8 built-in prompts, 60-120 tokens")
    command: str = field(default_factory=lambda: " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    machine: str = field(default_factory=lambda: f"{socket.gethostname()} {platform.machine()} {platform.system()}")
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_model(cls, facts, **kw) -> Provenance:
        from lens.capture.record import package_versions

        return cls(model=facts.name, weights_sha256=facts.weights_sha256, versions=package_versions(), **kw)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Provenance:
        d = dict(d)
        d["seeds"] = tuple(d.get("seeds", ()))
        return cls(**d)


@dataclass
class HeadScores:
    """One score per ``[layer, head]`` for one analysis metric.

    ``scores`` is ``[n_layers, n_heads]`` float (NaN where a head was not scored);
    ``arrays`` holds further named arrays of any shape (per-layer curves, positions);
    ``params`` the settings; ``summary`` a few headline numbers for tables.
    """

    analysis: str  # registry name, e.g. "sinks"
    metric: str  # e.g. "first_token_mass"
    scores: np.ndarray
    provenance: Provenance
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.scores.ndim != 2:
            raise ResultError(f"scores must be [layer, head], got shape {self.scores.shape}")

    @property
    def name(self) -> str:
        return f"{self.analysis}.{self.metric}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape  # type: ignore[return-value]

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads as ``(layer, head, score)``, NaNs last."""
        flat = np.where(np.isnan(self.scores), -np.inf, self.scores).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        n_heads = self.scores.shape[1]
        return [(int(i // n_heads), int(i % n_heads), float(self.scores.flat[i])) for i in order]

    # ---- storage -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"scores": np.ascontiguousarray(self.scores)}
        arrays.update({f"array.{k}": np.ascontiguousarray(v) for k, v in self.arrays.items()})
        save_file(arrays, str(folder / f"{self.name}.safetensors"))
        doc = {
            "format_version": FORMAT_VERSION, "kind": "head_scores", "analysis": self.analysis,
            "metric": self.metric, "description": self.description, "shape": list(self.shape),
            "params": self.params, "summary": self.summary, "arrays": sorted(self.arrays),
            "provenance": self.provenance.to_json(),
        }
        (folder / f"{self.name}.json").write_text(json.dumps(doc, indent=1, default=_jsonable))
        return folder / f"{self.name}.json"

    @classmethod
    def load(cls, json_path: str | Path) -> HeadScores:
        from safetensors.numpy import load_file

        json_path = Path(json_path)
        tensor_path = json_path.with_suffix(".safetensors")
        from safetensors import SafetensorError

        try:
            doc = json.loads(json_path.read_text())
            arrays = load_file(str(tensor_path))
            scores = arrays["scores"]
            if list(scores.shape) != doc["shape"]:
                raise ResultError(f"{tensor_path}: scores shape {list(scores.shape)} != {doc['shape']}")
            extra = {k: arrays[f"array.{k}"] for k in doc.get("arrays", [])}
            return cls(analysis=doc["analysis"], metric=doc["metric"], scores=scores,
                       provenance=Provenance.from_json(doc["provenance"]), description=doc.get("description", ""),
                       params=doc.get("params", {}), summary=doc.get("summary", {}), arrays=extra)
        except ResultError:
            raise
        except FileNotFoundError as err:
            raise ResultError(f"{err.filename} is missing") from None
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise ResultError(f"{json_path.name} cannot be read: {type(err).__name__}: {err}") from None


def load_results(folder: str | Path) -> tuple[list[HeadScores], dict[str, str]]:
    """Every result in ``folder``, and for each unreadable one its file name and why.

    A broken file never hides the others: callers show what loaded and report the rest.
    """
    results, problems = [], {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            problems[path.name] = f"not valid JSON: {err}"
            continue
        if not isinstance(doc, dict) or doc.get("kind") != "head_scores":
            continue
        try:
            results.append(HeadScores.load(path))
        except ResultError as err:
            problems[path.name] = str(err)
    return results, problems


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)
