"""`lens scan`: the main job, every head analysis on one model with sensible defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from lens.cli import app
from lens.cli._common import console, prepare_out_dir, print_json, progress, status


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
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Run the head analyses on MODEL with default settings and save every result to OUT.

    Example: lens scan smollm2-135m --out results/smollm2
    """
    import lens
    from analyses.prompts import GENERAL_PROMPTS

    with status(f"loading {model}"):
        lm = lens.load(model)
    out = prepare_out_dir(out, force)
    with progress() as bar:
        results = summary_results(lm, list(GENERAL_PROMPTS), bar=bar)
    paths = [r.save(out) for r in results]
    if json_out:
        print_json({"model": model, "out": str(out), "results": [
            {"name": r.name, "file": str(p), "summary": r.summary, "top": r.top(10)} for r, p in zip(results, paths)]})
        return
    _print_summary(lm.facts, {r.metric: r for r in results})
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
