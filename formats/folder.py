"""Reading a results folder: everything the commands wrote anywhere below it, by kind.

A results folder is any folder tree. Each command writes its own output folder (``lens scan
--out X/scan``, ``lens circuit --out X/ioi``, ``lens capture --out X/captures``...), and
:class:`ResultsFolder` finds every file the project writes below the root: head scores,
curves, circuits, ablations, captures, stats runs and sweep logs. A broken file never hides
the others: it is named in ``problems`` with the reason, and everything else loads.
Nothing here imports torch or loads a model.
"""

from __future__ import annotations

import json
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlens.formats import (
    _json,
    capture,
    circuit,
    curves,
    dla,
    head_scores,
    loadings,
    qk,
    stats_run,
    sweep,
    token_maps,
)
from attnlens.formats.ablation import AblationResult
from attnlens.formats.capture import CaptureFile
from attnlens.formats.circuit import Circuit
from attnlens.formats.curves import Curves
from attnlens.formats.dla import DLAResult
from attnlens.formats.errors import CorruptFileError, ResultsFolderError
from attnlens.formats.head_scores import HeadScores
from attnlens.formats.loadings import HeadLoadings
from attnlens.formats.qk import QKResult
from attnlens.formats.stats_run import StatsFile
from attnlens.formats.token_maps import TokenMaps

MAX_DEPTH = 6
MAX_ENTRIES = 20_000

_LEGACY = {  # files the previous format wrote without a kind or version
    "circuit.json": "an older `lens circuit` (format without a version)",
    "ablation.json": "an older `lens ablate` (format without a version)",
    "summary.json": "an older `lens ablate --sweep` (format without a version)",
}


