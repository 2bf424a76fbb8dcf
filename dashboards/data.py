"""Reading a results folder for the dashboards and reports: scores, captures, sweeps, circuits.

Nothing here loads a model or imports torch. A results folder looks like::

    RESULTS_DIR/
      ANALYSIS.METRIC.json + .safetensors   HeadScores (analyses/result.py)
      NAME.circuit.json                     a circuit graph (see :class:`Circuit`)
      captures/000/, captures/001/, ...     example captures (lens capture's layout)

A broken file never hides the others: :class:`ResultsFolder` keeps what loaded and says,
per file, why the rest did not.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from analyses.result import HeadScores, ResultError
from lens.errors import AttnlensError

CAPTURES_DIR = "captures"
CIRCUIT_KIND = "circuit"
# The analyses a full `lens scan` writes; a report names the ones a folder lacks.
# A folder may override this with "analyses" in RESULTS_DIR/manifest.json.
EXPECTED_ANALYSES = ("summary", "retrieval", "streaming", "sinks", "taxonomy")


class ResultsFolderError(AttnlensError, ValueError):
    """A results folder that does not exist or is not a folder."""


class CaptureReadError(AttnlensError, ValueError):
    """A saved capture that cannot be read for display."""


# ---------------------------------------------------------------------------------------
# captures, read with numpy one head at a time
# ---------------------------------------------------------------------------------------
@dataclass
class CaptureFile:
    """A saved capture folder, read lazily: only the head asked for leaves the disk.

    Same files as ``lens.capture.Capture`` (``capture.json`` + ``tensors.safetensors``) but
    read with numpy slices, so a 4,096-token capture costs one ``[q, k]`` head per call.
    """

    path: Path
    meta: dict[str, Any]
    entries: dict[tuple[int, str, int], dict[str, Any]]  # (step, site, layer) -> entry

    @classmethod
    def load(cls, folder: str | Path) -> CaptureFile:
        folder = Path(folder)
        meta_path, tensor_path = folder / "capture.json", folder / "tensors.safetensors"
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise CaptureReadError(f"{p} is missing: {folder} is not a complete capture")
        try:
            doc = json.loads(meta_path.read_text())
            meta = doc["meta"]
            entries = {(int(e["step"]), str(e["site"]), int(e["layer"])): e for e in doc["entries"]}
            meta["tokens"][0], meta["facts"]["n_heads"]  # noqa: B018  (fail early on a bad file)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CaptureReadError(f"{meta_path} is not valid capture metadata: {type(err).__name__}: {err}") from None
        return cls(path=folder, meta=meta, entries=entries)

    # ---- facts -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return self.meta["facts"]["name"]

    @property
    def tokens(self) -> list[str]:
        """Tokens of the first prompt in the batch (the one the views show)."""
        return list(self.meta["tokens"][0])

    @property
    def text(self) -> str:
        return self.meta["text"][0] if self.meta.get("text") else "".join(self.tokens)

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.meta["layers"]]

    @property
    def heads(self) -> list[int]:
        return [int(x) for x in self.meta["heads"]]

    @property
    def sites(self) -> set[str]:
        return {s for (_, s, _) in self.entries}

    @property
    def causal(self) -> bool:
        return bool(self.meta["facts"].get("causal", True))

    @property
    def modality(self) -> str:
        return str(self.meta["facts"].get("modality", "text"))

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.meta.get("extra") or {})

    def has(self, site: str, layer: int, head: int | None = None) -> bool:
        if (0, site, layer) not in self.entries:
            return False
        return head is None or head in self.heads

    def kv_head_of(self, head: int) -> int:
        f = self.meta["facts"]
        group = max(1, int(f["n_heads"]) // max(1, int(f.get("n_kv_heads") or f["n_heads"])))
        return head // group

    # ---- tensors -----------------------------------------------------------------------
    def _read(self, site: str, layer: int, index: int, batch: int = 0) -> np.ndarray:
        from safetensors import safe_open

        entry = self.entries.get((0, site, layer))
        if entry is None:
            have = sorted({s for (_, s, _) in self.entries})
            raise CaptureReadError(f"{self.path.name} has no {site} at layer {layer}: sites {', '.join(have)} "
                                   f"at layers {self.layers}")
        try:
            with safe_open(str(self.path / "tensors.safetensors"), framework="numpy") as f:
                return np.asarray(f.get_slice(entry["name"])[batch, index], dtype=np.float32)
        except Exception as err:  # safetensors raises its own error types, and TypeError for bf16
            raise CaptureReadError(f"{self.path / 'tensors.safetensors'} cannot be read: {type(err).__name__}: {err}") from None

    def _head_index(self, head: int, kv: bool = False) -> int:
        heads = [int(h) for h in (self.meta["kv_heads"] if kv else self.meta["heads"])]
        if head not in heads:
            raise CaptureReadError(f"head {head} was not captured in {self.path.name}: heads {heads}")
        return heads.index(head)

    def pattern(self, layer: int, head: int, batch: int = 0) -> np.ndarray:
        """Attention probabilities of one head, ``[q, k]`` float32."""
        return self._read("pattern", layer, self._head_index(head), batch)

    def queries(self, layer: int, head: int, batch: int = 0) -> np.ndarray:
        """``[q, d_head]`` queries of one head (site ``q``)."""
        return self._read("q", layer, self._head_index(head), batch)

    def keys(self, layer: int, head: int, batch: int = 0) -> np.ndarray:
        """``[k, d_head]`` keys of the KV head that query ``head`` reads (site ``k``)."""
        return self._read("k", layer, self._head_index(self.kv_head_of(head), kv=True), batch)

    def image_path(self) -> Path | None:
        name = self.extra.get("image")
        return self.path / name if name else None


# ---------------------------------------------------------------------------------------
# sweeps and circuits
# ---------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """Curves from one result: ``ys[name]`` is ``[n_curves, n_points]`` against ``x`` ``[n_points]``."""

    result: str
    x: np.ndarray
    x_label: str
    ys: dict[str, np.ndarray]
    labels: list[str] = field(default_factory=list)


def find_sweeps(result: HeadScores) -> list[Sweep]:
    """The curves a result carries, by convention: an array named ``x`` (or ``*_x``) and
    every other array whose last axis has the same length (1-D or ``[n_curves, n_points]``).
    ``params["x_label"]`` names the x axis and ``params["curve_labels"]`` the curves."""
    out = []
    for xname in [k for k in result.arrays if k == "x" or k.endswith("_x")]:
        x = np.asarray(result.arrays[xname], dtype=np.float64).ravel()
        prefix = xname[:-2] if xname.endswith("_x") else ""
        ys = {}
        for k, v in result.arrays.items():
            if k == xname or k.endswith("_x") or (prefix and not k.startswith(prefix)):
                continue
            v = np.asarray(v, dtype=np.float64)
            if v.ndim in (1, 2) and v.shape[-1] == x.size and x.size > 1:
                ys[k] = v.reshape(-1, x.size)
        if ys:
            labels = [str(s) for s in result.params.get("curve_labels", [])]
            out.append(Sweep(result.name, x, str(result.params.get("x_label", xname)), ys, labels))
    return out


@dataclass
class Circuit:
    """A circuit graph from ``*.circuit.json``.

    File format::

        {"kind": "circuit", "name": "ioi", "description": "...",
         "nodes": [{"id": "L3H2", "layer": 3, "head": 2}, {"id": "logits", "layer": 12}],
         "edges": [{"source": "L3H2", "target": "logits", "weight": 0.41}],
         "provenance": {...}}

    ``head`` may be absent or null for non-head nodes (embeddings, MLPs, logits). Nodes an
    edge names but ``nodes`` lacks are placed after the last layer.
    """

    name: str
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any], fallback_name: str) -> Circuit:
        edges = [{"source": str(e["source"]), "target": str(e["target"]), "weight": float(e.get("weight", 1.0))}
                 for e in doc["edges"]]
        nodes = {str(n["id"]): {"id": str(n["id"]), "layer": n.get("layer"), "head": n.get("head")}
                 for n in doc.get("nodes", [])}
        for e in edges:
            for end in (e["source"], e["target"]):
                nodes.setdefault(end, {"id": end, "layer": None, "head": None})
        return cls(name=str(doc.get("name", fallback_name)), nodes=list(nodes.values()), edges=edges,
                   description=str(doc.get("description", "")), provenance=dict(doc.get("provenance") or {}))

    def layout(self) -> dict[str, tuple[float, float]]:
        """Node positions: x = layer (unknown layers last), y = head (others spread below)."""
        known = [n["layer"] for n in self.nodes if n["layer"] is not None]
        last = (max(known) + 1) if known else 0
        pos, spare = {}, Counter()
        for n in self.nodes:
            x = float(n["layer"]) if n["layer"] is not None else float(last)
            if n["head"] is not None:
                y = float(n["head"])
            else:
                spare[x] += 1
                y = -float(spare[x])
            pos[n["id"]] = (x, y)
        return pos


# ---------------------------------------------------------------------------------------
# the folder
# ---------------------------------------------------------------------------------------
@dataclass
class ResultsFolder:
    """Everything a dashboard or report shows, and a reason for each file that did not load."""

    path: Path
    results: list[HeadScores]
    problems: dict[str, str]  # file (relative to path) -> why it was not loaded
    captures: list[CaptureFile]
    circuits: list[Circuit]
    expected: tuple[str, ...] = EXPECTED_ANALYSES

    @classmethod
    def load(cls, folder: str | Path) -> ResultsFolder:
        path = Path(folder)
        if not path.exists():
            raise ResultsFolderError(f"results folder {path} does not exist: run `lens scan MODEL --out {path}` first")
        if not path.is_dir():
            raise ResultsFolderError(f"results folder {path} is a file, expected a folder written by `lens scan`")
        results, problems = _load_scores(path)
        circuits = []
        for p in sorted(path.glob("*.json")):
            if p.name in problems or p.name == "manifest.json":
                continue
            try:
                doc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # load_results has already reported it
            if isinstance(doc, dict) and doc.get("kind") == CIRCUIT_KIND:
                try:
                    circuits.append(Circuit.from_json(doc, p.name.removesuffix(".json").removesuffix(".circuit")))
                except (KeyError, TypeError, ValueError) as err:
                    problems[p.name] = f"not a valid circuit: {type(err).__name__}: {err}"
        # a .safetensors without its .json is a half-written result: say so
        for p in sorted(path.glob("*.safetensors")):
            if not p.with_suffix(".json").exists():
                problems[p.name] = f"{p.with_suffix('.json').name} is missing"
        captures = []
        cap_root = path / CAPTURES_DIR
        if cap_root.is_dir():
            for sub in sorted(q for q in cap_root.iterdir() if q.is_dir()):
                try:
                    captures.append(CaptureFile.load(sub))
                except CaptureReadError as err:
                    problems[f"{CAPTURES_DIR}/{sub.name}"] = str(err)
        expected = EXPECTED_ANALYSES
        manifest = path / "manifest.json"
        if manifest.is_file():
            try:
                expected = tuple(json.loads(manifest.read_text())["analyses"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                problems["manifest.json"] = f"cannot be read: {type(err).__name__}: {err}"
        return cls(path=path, results=results, problems=problems, captures=captures, circuits=circuits,
                   expected=expected)

    # ---- derived -----------------------------------------------------------------------
    @cached_property
    def by_name(self) -> dict[str, HeadScores]:
        return {r.name: r for r in self.results}

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.results]

    @property
    def model(self) -> str:
        models = Counter(r.provenance.model for r in self.results) or Counter(c.model for c in self.captures)
        return models.most_common(1)[0][0] if models else "unknown model"

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)`` of the model, from the results or, failing that, a capture."""
        shapes = Counter(r.shape for r in self.results)
        if shapes:
            return shapes.most_common(1)[0][0]
        if self.captures:
            f = self.captures[0].meta["facts"]
            return int(f["n_layers"]), int(f["n_heads"])
        return (0, 0)

    @property
    def missing(self) -> list[str]:
        """Expected analyses with no result in this folder."""
        have = {r.analysis for r in self.results}
        return [a for a in self.expected if a not in have]

    @cached_property
    def sweeps(self) -> list[Sweep]:
        return [s for r in self.results for s in find_sweeps(r)]

    def capture_for(self, layer: int, head: int, site: str = "pattern") -> CaptureFile | None:
        """The first capture that recorded ``site`` for this head, or None."""
        return next((c for c in self.captures if c.has(site, layer, head)), None)

    def provenances(self) -> list[dict[str, Any]]:
        """The distinct provenance records, with the results each one produced."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.results:
            d = r.provenance.to_json()
            key = json.dumps({k: v for k, v in d.items() if k != "created"}, sort_keys=True, default=str)
            entry = seen.setdefault(key, {**d, "results": []})
            entry["results"].append(r.name)
        return list(seen.values())


def _load_scores(path: Path) -> tuple[list[HeadScores], dict[str, str]]:
    """Like ``analyses.result.load_results``, but a corrupt .safetensors (whose reader raises
    its own error type) is reported like any other broken file instead of stopping the load."""
    results, problems = [], {}
    for p in sorted(path.glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            problems[p.name] = f"not valid JSON: {err}"
            continue
        if not isinstance(doc, dict) or doc.get("kind") != "head_scores":
            continue
        try:
            results.append(HeadScores.load(p))
        except ResultError as err:
            problems[p.name] = str(err)
        except Exception as err:  # safetensors.SafetensorError is no ValueError
            problems[p.name] = f"{p.with_suffix('.safetensors').name} cannot be read: {type(err).__name__}: {err}"
    return results, problems


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"
