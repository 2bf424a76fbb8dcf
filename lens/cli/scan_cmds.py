"""`lens scan`: the main job, every registered head analysis on one model (see :mod:`pipelines.scan`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from attnlens.formats.vocab import Source
from lens.cli import app
from lens.cli._common import (
    MODEL_HELP,
    check_out,
    console,
    executor,
    float_list,
    int_list,
    load_model,
    print_json,
    progress,
    say,
    writing,
)
from lens.cli._options import (
    FORCE_OPTION,
    JSON_OPTION,
    PlacementGroup,
    RayGroup,
    placement_options,
    ray_options,
)
from lens.cli._terminal import printable


@app.command("scan")
@ray_options
@placement_options
def scan(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(Path("results/scan"), "--out", "-o", help="Results folder."),
    thorough: bool = typer.Option(False, "--thorough", help="Longer sweeps, DuoAttention gates and the ablation test "
                                  "(tens of minutes on CPU)."),
    lengths: str = typer.Option(None, help="NIAH prompt lengths (default 300,600; thorough 512,1024,2048)."),
    depths: str = typer.Option(None, help="NIAH depths (default 0.25,0.75; thorough 0,0.25,0.5,0.75,1)."),
    ablate: str = typer.Option(None, help="Ablation sizes k, e.g. 5,10 (default none; thorough 5,10,20)."),
    gate_steps: int = typer.Option(None, min=0, max=100_000, help="DuoAttention gate steps (default 0: not run; "
                                   "thorough: at most 300, stopping once converged)."),
    source: Source = typer.Option(Source.PATTERN, help="Captured patterns, or the stats kernel, for retrieval, sinks and streaming."),
    chat: bool | None = typer.Option(None, "--chat/--no-chat",
                                     help="Chat-format NIAH prompts (default: when the model has a chat template)."),
    captures: int = typer.Option(2, min=0, max=16, help="Prose example captures (patterns, q, k) for the dashboard; "
                                 "each analysis' own inputs are captured too."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
    cluster: RayGroup = None,
    place: PlacementGroup = None,
) -> None:
    """Run every head analysis that applies to MODEL with default settings and save every result to OUT.

    Text models: summary, sinks, taxonomy, retrieval (NIAH), streaming profile, and with
    --thorough the DuoAttention gates and the causal ablation test. Vision models: the ViT
    head analyses on synthetic images. Vision-text models (tiny-vlm): the text analyses on
    the language model, plus vision-aware heads and visual sinks on held-out synthetic
    scenes. Speech models: cross-attention against saliency. A retrieval analysis that finds no passing trial is
    reported and skipped; the others still run. Example captures of each analysis' inputs
    are saved under OUT/captures for the dashboard and the report.

    Example: lens scan smollm2-135m --out results/smollm2 --force

    Example: lens scan tiny-vlm --out results/tiny-vlm

    On Ray (--ray auto --workers 2) the analyses and the NIAH trials run on workers that
    each hold the model; the results are the same files.
    """
    from attnlens.pipelines.scan import ScanSettings
    from attnlens.pipelines.scan import scan as run_scan

    settings = ScanSettings(
        thorough=thorough,
        lengths=tuple(int_list(lengths, "lengths", lo=32, hi=1_000_000, max_count=64)) if lengths else None,
        depths=tuple(float_list(depths, "depths", lo=0, hi=1, max_count=64)) if depths else None,
        ablate=tuple(int_list(ablate, "ablate", lo=1, max_count=32)) if ablate else None,
        source=source.value, chat=chat, captures=captures, gate_steps=gate_steps)
    load_kw = place.load_kwargs()
    ray_opts = cluster.options()
    check_out(out, force)
    lm = load_model(model, **load_kw)
    with executor(lm, model, ray_opts, load_kw) as ex, writing(out, force) as tmp, progress() as bar:
        result = run_scan(lm, settings, progress=bar, executor=ex)
        result.save(tmp)
    if json_out:
        print_json({"model": model, "out": str(out), "notes": result.notes, "results": [
            {"name": r.name, "summary": r.summary, "top": r.top(10) if hasattr(r, "top") else []}
            for r in result.results]})
        return
    from lens.cli.heads_cmds import print_results

    by_metric = {r.metric: r for r in result.results if r.analysis == "summary"}
    if by_metric:
        _print_summary(lm.facts, by_metric)
    print_results([r for r in result.results if r.analysis != "summary"], f"{lm.facts.name}: head analyses")
    for note in result.notes:
        say(note, "yellow")
    say(f"results saved to {out.resolve()}   (browse: lens dashboard {out})")


def _print_summary(facts, by_metric) -> None:
    sink, ent = by_metric["sink_mass"], by_metric["entropy"]
    table = Table(title=Text(printable(f"{facts.name}: attention per layer ({facts.n_heads} heads each)")))
    for col in ("layer", "sink mass (mean)", "heads with sink mass > 0.5", "entropy (mean, nats)", "strongest sink head"):
        table.add_column(col, justify="right")
    for layer in range(facts.n_layers):
        row = sink.scores[layer]
        best = int(np.nanargmax(row))
        table.add_row(str(layer), f"{np.nanmean(row):.3f}", f"{int(np.sum(row > 0.5))}/{facts.n_heads}",
                      f"{np.nanmean(ent.scores[layer]):.2f}", f"H{best} ({row[best]:.2f})")
    console.print(table)
    top = ", ".join(f"L{layer}H{head} {score:.2f}" for layer, head, score in sink.top(5))
    say(f"top first-token sink heads: {top}")
