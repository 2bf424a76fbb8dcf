"""Static reports of a results folder: self-contained HTML, Markdown (+ PNGs), PDF.

:func:`build_report` collects what a folder holds into a :class:`Report` (text, tables and
PNG figures drawn with matplotlib); :func:`render_html` / :func:`render_markdown` put it
through the templates in ``dashboards/templates``; :func:`write_report` writes a file and
:func:`render_pdf` turns the HTML into PDF with WeasyPrint. Every report carries the
provenance of its results, says which expected analyses are missing and which files could
not be read, and never needs a model.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import platform
import socket
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dashboards.compute import pattern_stats
from dashboards.data import ResultsFolder, head_label
from lens.errors import AttnlensError, OutputExistsError

Format = Literal["html", "md", "pdf"]
FORMATS: tuple[str, ...] = ("html", "md", "pdf")
TOP_K = 8
THUMB_TOKENS = 48  # pattern thumbnails show the first tokens only: they are a glance, not data
TEMPLATES = Path(__file__).parent / "templates"


class ReportError(AttnlensError, ValueError):
    """A report that cannot be made as asked: unknown format, unwritable output."""


@dataclass
class Figure:
    name: str  # file stem, unique in the report
    png: bytes
    alt: str

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class TopHead:
    label: str
    score: str
    stats: str
    thumb: Figure | None


@dataclass
class ResultSection:
    name: str
    description: str
    params: dict[str, Any]
    summary: dict[str, Any]
    heatmap: Figure
    top: list[TopHead]


@dataclass
class Report:
    title: str
    model: str
    folder: str
    generated: dict[str, str]
    provenance: list[dict[str, Any]]
    results: list[ResultSection]
    sweeps: list[Figure]
    circuits: list[tuple[str, str, Figure, list[dict[str, Any]]]]  # name, description, graph, top edges
    missing: list[str]
    problems: dict[str, str]
    captures: list[str] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        figs = [r.heatmap for r in self.results] + [t.thumb for r in self.results for t in r.top if t.thumb]
        return figs + self.sweeps + [c[2] for c in self.circuits]


# ---------------------------------------------------------------------------------------
# collecting
# ---------------------------------------------------------------------------------------
def build_report(folder: ResultsFolder | str | Path, command: str | None = None) -> Report:
    """Everything a report shows, computed once for every format."""
    f = folder if isinstance(folder, ResultsFolder) else ResultsFolder.load(folder)
    sections = []
    for r in f.results:
        top = []
        for layer, head, score in r.top(TOP_K):
            if not np.isfinite(score):
                continue
            thumb, stats = None, ""
            cap = f.capture_for(layer, head)
            if cap is not None:
                try:
                    pat = cap.pattern(layer, head)
                    thumb = Figure(f"{_slug(r.name)}_{head_label(layer, head)}", _thumb_png(pat),
                                   f"{head_label(layer, head)} pattern, capture {cap.name}")
                    s = pattern_stats(pat)
                    stats = (f"entropy {s['entropy']:.2f}, first-token {s['first_token_mass']:.2f}, "
                             f"prev-token {s['prev_token_mass']:.2f}")
                except AttnlensError:
                    stats = "capture unreadable"
            top.append(TopHead(head_label(layer, head), f"{score:.4g}", stats, thumb))
        sections.append(ResultSection(r.name, r.description, r.params, r.summary,
                                      Figure(f"{_slug(r.name)}_heatmap", _heatmap_png(r.scores, r.name),
                                             f"{r.name} per layer and head"), top))
    sweeps = [Figure(f"sweep_{i}_{_slug(s.result)}", _sweep_png(s), f"{s.result} sweep") for i, s in enumerate(f.sweeps)]
    circuits = []
    for i, c in enumerate(f.circuits):
        edges = sorted(c.edges, key=lambda e: -abs(e["weight"]))[:15]
        circuits.append((c.name, c.description, Figure(f"circuit_{i}_{_slug(c.name)}", _circuit_png(c),
                                                       f"circuit {c.name}"), edges))
    generated = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{socket.gethostname()} {platform.machine()} {platform.system()}",
        "versions": ", ".join(f"{k} {v}" for k, v in _versions().items()),
    }
    return Report(title=f"attnlens report: {f.model}", model=f.model, folder=str(f.path.resolve()), generated=generated,
                  provenance=f.provenances(), results=sections, sweeps=sweeps, circuits=circuits, missing=f.missing,
                  problems=f.problems, captures=[c.name for c in f.captures])


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("attnlens", "numpy", "matplotlib", "panel", "weasyprint"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _heatmap_png(scores: np.ndarray, title: str) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    n_layers, n_heads = scores.shape
    fig = MplFigure(figsize=(min(7.0, 2.5 + 0.18 * n_heads), min(6.0, 1.5 + 0.16 * n_layers)), dpi=110)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(scores), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return _png(fig)


def _thumb_png(pattern: np.ndarray) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    n = min(THUMB_TOKENS, pattern.shape[0], pattern.shape[1])
    fig = MplFigure(figsize=(0.9, 0.9), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(pattern[:n, :n], cmap="Blues", interpolation="nearest", vmin=0)
    ax.set_axis_off()
    return _png(fig)


def _sweep_png(sweep) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(5.5, 3.2), dpi=110)
    ax = fig.add_subplot()
    for yname, ys in sweep.ys.items():
        for j, y in enumerate(ys):
            label = sweep.labels[j] if j < len(sweep.labels) and len(sweep.ys) == 1 else (
                yname if ys.shape[0] == 1 else f"{yname}[{j}]")
            ax.plot(sweep.x, y, marker="o", markersize=3, label=label)
    ax.set_xlabel(sweep.x_label)
    ax.set_title(sweep.result, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _circuit_png(circuit) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    pos = circuit.layout()
    wmax = max((abs(e["weight"]) for e in circuit.edges), default=1.0) or 1.0
    fig = MplFigure(figsize=(6, 4), dpi=110)
    ax = fig.add_subplot()
    for e in circuit.edges:
        (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "lw": 0.5 + 3 * abs(e["weight"]) / wmax, "alpha": 0.6,
                                "color": "#3182bd" if e["weight"] >= 0 else "#de2d26"})
    xs, ys = zip(*pos.values()) if pos else ((), ())
    ax.scatter(xs, ys, s=80, c="#fdae6b", edgecolors="black", zorder=3)
    for name, (x, y) in pos.items():
        ax.annotate(name, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.set_title(f"circuit: {circuit.name}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------
def _env(autoescape: bool):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=autoescape,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    return env


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_html(report: Report) -> str:
    """One self-contained HTML page: every figure inline as a base64 PNG."""
    return _env(True).get_template("report.html.j2").render(r=report, src=lambda fig: fig.data_uri)


def render_markdown(report: Report, image_dir: str) -> str:
    """Markdown that links its figures as ``image_dir/NAME.png`` (written by :func:`write_report`)."""
    return _env(False).get_template("report.md.j2").render(r=report, src=lambda fig: f"{image_dir}/{fig.name}.png")


def render_pdf(html_text: str) -> bytes:
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as err:  # OSError: pango or its friends are missing
        raise ReportError(f"PDF needs WeasyPrint and its system libraries (pango): {err}") from None
    return HTML(string=html_text).write_pdf()


def write_report(results_dir: str | Path, fmt: str, out: str | Path | None = None, *, force: bool = False,
                 command: str | None = None) -> Path:
    """Write the report of ``results_dir`` as ``fmt`` to ``out`` (default RESULTS_DIR/report.FMT).

    Markdown figures go to ``OUT_STEM_files/`` next to the .md. Refuses to replace an
    existing file without ``force``; an unwritable path raises :class:`ReportError`.
    """
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    folder = ResultsFolder.load(results_dir)
    out = Path(out) if out is not None else folder.path / f"report.{fmt}"
    if out.is_dir():
        raise ReportError(f"cannot write the report to {out}: it is a folder, expected a file name like {out}/report.{fmt}")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists: pass --force to overwrite it")
    if not out.parent.is_dir():
        raise ReportError(f"cannot write the report to {out}: folder {out.parent} does not exist")
    report = build_report(folder, command)
    try:
        if fmt == "md":
            image_dir = out.parent / f"{out.stem}_files"
            image_dir.mkdir(exist_ok=True)
            for fig in report.figures():
                (image_dir / f"{fig.name}.png").write_bytes(fig.png)
            out.write_text(render_markdown(report, image_dir.name), encoding="utf-8")
        elif fmt == "html":
            out.write_text(render_html(report), encoding="utf-8")
        else:
            out.write_bytes(render_pdf(render_html(report)))
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err}") from None
    return out
