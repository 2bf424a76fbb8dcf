"""One ablation on disk (``lens ablate --heads ... --out``): a set of heads and MLPs replaced
on a task, its effect on the metric, and the same for random sets of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats import _json
from attnlens.formats.errors import CorruptFileError, ResultError
from attnlens.formats.provenance import Provenance

KIND = "ablation"
FORMAT_VERSION = 1
FILE = "ablation.json"


@dataclass
class AblationResult:
    task: str
    method: str  # zero | mean | resample | patch
    metric: str
    heads: list[tuple[int, int]]
    mlps: list[int]
    baseline: float  # the metric with nothing ablated
    ablated: float  # the metric with the set ablated
    n_examples: int
    provenance: Provenance
    random_effects: list[float] = field(default_factory=list)  # effect of each random set of the same size
    random_seeds: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = float("nan")

    @property
    def name(self) -> str:
        """The result's name in a folder (its file is ``ablation.json``)."""
        return FILE.removesuffix(".json")

    @property
    def effect(self) -> float:
        return self.ablated - self.baseline

    @property
    def share_of_random_with_larger_drop(self) -> float:
        """Share of random sets whose effect is at least as negative as this set's (a permutation p-value)."""
        r = np.asarray(self.random_effects, dtype=float)
        return float(np.mean(r <= self.effect)) if r.size else float("nan")

    def __repr__(self) -> str:
        return (f"AblationResult({self.task}: {self.method}-ablating {len(self.heads)} heads + {len(self.mlps)} MLPs, "
                f"{self.metric} {self.baseline:.3f} -> {self.ablated:.3f})")

    def save(self, folder: str | Path) -> Path:
        doc = {"kind": KIND, "format_version": FORMAT_VERSION, "task": self.task, "method": self.method,
               "metric": self.metric, "heads": [list(h) for h in self.heads], "mlps": self.mlps,
               "baseline": self.baseline, "ablated": self.ablated, "effect": self.effect,
               "n_examples": self.n_examples, "random_effects": self.random_effects,
               "random_seeds": self.random_seeds, "params": self.params, "seconds": self.seconds,
               "provenance": self.provenance.to_json()}
        return _json.write_json(Path(folder) / FILE, doc)

    @classmethod
    def load(cls, path: str | Path) -> AblationResult:
        path = Path(path)
        try:
            doc = _json.read_doc(path, kind=KIND, versions=(FORMAT_VERSION,), what="ablation file")
            heads = _json.need(doc, "heads", list, path)
            if not all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) for x in h) for h in heads):
                raise CorruptFileError(f"{path}: heads must be [layer, head] pairs")
            nums = {}
            for key in ("baseline", "ablated"):
                v = doc.get(key)
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise CorruptFileError(f"{path}: {key} must be a number")
                nums[key] = float(v)
            rand = doc.get("random_effects") or []
            if not isinstance(rand, list) or not all(isinstance(x, (int, float)) or x is None for x in rand):
                raise CorruptFileError(f"{path}: random_effects must be a list of numbers")
            params = doc.get("params") or {}
            if not isinstance(params, dict):
                raise CorruptFileError(f"{path}: params must be an object")
            return cls(task=str(doc.get("task", "")), method=str(doc.get("method", "")), metric=str(doc.get("metric", "")),
                       heads=[(int(a), int(b)) for a, b in heads],
                       mlps=_json.int_list(doc.get("mlps", []), path, "mlps"), **nums,
                       n_examples=int(doc.get("n_examples") or 0),
                       provenance=Provenance.from_json(doc.get("provenance"), str(path)),
                       random_effects=[float("nan") if x is None else float(x) for x in rand],
                       random_seeds=[int(s) for s in doc.get("random_seeds") or [] if isinstance(s, int)],
                       params=params, seconds=float(doc.get("seconds") or float("nan")))
        except ResultError:
            raise
        except CorruptFileError as err:
            raise ResultError(str(err)) from None
