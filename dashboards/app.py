"""The dashboard: every view over one results folder, wired together, and ``serve``.

Clicking a head in the atlas (or on the head map) selects it everywhere: the explorer and
the Q/K map follow. Files that failed to load are listed at the top; the rest stays usable.
In Jupyter: ``pn.extension(); Dashboard("results/scan")`` renders inline.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import panel as pn
import param

from dashboards.atlas import HeadAtlas
from dashboards.data import ResultsFolder
from dashboards.explorer import AttentionExplorer
from dashboards.maps import HeadMap, QKMap
from dashboards.sweeps import SweepsView
from dashboards.vision import VisionOverlay


class Dashboard(pn.viewable.Viewer):
    """All views of one results folder; ``selected`` ``(layer, head)`` is shared by them."""

    selected = param.Tuple(default=(0, 0), length=2)
    map_method = param.Selector(default="umap", objects=["umap", "pca"], constant=True,
                                doc="How the 2-D maps are computed (pca: instant, for tests)")

    def __init__(self, folder: ResultsFolder | str | Path, **params):
        self.folder = folder if isinstance(folder, ResultsFolder) else ResultsFolder.load(folder)
        super().__init__(**params)
        f = self.folder
        self.atlas = HeadAtlas(f)
        self.explorer = AttentionExplorer(f)
        self.head_map = HeadMap(f, method=self.map_method)
        self.qk_map = QKMap(f, method=self.map_method)
        self.sweeps = SweepsView(f)
        self.vision = VisionOverlay(f)
        self.atlas.param.watch(lambda e: setattr(self, "selected", e.new), "selected")
        self.head_map.param.watch(lambda e: setattr(self, "selected", e.new), "selected")
        self._export = pn.widgets.FileDownload(callback=self._export_html, filename="attnlens-report.html",
                                               label="Export report (HTML)", width=220)
        self._select(self.selected)

    @param.depends("selected", watch=True)
    def _on_selected(self) -> None:
        self._select(self.selected)

    def _select(self, sel: tuple[int, int]) -> None:
        layer, head = sel
        if self.atlas.selected != sel:
            self.atlas.selected = sel
        self.explorer.param.update(layer=layer, head=head)
        self.qk_map.param.update(layer=layer, head=head)
        self.vision.param.update(layer=min(layer, max(self.vision.captures[0].layers) if self.vision.captures else 0))

    def _export_html(self) -> io.BytesIO:
        from dashboards.report import build_report, render_html

        text = render_html(build_report(self.folder, command=f"lens dashboard {self.folder.path} (export button)"))
        return io.BytesIO(text.encode("utf-8"))

    def problems_pane(self) -> pn.pane.Alert | None:
        """A warning that names each file that failed to load and why (None when all loaded)."""
        f = self.folder
        if not f.problems and f.results:
            return None
        items = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in f.problems.items())
        head = ("No readable results in this folder." if not f.results else
                f"{len(f.problems)} file(s) could not be read; everything else is shown.")
        return pn.pane.Alert(f"<b>{head}</b><ul>{items}</ul>", alert_type="warning", sizing_mode="stretch_width",
                             name="problems")

    def header(self):
        f = self.folder
        n_layers, n_heads = f.shape
        missing = f"; missing analyses: {', '.join(f.missing)}" if f.missing else ""
        return pn.Row(pn.pane.Markdown(
            f"## attnlens · {html.escape(f.model)}\n`{f.path}` · {len(f.results)} results, {n_layers}x{n_heads} heads, "
            f"{len(f.captures)} captures, {len(f.circuits)} circuits{missing}", sizing_mode="stretch_width"),
            self._export, sizing_mode="stretch_width")

    def tabs(self) -> pn.Tabs:
        # dynamic: a tab renders only when shown, so the UMAP maps cost nothing until opened
        return pn.Tabs(("Heads", pn.Row(self.atlas, self.explorer)), ("Head map", self.head_map),
                       ("Q/K map", self.qk_map), ("Ablations & circuits", self.sweeps), ("Vision", self.vision),
                       dynamic=True, name="tabs")

    def __panel__(self):
        parts = [self.header()]
        alert = self.problems_pane()
        if alert is not None:
            parts.append(alert)
        parts.append(self.tabs())
        return pn.Column(*parts, sizing_mode="stretch_width")


def serve(results_dir: str | Path, *, port: int = 5006, address: str = "127.0.0.1", show: bool = True,
          map_method: str = "umap", threaded: bool = False, **kwargs):
    """Serve a :class:`Dashboard` of ``results_dir`` on ``address:port`` (localhost by default).

    The folder is read once; each browser session gets its own views. Blocks until stopped
    unless ``threaded`` (then returns the server thread, for tests).
    """
    folder = ResultsFolder.load(results_dir)
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]

    def app():
        return Dashboard(folder, map_method=map_method)

    return pn.serve({"/": app}, port=port, address=address, show=show, title=f"attnlens: {folder.model}",
                    websocket_origin=origins, threaded=threaded, print_url=False, **kwargs)
