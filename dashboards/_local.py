"""Keep a served dashboard's stylesheets on the server (issue 29).

Panel gives each view the stylesheet links of its theme (``bundled/theme/default.css``,
``native.css``, ``css/loading.css``) as HoloViz-CDN URLs and rewrites them to the server's own
``static/extensions/panel/`` path using the ``dist_url`` its session's document carries. A view
whose Bokeh model has no document at that moment keeps the CDN URL: with dynamic tabs, a hidden
tab's models are detached, so a pane updated there (a circuit node's click refreshing the Heads
tab before it is shown) sends the browser to ``cdn.holoviz.org`` once the tab opens. That is
a request off this machine, and offline a missing theme.

:func:`keep_stylesheets_local` gives a session's document its ``dist_url`` from the start and
rewrites any CDN stylesheet the document holds after each tab switch (Panel's callbacks send
their changes once the callback is done, so the rewrite is what the browser gets) and any a
change made outside Panel's callbacks brings in, before that change is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from bokeh.document import Document
from bokeh.document.events import DocumentChangedEvent, ModelChangedEvent, RootAddedEvent
from bokeh.model import Model
from bokeh.model.util import collect_models
from bokeh.models import ImportedStyleSheet
from panel.io.resources import CDN_DIST, LOCAL_DIST


def _local_url(url: str, dist_url: str) -> str | None:
    """``url`` on the server's own dist path, or None when it is not one of Panel's CDN files."""
    if not url.startswith(CDN_DIST):
        return None
    return dist_url + url[len(CDN_DIST):]


def localize(models, dist_url: str, synced: Callable[[], set[Model]] = set) -> int:
    """Point every :class:`ImportedStyleSheet` among ``models`` (and what they reference) that
    links Panel's CDN at ``dist_url`` instead; the number rewritten. A stylesheet the browser
    has not been sent yet (not in ``synced()``, asked only when one is found) is changed without an event of its own: the change
    being sent carries it whole."""
    n, known = 0, None
    for model in collect_models(models):
        if isinstance(model, ImportedStyleSheet):
            new = _local_url(str(model.url), dist_url)
            if new is None:
                continue
            if known is None:
                known = synced()
            if model in known:
                model.url = new
            else:
                model._property_values["url"] = new
            n += 1
    return n


def keep_stylesheets_local(doc: Document, tabs=None) -> None:
    """Make every stylesheet a served session's views link come from this server; ``tabs``: the
    session's (dynamic) :class:`panel.Tabs`, whose switches attach views built while hidden."""
    dist_url = doc._template_variables.setdefault("dist_url", LOCAL_DIST)

    def everything(*_events) -> None:
        localize(doc.roots, doc._template_variables.get("dist_url", dist_url), lambda: doc.models.synced_references)

    if tabs is not None:  # after Panel's own watcher has built the tab (precedence: later)
        tabs.param.watch(everything, ["active", "objects"], precedence=10)

    def on_change(event: DocumentChangedEvent) -> None:
        if isinstance(event, ModelChangedEvent):
            if event.attr == "data":  # a data source's columns: no models
                return
            new = event.new
        elif isinstance(event, RootAddedEvent):
            new = event.model
        else:
            return
        found = [new] if isinstance(new, Model) else [v for v in _flatten(new) if isinstance(v, Model)]
        if found:
            localize(found, doc._template_variables.get("dist_url", dist_url), lambda: doc.models.synced_references)

    doc.on_change(on_change)


def _flatten(value):
    """The leaves of nested lists, tuples and dicts (a list of plain values is skipped whole)."""
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (int, float, str)):
            return
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    else:
        yield value
