"""What a view shows of a results folder: the results of one model.

A folder may hold results of several models (a scan of SmolLM2 next to a tiny test model,
a ViT next to a language model). :class:`ModelResults` is the part of a
:class:`formats.ResultsFolder` that belongs to one model and one ``[layer, head]`` shape,
with the lookups the views share: the example capture of a result (the analysis' own
inputs), the captures that hold a head's pattern. Nothing here draws.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from attnlens.formats import CaptureFile, HeadScores, ResultsFolder, Site, StatsFile


def models_of(folder: ResultsFolder) -> list[str]:
    """Every model with a result, capture or stats run in ``folder``, the most common first."""
    c: Counter = Counter()
    for r in folder.results.values():
        c[r.provenance.model] += 1
    for cap in folder.captures.values():
        c[cap.model] += 1
    for s in folder.stats_runs.values():
        c[s.model] += 1
    for cu in folder.curves.values():
        c[cu.provenance.model] += 0  # listed, but does not outvote head results
    for r in [*folder.qk.values(), *folder.dla.values(), *folder.loadings.values()]:
        c[r.provenance.model] += 0
    return [m for m, _ in c.most_common()]


def result_folder(label: str) -> str:
    """The folder (relative to the results folder) of a result labelled ``label``."""
    return str(PurePosixPath(label).parent) if "/" in label else ""


@dataclass
class ModelResults:
    """One model's head results (of its most common shape), captures and stats runs."""

    folder: ResultsFolder
    model: str
    shape: tuple[int, int]
    results: dict[str, HeadScores] = field(default_factory=dict)  # label -> result
    captures: dict[str, CaptureFile] = field(default_factory=dict)  # label -> capture
    stats_runs: dict[str, StatsFile] = field(default_factory=dict)

    @classmethod
    def of(cls, folder: ResultsFolder, model: str | None = None) -> ModelResults:
        """The results of ``model`` (default: the folder's most common model)."""
        models = models_of(folder)
        model = model if model is not None else (models[0] if models else "unknown model")
        mine = {k: r for k, r in folder.results.items() if r.provenance.model == model}
        shapes = Counter(r.shape for r in mine.values())
        caps = {k: c for k, c in folder.captures.items() if c.model == model}
        if shapes:
            shape = shapes.most_common(1)[0][0]
        else:
            shape = next(((c.facts.n_layers, c.facts.n_heads) for c in caps.values()), (0, 0))
        return cls(folder=folder, model=model, shape=shape,
                   results={k: r for k, r in mine.items() if r.shape == shape}, captures=caps,
                   stats_runs={k: s for k, s in folder.stats_runs.items() if s.model == model})

    @property
    def labels(self) -> list[str]:
        return list(self.results)

    def pattern_captures(self) -> list[str]:
        """Labels of this model's captures that hold attention patterns."""
        return [k for k, c in self.captures.items() if Site.PATTERN in c.sites]

    def example_prefix(self, label: str | None) -> str | None:
        """The capture label (prefix) a result names as its own inputs, e.g. ``scan/captures/repeated-tokens``."""
        r = self.results.get(label) if label else None
        if r is None:
            return None
        ex = r.params.get("example_capture")
        if not isinstance(ex, str) or not ex or ex.startswith("/") or ".." in ex.split("/"):
            return None
        base = result_folder(label)
        return f"{base}/{ex}" if base else ex

    def capture_for(self, layer: int, head: int, result: str | None = None) -> tuple[str, CaptureFile] | None:
        """``(label, capture)`` holding this head's pattern, the result's own example capture first."""
        return self.folder.capture_for(layer, head, self.model, prefer=self.example_prefix(result))


TASK_ANALYSES = ("retrieval", "circuit", "ablation")  # scores of a task a researcher asked about, in this order


def task_metric(sel: ModelResults) -> str | None:
    """The label of the first task score (retrieval, then circuit, then ablation), else None:
    the head atlas opens on it rather than on a summary score."""
    for analysis in TASK_ANALYSES:
        for label, r in sel.results.items():
            if r.analysis == analysis:
                return label
    return None


def describe(sel: ModelResults, label: str) -> str:
    """The result's own description, else the registry's (torch-free), else ""."""
    r = sel.results.get(label)
    if r is None:
        return ""
    if r.description:
        return r.description
    from attnlens.analyses.registry import describe as registry_describe

    return registry_describe(r.name)
