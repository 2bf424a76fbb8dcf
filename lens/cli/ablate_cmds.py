"""`lens ablate` (head/MLP ablation, sweeps with resume) and `lens circuit` (EAP, EAP-IG, patching)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import typer

from lens.cli import app
from lens.cli._common import console, prepare_out_dir, print_json, progress, status
from lens.errors import SelectionError

TASK_HELP = "ioi, colored-objects, greater-than, niah, or a .jsonl file (prompt, answer, corrupted, distractor)."


def _load(model: str, task: str, n_prompts: int, seed: int, batch_size: int, strict: bool):
    import lens
    from analyses.circuits.tasks import encode_task, load_task

    with status(f"loading {model}"):
        lm = lens.load(model)
    t = load_task(task, lm.tokenizer, n=n_prompts, seed=seed, strict=strict)
    enc = encode_task(t, lm.tokenizer, max_batch=batch_size, skip_bad=not strict)
    for why in enc.skipped[:10]:
        console.print(f"[yellow]skipped[/] {why}", highlight=False)
    if len(enc.skipped) > 10:
        console.print(f"[yellow]... and {len(enc.skipped) - 10} more skipped[/]")
    return lm, enc


def _components(lm, heads: str | None, mlps: str | None):
    from analyses.circuits import MlpRef
    from lens.heads import parse_head_spec, parse_layer_list

    comps = list(parse_head_spec(heads, lm.facts)) if heads else []
    comps += [MlpRef(layer) for layer in parse_layer_list(mlps, lm.facts)] if mlps else []
    return comps


def _heatmap(scores: np.ndarray, path: Path, title: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = float(np.nanmax(np.abs(scores))) or 1.0
    fig, ax = plt.subplots(figsize=(3.2 + 0.25 * scores.shape[1], 1.5 + 0.14 * scores.shape[0]))
    im = ax.imshow(scores, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@app.command("ablate")
def ablate(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    task: str = typer.Option("ioi", "--task", "-t", help=TASK_HELP),
    heads: str = typer.Option(None, "--heads", help="Heads to ablate: 'L3H4,L5H*', 'L*H0', 'L2-4H0-1', 'all'."),
    mlps: str = typer.Option(None, "--mlps", help="MLP layers to ablate: '3,5-7'."),
    method: str = typer.Option("mean", "--method", "-m", help="zero | mean | resample | patch (corrupted -> clean)."),
    metric: str = typer.Option("logit-diff", "--metric", help="logit-diff | prob | acc | loss."),
    sweep: str = typer.Option(None, "--sweep", help="heads: every head (or --heads) one at a time; layers: each "
                              "layer's heads together and its MLP."),
    compare_random: int = typer.Option(0, "--compare-random", help="Also ablate K random head sets of the same size."),
    seeds: str = typer.Option("0", "--seeds", help="Seeds for random sets and resampling, e.g. '0,1,2'."),
    n_prompts: int = typer.Option(64, "--n-prompts", "-n", help="Prompts generated (or read from the file)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per forward."),
    max_rows: int = typer.Option(64, "--max-rows", help="Rows per forward when batching ablations (prompts x sets)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on a bad JSONL line instead of skipping it."),
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (sweeps: default results/ablate-TASK-SWEEP)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out; without it a finished or different run is "
                               "refused and an unfinished sweep with the same settings resumes."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
) -> None:
    """Ablate heads (and MLPs) of MODEL on a task and report the metric change.

    Examples:

      lens ablate smollm2-135m --task ioi --heads "L3H4,L5H*" --method mean

      lens ablate smollm2-135m --task ioi --heads "L22H*" --compare-random 20 --seeds 0,1

      lens ablate smollm2-135m --task ioi --sweep heads --n-prompts 16 --out results/ioi-sweep

    (run the last one again after an interruption: it resumes where it stopped)
    """
    from analyses.circuits import Method, Metric, prepare, random_sets, score_sets
    from analyses.circuits.ablation import all_heads

    meth, met = Method.parse(method), Metric.parse(metric)
    seed_list = _seeds(seeds)
    if sweep not in (None, "heads", "layers"):
        raise SelectionError(f"--sweep must be heads or layers, got {sweep!r}")
    if sweep is None and not (heads or mlps):
        raise SelectionError("give --heads and/or --mlps to ablate, or --sweep heads|layers")
    if n_prompts < 1 or batch_size < 1 or max_rows < 1:
        raise SelectionError(f"--n-prompts, --batch-size and --max-rows must be >= 1, got {n_prompts}, {batch_size}, {max_rows}")
    if compare_random < 0:
        raise SelectionError(f"--compare-random must be >= 0, got {compare_random}")
    lm, enc = _load(model, task, n_prompts, seed_list[0], batch_size, strict)
    comps = _components(lm, heads, mlps)
    if sweep:
        _run_sweep(lm, enc, sweep, comps, meth, met, seed_list[0], max_rows, out, force, json_out,
                   dict(model=model, task=task, method=meth.value, metric=met.value, sweep=sweep, heads=heads, mlps=mlps,
                        n_prompts=n_prompts, seed=seed_list[0], n_examples=enc.n_examples))
        return
    t0 = time.perf_counter()
    with status("reference runs"):
        ctx = prepare(lm, enc, meth, met, seed=seed_list[0])
    value = float(score_sets(ctx, [comps], max_rows=max_rows)[0])
    result = {"model": model, "task": task, "method": meth.value, "metric": met.value, "n_examples": enc.n_examples,
              "skipped": len(enc.skipped), "components": [str(c) for c in comps], "baseline": ctx.baseline,
              "ablated": value, "effect": value - ctx.baseline}
    if compare_random:
        pool = all_heads(lm.facts)
        n_heads = sum(1 for c in comps if hasattr(c, "head"))
        if n_heads == 0:
            raise SelectionError("--compare-random needs --heads (random sets are drawn from heads)")
        rand = []
        for s in seed_list:
            ctx_s = ctx if s == seed_list[0] else prepare(lm, enc, meth, met, seed=s)
            sets = random_sets(pool, n_heads, compare_random, s)
            rand.extend(float(v) - ctx.baseline for v in score_sets(ctx_s, sets, max_rows=max_rows))
        r = np.asarray(rand)
        result["random"] = {"k": len(r), "seeds": seed_list, "effect_mean": float(r.mean()), "effect_std": float(r.std()),
                            "effects": r.tolist(),
                            "share_with_larger_drop": float(np.mean(r <= result["effect"]))}
    result["seconds"] = time.perf_counter() - t0
    if out is not None:
        folder = prepare_out_dir(out, force)
        (folder / "ablation.json").write_text(json.dumps(result, indent=1))
    if json_out:
        print_json(result)
        return
    console.print(f"{task} on {model} ({enc.n_examples} prompts), {met.value}: baseline {ctx.baseline:.3f}, "
                  f"{meth.value}-ablating {len(comps)} component(s): {value:.3f} (effect {value - ctx.baseline:+.3f})")
    if "random" in result:
        rr = result["random"]
        console.print(f"random sets of the same size (k={rr['k']}): effect {rr['effect_mean']:+.3f} ± {rr['effect_std']:.3f}; "
                      f"share of random sets with an equal or larger drop: {rr['share_with_larger_drop']:.2f}")


def _seeds(text: str) -> list[int]:
    from lens.cli._common import parse_int_list

    seeds = parse_int_list(text, "seeds")
    if not seeds:
        raise SelectionError(f"--seeds {text!r} names no seeds: give e.g. 0 or 0,1,2")
    return seeds


def _run_sweep(lm, enc, kind, comps, meth, met, seed, max_rows, out, force, json_out, settings) -> None:
    from analyses import HeadScores, Provenance
    from analyses.circuits import MlpRef, prepare, score_sets
    from analyses.circuits.ablation import all_heads
    from analyses.circuits.sweep import open_sweep
    from lens.heads import HeadRef

    facts = lm.facts
    if kind == "heads":
        items = [c for c in comps if isinstance(c, HeadRef)] or all_heads(facts)
        items += [c for c in comps if isinstance(c, MlpRef)]
        named = [(str(c), [c]) for c in items]
    else:
        named = []
        for layer in range(facts.n_layers):
            named.append((f"L{layer}.attn", [HeadRef(layer, h) for h in range(facts.n_heads)]))
            named.append((f"L{layer}.mlp", [MlpRef(layer)]))
    out = out or Path(f"results/ablate-{Path(settings['task']).stem}-{kind}")
    log = open_sweep(out, settings, force=force)
    todo = [(n, s) for n, s in named if n not in log.done]
    if log.resumed:
        console.print(f"resuming {out}: {len(log.done)} of {len(named)} already done, {len(todo)} to go")
    t0 = time.perf_counter()
    ctx = prepare(lm, enc, meth, met, seed=seed)
    n_rows = max(b.size for b in enc.batches)
    per_chunk = max(1, max_rows // n_rows)
    with progress() as bar:
        task_id = bar.add_task(f"{meth.value}-ablating {kind}", total=len(named), completed=len(named) - len(todo))
        for s in range(0, len(todo), per_chunk):
            chunk = todo[s:s + per_chunk]
            values = score_sets(ctx, [c for _, c in chunk], max_rows=max_rows)
            log.append([{"item": n, "metric": float(v), "effect": float(v) - ctx.baseline} for (n, _), v in zip(chunk, values)])
            bar.advance(task_id, len(chunk))
    seconds = time.perf_counter() - t0
    log.finish()
    rows = [log.done[n] for n, _ in named]
    with open(out / "effects.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "metric", "effect"])
        w.writerows([[r["item"], r["metric"], r["effect"]] for r in rows])
    summary = {"baseline": ctx.baseline, "n_items": len(rows), "done_before_this_run": len(named) - len(todo),
               "computed_this_run": len(todo), "seconds_this_run": seconds}
    top = sorted(rows, key=lambda r: r["effect"])[:10]
    if kind == "heads":
        scores = np.full((facts.n_layers, facts.n_heads), np.nan)
        for (n, c), r in zip(named, rows):
            if isinstance(c[0], HeadRef):
                scores[c[0].layer, c[0].head] = r["effect"]
        hs = HeadScores("ablation", f"{meth.value}_{met.value}", scores,
                        Provenance.for_model(facts, seeds=(seed,), prompts=f"{enc.n_examples} {settings['task']} prompts"),
                        description=f"{met.value} change when the head is {meth.value}-ablated alone (negative: the head helps)",
                        params=settings, summary=summary)
        hs.save(out)
        _heatmap(scores, out / "effects.png", f"{facts.name} {settings['task']}: {meth.value} ablation", f"Δ {met.value}")
    else:
        fig_scores = np.array([[log.done[f"L{l}.attn"]["effect"], log.done[f"L{l}.mlp"]["effect"]]
                               for l in range(facts.n_layers)])
        _heatmap(fig_scores, out / "effects.png", f"{facts.name} {settings['task']}: layers (attn, mlp)", f"Δ {met.value}")
    (out / "summary.json").write_text(json.dumps({"settings": settings, **summary, "top": top}, indent=1))
    if json_out:
        print_json({"out": str(out), **summary, "top": top})
        return
    console.print(f"baseline {met.value} {ctx.baseline:.3f}; largest drops: " +
                  ", ".join(f"{r['item']} {r['effect']:+.3f}" for r in top[:5]))
    console.print(f"{len(todo)} item(s) in {seconds:.1f} s; results in [bold]{out.resolve()}[/]")
