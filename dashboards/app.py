"""The dashboard: every view of one results folder, wired together, and ``serve``.

A click on a head (atlas, head map, all-heads grid, stats heatmap) selects it everywhere:
the explorer, the Q/K map and the vision overlay follow, and the explorer switches to the
selected result's own example capture (the analysis' inputs). Files that failed to load
are named at the top; everything else stays usable. A folder with several models shows
one model at a time (the selector in the header).
"""

from __future__ import annotations

import asyncio
import html
import io
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import panel as pn
import param

from attnlens.dashboards._hosts import HostPolicy, guard, parse_allow_hosts
from attnlens.dashboards._local import keep_stylesheets_local
from attnlens.dashboards._quiet import quiet_closed_websockets
from attnlens.dashboards.ablations import AblationsView
from attnlens.dashboards.atlas import HeadAtlas
from attnlens.dashboards.circuits import CircuitView
from attnlens.dashboards.dla import ContributionView
from attnlens.dashboards.explorer import AttentionExplorer
from attnlens.dashboards.heads_grid import HeadsGrid
from attnlens.dashboards.loadings import LoadingsView
from attnlens.dashboards.maps import HeadMap, QKMap
from attnlens.dashboards.qk import QKView
from attnlens.dashboards.selection import ModelResults, models_of, task_metric
from attnlens.dashboards.speech import SpeechView
from attnlens.dashboards.stats_view import StatsRunView
from attnlens.dashboards.vision import VisionOverlay
from attnlens.formats import ResultsFolder
from attnlens.formats.errors import SelectionError

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
        self.circuits = CircuitView(self.folder.circuits, self.folder.curves)
        self.circuits.param.watch(lambda e: self._open_head(e.new), "clicks")
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
        task = task_metric(self.sel)  # open on the task's score (retrieval, circuit, ablation) when there is one
        self.atlas = HeadAtlas(self.sel, **({"metric": task} if task else {}))
        self.explorer = AttentionExplorer(self.sel)
        self.grid = HeadsGrid(self.sel)
        self.head_map = HeadMap(self.sel, method=self.map_method)
        self.qk_map = QKMap(self.sel, method="pca")
        self.contributions = ContributionView({k: r for k, r in self.folder.dla.items() if r.provenance.model == self.model})
        self.qk = QKView({k: r for k, r in self.folder.qk.items() if r.provenance.model == self.model})
        self.loadings = LoadingsView({k: r for k, r in self.folder.loadings.items() if r.provenance.model == self.model})
        for view in (self.atlas, self.head_map, self.grid):
            view.param.watch(lambda e: self._pick(e.new), "selected")
        self.atlas.param.watch(lambda e: self.explorer.use_capture_for(e.new), "metric")
        self.explorer.use_capture_for(self.atlas.metric)
        self._tabs[:] = [("Heads", pn.Row(self.atlas, self.explorer)), ("All heads", self.grid),
                         ("Head map", self.head_map), ("Q/K map", self.qk_map), ("Stats", self.stats),
                         ("Ablations", self.ablations), ("Circuits", self.circuits), ("Vision", self.vision), ("Speech", self.speech),
                         ("Contributions", self.contributions), ("QK attribution", pn.Column(self.qk, pn.pane.Markdown("### Head loadings"), self.loadings))]
        mine = [k for k, c in self.vision.captures.items() if c.model == self.model]
        if mine and self.vision.capture not in mine:  # the Vision tab follows the model selector
            self.vision.capture = mine[0]
        self._select(self.selected, follow_vision=False)  # the overlay opens on its last layer, not the head's

    def _open_head(self, _clicks: int) -> None:
        """A head clicked in the circuit: show the circuit's head scores in the atlas (so the
        explorer opens the task's own prompts, saved by ``lens circuit``), select the head and
        show its pattern (the Heads tab)."""
        label = self.circuits.head_result(list(self.sel.results))
        with pn.io.hold():
            if label is not None and self.atlas.metric != label:
                self.atlas.metric = label
            self._pick(self.circuits.selected)
            self.explorer.use_capture_for(self.atlas.metric)
            self._tabs.active = 0

    def _pick(self, sel: tuple[int, int]) -> None:
        if sel != self.selected:
            self.selected = sel

    @param.depends("selected", watch=True)
    def _on_selected(self) -> None:
        self._select(self.selected)

    def _select(self, sel: tuple[int, int], follow_vision: bool = True) -> None:
        layer, head = sel
        with pn.io.hold():
            for view in (self.atlas, self.head_map, self.grid):
                if view.selected != sel:
                    view.selected = sel  # its watcher marks the head
            self.explorer.param.update(layer=layer, head=head)
            self.explorer.use_capture_for(self.atlas.metric)
            self.qk_map.param.update(layer=layer, head=head)
            cap = self.vision._cap()
            if follow_vision and cap is not None and cap.model == self.model and layer in cap.layers:
                self.vision.layer = layer

    # ---- header, problems, export ----------------------------------------------------------
    def _export_html(self) -> io.BytesIO:
        from attnlens.dashboards.report import build_report, render_html

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


