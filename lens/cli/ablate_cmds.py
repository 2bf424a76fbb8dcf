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


def _load(model: str, task: str, n_prompts: int, seed: int, batch_size: int, strict: bool, template=None):
    import lens
    from analyses.circuits.tasks import encode_task, load_task

    with status(f"loading {model}"):
        lm = lens.load(model)
    t = load_task(task, lm.tokenizer, n=n_prompts, seed=seed, strict=strict, template=template)
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
    template: int = typer.Option(None, "--template", help="IOI only: use this one template (0-5), so all prompts "
                                 "share one length and batch best; default all templates."),
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
    lm, enc = _load(model, task, n_prompts, seed_list[0], batch_size, strict, template)
    comps = _components(lm, heads, mlps)
    if sweep:
        _run_sweep(lm, enc, sweep, comps, meth, met, seed_list[0], max_rows, out, force, json_out,
                   dict(model=model, task=task, method=meth.value, metric=met.value, sweep=sweep, heads=heads, mlps=mlps,
                        n_prompts=n_prompts, seed=seed_list[0], template=template, n_examples=enc.n_examples))
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
    import analyses.circuits as circuits
    from analyses import HeadScores, Provenance
    from analyses.circuits import MlpRef, prepare
    from analyses.circuits.ablation import all_heads
    from analyses.circuits.sweep import open_sweep

    score_sets = circuits.score_sets  # looked up at call time (tests interrupt it)
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
            tc = time.perf_counter()
            values = score_sets(ctx, [c for _, c in chunk], max_rows=max_rows)
            each = (time.perf_counter() - tc) / len(chunk)  # so that interrupted runs still add up
            log.append([{"item": n, "metric": float(v), "effect": float(v) - ctx.baseline, "seconds": each}
                        for (n, _), v in zip(chunk, values)])
            bar.advance(task_id, len(chunk))
    seconds = time.perf_counter() - t0
    log.finish()
    rows = [log.done[n] for n, _ in named]
    with open(out / "effects.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "metric", "effect"])
        w.writerows([[r["item"], r["metric"], r["effect"]] for r in rows])
    summary = {"baseline": ctx.baseline, "n_items": len(rows), "done_before_this_run": len(named) - len(todo),
               "computed_this_run": len(todo), "seconds_this_run": seconds,
               "seconds_all_items": sum(r.get("seconds", float("nan")) for r in rows)}
    top = sorted(rows, key=lambda r: r["effect"])[:10]
    if kind == "heads":
        scores = np.full((facts.n_layers, facts.n_heads), np.nan)
        for (_, c), r in zip(named, rows):
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


@app.command("circuit")
def circuit(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    task: str = typer.Option("ioi", "--task", "-t", help=TASK_HELP),
    method: str = typer.Option("eap-ig", "--method", "-m", help="eap | eap-ig | patching (per-head and MLP activation patching)."),
    metric: str = typer.Option("logit-diff", "--metric", help="logit-diff | prob | loss (acc for patching only)."),
    ig_steps: int = typer.Option(5, "--ig-steps", help="Interpolation steps for eap-ig."),
    top_n: int = typer.Option(None, "--top-n", help="Edges to keep (eap, eap-ig; default 100) or heads/MLPs (patching; default 20)."),
    threshold: float = typer.Option(None, "--threshold", help="Keep edges with |score| >= this instead of --top-n."),
    compare_patching: bool = typer.Option(False, "--compare-patching", help="Also run the per-head patching loop on the "
                                          "same prompts: Spearman correlation and time ratio."),
    overlap_task: str = typer.Option(None, "--overlap-task", help="Find the circuit of this task too and report the overlap."),
    n_prompts: int = typer.Option(32, "--n-prompts", "-n", help="Prompts generated (or read from the file)."),
    template: int = typer.Option(None, "--template", help="IOI only: use this one template (0-5), so all prompts "
                                 "share one length and batch best; default all templates."),
    seed: int = typer.Option(0, "--seed", help="Prompt generation seed."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per forward."),
    max_rows: int = typer.Option(64, "--max-rows", help="Rows per forward when batching patching runs."),
    strict: bool = typer.Option(False, "--strict", help="Fail on a bad JSONL line instead of skipping it."),
    out: Path = typer.Option(Path("results/circuit"), "--out", "-o", help="Results folder."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
) -> None:
    """Find the circuit of a task on MODEL: score edges (EAP, EAP-IG) or heads (patching), select, check faithfulness.

    Examples:

      lens circuit smollm2-135m --task ioi --method eap-ig --top-n 200 --out results/ioi-circuit

      lens circuit smollm2-135m --task ioi --method eap --compare-patching -n 16

      lens circuit smollm2-135m --task ioi --overlap-task colored-objects --force
    """
    from analyses import HeadScores, Provenance
    from analyses.circuits import Metric
    from analyses.circuits.circuit import faithfulness, overlap

    if method not in ("eap", "eap-ig", "patching"):
        raise SelectionError(f"--method must be eap, eap-ig or patching, got {method!r}")
    met = Metric.parse(metric)
    if n_prompts < 1 or batch_size < 1 or max_rows < 1:
        raise SelectionError(f"--n-prompts, --batch-size and --max-rows must be >= 1, got {n_prompts}, {batch_size}, {max_rows}")
    out = prepare_out_dir(out, force)
    lm, enc = _load(model, task, n_prompts, seed, batch_size, strict, template)
    report: dict = {"model": model, "task": task, "template": template, "method": method, "metric": met.value, "n_examples": enc.n_examples,
                    "skipped": len(enc.skipped), "machine_note": "timings are wall-clock on this machine"}
    found = _find_circuit(lm, enc, method, met, ig_steps, top_n, threshold, max_rows, out, task)
    report.update(found["report"])
    with status("faithfulness"):
        report["faithfulness"] = faithfulness(lm, enc, found["circuit"], met, max_rows=max_rows)
    prov = Provenance.for_model(lm.facts, seeds=(seed,), prompts=f"{enc.n_examples} {task} prompts")
    HeadScores("circuit", f"{method}_{met.value}", found["head_scores"], prov,
               description=f"{method} estimate of the {met.value} change when the head's corrupted output is patched in",
               params={"task": task, "ig_steps": ig_steps}, summary={"seconds": found["seconds"]}).save(out)
    _heatmap(found["head_scores"], out / f"{method}_heads.png", f"{lm.facts.name} {task}: {method}", f"Δ {met.value} (est.)")
    if compare_patching and method != "patching":
        from scipy.stats import pearsonr, spearmanr

        from analyses.circuits.eap import edge_attribution

        truth = _find_circuit(lm, enc, "patching", met, ig_steps, 20, None, max_rows, out, task)
        b = truth["head_scores"].ravel()
        report["vs_patching"] = {"seconds_patching_loop": truth["seconds"]}
        other = "eap" if method == "eap-ig" else "eap-ig"  # the other estimate is cheap: compare both
        with status(f"{other} on the same prompts"):
            other_scores = edge_attribution(lm, enc, met, ig_steps=ig_steps if other == "eap-ig" else 0)
        for name, a, secs in ((method, found["head_scores"].ravel(), found["seconds"]),
                              (other, other_scores.head_scores.ravel(), other_scores.seconds)):
            report["vs_patching"][name] = {
                "spearman": float(spearmanr(a, b).statistic), "pearson": float(pearsonr(a, b).statistic),
                "spearman_abs": float(spearmanr(np.abs(a), np.abs(b)).statistic), "seconds": secs,
                "speedup": truth["seconds"] / secs}
        HeadScores("circuit", f"patching_{met.value}", truth["head_scores"], prov,
                   description=f"{met.value} change when the head's corrupted output is patched into the clean run",
                   params={"task": task}, summary={"seconds": truth["seconds"]}).save(out)
        _heatmap(truth["head_scores"], out / "patching_heads.png", f"{lm.facts.name} {task}: per-head patching", f"Δ {met.value}")
    if overlap_task:
        from analyses.circuits.tasks import encode_task, load_task

        other = encode_task(load_task(overlap_task, lm.tokenizer, n=n_prompts, seed=seed, strict=strict), lm.tokenizer,
                            max_batch=batch_size, skip_bad=not strict)
        found_b = _find_circuit(lm, other, method, met, ig_steps, top_n, threshold, max_rows, out, overlap_task)
        with status(f"faithfulness on {overlap_task}"):
            faith_b = faithfulness(lm, other, found_b["circuit"], met, max_rows=max_rows)
        report["overlap"] = {"task_b": overlap_task, "baseline_b": faith_b["full"], "faithfulness_b": faith_b,
                             "circuit_b": found_b["circuit"].to_json() | {"edges": found_b["circuit"].to_json()["edges"][:50]},
                             **overlap(found["circuit"], found_b["circuit"])}
    report["circuit"] = found["circuit"].to_json()
    report["circuit"]["edges"] = report["circuit"]["edges"][:200]
    (out / "circuit.json").write_text(json.dumps(report, indent=1, default=float))
    if json_out:
        print_json(report)
        return
    f = report["faithfulness"]
    console.print(f"{task}: full {met.value} {f['full']:.3f}; circuit ({f['n_heads']} heads, {f['n_mlps']} MLPs, "
                  f"{f['n_edges']} edges) {f['circuit']:.3f} -> faithfulness {f['faithfulness']:.2f} "
                  f"(all ablated: {f['empty']:.3f}); {method} took {found['seconds']:.1f} s")
    if "vs_patching" in report:
        v = report["vs_patching"]
        for name in ("eap", "eap-ig"):
            console.print(f"{name} vs per-head patching: Spearman {v[name]['spearman']:.2f}; patching loop "
                          f"{v['seconds_patching_loop']:.1f} s vs {v[name]['seconds']:.1f} s ({v[name]['speedup']:.0f}x)")
    if "overlap" in report:
        o = report["overlap"]
        console.print(f"overlap with {overlap_task}: {len(o['shared_heads'])} shared heads (Jaccard {o['heads_jaccard']:.2f}, "
                      f"{o['share_of_a_heads_in_b']:.0%} of {task}'s heads), edges Jaccard {o['edges_jaccard']:.2f}")
    console.print(f"results in [bold]{out.resolve()}[/]")


def _find_circuit(lm, enc, method, met, ig_steps, top_n, threshold, max_rows, out, task) -> dict:
    """Scores, circuit and timing of one method on one task (edges.csv written for EAP methods)."""
    from analyses.circuits import MlpRef, prepare, score_sets
    from analyses.circuits.ablation import all_heads
    from analyses.circuits.circuit import select_edges, select_nodes
    from analyses.circuits.eap import edge_attribution

    facts = lm.facts
    stem = Path(task).stem
    if method == "patching":
        comps = all_heads(facts) + [MlpRef(l) for l in range(facts.n_layers)]
        t0 = time.perf_counter()
        ctx = prepare(lm, enc, "patch", met)
        values = []
        per_chunk = max(1, max_rows // max(b.size for b in enc.batches))
        with progress() as bar:
            tid = bar.add_task(f"patching {len(comps)} components ({stem})", total=len(comps))
            for s in range(0, len(comps), per_chunk):
                chunk = comps[s:s + per_chunk]
                values.extend(score_sets(ctx, [[c] for c in chunk], max_rows=max_rows) - ctx.baseline)
                bar.advance(tid, len(chunk))
        seconds = time.perf_counter() - t0
        values = np.asarray(values)
        heads = values[: facts.n_layers * facts.n_heads].reshape(facts.n_layers, facts.n_heads)
        mlps = values[facts.n_layers * facts.n_heads:]
        circ = select_nodes(heads, mlps, top_n=top_n or 20)
        return {"circuit": circ, "head_scores": heads, "seconds": seconds,
                "report": {"seconds": seconds, "baseline": ctx.baseline, "mlp_scores": mlps.tolist()}}
    with status(f"{method} on {enc.n_examples} {stem} prompts"):
        scores = edge_attribution(lm, enc, met, ig_steps=ig_steps if method == "eap-ig" else 0)
    with open(out / f"edges_{stem}_{method}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sender", "receiver", "score"])
        w.writerows(sorted(scores.edges(), key=lambda e: -abs(e[2])))
    circ = select_edges(scores, facts, top_n=None if threshold is not None else (top_n or 100), threshold=threshold)
    return {"circuit": circ, "head_scores": scores.head_scores, "seconds": scores.seconds,
            "report": {"seconds": scores.seconds, "n_edges_scored": len(scores.edges()),
                       "mlp_scores": scores.mlp_scores.tolist()}}
