"""The result objects every analysis returns (defined in :mod:`formats`, re-exported here).

A :class:`HeadScores` holds one number per (layer, head) plus named extra arrays and
the parameters and provenance that produced it; :class:`Curves` holds y-against-x series.
Dashboards and reports read these files through :mod:`formats` and never load a model.
"""

from __future__ import annotations

from pathlib import Path

from attnlens.formats.curves import Curves
from attnlens.formats.errors import ResultError
from attnlens.formats.head_scores import HeadScores
from attnlens.formats.provenance import Provenance


def load_results(folder: str | Path) -> tuple[list[HeadScores], dict[str, str]]:
    """Every head-score result below ``folder``, and for each unreadable file its path and why."""
    from attnlens.formats.folder import ResultsFolder

    f = ResultsFolder.load(folder)
    return list(f.results.values()), dict(f.problems)


__all__ = ["Curves", "HeadScores", "Provenance", "ResultError", "load_results"]