@dataclass
class ResultsFolder:
    """Everything below ``path``, keyed by a label that is unique in the folder: the file's
    folder relative to ``path`` plus the result's name (``scan/sinks.first_token_mass``)."""

    path: Path
    results: dict[str, HeadScores] = field(default_factory=dict)
    curves: dict[str, Curves] = field(default_factory=dict)
    circuits: dict[str, Circuit] = field(default_factory=dict)
    ablations: dict[str, AblationResult] = field(default_factory=dict)
    captures: dict[str, CaptureFile] = field(default_factory=dict)
    stats_runs: dict[str, StatsFile] = field(default_factory=dict)
    token_maps: dict[str, TokenMaps] = field(default_factory=dict)
    qk: dict[str, QKResult] = field(default_factory=dict)  # QK attributions (`lens heads qk`)
    dla: dict[str, DLAResult] = field(default_factory=dict)  # direct logit attributions (`lens heads dla`)
    loadings: dict[str, HeadLoadings] = field(default_factory=dict)  # QK head loadings (`lens heads loadings`)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> progress of a sweep log
    problems: dict[str, str] = field(default_factory=dict)  # path relative to the folder -> why it did not load

    @classmethod
    def load(cls, folder: str | Path) -> ResultsFolder:
        path = Path(folder)
        try:
            path.stat()
        except FileNotFoundError:
            raise ResultsFolderError(f"results folder {path} does not exist: run `lens scan MODEL --out {path}` first") from None
        except OSError as err:  # a name too long, a permission, a link loop
            raise ResultsFolderError(f"results folder {path} cannot be read: {err.strerror or err}") from None
        if not path.is_dir():
            raise ResultsFolderError(f"results folder {path} is a file, expected a folder written by `lens scan`")
        out = cls(path=path)
        out._walk()
        return out

    # ---- reading -----------------------------------------------------------------------
    def _walk(self) -> None:
        stack, seen = [(self.path, 0)], 0
        while stack:
            folder, depth = stack.pop(0)
            try:
                children = sorted(folder.iterdir())
            except OSError as err:
                self.problems[self._rel(folder) or "."] = f"cannot be listed: {err.strerror or err}"
                continue
            seen += len(children)
            if seen > MAX_ENTRIES:
                self.problems[self._rel(folder) or "."] = f"more than {MAX_ENTRIES} files: the rest was not read"
                return
            names = {c.name for c in children}
            if capture.META_FILE in names:
                self._add(folder, "capture", self.captures, lambda p=folder: CaptureFile.load(p))
                continue
            if stats_run.META_FILE in names:
                self._add(folder, "stats run", self.stats_runs, lambda p=folder: StatsFile.load(p))
                continue
            if sweep.RUN_FILE in names:
                try:
                    progress = sweep.sweep_progress(folder)
                except CorruptFileError as err:
                    self.problems[self._rel(folder / sweep.LOG_FILE)] = _short(err, folder / sweep.LOG_FILE)
                    progress = None
                if progress is not None and progress["status"] != "complete":
                    self.sweeps[self._rel(folder) or "."] = progress
            for child in children:
                if child.name.startswith("."):
                    continue
                try:
                    mode = child.lstat().st_mode
                except OSError as err:
                    self.problems[self._rel(child)] = f"cannot be read: {err.strerror or err}"
                    continue
                if stat.S_ISLNK(mode):
                    self.problems[self._rel(child)] = "is a symbolic link: not followed"
                elif not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):  # opening a FIFO would block
                    self.problems[self._rel(child)] = f"is {_json.special_kind(mode)}, not a regular file: not read"
                elif stat.S_ISDIR(mode):
                    if depth + 1 <= MAX_DEPTH:
                        stack.append((child, depth + 1))
                elif child.suffix == ".json" and child.name != sweep.RUN_FILE:
                    self._file(child)
                elif child.suffix == ".safetensors" and not child.with_suffix(".json").exists():
                    self.problems[self._rel(child)] = f"{child.with_suffix('.json').name} is missing"

    def _file(self, path: Path) -> None:
        try:
            doc = _json.read_json(path, what="results file")
        except CorruptFileError as err:
            self.problems[self._rel(path)] = _short(err, path)
            return
        if not isinstance(doc, dict):
            return
        kind = doc.get("kind")
        loaders = {head_scores.KIND: (HeadScores.load, self.results), curves.KIND: (Curves.load, self.curves),
                   circuit.KIND: (Circuit.load, self.circuits), "ablation": (AblationResult.load, self.ablations),
                   token_maps.KIND: (TokenMaps.load, self.token_maps), qk.KIND: (QKResult.load, self.qk),
                   dla.KIND: (DLAResult.load, self.dla), loadings.KIND: (HeadLoadings.load, self.loadings)}
        if kind in loaders:
            load, into = loaders[kind]
            self._add(path, str(kind), into, lambda: load(path))
        elif kind is None and path.name in _LEGACY:
            self.problems[self._rel(path)] = (f"written by {_LEGACY[path.name]}: this attnlens reads its current "
                                              "format only; rerun the command to rewrite it")
        elif "format_version" in doc and kind not in (sweep.KIND, capture.KIND, stats_run.KIND):
            self.problems[self._rel(path)] = f"unknown kind {str(kind)[:40]!r}: not written by this attnlens"

    def _add(self, path: Path, what: str, into: dict, load) -> None:
        try:
            obj = load()
        except CorruptFileError as err:
            self.problems[self._rel(path)] = _short(err, path)
            return
        rel_dir = self._rel(path if path.is_dir() else path.parent)
        if path.is_dir():
            label = rel_dir or path.name
        else:
            label = f"{rel_dir}/{obj.name}" if rel_dir else obj.name
        into[label] = obj

    def _rel(self, p: Path) -> str:
        try:
            return p.relative_to(self.path).as_posix() if p != self.path else ""
        except ValueError:
            return str(p)

    # ---- derived -----------------------------------------------------------------------
    @property
    def models(self) -> Counter:
        c = Counter(r.provenance.model for r in self.results.values())
        c.update(cap.model for cap in self.captures.values())
        c.update(s.model for s in self.stats_runs.values())
        return c

    @property
    def model(self) -> str:
        """The model most results are of ("unknown model" for an empty folder)."""
        m = self.models
        return m.most_common(1)[0][0] if m else "unknown model"

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)`` most results have (or of a capture, failing that)."""
        shapes = Counter(r.shape for r in self.results.values())
        if shapes:
            return shapes.most_common(1)[0][0]
        for cap in self.captures.values():
            return cap.facts.n_layers, cap.facts.n_heads
        return (0, 0)

    @property
    def is_empty(self) -> bool:
        return not any((self.results, self.curves, self.circuits, self.ablations, self.captures, self.stats_runs,
                        self.token_maps, self.qk, self.dla, self.loadings))

    def counts(self) -> dict[str, int]:
        return {"results": len(self.results), "curves": len(self.curves), "circuits": len(self.circuits),
                "ablations": len(self.ablations), "captures": len(self.captures), "stats runs": len(self.stats_runs),
                "token maps": len(self.token_maps), "QK attributions": len(self.qk),
                "direct logit attributions": len(self.dla), "QK head loadings": len(self.loadings)}

    def provenances(self) -> list[dict[str, Any]]:
        """The distinct provenance records, with the results each one produced."""
        seen: dict[str, dict[str, Any]] = {}
        items = [(label, r.provenance) for label, r in self.results.items()]
        items += [(label, c.provenance) for label, c in self.curves.items()]
        items += [(label, c.provenance) for label, c in self.circuits.items() if c.provenance is not None]
        items += [(label, a.provenance) for label, a in self.ablations.items()]
        items += [(label, r.provenance) for label, r in self.qk.items()]
        items += [(label, r.provenance) for label, r in self.dla.items()]
        items += [(label, r.provenance) for label, r in self.loadings.items()]
        for label, prov in items:
            d = prov.to_json()
            key = json.dumps({k: v for k, v in d.items() if k != "created"}, sort_keys=True, default=str)
            entry = seen.setdefault(key, {**d, "results": []})
            entry["results"].append(label)
        return list(seen.values())

    def capture_for(self, layer: int, head: int, model: str | None = None, *, prefer: str | None = None):
        """``(label, capture)`` of a capture that has this head's pattern (one whose label starts with
        ``prefer`` first, e.g. the analysis' own inputs), or None."""
        from attnlens.formats.sites import Site

        ordered = sorted(self.captures.items(), key=lambda kv: (not (prefer and kv[0].startswith(prefer)), kv[0]))
        for label, cap in ordered:
            if (model is None or cap.model == model) and cap.has(Site.PATTERN, layer, head):
                return label, cap
        return None

    def __repr__(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in self.counts().items() if n)
        return f"ResultsFolder({self.path}: {parts or 'empty'}" + (f"; {len(self.problems)} problem(s)" if self.problems else "") + ")"


def _short(err: Exception, path: Path) -> str:
    """The error without the path prefix it usually starts with (problems are keyed by the path)."""
    text = str(err)
    for p in (str(path), path.name):
        if text.startswith(p):
            text = text[len(p):].lstrip(": ")
            break
    return text or type(err).__name__
