"""One-line views for Jupyter that render offline: :func:`show` (``from attnlens.dashboards import show``).

``show(capture, layer=3, head=2)`` is one head's pattern with the token view (CircuitsVis'
``attention_patterns``); ``show(capture)`` all heads of the prompt as a grid (``attention_heads``,
BertViz' ``model_view``); ``show(results_folder)`` the whole dashboard inline;
``show(head_scores)`` the head atlas; ``show(dla_result)`` the direct logit attribution
(``pipelines.dla.dla_of_capture(lm, capture, targets)`` computes one from a capture); ``show(head_loadings)``
the QK head loadings maps (``pipelines.qk.run_loadings``). Panel's and Bokeh's JavaScript and CSS are put into the notebook itself
(``pn.extension(inline=True)``), so nothing is fetched from a CDN and the views render on a
machine without a network. In a live kernel the views stay interactive (clicks, hover).
"""

from __future__ import annotations

import atexit
import base64
import enum
import shutil
import tempfile
from pathlib import Path
from typing import Any

import panel as pn

from attnlens.dashboards.selection import ModelResults
from attnlens.formats import (
    CaptureFile,
    DLAResult,
    HeadLoadings,
    HeadScores,
    QKResult,
    ResultsFolder,
    SelectionError,
    capture,
    dla,
    loadings,
    qk,
)

_LOADED = False
LOAD_MIME = "application/vnd.holoviews_load.v0+json"
ONE_BUNDLE_BYTES = 100_000  # a payload larger than this is the resource bundle: published once


class View(str, enum.Enum):
    AUTO = "auto"  # head pattern with layer and head, all heads without
    PATTERN = "pattern"
    HEADS = "heads"
    DLA = "dla"


def ensure_inline() -> None:
    """Load Panel into the notebook with every resource inline (once per kernel).

    Panel publishes its ~3 MB JavaScript bundle under two MIME types at once
    (``application/javascript`` and HoloViews' load type), which doubles the first output;
    the notebook front ends render the HoloViews type (the ``@pyviz/jupyterlab_pyviz``
    extension Panel installs), so large payloads keep only that one."""
    global _LOADED
    if _LOADED:
        return
    import IPython.display

    pn.config.inline = True
    publish = IPython.display.publish_display_data

    def once(data, *args, **kwargs):
        js = data.get("application/javascript") if isinstance(data, dict) else None
        if js is not None and data.get(LOAD_MIME) == js and len(js) > ONE_BUNDLE_BYTES:
            data = {k: v for k, v in data.items() if k != "application/javascript"}
        return publish(data, *args, **kwargs)

    IPython.display.publish_display_data = once
    try:
        pn.extension(inline=True)
    finally:
        IPython.display.publish_display_data = publish
    _offline_stylesheets()
    _LOADED = True


def _offline_stylesheets() -> None:
    """Point every Panel stylesheet on the HoloViz CDN at its local copy (a ``data:`` URL) before
    a notebook update is sent: views rendered after a click (a tab opened, a loading spinner)
    otherwise link CSS from the CDN, which fails offline and reaches the network online.

    Panel sends each update through ``panel.io.notebook.push``, which serialises the document's
    held events with ``diff``; a new stylesheet model is serialised with the URL it has then."""
    import panel.io.notebook as nb
    from bokeh.models import ImportedStyleSheet
    from panel.io.resources import CDN_DIST, DIST_DIR

    if getattr(nb.diff, "attnlens_offline", False):
        return
    original = nb.diff
    cache: dict[str, str] = {}

    def local(url: str) -> str:
        if url not in cache:
            path = DIST_DIR / url[len(CDN_DIST):].split("?")[0]
            cache[url] = url
            if path.is_file():
                css = base64.b64encode(path.read_bytes()).decode("ascii")
                cache[url] = f"data:text/css;base64,{css}"
        return cache[url]

    def diff(doc, *args, **kwargs):
        for model in list(doc.models):
            if isinstance(model, ImportedStyleSheet) and model.url.startswith(CDN_DIST):
                model.url = local(model.url)
        return original(doc, *args, **kwargs)

    diff.attnlens_offline = True
    nb.diff = diff


def _single(cap: CaptureFile) -> ModelResults:
    folder = ResultsFolder(path=cap.path.parent, captures={cap.name: cap})
    return ModelResults(folder=folder, model=cap.model, shape=(cap.facts.n_layers, cap.facts.n_heads),
                        captures={cap.name: cap})


