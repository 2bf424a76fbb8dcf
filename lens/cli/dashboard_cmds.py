"""`lens dashboard` and `lens report`: look at a results folder, live or as a document (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

import typer

from attnlens.formats.vocab import MapMethod, ReportFormat
from lens.cli import app
from lens.cli._common import say, status


@app.command("dashboard")
def dashboard(
    results_dir: Path = typer.Argument(..., help="Results folder (anything the lens commands wrote, at any depth)."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port to serve on (default 0: any free port; "
                             "the URL is printed)."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to bind; the default is this machine only."),
    allow_host: list[str] = typer.Option(None, "--allow-host", help="HOST[:PORT] a proxy in front of the dashboard "
                                         "forwards as the Host header (repeatable; without a port: any port). "
                                         "Other names are refused (DNS rebinding)."),
    show: bool = typer.Option(True, "--show/--no-show", help="Open a browser tab."),
    map_method: MapMethod = typer.Option(MapMethod.UMAP, "--maps", help="2-D head maps: umap, or pca (instant)."),
) -> None:
    """Serve an interactive dashboard over RESULTS_DIR: head atlas, attention explorer, maps, stats, sweeps, circuits.

    Only requests naming this address (or --allow-host) are answered. Example:
    lens dashboard results/smollm2 --port 5006 --no-show
    """
    from attnlens.dashboards._hosts import parse_allow_hosts
    from attnlens.formats.errors import SelectionError
    from attnlens.formats.folder import ResultsFolder

    try:  # before the folder is read: a typo fails at once
        parse_allow_hosts(allow_host)
    except SelectionError as err:
        raise SelectionError(f"--allow-host{str(err).removeprefix('allow_hosts')}") from None
    folder = ResultsFolder.load(results_dir)  # fail here, with one line, on a missing folder
    for name, why in folder.problems.items():
        say(f"warning: {name}: {why}", "yellow")  # say escapes control characters in file names
    with status("starting the dashboard"):
        from attnlens.dashboards.app import ServeError, serve

        try:
            server = serve(folder.path, port=port, address=address, allow_hosts=allow_host, show=show,
                           map_method=map_method.value, start=False)
        except ServeError as err:
            flag = {"allow_hosts": "--allow-host"}.get(err.argument, f"--{err.argument}")
            raise SelectionError(f"{flag} {err.detail}") from None
    host = f"[{address}]" if ":" in address else address
    say(f"serving {folder} at http://{host}:{server.port}/ (Ctrl-C stops)")
    server.run_until_shutdown()


@app.command("report")
def report(
    results_dir: Path = typer.Argument(..., help="Results folder (anything the lens commands wrote, at any depth)."),
    fmt: ReportFormat = typer.Option(ReportFormat.HTML, "--format", "-f", help="html (self-contained), md (+ PNGs) or pdf."),
    out: Path = typer.Option(None, "--out", "-o", help="Report file (default: RESULTS_DIR/report.FORMAT)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report."),
) -> None:
    """Write a report of RESULTS_DIR: scores, top heads with pattern thumbnails, stats, sweeps, circuits, provenance.

    Example: lens report results/smollm2 --format pdf --out smollm2.pdf
    """
    from attnlens.dashboards.report import write_report

    with status(f"writing the {fmt.value} report"):
        path = write_report(results_dir, fmt.value, out, force=force)
    say(f"report written to {path.resolve()}")
