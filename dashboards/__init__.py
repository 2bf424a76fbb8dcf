"""Dashboards and reports over saved results: they read files, never models.

Views (each a ``param``-based Panel ``Viewer`` taking a :class:`ResultsFolder`):
:class:`HeadAtlas`, :class:`AttentionExplorer`, :class:`HeadMap`, :class:`QKMap`,
:class:`SweepsView`, :class:`VisionOverlay`, all wired in :class:`Dashboard`.
Reports: :func:`write_report` (``lens report``). Serving: :func:`serve` (``lens dashboard``).
"""

from dashboards.data import CaptureFile, Circuit, ResultsFolder, ResultsFolderError, Sweep

__all__ = [
    "AttentionExplorer", "CaptureFile", "Circuit", "Dashboard", "HeadAtlas", "HeadMap", "QKMap", "ResultsFolder",
    "ResultsFolderError", "SweepsView", "Sweep", "VisionOverlay", "serve", "write_report",
]

_LAZY = {"AttentionExplorer": "explorer", "Dashboard": "app", "HeadAtlas": "atlas", "HeadMap": "maps",
         "QKMap": "maps", "SweepsView": "sweeps", "VisionOverlay": "vision", "serve": "app", "write_report": "report"}


def __getattr__(name: str):
    # views import panel and bokeh (slow): load them on first use, not with the data layer
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"dashboards.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dashboards' has no attribute {name!r}")
