"""Static reports of a results folder: self-contained HTML, Markdown (+ PNGs), PDF.

:func:`build_report` reads a folder through :mod:`formats` and collects every kind it holds
(head scores per model, curves, ablations, circuits, stats runs, captures, unfinished
sweeps, unreadable files) into a :class:`Report` of text, summarised tables and PNG
figures (matplotlib, :mod:`dashboards.figures`); :func:`render_html` / :func:`render_markdown`
put it through the templates in ``dashboards/templates`` and :func:`render_pdf` turns the
HTML into PDF with WeasyPrint. :func:`write_report` is ``lens report``.

Everything read from files is escaped: the HTML template autoescapes, and the Markdown
template escapes every value for HTML and for Markdown (links, images, tables) before it
is written; only the report's own markup (figure links) is marked safe. Long values are
summarised (:func:`summarize`), never printed whole.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import platform
import re
import shutil
import socket
import stat
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from attnlens.dashboards import figures as figs
from attnlens.dashboards.audio import agreement_rows, is_audio, maps_for, speech_png, token_view
from attnlens.dashboards.compute import head_label, pattern_stats
from attnlens.dashboards.dla_report import dla_sections
from attnlens.dashboards.figures import Figure
from attnlens.dashboards.graph import curves_of, head_table
from attnlens.dashboards.loadings_report import loadings_sections
from attnlens.dashboards.overlay import default_query, overlay_png
from attnlens.dashboards.qk_report import qk_sections
from attnlens.dashboards.selection import ModelResults, describe, models_of
from attnlens.formats import (
    AttnlensError,
    AudioLayout,
    ImageLayout,
    Modality,
    OutputExistsError,
    OutputLockedError,
    ResultsFolder,
    SelectionError,
    Site,
    SourceLayout,
    _json,
    faithfulness_warning,
)
from attnlens.formats._json import special_kind, write_bytes
from attnlens.formats.output import MARKER, locked, new_sibling, swap_in
from attnlens.formats.provenance import code_version
from attnlens.formats.vocab import ReportFormat

FORMATS: tuple[str, ...] = tuple(f.value for f in ReportFormat)
TOP_K = 8
MAX_ITEMS = 6  # list items and object fields printed before "... (N in all)"
MAX_TEXT = 300
SIMILAR_R = 0.95  # two maps of one model correlating at least this much get a note
TEMPLATES = Path(__file__).parent / "templates"

# What differs between maps that measure nearly the same thing (keyed by the pair of result names).
KNOWN_SIMILAR = {
    frozenset({"summary.sink_mass", "sinks.first_token_mass"}): (
        "summary.sink_mass pools every query row (>= 1) of every prompt, so longer prompts weigh more, and counts "
        "the first sink_tokens keys; sinks.first_token_mass averages each prompt's mean over its queries >= 1 "
        "(every prompt weighs the same), on key 0 alone, and can come from the stats kernel (--source kernel). "
        "On prompts of similar length they agree closely."),
}


class ReportError(AttnlensError, ValueError):
    """A report that cannot be made as asked: unknown format, unwritable output."""


@dataclass
class TopHead:
    label: str
    score: str
    stats: str
    capture: str
    thumb: Figure | None


@dataclass
class ResultSection:
    label: str
    name: str
    description: str
    params: list[tuple[str, str]]
    summary: list[tuple[str, str]]
    heatmap: Figure
    top: list[TopHead]
    provenance: dict[str, Any]
    anchor: str = ""
    scale: str = "sequential"
    categories: list[tuple[str, int]] = field(default_factory=list)  # categorical: (name, heads) per category
    finding: str = ""  # one sentence: the headline of this result


@dataclass
class ModelSection:
    model: str
    shape: tuple[int, int]
    results: list[ResultSection]
    notes: list[str]  # maps that measure nearly the same thing
    missing: list[str]  # scan analyses of this model's modality without results here
    anchor: str = ""


@dataclass
class Report:
    title: str
    folder: str
    generated: dict[str, str]
    counts: dict[str, int]
    models: list[ModelSection]
    curves: list[tuple[str, str, Figure]] = field(default_factory=list)  # label, description, figure
    ablations: list[tuple[str, str, Figure]] = field(default_factory=list)  # label, summary, figure
    circuits: list[dict[str, Any]] = field(default_factory=list)
    stats_runs: list[dict[str, Any]] = field(default_factory=list)
    captures: list[dict[str, Any]] = field(default_factory=list)
    overlays: list[tuple[str, Figure]] = field(default_factory=list)
    speech: list[dict[str, Any]] = field(default_factory=list)  # audio captures: spectrogram, attention, saliency
    sweeps: list[tuple[str, str]] = field(default_factory=list)  # unfinished sweeps: label, status
    problems: list[tuple[str, str]] = field(default_factory=list)
    qk: list[dict[str, Any]] = field(default_factory=list)  # QK attributions (dashboards.qk_report)
    dla: list[dict[str, Any]] = field(default_factory=list)  # direct logit attributions (dashboards.dla_report)
    loadings: list[dict[str, Any]] = field(default_factory=list)  # QK head loadings (dashboards.loadings_report)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    findings: list[tuple[str, str, str]] = field(default_factory=list)  # anchor, what, one sentence
    contents: list[tuple[str, str, int]] = field(default_factory=list)  # anchor, title, depth (0 or 1)

    def figures(self) -> list[Figure]:
        out = []
        for m in self.models:
            for r in m.results:
                out.append(r.heatmap)
                out += [t.thumb for t in r.top if t.thumb is not None]
        out += [f for _, _, f in self.curves] + [f for _, _, f in self.ablations]
        out += [c["figure"] for c in self.circuits] + [s["figure"] for s in self.stats_runs]
        out += [f for _, f in self.overlays] + [s["figure"] for s in self.speech]
        return (out + [s["figure"] for s in self.qk] + [s["figure"] for s in self.loadings]
                + [s["figure"] for s in self.dla])


# ---------------------------------------------------------------------------------------
# summaries of values read from files
# ---------------------------------------------------------------------------------------
def summarize(v: Any, limit: int = MAX_ITEMS) -> str:
    """A short text for any JSON value: numbers to 4 digits, long lists as their size and range
    (numbers) or first items and a count, objects as their first fields and a count."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v if len(v) <= MAX_TEXT else v[:MAX_TEXT - 1] + f"… ({len(v)} characters)"
    if isinstance(v, (list, tuple)):
        nums = [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if v and len(nums) == len(v) and len(v) > limit:
            a = np.asarray(nums, np.float64)
            return (f"{len(v)} numbers: min {np.nanmin(a):.4g}, mean {np.nanmean(a):.4g}, max {np.nanmax(a):.4g}"
                    if np.isfinite(a).any() else f"{len(v)} numbers, none finite")
        if v and all(isinstance(x, dict) for x in v):  # records: their fields once, then the first few rows
            fields = list(dict.fromkeys(str(k) for x in v for k in x))
            rows = "; ".join(_record(x) for x in list(v)[:3])
            more = f"; … ({len(v)} in all)" if len(v) > 3 else ""
            return f"{len(v)} {'row' if len(v) == 1 else 'rows'} of {', '.join(fields[:6])}{', …' if len(fields) > 6 else ''}: {rows}{more}"
        parts = [summarize(x, 3) for x in list(v)[:limit]]
        more = f", … ({len(v)} in all)" if len(v) > limit else ""
        return "[" + ", ".join(parts) + more + "]"
    if isinstance(v, dict):
        items = list(v.items())
        parts = [f"{k} {summarize(x, 3)}" for k, x in items[:limit]]
        more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(parts) + more if parts else "none"
    return summarize(str(v))


def _record(x: dict) -> str:
    return ", ".join(f"{k} {summarize(val, 2)}" for k, val in list(x.items())[:4]) + (" …" if len(x) > 4 else "")


def _pairs(d: dict[str, Any], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [(str(k), summarize(v)) for k, v in list(d.items())[:40] if k not in skip]


def curves_caption(c) -> str:
    """The curves' description, then the settings that made them and their summary's scalar facts
    (a circuit's faithfulness curves: the ablation setting, and the smallest size reaching 0.8)."""
    facts = [f"{k} = {summarize(v)}" for k, v in list(c.params.items())[:12] if not isinstance(v, (list, dict))]
    facts += [f"{k}: {summarize(v)}" for k, v in c.summary.items()
              if k in ("threshold", "smallest_reaching", "stays_above_from", "full", "empty")]
    return "; ".join([c.description or "", *facts]).strip("; ")


# ---------------------------------------------------------------------------------------
# collecting
# ---------------------------------------------------------------------------------------
def _similar_notes(sel: ModelResults) -> list[str]:
    notes, labels = [], list(sel.results)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            ra, rb = sel.results[a], sel.results[b]
            pair = frozenset({ra.name, rb.name})
            x, y = ra.scores.ravel(), rb.scores.ravel()
            ok = np.isfinite(x) & np.isfinite(y)
            r = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 and x[ok].std() > 0 and y[ok].std() > 0 else None
            if pair in KNOWN_SIMILAR:
                corr = f" (here r = {r:.3f} over {int(ok.sum())} heads)" if r is not None else ""
                notes.append(f"{a} and {b} measure nearly the same thing{corr}: {KNOWN_SIMILAR[pair]}")
            elif r is not None and r >= SIMILAR_R and ra.analysis != rb.analysis:
                notes.append(f"{a} and {b} correlate at r = {r:.3f} over {int(ok.sum())} heads: read them as one "
                             "finding, not two.")
    return notes


# Counts of "sink heads" that results write into their summaries, and what each counts.
SINK_COUNTS = (
    ("summary.sink_mass", ("heads_above_0.5",), "mean attention mass on the first sink token(s) over every query of the "
                                             "scan prompts above 0.5"),
    ("sinks.first_token_mass", ("heads_above_0.5",), "attention to key 0, each prompt's mean over its queries, averaged "
                                                  "over prompts, above 0.5"),
    ("taxonomy.sink", ("heads_above_0.4",), "sink score on repeated random tokens above 0.4"),
    ("taxonomy.head_type", ("counts", "sink"), "typed sink: sink is the largest of its type scores and reaches the type "
                                          "threshold (a head typed otherwise is not counted, however sink-like)"),
)


def sink_counts_note(sel: ModelResults) -> str:
    """One note putting side by side the different sink-head counts of a model ("" with fewer than two)."""
    found = []
    for name, key, what in SINK_COUNTS:
        r = next((x for x in sel.results.values() if x.name == name), None)
        if r is None:
            continue
        v: Any = r.summary
        for part in key:
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, int) and not isinstance(v, bool):
            found.append(f"{v} by {name} ({what})")
    if len(found) < 2:
        return ""
    return ("Sink heads are counted in several ways here, and the counts differ because each measures something "
            "else on other inputs: " + "; ".join(found) + ".")


def _missing(folder: ResultsFolder, sel: ModelResults) -> list[str]:
    from attnlens.analyses.registry import for_modality  # torch-free

    modality = next((c.facts.modality for c in sel.captures.values()), Modality.TEXT)
    expected = [e.name for e in for_modality(modality)]
    have = {r.analysis for r in sel.results.values()}
    if not have & set(expected):
        return []  # no scan of this model here: nothing is "missing"
    return [a for a in expected if a not in have]


def anchor(*parts: str) -> str:
    """An HTML id from names: lower case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-") or "section"


def result_finding(r) -> str:
    """One sentence with the headline numbers of a result (:class:`formats.HeadScores`)."""
    finite = r.scores[np.isfinite(r.scores)]
    if finite.size == 0:
        return f"{r.name}: no head was scored."
    if r.scale == "categorical":
        counts = [(c, int((finite == i).sum())) for i, c in enumerate(r.categories)]
        shown = ", ".join(f"{n} {c}" for c, n in sorted(counts, key=lambda t: -t[1]) if n)
        return f"{r.name}: of {finite.size} heads, {shown}."
    (layer, head, v), = r.top(1)
    above = [(k, val) for k, val in r.summary.items() if k.startswith("heads_") and "above" in k
             and isinstance(val, int) and not isinstance(val, bool)]
    extra = "".join(f"; {val} of {finite.size} {k.removeprefix('heads_').replace('_', ' ')}" for k, val in above[:1])
    if r.scale == "signed":
        n_neg = int((finite < 0).sum())
        return (f"{r.name}: strongest head {head_label(layer, head)} at {v:+.3g} (by |score|; {n_neg} of "
                f"{finite.size} heads below zero){extra}.")
    return (f"{r.name}: highest {head_label(layer, head)} at {v:.3g}, median {float(np.median(finite)):.3g} over "
            f"{finite.size} heads{extra}.")


def _result_section(sel: ModelResults, label: str) -> ResultSection:
    r = sel.results[label]
    top = []
    for layer, head, score in ([] if r.scale == "categorical" else r.top(TOP_K)):
        if not np.isfinite(score):
            continue
        thumb, stats, where = None, "", ""
        found = sel.capture_for(layer, head, label)
        if found is not None:
            where, cap = found
            try:
                pat = cap.pattern(layer, head)
                focus = cap.focus  # the task's rows (the answer, the IOI end position): the thumbnail shows them
                rows = focus.rows if focus is not None else None
                span = "" if not rows else f"row {rows[0]}" if rows[1] - rows[0] == 1 else f"rows {rows[0]}-{rows[1] - 1}"
                on = f" {span} ({focus.why or 'the task rows'})" if rows else ""
                thumb = figs.pattern_thumb(pat, f"{figs.slug(label)}_{head_label(layer, head)}",
                                           f"{head_label(layer, head)} on {where}{on}", rows=rows)
                where += on
                s = pattern_stats(pat)
                stats = (f"entropy {s['entropy']:.2f}, first-token {s['first_token_mass']:.2f}, "
                         f"prev-token {s['prev_token_mass']:.2f}")
            except AttnlensError as err:
                stats = f"capture unreadable: {err}"[:200]
        top.append(TopHead(head_label(layer, head), f"{score:.4g}", stats, where, thumb))
    prov = r.provenance.to_json()
    cats = [(c, int(np.sum(r.scores == i))) for i, c in enumerate(r.categories)] if r.scale == "categorical" else []
    return ResultSection(label=label, name=r.name, description=describe(sel, label) or "no description",
                         params=_pairs(r.params), summary=_pairs(r.summary),
                         heatmap=figs.heatmap(r.scores, f"{sel.model}: {r.name}", f"{figs.slug(label)}_heatmap",
                                              r.scale, r.categories),
                         top=top, provenance={k: prov.get(k) for k in ("inputs_sha256", "code_version", "prompts")},
                         anchor=anchor("result", sel.model, label), scale=r.scale, categories=cats,
                         finding=result_finding(r))


def _captures(folder: ResultsFolder) -> tuple[list[dict[str, Any]], list[tuple[str, Figure]]]:
    rows, overlays = [], []
    for label, cap in folder.captures.items():
        lay = cap.layout
        if isinstance(lay, AudioLayout):
            desc = f"audio {lay.duration:.2f} s, {lay.n_frames} encoder positions of {lay.frame_seconds * 1000:.0f} ms"
        elif isinstance(lay, SourceLayout):
            desc = f"source of {lay.n_frames} tokens: {lay.text[:60]}"
        elif lay is not None:
            desc = f"image {lay.grid[0]}x{lay.grid[1]} patches at {lay.patch_span[0]}-{lay.patch_span[1] - 1}"
        else:
            desc = ""
        rows.append({"label": label, "model": cap.model, "tokens": len(cap.tokens),
                     "text": summarize(cap.text, 2)[:120], "sites": ", ".join(sorted(s.value for s in cap.sites)),
                     "dtypes": ", ".join(sorted(cap.dtypes)), "layers": summarize(cap.layers),
                     "layout": desc})
        if isinstance(lay, ImageLayout) and Site.PATTERN in cap.sites and len(overlays) < 4:
            try:
                png = overlay_png(cap, cap.layers[-1], cap.heads[:12], default_query(cap), panel_px=110)
                overlays.append((label, Figure(f"overlay_{figs.slug(label)}", png,
                                               f"attention on the image, {label}, layer {cap.layers[-1]}")))
            except AttnlensError:
                pass
    return rows, overlays


def build_report(folder: ResultsFolder | str | Path, command: str | None = None) -> Report:
    """Everything a report shows, computed once for every format."""
    f = folder if isinstance(folder, ResultsFolder) else ResultsFolder.load(folder)
    models = []
    for model in models_of(f):
        sel = ModelResults.of(f, model)
        if not sel.results:
            continue
        sink_note = sink_counts_note(sel)
        models.append(ModelSection(model=model, shape=sel.shape,
                                   results=[_result_section(sel, label) for label in sel.results],
                                   notes=_similar_notes(sel) + ([sink_note] if sink_note else []),
                                   missing=_missing(f, sel), anchor=anchor("model", model)))
    # results of a model in a second shape (rare): their own section, so nothing is dropped
    shown = {r.label for m in models for r in m.results}
    for label, r in f.results.items():
        if label not in shown:
            sel = ModelResults(f, r.provenance.model, r.shape, {label: r}, {}, {})
            models.append(ModelSection(r.provenance.model, r.shape, [_result_section(sel, label)], [], [],
                                       anchor=anchor("model", r.provenance.model, label)))
    curves = [(label, curves_caption(c), figs.curves(c, f"curves_{i}_{figs.slug(label)}"))
              for i, (label, c) in enumerate(f.curves.items())]
    abl = [(label, _ablation_text(a), figs.ablation(a, f"ablation_{i}_{figs.slug(label)}"))
           for i, (label, a) in enumerate(f.ablations.items())]
    circuits = []
    for i, (label, c) in enumerate(f.circuits.items()):
        edges = sorted(c.edges, key=lambda e: -abs(e.score))
        circuits.append({"label": label, "anchor": anchor("circuit", label),
                         "warning": faithfulness_warning(c, curves_of(label, f.curves)),
                         "heads": [(str(n), f"{sc:+.4g}", a, b) for n, sc, a, b in head_table(c)[:TOP_K * 2]],
                         "faithful": c.faithfulness.get("faithfulness"),
                         "description": c.description or f"task {c.task}, metric {c.metric}",
                         "method": c.method, "figure": figs.circuit(c, f"circuit_{i}_{figs.slug(label)}"),
                         "faithfulness": _pairs(c.faithfulness), "details": _pairs(c.details),
                         "edges": [(str(e.sender), str(e.receiver), f"{e.score:.4g}") for e in edges[:15]],
                         "n_edges": len(edges), "n_heads": len(c.heads), "n_mlps": len(c.mlps)})
    stats = []
    for i, (label, s) in enumerate(f.stats_runs.items()):
        st = s.settings
        stats.append({"label": label, "model": s.model, "tokens": len(s.tokens), "layers": len(s.layers),
                      "settings": f"sink tokens {st['sink_tokens']}, window {st['window']}, spans "
                                  f"{summarize([list(x) for x in st['spans']])}, top-{st['topk']}, key statistics "
                                  f"{'on' if st['key_stats'] else 'off'}",
                      "figure": figs.stats_run(s, f"stats_{i}_{figs.slug(label)}")})
    caps, overlays = _captures(f)
    speech = []
    for label, cap in f.captures.items():
        if not is_audio(cap) or len(speech) >= 3:
            continue
        try:
            maps = maps_for(f, label)
            view = token_view(cap, maps, cap.layers[-1], None, 0)
            png = speech_png(cap, view, f"{cap.model} L{cap.layers[-1]} heads' mean: first token {view.token!r}")
        except AttnlensError:
            continue
        speech.append({"label": label, "text": summarize(cap.text, 2)[:160],
                       "figure": Figure(f"speech_{figs.slug(label)}", png, f"cross-attention and saliency, {label}"),
                       "agreement": agreement_rows(f, cap.model)})
    generated = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{socket.gethostname()} {platform.machine()} {platform.system()}",
        "versions": ", ".join(f"{k} {v}" for k, v in _versions().items()),
        "code_version": code_version(),
    }
    title_model = ", ".join(m.model for m in models[:3]) or ", ".join(models_of(f)[:3]) or "empty folder"
    report = Report(title=f"attnlens report: {title_model}", folder=str(f.path.resolve()), generated=generated,
                    counts=f.counts(), models=models, curves=curves, ablations=abl, circuits=circuits,
                    stats_runs=stats, captures=caps, overlays=overlays, speech=speech,
                    sweeps=[(k, f"{v.get('status')}, {int(v.get('done', 0))} items done") for k, v in f.sweeps.items()],
                    problems=list(f.problems.items()), provenance=f.provenances(), qk=qk_sections(f),
                    dla=dla_sections(f), loadings=loadings_sections(f))
    report.findings = _findings(f, report)
    report.contents = _contents(report)
    return report


def _findings(f: ResultsFolder, report: Report) -> list[tuple[str, str, str]]:
    """The headline of each analysis: one sentence per analysis of each model (its first
    result's, or its categorical result's), circuit, ablation and faithfulness curve."""
    out = []
    for m in report.models:
        by_analysis: dict[str, ResultSection] = {}
        for s in m.results:
            key = s.name.split(".", 1)[0]
            if key not in by_analysis or (s.scale == "categorical" and by_analysis[key].scale != "categorical"):
                by_analysis[key] = s
        for key, s in by_analysis.items():
            out.append((s.anchor, f"{m.model} · {key}", s.finding))
    for c in report.circuits:
        fv = c["faithful"]
        text = (f"{c['method']} circuit of {c['n_heads']} heads, {c['n_mlps']} MLPs and {c['n_edges']} edges; "
                + (f"faithfulness {fv:.2f}" if isinstance(fv, (int, float)) else "faithfulness not measured")
                + (f" — {c['warning']}" if c["warning"] else " (at least 0.8: it reproduces the task)")
                + (f"; strongest head {c['heads'][0][0]} ({c['heads'][0][1]})" if c["heads"] else "") + ".")
        out.append((c["anchor"], f"circuit {c['label']}", text))
    for label, a in f.ablations.items():
        share = a.share_of_random_with_larger_drop
        out.append((anchor("ablation", label), f"ablation {label}",
                    f"ablating {len(a.heads)} heads and {len(a.mlps)} MLPs changes {a.metric} by {a.effect:+.3g} "
                    f"({a.baseline:.3g} -> {a.ablated:.3g})"
                    + (f"; {share:.0%} of {len(a.random_effects)} random sets of the same size drop it at least as "
                       "much" if np.isfinite(share) else "") + "."))
    for label, c in f.curves.items():
        reach = c.summary.get("smallest_reaching")
        if isinstance(reach, dict):
            sizes = ", ".join(f"{k} {'none' if v is None else int(v)}" for k, v in reach.items())
            out.append((anchor("curves", label), f"curves {label}",
                        f"smallest {c.x_label} reaching faithfulness {c.summary.get('threshold', 0.8)}: {sizes} "
                        f"(sizes tried {', '.join(str(int(x)) for x in c.x)})."))
    out += [("qk", f"QK attribution {s['label']}", f"{s['model']}: {s['headline']}.") for s in report.qk]
    out += [("loadings", f"QK head loadings {s['label']}", f"{s['model']}: {s['headline']}.") for s in report.loadings]
    out += [("dla", f"direct logit attribution {s['label']}", f"{s['model']}: {s['headline']}.") for s in report.dla]
    return out


def _contents(report: Report) -> list[tuple[str, str, int]]:
    out = [("findings", "Findings", 0), ("folder", "Contents of this folder", 0)]
    for m in report.models:
        out.append((m.anchor, f"{m.model}: head scores", 0))
        out += [(s.anchor, s.label, 1) for s in m.results]
    for present, key, title in ((report.curves, "curves", "Curves"),
                                (report.ablations, "ablations", "Ablations against random sets"),
                                (report.circuits, "circuits", "Circuits"), (report.stats_runs, "stats", "Stats runs"),
                                (report.qk, "qk", "QK attribution"), (report.loadings, "loadings", "QK head loadings"),
                                (report.dla, "dla", "Direct logit attribution"), (report.captures, "captures", "Captures"),
                                (report.provenance, "provenance", "Provenance")):
        if present:
            out.append((key, title, 0))
    return out


def _ablation_text(a) -> str:
    share = a.share_of_random_with_larger_drop
    rand = (f"; {share:.0%} of {len(a.random_effects)} random sets of the same size drop it at least as much"
            if np.isfinite(share) else "; no random sets compared")
    heads = summarize([f"L{la}H{h}" for la, h in a.heads], 12)
    return (f"{a.method}-ablating {len(a.heads)} heads {heads} and {len(a.mlps)} MLPs on {a.task} "
            f"({a.n_examples} examples): {a.metric} {a.baseline:.4g} -> {a.ablated:.4g} (effect {a.effect:.4g}){rand}")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("attnlens", "numpy", "matplotlib", "panel", "weasyprint"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]()!|#~{}])")


def md_escape(value: Any) -> str:
    """Text that Markdown renders as itself: HTML escaped, Markdown's link, image, emphasis and
    table characters backslash-escaped, line breaks folded (a value never starts a block)."""
    if isinstance(value, Markup):
        return value
    text = re.sub(r"\s*[\r\n]+\s*", " ", str(value))
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return html.escape(text, quote=False)  # after the backslashes: an entity's '#' must stay as it is


def _env(markdown: bool):
    import jinja2

    kw = {"finalize": md_escape} if markdown else {}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=not markdown,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined, **kw)
    env.filters["fmt"] = summarize
    env.globals["anchor"] = anchor
    return env


def render_html(report: Report) -> str:
    """One self-contained HTML page: every figure inline as a base64 PNG, no scripts."""
    return _env(False).get_template("report.html.j2").render(r=report, src=lambda fig: fig.data_uri)


def render_markdown(report: Report, image_dir: str) -> str:
    """Markdown that links its figures as ``image_dir/NAME.png`` (written by :func:`write_report`)."""
    return _env(True).get_template("report.md.j2").render(
        r=report, src=lambda fig: Markup(f"{image_dir}/{fig.name}.png"))


def render_pdf(html_text: str) -> bytes:
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as err:  # OSError: pango or its friends are missing
        raise ReportError(f"PDF needs WeasyPrint and its system libraries (pango): {err}") from None
    return HTML(string=html_text).write_pdf()


def write_report(results_dir: str | Path, fmt: str, out: str | Path | None = None, *, force: bool = False,
                 command: str | None = None) -> Path:
    """Write the report of ``results_dir`` as ``fmt`` to ``out`` (default RESULTS_DIR/report.FMT).

    Markdown figures go to ``OUT_STEM_files/`` next to the .md. The report is written to a
    temporary sibling and renamed into place (the figures folder likewise), so a failure
    part-way (a full disk, a file size limit) leaves the previous report whole. Refuses to
    replace an existing report or figures without ``force``, and never writes through a
    symbolic link or over anything but a file (figures: a folder of PNGs) lens could have
    written; those and an unwritable path raise :class:`ReportError`.
    """
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    folder = ResultsFolder.load(results_dir)
    out = Path(out) if out is not None else folder.path / f"report.{fmt}"
    image_dir = out.parent / f"{out.stem}_files" if fmt == "md" else None
    _check_report_target(out, fmt, force)
    if image_dir is not None:
        _check_figures_target(image_dir, force)
    report = build_report(folder, command)
    if fmt == "md":
        data = render_markdown(report, image_dir.name).encode("utf-8", "backslashreplace")
    elif fmt == "html":
        data = render_html(report).encode("utf-8", "backslashreplace")
    else:
        data = render_pdf(render_html(report))
    staged: list[Path] = []
    try:
        with locked(out):
            _check_report_target(out, fmt, force)  # again, under the lock
            staged.append(_stage(out, data))  # everything is written before anything is replaced
            if image_dir is not None:
                _check_figures_target(image_dir, force)
                staged.append(new_sibling(image_dir, "report figures"))
                for fig in report.figures():
                    write_bytes(staged[1] / f"{fig.name}.png", fig.png)
                swap_in(staged[1], image_dir)
            os.replace(staged[0], out)  # renames over `out`: a link put there meanwhile is replaced, not followed
    except (OutputLockedError, SelectionError) as err:
        raise ReportError(f"cannot write the report to {out}: {err}") from None
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err}") from None
    finally:
        for p in staged:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return out


def _stage(out: Path, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``out``, flushed to disk (renamed over ``out`` by the caller)."""
    return _json.stage_bytes(out, data)


def _check_report_target(out: Path, fmt: str, force: bool) -> None:
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err}") from None
    if mode is not None and stat.S_ISLNK(mode):
        raise ReportError(f"cannot write the report to {out}: it is a symbolic link, and reports are never written "
                          "through links; remove it or pass --out")
    if mode is not None and stat.S_ISDIR(mode):
        raise ReportError(f"cannot write the report to {out}: it is a folder, expected a file name like {out}/report.{fmt}")
    if mode is not None and not stat.S_ISREG(mode):
        raise ReportError(f"cannot write the report to {out}: it is {special_kind(mode)}, not a file; pass another --out")
    if mode is not None and not force:
        raise OutputExistsError(f"{out} already exists: pass --force to overwrite it")
    if not out.parent.is_dir():
        raise ReportError(f"cannot write the report to {out}: folder {out.parent} does not exist")


