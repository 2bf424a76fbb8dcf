"""Issue 12's dashboard part without a browser: payloads in every text field never reach HTML as
markup (dashboard panes, both report formats), paths read from results stay in their folder,
and a bad file is named while the rest is used. (tests/browser checks that nothing runs.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import panel as pn
import pytest

from attnlens.dashboards.app import Dashboard
from attnlens.dashboards.report import write_report
from attnlens.formats import ResultsFolder
from tests.dashboards.payloads import NAME, make_payload_folder


class Markup(HTMLParser):
    """Collects what would run or load: script/svg/iframe tags, on* attributes, non-data images, js: links."""

    def __init__(self):
        super().__init__()
        self.bad: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "svg", "iframe", "object", "embed"):
            self.bad.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.bad.append(f"{tag} {name}")
            if name in ("href", "src") and value and value.strip().lower().startswith(("javascript:", "vbscript:")):
                self.bad.append(f"{tag} {name}={value}")
        if tag == "img" and not dict(attrs).get("src", "").startswith("data:image/png;base64,") and not \
                dict(attrs).get("src", "").endswith(".png"):
            self.bad.append(f"img src={dict(attrs).get('src')}")


def bad_markup(text: str) -> list[str]:
    p = Markup()
    p.feed(text)
    return p.bad


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    return make_payload_folder(tmp_path_factory.mktemp("xss") / "results")


def test_the_folder_loads_names_the_bad_files_and_keeps_the_rest(payloads):
    f = ResultsFolder.load(payloads)
    assert any(k.startswith("broken") for k in f.problems)
    (image,) = [v for k, v in f.problems.items() if k.endswith("image/000")]
    assert "points outside its folder" in image  # the crafted image path is refused, not read
    assert len(f.results) >= 3 and f.curves and f.ablations and f.circuits and f.captures and f.stats_runs


def test_dashboard_panes_hold_no_markup_from_files(payloads):
    dash = Dashboard(payloads, map_method="pca")
    html_texts = []
    for label in dash.atlas.param.metric.objects:
        dash.atlas.metric = label
        html_texts.append(dash.atlas._info.object)
    root = dash.__panel__()
    views = [root, dash.atlas, dash.explorer, dash.grid, dash.head_map, dash.qk_map, dash.stats, dash.ablations,
             dash.circuits, dash.vision, dash.contributions]
    for view in views:
        obj = pn.panel(view)
        obj.get_root()  # render: lazy parts fill in
        for pane in obj.select(pn.pane.HTML) + obj.select(pn.pane.Markdown):
            html_texts.append(str(pane.object))
    circuit = dash.circuits.plot()  # the warning, the heads table and the faithfulness
    html_texts += [circuit.objects[0].object, circuit.objects[1].objects[1].object, circuit.objects[-1].object,
                   dash.explorer._stats.object, dash.problems_pane().object]
    assert len(html_texts) > 20
    for text in html_texts:
        assert bad_markup(text) == [], text[:300]
    assert any("&lt;script&gt;" in t for t in html_texts)  # the payloads are shown, as text
    dash.explorer.capture = next(k for k in dash.sel.captures if k.endswith(NAME))
    assert dash.explorer.tokens.tokens[1].startswith("<script>")  # tokens go to the browser as text (textContent)
    assert bad_markup(dash.explorer._message.object + dash.explorer._stats.object) == []


def test_both_report_formats_hold_no_markup_from_files(payloads, tmp_path):
    from markdown_it import MarkdownIt

    html = write_report(payloads, "html", tmp_path / "r.html").read_text()
    assert bad_markup(html) == []
    assert "&lt;script&gt;window.__xss" in html and "<script" not in html.lower()
    md = write_report(payloads, "md", tmp_path / "r.md").read_text()
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)  # raw HTML allowed, as on many sites
    assert bad_markup(rendered) == []
    assert "&lt;script&gt;window.__xss" in rendered
    links = re.findall(r"<a href=\"([^\"]*)\"", rendered)
    assert links and all(re.fullmatch(r"#[a-z0-9-]+", x) for x in links)  # only the report's own anchors
    assert "points outside its folder" in md.replace("\\", "")
