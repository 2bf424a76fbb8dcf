"""`lens dashboard` and `lens report`: look at a results folder, live or as a document."""

from __future__ import annotations

from pathlib import Path

import typer

from lens.cli import app
from lens.cli._common import console, status


@app.command("dashboard")
def dashboard(
    results_dir: Path = typer.Argument(..., help="Results folder written by `lens scan`."),
    port: int = typer.Option(5006, "--port", help="Port to serve on (0: any free port)."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to bind; the default is this machine only."),
    show: bool = typer.Option(True, "--show/--no-show", help="Open a browser tab."),
    map_method: str = typer.Option("umap", "--maps", help="2-D head maps: umap, or pca (instant)."),
) -> None:
    """Serve an interactive dashboard over RESULTS_DIR: head atlas, attention explorer, maps, sweeps.

    Example: lens dashboard results/smollm2 --port 5006 --no-show
    """
    from dashboards.data import ResultsFolder, ResultsFolderError

    if map_method not in ("umap", "pca"):
        raise ResultsFolderError(f"--maps {map_method!r} is not one of umap, pca")
    folder = ResultsFolder.load(results_dir)  # fail here, with one line, on a missing folder
    for name, why in folder.problems.items():
        console.print(f"[yellow]warning:[/] {name}: {why}", highlight=False)
    with status("starting the dashboard"):
        from dashboards.app import serve
    console.print(f"serving {len(folder.results)} results of {folder.model} at [bold]http://{address}:{port}/[/] "
                  "(Ctrl-C stops)")
    serve(folder.path, port=port, address=address, show=show, map_method=map_method)


@app.command("report")
def report(
    results_dir: Path = typer.Argument(..., help="Results folder written by `lens scan`."),
    fmt: str = typer.Option("html", "--format", "-f", help="html (self-contained), md (+ PNGs) or pdf."),
    out: Path = typer.Option(None, "--out", "-o", help="Report file (default: RESULTS_DIR/report.FORMAT)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report."),
) -> None:
    """Write a report of RESULTS_DIR: scores, top heads with pattern thumbnails, sweeps, circuits, provenance.

    Example: lens report results/smollm2 --format pdf --out smollm2.pdf
    """
    from dashboards.report import write_report

    with status(f"writing the {fmt} report"):
        path = write_report(results_dir, fmt, out, force=force)
    console.print(f"report written to [bold]{path.resolve()}[/]")
