"""The registry of analyses, for the CLI, the scan and the dashboards.

An entry names an analysis, says what it measures and which metrics (result files)
it writes. Register with the decorator on the module's pure scoring function:

    @register_analysis("sinks", "first-token and hidden attention sinks",
                       metrics=("first_token_mass", "hidden_sink_count"))
    def sink_scores(...) -> list[HeadScores]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class AnalysisEntry:
    name: str
    description: str
    metrics: tuple[str, ...]
    function: Callable


_REGISTRY: dict[str, AnalysisEntry] = {}


def register_analysis(name: str, description: str, *, metrics: tuple[str, ...]):
    def wrap(fn: Callable) -> Callable:
        _REGISTRY[name] = AnalysisEntry(name, description, tuple(metrics), fn)
        return fn

    return wrap


def analyses() -> dict[str, AnalysisEntry]:
    """All registered analyses (importing :mod:`analyses` registers the built-in ones)."""
    return dict(_REGISTRY)
