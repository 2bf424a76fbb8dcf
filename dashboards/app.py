"""The dashboard: every view of one results folder, wired together, and ``serve``.

A click on a head (atlas, head map, all-heads grid, stats heatmap) selects it everywhere:
the explorer, the Q/K map and the vision overlay follow, and the explorer switches to the
selected result's own example capture (the analysis' inputs). Files that failed to load
are named at the top; everything else stays usable. A folder with several models shows
one model at a time (the selector in the header).
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import panel as pn
import param

from dashboards.ablations import AblationsView
from dashboards.atlas import HeadAtlas
from dashboards.circuits import CircuitView
from dashboards.dla import ContributionView
from dashboards.explorer import AttentionExplorer
from dashboards.heads_grid import HeadsGrid
from dashboards.maps import HeadMap, QKMap
from dashboards.selection import ModelResults, models_of
from dashboards.speech import SpeechView
from dashboards.stats_view import StatsRunView
from dashboards.vision import VisionOverlay
from formats import ResultsFolder, Site

MAX_PROBLEMS_SHOWN = 50


def problems_html(folder: ResultsFolder) -> str | None:
    """A warning naming each file that failed to load and why (None when everything loaded)."""
    if not folder.problems and not folder.is_empty:
        return None
    items = list(folder.problems.items())
    shown = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in items[:MAX_PROBLEMS_SHOWN])
    more = f"<li>… and {len(items) - MAX_PROBLEMS_SHOWN} more</li>" if len(items) > MAX_PROBLEMS_SHOWN else ""
    head = ("No readable results in this folder." if folder.is_empty else
            f"{len(items)} file(s) could not be read; everything else is shown.")
    return (f"<div class='attnlens-problems' style='background:#fff4e5;border-left:4px solid #f0a030;"
            f"padding:4px 10px'><b>{head}</b><ul>{shown}{more}</ul></div>")


class Dashboard(pn.viewable.Viewer):
    """All views of one results folder; ``selected`` ``(layer, head)`` is shared by them."""

    model = param.Selector(objects=[], doc="The model whose results are shown")
    selected = param.Tuple(default=(0, 0), length=2)
    map_method = param.Selector(default="umap", objects=["umap", "pca"], constant=True,
                                doc="How the head map is computed (pca: instant)")

    def __init__(self, folder: ResultsFolder | str | Path, **params):
        self.folder = folder if isinstance(folder, ResultsFolder) else ResultsFolder.load(folder)
        models = models_of(self.folder)
        model = params.pop("model", models[0] if models else None)
        super().__init__(**params)
        self.param.model.objects = models
        with param.discard_events(self):
            self.model = model
        self._export = pn.widgets.FileDownload(callback=self._export_html, filename="attnlens-report.html",
                                               label="Export report (HTML)", width=200)
        self.ablations = AblationsView(self.folder)
        self.circuits = CircuitView(self.folder.circuits)
        self.stats = StatsRunView(self.folder.stats_runs)
        self.stats.param.watch(lambda e: self._pick(e.new), "selected")
        self.vision = VisionOverlay(self.folder)
        self.speech = SpeechView(self.folder)
        self._tabs = pn.Tabs(dynamic=True, name="tabs", sizing_mode="stretch_width")
        self._build()

    # ---- per-model views ---------------------------------------------------------------
    @param.depends("model", watch=True)
    def _build(self) -> None:
        self.sel = ModelResults.of(self.folder, self.model)
        self.atlas = HeadAtlas(self.sel)
        self.explorer = AttentionExplorer(self.sel)
        self.grid = HeadsGrid(self.sel)
        self.head_map = HeadMap(self.sel, method=self.map_method)
        self.qk_map = QKMap(self.sel, method="pca")
        with_z = [c for c in self.sel.captures.values() if Site.Z in c.sites]
        self.contributions = ContributionView((with_z or list(self.sel.captures.values()) or [None])[0])
        for view in (self.atlas, self.head_map, self.grid):
            view.param.watch(lambda e: self._pick(e.new), "selected")
        self.atlas.param.watch(lambda e: self.explorer.use_capture_for(e.new), "metric")
        self.explorer.use_capture_for(self.atlas.metric)
        self._tabs[:] = [("Heads", pn.Row(self.atlas, self.explorer)), ("All heads", self.grid),
                         ("Head map", self.head_map), ("Q/K map", self.qk_map), ("Stats", self.stats),
                         ("Ablations", self.ablations), ("Circuits", self.circuits), ("Vision", self.vision), ("Speech", self.speech),
                         ("Contributions", self.contributions)]
        self._select(self.selected)

    def _pick(self, sel: tuple[int, int]) -> None:
        if sel != self.selected:
            self.selected = sel

    @param.depends("selected", watch=True)
    def _on_selected(self) -> None:
        self._select(self.selected)

    def _select(self, sel: tuple[int, int]) -> None:
        layer, head = sel
        with pn.io.hold():
            for view in (self.atlas, self.head_map, self.grid):
                if view.selected != sel:
                    view.selected = sel  # its watcher marks the head
            self.explorer.param.update(layer=layer, head=head)
            self.explorer.use_capture_for(self.atlas.metric)
            self.qk_map.param.update(layer=layer, head=head)
            cap = self.vision._cap()
            if cap is not None and layer in cap.layers:
                self.vision.layer = layer

    # ---- header, problems, export ----------------------------------------------------------
    def _export_html(self) -> io.BytesIO:
        from dashboards.report import build_report, render_html

        text = render_html(build_report(self.folder, command=f"lens dashboard {self.folder.path} (export button)"))
        return io.BytesIO(text.encode("utf-8"))

    def problems_pane(self) -> pn.pane.HTML | None:
        text = problems_html(self.folder)
        return None if text is None else pn.pane.HTML(text, sizing_mode="stretch_width", name="problems")

    def header(self):
        f = self.folder
        counts = ", ".join(f"{n} {k}" for k, n in f.counts().items() if n) or "nothing readable"
        n_layers, n_heads = self.sel.shape
        title = pn.pane.HTML(f"<h2 style='margin:4px 0'>attnlens · {html.escape(self.model or 'no model')}</h2>"
                             f"<code>{html.escape(str(f.path))}</code> · {html.escape(counts)} · this model: "
                             f"{len(self.sel.results)} head results, {n_layers}x{n_heads} heads, "
                             f"{len(self.sel.captures)} captures", sizing_mode="stretch_width", name="header")
        parts = [title]
        if len(self.param.model.objects) > 1:
            parts.append(pn.widgets.Select.from_param(self.param.model, width=220))
        parts.append(self._export)
        return pn.Row(*parts, sizing_mode="stretch_width")

    def tabs(self) -> pn.Tabs:
        return self._tabs

    def __panel__(self):
        parts = [pn.panel(self.header)]
        alert = self.problems_pane()
        if alert is not None:
            parts.append(alert)
        parts.append(self._tabs)
        return pn.Column(*parts, sizing_mode="stretch_width", max_width=1500)


def serve(results_dir: str | Path, *, port: int = 5006, address: str = "127.0.0.1", show: bool = True,
          map_method: str = "umap", threaded: bool = False, start: bool = True, **kwargs):
    """Serve a :class:`Dashboard` of ``results_dir`` on ``address:port`` (localhost by default;
    ``port=0`` picks a free port).

    The folder is read once, and the head map's embedding starts computing at once, in the
    background; each browser session gets its own views. With ``start=False`` returns the
    (bound, not yet running) Bokeh server: ``.port`` is the real port and
    ``.run_until_shutdown()`` runs it. Otherwise starts it: blocking, or on a thread
    (``threaded``, returned) for tests.
    """
    from panel.io.server import get_server

    folder = ResultsFolder.load(results_dir)
    for model in models_of(folder):  # precompute: the map is usually ready before its tab is opened
        HeadMap(ModelResults.of(folder, model), method=map_method).start()
    models = models_of(folder)

    def app():
        return Dashboard(folder, map_method=map_method)

    if port == 0 and start:
        port = _free_port(address)
    opts = dict(address=address, title=f"attnlens: {models[0] if models else folder.path}", **kwargs)
    if not start:
        server = get_server({"/": app}, port=port, start=False, show=False, print_url=False,
                            websocket_origin=_origins(address, port) if port else None, **opts)
        # with port 0 the real port is known only now: allow this machine's pages on it (nothing else)
        server._tornado.websocket_origins.update(_origins(address, server.port))
        if show:
            server.io_loop.add_callback(server.show, "/")
        return server
    return pn.serve({"/": app}, port=port, show=show, threaded=threaded, print_url=False,
                    websocket_origin=_origins(address, port), **opts)


def _origins(address: str, port: int) -> list[str]:
    return sorted({f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"})


def _free_port(address: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]
