"""``lens.show``: one-line views of captures and results in Jupyter, rendered offline.

>>> result = lens.run(lm, "When Mary and John went to the store, John gave a drink to", sites=[lens.Site.PATTERN])
>>> lens.show(result.capture, layer=5, head=1)   # one head: pattern and token view
>>> lens.show(result.capture)                    # every head of the prompt
>>> lens.show("results/demo")                    # the dashboard, inline
>>> lens.show(result.capture, view="dla", model=lm)   # direct logit attribution per head
>>> lens.show("results/dla/dla.dla.json")            # a saved one (`lens heads dla`)

The views live in :mod:`dashboards` (imported here on first call: ``import lens`` stays
cheap); an in-memory capture is written once to a temporary folder through :mod:`formats`
and read back, so notebooks see exactly what a saved capture shows. For ``view="dla"`` the
model attributes the capture's prompt (:func:`pipelines.dla.dla_of_capture`, the arithmetic in
:mod:`analyses.dla`) and the view shows the result, as it shows a saved one.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from formats.errors import SelectionError

_TEMP: list[str] = []


def _cleanup() -> None:
    for d in _TEMP:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def as_capture_file(obj: Any):
    """A :class:`formats.CaptureFile` for an in-memory ``lens.Capture`` / ``RunResult`` (written to
    a temporary folder kept until the interpreter exits); anything else is returned as is."""
    from formats import CaptureFile
    from lens.recording import Capture, RunResult

    if isinstance(obj, RunResult):
        obj = obj.capture
    if hasattr(obj, "to_result") and hasattr(obj, "terms"):  # an in-memory QK attribution
        return obj.to_result()
    if not isinstance(obj, Capture):
        return obj
    tmp = tempfile.mkdtemp(prefix="attnlens-show-")
    _TEMP.append(tmp)
    folder = Path(tmp) / "capture"
    obj.write_into(folder)
    return CaptureFile.load(folder)


def show(obj: Any, *, layer: int | None = None, head: int | None = None, view: str = "auto", model=None,
         targets: Sequence[str | int] = (), **params):
    """Display ``obj`` inline in Jupyter, offline: a capture (``lens.Capture``, ``RunResult``,
    saved capture or its path), a results folder (or its path), head scores, a QK attribution
    (``analyses.qk_attribution.qk_attribution``'s result or a saved ``*.qk.json``) or a direct logit
    attribution (:class:`formats.DLAResult` or a saved ``*.dla.json``).

    ``layer`` and ``head`` pick one head of a capture (without them: all heads).
    ``view="dla"`` with ``model`` shows each head's direct logit attribution to ``targets``
    (and the model's top predictions) at the capture's last position. Returns the view.
    """
    from dashboards.inline import show as show_inline

    cap = as_capture_file(obj)
    if view == "dla":
        from formats import CaptureFile

        if model is None:
            raise SelectionError("view='dla' needs model=: the final norm, unembedding and output projections come "
                                 "from the model")
        if not isinstance(cap, CaptureFile):
            raise SelectionError(f"view='dla' attributes a capture, got {type(cap).__name__}")
        from pipelines.dla import dla_of_capture

        return show_inline(dla_of_capture(model, cap, targets), **params)
    return show_inline(cap, layer=layer, head=head, view=view, **params)