class ServeError(SelectionError):
    """An address, port or allowed host the dashboard cannot serve on; ``argument`` names the
    :func:`serve` argument at fault, ``detail`` says why (the CLI names its option)."""

    def __init__(self, argument: str, detail: str):
        super().__init__(f"{argument}: {detail}")
        self.argument, self.detail = argument, detail


def serve(results_dir: str | Path, *, port: int = 0, address: str = "127.0.0.1",
          allow_hosts: Sequence[str] | None = None, show: bool = True, map_method: str = "umap",
          threaded: bool = False, start: bool = True, **kwargs):
    """Serve a :class:`Dashboard` of ``results_dir`` on ``address:port`` (this machine only by
    default; ``port=0``, the default, picks a free port: read it from ``.port``).

    Only requests whose ``Host`` header names an address served here are answered (a page
    whose name was re-pointed at this machine, DNS rebinding, gets a 403 with no page and no
    websocket); ``allow_hosts`` (``HOST[:PORT]`` strings; without a port, any port) adds the
    names a proxy in front of it forwards. A busy port, an address that is not this
    machine's or a malformed host raises :class:`ServeError`.

    The folder is read once, and the head map's embedding starts computing at once, in the
    background; each browser session gets its own views. With ``start=False`` returns the
    (bound, not yet running) Bokeh server: ``.port`` is the real port and
    ``.run_until_shutdown()`` runs it. Otherwise runs it, blocking, or with ``threaded`` on a
    thread of its own (returned: ``.port``, ``.server``, ``.stop()``), for tests and notebooks.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ServeError("port", f"expected an integer in 0-65535 (0: any free port), got {port!r}")
    if not isinstance(address, str):
        raise ServeError("address", f"expected a host name or IP address, got {type(address).__name__}")
    try:
        parse_allow_hosts(allow_hosts)
    except SelectionError as err:
        raise ServeError("allow_hosts", str(err).partition(": ")[2]) from None
    folder = ResultsFolder.load(results_dir)
    for model in models_of(folder):  # precompute: the map is usually ready before its tab is opened
        HeadMap(ModelResults.of(folder, model), method=map_method).start()
    models = models_of(folder)

    def app():
        dashboard = Dashboard(folder, map_method=map_method)
        keep_stylesheets_local(pn.state.curdoc, dashboard._tabs)  # never Panel's CDN, even for a hidden tab's view
        return dashboard

    title = f"attnlens: {models[0] if models else folder.path}"

    def build(show_now: bool):
        server = _bind(app, port=port, address=address, title=title, **kwargs)
        policy = HostPolicy.serving(address, server.port, allow_hosts)
        guard(server._tornado, policy)
        server._tornado.websocket_origins.clear()  # Origin: pages served by this server (or an allowed proxy)
        server._tornado.websocket_origins.update(policy.origins())
        quiet_closed_websockets(server.io_loop.asyncio_loop)
        if show_now:
            server.io_loop.add_callback(server.show, "/")
        return server

    if not start:
        return build(show)
    if threaded:
        thread = ServerThread(lambda: build(show))
        thread.start()
        return thread.wait_ready()
    server = build(show)
    server.start()
    server.io_loop.start()
    return server


def _bind(app, *, port: int, address: str, **opts):
    """The Bokeh server bound to ``address:port`` (not started), or a :class:`ServeError` saying why not."""
    import errno

    from panel.io.server import get_server

    try:
        # the websocket origins are set by serve once the real port is known (port 0)
        return get_server({"/": app}, port=port, address=address, start=False, show=False, print_url=False,
                          websocket_origin=[f"127.0.0.1:{port}"], **opts)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ServeError("port", f"{address}:{port} is already in use (another server listens there): "
                             "choose another port, or 0 for any free one") from None
        if err.errno in (errno.EACCES, errno.EPERM):
            raise ServeError("port", f"permission denied to listen on {address}:{port} (ports below 1024 "
                             "need privileges): choose a port above 1023, or 0 for any free one") from None
        if err.errno == errno.EADDRNOTAVAIL or isinstance(err, socket.gaierror):
            raise ServeError("address", f"{address!r} is not an address of this machine "
                             f"({err.strerror or err}): use 127.0.0.1 or one of its interfaces") from None
        raise ServeError("address", f"cannot listen on {address}:{port}: {err.strerror or err}") from None


class ServerThread(threading.Thread):
    """A dashboard server running on an event loop of its own thread (``serve(threaded=True)``)."""

    def __init__(self, build):
        super().__init__(daemon=True, name="attnlens-dashboard")
        self._build, self._ready = build, threading.Event()
        self.server = None
        self._error: BaseException | None = None

    def run(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self.server = self._build()
        except BaseException as err:  # handed to the thread that asked, in wait_ready
            self._error = err
            return
        finally:
            self._ready.set()
        self.server.start()
        self.server.io_loop.start()

    def wait_ready(self) -> ServerThread:
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, timeout: float = 10) -> None:
        """Stop the server and its loop, and wait for the thread."""
        server = self.server
        if server is None:
            return

        def halt():
            server.stop(wait=False)
            server.io_loop.stop()

        server.io_loop.add_callback(halt)
        self.join(timeout)