def _check_figures_target(image_dir: Path, force: bool) -> None:
    """The Markdown report's figures folder may be replaced only when it is a real folder of PNGs (with ``force``)."""
    try:
        mode = os.lstat(image_dir).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise ReportError(f"cannot write the report figures to {image_dir}: {err.strerror or err}") from None
    if stat.S_ISLNK(mode):
        raise ReportError(f"cannot write the report figures to {image_dir}: it is a symbolic link, and reports are "
                          "never written through links; remove it or pass --out")
    if not stat.S_ISDIR(mode):
        raise ReportError(f"cannot write the report figures to {image_dir}: it is {special_kind(mode)}, not a folder")
    try:
        entries = list(os.scandir(image_dir))
    except OSError as err:
        raise ReportError(f"cannot write the report figures to {image_dir}: {err.strerror or err}") from None
    if not entries:
        return
    if not force:
        raise OutputExistsError(f"{image_dir} already holds {len(entries)} file(s): pass --force to replace the "
                                "report's figures")
    foreign = [e.name for e in entries
               if not (e.is_file(follow_symlinks=False) and (e.name.endswith(".png") or e.name == MARKER))]
    if foreign:
        raise ReportError(f"cannot replace the report figures in {image_dir}: it holds {foreign[0][:60]!r}, which "
                          "a report does not write; move it or pass another --out")
