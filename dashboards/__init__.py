"""Dashboards and reports over saved results: they read files through :mod:`formats`, never
models (importing this package loads neither torch nor ``lens``).

Views (each a ``param``-based Panel ``Viewer``): :class:`HeadAtlas`, :class:`AttentionExplorer`,
:class:`HeadsGrid`, :class:`HeadMap`, :class:`QKMap`, :class:`StatsRunView`,
:class:`AblationsView`, :class:`CircuitView`, :class:`VisionOverlay`, :class:`ContributionView`,
all wired in :class:`Dashboard`. Reports: :func:`write_report` (``lens report``). Serving:
:func:`serve` (``lens dashboard``). Jupyter: :func:`show` (``from attnlens.dashboards import show``: captures, results, head scores, QK and DLA inline).
"""

from attnlens.formats import CaptureFile, ResultsFolder, ResultsFolderError

__all__ = [
    "AblationsView", "AttentionExplorer", "CaptureFile", "CircuitView", "ContributionView", "Dashboard", "HeadAtlas",
    "HeadMap", "HeadsGrid", "ModelResults", "QKMap", "ResultsFolder", "ResultsFolderError", "StatsRunView",
    "VisionOverlay", "serve", "show", "write_report",
]

_LAZY = {"AblationsView": "ablations", "AttentionExplorer": "explorer", "CircuitView": "circuits",
         "ContributionView": "dla", "Dashboard": "app", "HeadAtlas": "atlas", "HeadMap": "maps", "HeadsGrid": "heads_grid",
         "ModelResults": "selection", "QKMap": "maps", "StatsRunView": "stats_view", "VisionOverlay": "vision",
         "serve": "app", "show": "inline", "write_report": "report"}


def __getattr__(name: str):
    # views import panel and bokeh (slow): load them on first use, not with the package
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
