"""`lens scan`: the main job, every head analysis on one model with sensible defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from analyses.prompts import GENERAL_PROMPTS
from lens.cli import app
from lens.cli._common import console, parse_int_list, prepare_out_dir, print_json, progress, status


def summary_results(lm, prompts, *, bar=None):
    """The "summary" analysis (sink mass, entropy) over ``prompts`` from captured patterns."""
    import lens
    from analyses import Provenance, row_stats_from_pattern
    from analyses.attention_summary import attention_summary

    runs = []
    task = bar.add_task("attention summary", total=len(prompts)) if bar else None
    for prompt in prompts:
        cap = lens.run(lm, prompt, sites=[lens.Site.PATTERN]).capture
        runs.append({layer: row_stats_from_pattern(cap.pattern(layer)) for layer in cap.meta.layers})
        if bar:
            bar.advance(task)
    prov = Provenance.for_model(lm.facts, prompts=f"{len(prompts)} built-in prompts")
    return attention_summary(runs, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, provenance=prov)


@app.command("scan")
def scan(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    out: Path = typer.Option(Path("results/scan"), "--out", "-o", help="Results folder."),
    thorough: bool = typer.Option(False, "--thorough", help="Longer sweeps and the ablation test (tens of minutes on CPU)."),
    lengths: str = typer.Option(None, help="NIAH prompt lengths (default 300,600; thorough 512,1024,2048)."),
    depths: str = typer.Option(None, help="NIAH depths (default 0.25,0.75; thorough 0,0.25,0.5,0.75,1)."),
    ablate: str = typer.Option(None, help="Ablation sizes k, e.g. 5,10 (default none; thorough 5,10,20)."),
    source: str = typer.Option("pattern", help="'pattern' or 'kernel' for retrieval, sinks and streaming."),
    chat: bool | None = typer.Option(None, "--chat/--no-chat",
                                     help="Chat-format NIAH prompts (default: when the model has a chat template)."),
    captures: int = typer.Option(2, min=0, max=len(GENERAL_PROMPTS),
                                 help="Example captures (patterns, q, k) saved under OUT/captures for the dashboard and report."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Run every head analysis on MODEL with default settings and save every result to OUT.

    Analyses: summary, sinks, taxonomy, retrieval (NIAH), streaming profile, and with
    --thorough the DuoAttention gates and (also with --ablate) the causal ablation test. The defaults take a few minutes on
    SmolLM2 on 2 CPU cores; a retrieval analysis that finds no passing trial is reported
    and skipped, the others still run.

    Example: lens scan smollm2-135m --out results/smollm2 --force
    """
    import lens
    from analyses.retrieval import RetrievalError
    from lens.cli import heads_cmds as hc

    hc.check_source(source)
    length_list = [int(x) for x in hc.parse_float_list(lengths or ("512,1024,2048" if thorough else "300,600"),
                                                       "lengths")]
    depth_list = hc.parse_float_list(depths or ("0,0.25,0.5,0.75,1" if thorough else "0.25,0.75"), "depths")
    ks = parse_int_list(ablate, "ablate") or ([5, 10, 20] if thorough else [])
    with status(f"loading {model}"):
        lm = lens.load(model)
    if chat is None:
        chat = bool(getattr(lm.tokenizer, "chat_template", None))
    if lengths is None:  # defaults shrink to fit small models' contexts (room left for the answer)
        length_list = sorted({min(n, lm.facts.context_length - 48) for n in length_list})
    with hc.user_errors():
        trials = hc.niah_trials(lm, lengths=length_list, depths=depth_list, seeds=[0], chat=chat)
    out = prepare_out_dir(out, force)
    notes = []
    with progress() as bar, hc.user_errors():
        results = summary_results(lm, list(GENERAL_PROMPTS), bar=bar)
        results += hc.run_sinks(lm, list(GENERAL_PROMPTS), source=source, bar=bar)
        results += hc.run_taxonomy(lm, repeat_len=100 if thorough else 50, batch=8 if thorough else 4, bar=bar)
        retrieval = None
        try:
            retrieval = hc.run_retrieval(lm, trials, source=source, bar=bar)
            results += retrieval
        except RetrievalError as err:
            notes.append(f"retrieval skipped: {err}")
        results += hc.run_streaming(lm, length=max(length_list), n_prompts=2 if thorough else 1, source=source,
                                    retrieval=retrieval[0].scores if retrieval else None, chat=chat, bar=bar)
        if thorough:
            results += hc.run_gates(lm, steps=50, length=512, prompts=4,
                                    retrieval=retrieval[0].scores if retrieval else None, bar=bar)
        if ks and retrieval:
            results += hc.run_ablation(lm, trials, retrieval[0].scores, name="retrieval", ks=ks,
                                       seeds=[0, 1, 2] if thorough else [0], bar=bar)
    paths = [r.save(out) for r in results]
    with status(f"saving {captures} example capture(s) for the dashboard"):
        for i, prompt in enumerate(GENERAL_PROMPTS[:captures]):
            sites = [lens.Site.PATTERN, lens.Site.Q, lens.Site.K]
            lens.run(lm, prompt, sites=sites).capture.save(out / "captures" / f"{i:03d}")
    if json_out:
        print_json({"model": model, "out": str(out), "notes": notes, "results": [
            {"name": r.name, "file": str(p), "summary": r.summary, "top": r.top(10)} for r, p in zip(results, paths)]})
        return
    _print_summary(lm.facts, {r.metric: r for r in results if r.analysis == "summary"})
    hc.print_results([r for r in results if r.analysis != "summary"], f"{lm.facts.name}: head analyses")
    for note in notes:
        console.print(f"[yellow]{note}[/]", highlight=False)
    console.print(f"results saved to [bold]{out.resolve()}[/]")


def _print_summary(facts, by_metric) -> None:
    sink, ent = by_metric["sink_mass"], by_metric["entropy"]
    table = Table(title=f"{facts.name}: attention per layer ({facts.n_heads} heads each)")
    for col in ("layer", "sink mass (mean)", "heads with sink mass > 0.5", "entropy (mean, nats)", "strongest sink head"):
        table.add_column(col, justify="right")
    for layer in range(facts.n_layers):
        row = sink.scores[layer]
        best = int(np.nanargmax(row))
        table.add_row(str(layer), f"{np.nanmean(row):.3f}", f"{int(np.sum(row > 0.5))}/{facts.n_heads}",
                      f"{np.nanmean(ent.scores[layer]):.2f}", f"H{best} ({row[best]:.2f})")
    console.print(table)
    top = ", ".join(f"L{layer}H{head} {score:.2f}" for layer, head, score in sink.top(5))
    console.print(f"top first-token sink heads: {top}")