def view_of(obj: Any, *, layer: int | None = None, head: int | None = None, view: View | str = View.AUTO,
            map_method: str = "pca", **params):
    """The Panel viewable ``show`` displays (without loading the notebook extension)."""
    view = View(view)
    if isinstance(obj, (str, Path)):
        p = Path(obj)
        if p.name.endswith(qk.SUFFIX) and p.is_file():
            obj = QKResult.load(p)
        elif p.name.endswith(dla.SUFFIX) and p.is_file():
            obj = DLAResult.load(p)
        elif p.name.endswith(loadings.SUFFIX) and p.is_file():
            obj = HeadLoadings.load(p)
        else:
            obj = CaptureFile.load(p) if (p / capture.META_FILE).is_file() else ResultsFolder.load(p)
    if isinstance(obj, QKResult):
        from attnlens.dashboards.qk import QKView

        return QKView({obj.name: obj}, **params)
    if isinstance(obj, DLAResult):
        from attnlens.dashboards.dla import ContributionView

        return ContributionView({obj.name: obj}, **params)
    if isinstance(obj, HeadLoadings):
        from attnlens.dashboards.loadings import LoadingsView

        return LoadingsView({obj.name: obj}, **params)
    if isinstance(obj, ResultsFolder):
        from attnlens.dashboards.app import Dashboard

        return Dashboard(obj, map_method=map_method, **params)
    if isinstance(obj, HeadScores):
        from attnlens.dashboards.atlas import HeadAtlas

        folder = ResultsFolder(path=Path("."), results={obj.name: obj})
        return HeadAtlas(ModelResults.of(folder), **params)
    if not isinstance(obj, CaptureFile):
        raise SelectionError(f"show() takes a capture, a results folder, head scores, a QK or direct logit attribution, QK head loadings or a "
                             f"path to one, got "
                             f"{type(obj).__name__}")
    sel = _single(obj)
    if view is View.DLA:
        raise SelectionError("view='dla' shows a direct logit attribution, which needs the model: show "
                             "attnlens.pipelines.dla.dla_of_capture(lm, capture, targets), or a saved one (lens heads dla)")
    if view is View.HEADS or (view is View.AUTO and layer is None and head is None):
        from attnlens.dashboards.heads_grid import HeadsGrid

        return HeadsGrid(sel, **params)
    from attnlens.dashboards.explorer import AttentionExplorer

    layer = obj.layers[0] if layer is None else obj.facts.check_layer(layer)
    head = obj.heads[0] if head is None else obj.facts.check_head(head)
    if layer not in obj.layers or head not in obj.heads:
        raise SelectionError(f"L{layer}H{head} was not captured: layers {obj.layers}, heads {obj.heads}")
    return AttentionExplorer(sel, layer=layer, head=head, **params)


_TEMP: list[str] = []


def _cleanup() -> None:
    for d in _TEMP:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def as_saved(obj: Any) -> Any:
    """What an in-memory result is as a saved one: a ``lens.Capture`` (or a ``RunResult``'s capture)
    written once to a temporary folder (kept until the interpreter exits) and read back as a
    :class:`formats.CaptureFile`, an in-memory QK attribution as its :class:`formats.QKResult`;
    anything else as it is. Duck-typed: the dashboards import no model code."""
    capture_of = getattr(obj, "capture", None)
    if capture_of is not None and hasattr(capture_of, "write_into"):  # a lens.RunResult
        obj = capture_of
    if hasattr(obj, "to_result") and hasattr(obj, "terms"):  # an in-memory QK attribution
        return obj.to_result()
    if not (hasattr(obj, "write_into") and hasattr(obj, "steps")):  # not an in-memory lens.Capture
        return obj
    tmp = tempfile.mkdtemp(prefix="attnlens-show-")
    _TEMP.append(tmp)
    folder = Path(tmp) / "capture"
    obj.write_into(folder)
    return CaptureFile.load(folder)


def show(obj: Any, *, layer: int | None = None, head: int | None = None, view: View | str = View.AUTO, **params):
    """Display ``obj`` inline in Jupyter (offline); returns the view (a Panel ``Viewer``).

    >>> from attnlens.dashboards import show
    >>> result = lens.run(lm, "When Mary and John went to the store, John gave a drink to")
    >>> show(result.capture, layer=5, head=1)   # one head: pattern and token view
    >>> show(result)                            # every head of the prompt
    >>> show("results/demo")                    # the dashboard, inline
    >>> show(pipelines.dla.dla_of_capture(lm, result.capture, [" Mary"]))   # direct logit attribution
    >>> show(pipelines.qk.run_loadings(lm, prompts, 20, 0))                 # QK head loadings

    ``obj``: an in-memory ``lens.Capture`` or ``RunResult`` (written once to a temporary folder and
    read back, so a notebook sees exactly what a saved capture shows), a :class:`formats.CaptureFile`,
    a :class:`formats.ResultsFolder`, a :class:`formats.HeadScores`, a QK attribution (in memory or a
    :class:`formats.QKResult`), a :class:`formats.DLAResult`, QK head loadings (:class:`formats.HeadLoadings`,
    ``pipelines.qk.run_loadings``), or a path to a capture, a results folder, a ``*.qk.json``, a
    ``*.dla.json`` or a ``*.loadings.json``. ``layer`` and ``head`` pick one head of a capture (without
    them: all heads).
    """
    ensure_inline()
    return view_of(as_saved(obj), layer=layer, head=head, view=view, **params)
