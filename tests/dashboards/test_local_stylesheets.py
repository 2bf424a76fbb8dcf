"""attnlens.dashboards._local: Panel's CDN stylesheets rewritten to the server's own path (issue 29)."""

from __future__ import annotations

from bokeh.document import Document
from bokeh.models import Column, Div, ImportedStyleSheet
from panel.io.resources import CDN_DIST, LOCAL_DIST

from attnlens.dashboards._local import keep_stylesheets_local, localize


def test_localize_rewrites_only_panel_cdn_stylesheets_deep_in_a_model():
    cdn = ImportedStyleSheet(url=f"{CDN_DIST}bundled/theme/default.css")
    other = ImportedStyleSheet(url="https://example.org/own.css")
    local = ImportedStyleSheet(url=f"{LOCAL_DIST}css/loading.css")
    root = Column(children=[Div(text="x", stylesheets=[cdn, other, local])])
    assert localize([root], LOCAL_DIST) == 1
    assert cdn.url == f"{LOCAL_DIST}bundled/theme/default.css"
    assert other.url == "https://example.org/own.css" and local.url == f"{LOCAL_DIST}css/loading.css"
    assert localize([root], LOCAL_DIST) == 0  # nothing left to rewrite


def test_a_stylesheet_the_browser_has_sends_its_change_and_a_new_one_is_rewritten_in_place():
    doc = Document()
    sent = ImportedStyleSheet(url=f"{CDN_DIST}css/a.css")
    fresh = ImportedStyleSheet(url=f"{CDN_DIST}css/b.css")
    doc.add_root(Div(stylesheets=[sent, fresh]))
    changes = []
    doc.on_change(lambda e: changes.append(getattr(e, "attr", None)))
    assert localize(doc.roots, LOCAL_DIST, synced=lambda: {sent}) == 2
    assert (sent.url, fresh.url) == (f"{LOCAL_DIST}css/a.css", f"{LOCAL_DIST}css/b.css")
    assert changes == ["url"]  # one event: for the stylesheet already sent


def test_a_session_document_gets_its_dist_url_and_new_views_are_rewritten_on_change():
    doc = Document()
    keep_stylesheets_local(doc)
    assert doc._template_variables["dist_url"] == LOCAL_DIST
    div = Div()
    doc.add_root(div)
    sheet = ImportedStyleSheet(url=f"{CDN_DIST}bundled/theme/native.css")
    div.stylesheets = [sheet]  # a change outside Panel's callbacks brings a CDN stylesheet in
    assert sheet.url == f"{LOCAL_DIST}bundled/theme/native.css"
