"""`lens heads retrieval|streaming|sinks|taxonomy`: the head analyses one at a time.

The ``run_*`` functions do the work (collect from the model, score with the pure
functions in :mod:`analyses`) and are shared with ``lens scan``.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from lens.cli import app
from lens.cli._common import console, parse_int_list, prepare_out_dir, print_json, progress, status
from lens.errors import AttnlensError, SelectionError

heads_app = typer.Typer(name="heads", no_args_is_help=True, rich_markup_mode="rich",
                        help="Head analyses on language models: retrieval, streaming, sinks, taxonomy.\n\n"
                             "Example: lens heads sinks smollm2-135m --out results/sinks")
app.add_typer(heads_app, name="heads")

SOURCES = ("pattern", "kernel")


class AnalysisInputError(AttnlensError, ValueError):
    """An analysis' own input error (NiahError, RetrievalError, ...), re-raised for the CLI's one-line message."""


@contextmanager
def user_errors():
    """Turn the analyses' ValueError subclasses into one-line CLI errors."""
    from analyses.causal import AblationError
    from analyses.niah import NiahError
    from analyses.retrieval import RetrievalError
    from analyses.taxonomy import TaxonomyError

    try:
        yield
    except (NiahError, RetrievalError, TaxonomyError, AblationError) as err:
        raise AnalysisInputError(str(err)) from err


def _friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper


# ---- option parsing ---------------------------------------------------------------------
def parse_float_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SelectionError(f"--{what} {text!r} is not a list of numbers like 0,0.5,1") from None


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise SelectionError(f"--source {source!r} is not one of {', '.join(SOURCES)}")
    return source


def _ints(text: str | None, what: str, default: list[int]) -> list[int]:
    got = parse_int_list(text, what)
    return default if got is None else got


# ---- work shared with `lens scan` ---------------------------------------------------------
def niah_trials(lm, *, lengths, depths, seeds, n_needles=1, chat=True):
    from analyses.niah import make_trials

    return make_trials(lm.tokenizer, context_length=lm.facts.context_length, lengths=lengths, depths=depths,
                       seeds=seeds, n_needles=n_needles, chat=chat)


def run_retrieval(lm, trials, *, source="pattern", max_new_tokens=40, bar=None):
    from analyses import Provenance
    from analyses.decode import decode_trials
    from analyses.retrieval import retrieval_scores

    task = bar.add_task(f"retrieval: decoding needle trials ({source})", total=len(trials)) if bar else None
    traces = decode_trials(lm, trials, max_new_tokens=max_new_tokens, source=source,
                           on_trial=(lambda: bar.advance(task)) if bar else None)
    prov = Provenance.for_model(lm.facts, seeds=tuple(sorted({t.seed for t in trials})),
                                prompts=f"{len(trials)} NIAH trials, lengths {sorted({t.length for t in trials})}, "
                                        f"depths {sorted({t.depth for t in trials})}")
    results = retrieval_scores(traces, provenance=prov)
    results[0].summary["answers"] = [{"length": t.length, "depth": t.depth, "recall": round(t.recall, 3),
                                      "answer": t.answer[:120]} for t in traces]
    results[0].params["source"] = source
    results[0].params["max_new_tokens"] = max_new_tokens
    return results


def run_ablation(lm, trials, ranking: np.ndarray, *, name: str, ks, seeds, max_new_tokens=40, bar=None):
    from analyses import Provenance
    from analyses.causal import ablation_plan, ablation_scores
    from analyses.collect import needle_accuracy

    plan = ablation_plan(ranking, ks, seeds)
    total = len(trials) * (1 + len(ks) * (1 + len(seeds)))
    task = bar.add_task(f"ablation of top {name} heads vs random", total=total) if bar else None
    tick = (lambda: bar.advance(task)) if bar else None
    full = needle_accuracy(lm, trials, max_new_tokens=max_new_tokens, on_trial=tick)
    top_acc, rand_acc = [], []
    for k in ks:
        top_acc.append(needle_accuracy(lm, trials, heads=plan[k]["top"], max_new_tokens=max_new_tokens, on_trial=tick))
        rand_acc.append([needle_accuracy(lm, trials, heads=h, max_new_tokens=max_new_tokens, on_trial=tick)
                         for h in plan[k]["random"]])
    prov = Provenance.for_model(lm.facts, seeds=tuple(seeds), prompts=f"{len(trials)} NIAH trials")
    return ablation_scores(ranking, ranking_name=name, ks=ks, seeds=seeds, full_accuracy=full, top_accuracy=top_acc,
                           random_accuracy=rand_acc, n_trials=len(trials), provenance=prov, plan=plan)


def run_sinks(lm, prompts, *, source="pattern", min_queries=10, bar=None):
    from analyses import Provenance
    from analyses.collect import sink_inputs
    from analyses.sinks import sink_scores

    task = bar.add_task(f"sinks ({source})", total=len(prompts)) if bar else None
    inputs = sink_inputs(lm, prompts, source=source, on_prompt=(lambda: bar.advance(task)) if bar else None)
    prov = Provenance.for_model(lm.facts, prompts=f"{len(prompts)} prompts")
    results = sink_scores(inputs, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, provenance=prov,
                          min_queries=min_queries)
    for r in results:
        r.params["source"] = source
    return results


def run_taxonomy(lm, *, repeat_len=50, batch=4, seed=0, bar=None):
    from analyses import Provenance
    from analyses.collect import taxonomy_patterns
    from analyses.taxonomy import taxonomy_scores

    task = bar.add_task("taxonomy: repeated random tokens", total=1) if bar else None
    patterns, offset = taxonomy_patterns(lm, repeat_len=repeat_len, batch=batch, seed=seed)
    if bar:
        bar.advance(task)
    prov = Provenance.for_model(lm.facts, seeds=(seed,), prompts=f"{batch} x repeated random tokens ({repeat_len})")
    return taxonomy_scores(patterns, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, repeat_len=repeat_len,
                           offset=offset, provenance=prov)


def run_streaming(lm, *, length=512, n_prompts=2, source="pattern", sink=None, recent=None, retrieval=None,
                  chat=True, bar=None):
    from analyses import Provenance
    from analyses.collect import streaming_masses
    from analyses.streaming import scaled_window, streaming_profile

    default_sink, default_recent = scaled_window(length)
    sink, recent = sink or default_sink, recent or default_recent
    trials = niah_trials(lm, lengths=[length], depths=[0.5], seeds=list(range(n_prompts)), chat=chat)
    task = bar.add_task(f"streaming profile ({source})", total=len(trials)) if bar else None
    runs = streaming_masses(lm, [t.input_ids for t in trials], sink=sink, recent=recent, source=source,
                            on_prompt=(lambda: bar.advance(task)) if bar else None)
    prov = Provenance.for_model(lm.facts, seeds=tuple(range(n_prompts)), prompts=f"{n_prompts} NIAH prompts of ~{length}")
    results = streaming_profile(runs, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, sink=sink, recent=recent,
                                provenance=prov, retrieval=retrieval)
    results[0].params.update({"source": source, "length": length})
    return results


def run_gates(lm, *, steps=8, length=256, prompts=2, lr=0.1, retrieval=None, bar=None):
    from analyses import Provenance
    from analyses.duo_gates import GateConfig, train_gates
    from analyses.streaming import gate_scores

    cfg = GateConfig(steps=steps, length=length, prompts=prompts, lr=lr)
    task = bar.add_task("DuoAttention gates: optimising", total=steps) if bar else None
    gates, record = train_gates(lm, cfg, on_step=(lambda i, loss: bar.advance(task)) if bar else None)
    prov = Provenance.for_model(lm.facts, seeds=(cfg.seed,), prompts=f"{prompts} synthetic passkey prompts of {length}")
    return gate_scores(gates, n_heads=lm.facts.n_heads, provenance=prov, retrieval=retrieval, params=record)


# ---- output ------------------------------------------------------------------------------
def print_results(results, title: str) -> None:
    """One row per result: distribution and top heads."""
    table = Table(title=title)
    for col in ("result", "mean", "p50", "p90", "max", "top heads"):
        table.add_column(col, justify="right" if col not in ("result", "top heads") else "left")
    for r in results:
        s = r.scores[np.isfinite(r.scores)]
        if s.size == 0:
            table.add_row(r.name, "-", "-", "-", "-", "-")
            continue
        top = ", ".join(f"L{layer}H{head} {v:.2f}" for layer, head, v in r.top(5))
        table.add_row(r.name, f"{s.mean():.3f}", f"{np.median(s):.3f}", f"{np.quantile(s, 0.9):.3f}",
                      f"{s.max():.3f}", top)
    console.print(table)
    for r in results:
        headline = {k: v for k, v in r.summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if r.metric.endswith("_ablation"):
            headline["rows"] = r.summary["rows"]
        if headline:
            console.print(f"[bold]{r.name}[/]: " + ", ".join(f"{k} {_fmt(v)}" for k, v in headline.items()),
                          highlight=False)


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def finish(results, out: Path, model: str, json_out: bool, title: str) -> None:
    paths = [r.save(out) for r in results]
    if json_out:
        print_json({"model": model, "out": str(out), "results": [
            {"name": r.name, "file": str(p), "params": r.params, "summary": r.summary, "top": r.top(10)}
            for r, p in zip(results, paths)]})
        return
    print_results(results, title)
    console.print(f"results saved to [bold]{out.resolve()}[/]")


def _load(model: str):
    import lens

    with status(f"loading {model}"):
        return lens.load(model)


# ---- commands ----------------------------------------------------------------------------
@heads_app.command("retrieval")
@_friendly
def retrieval(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    lengths: str = typer.Option("300,600", help="Prompt lengths in tokens, comma-separated (up to the context)."),
    depths: str = typer.Option("0,0.5,1", help="Needle depths in [0, 1], comma-separated."),
    seeds: str = typer.Option("0", help="Seeds (one trial per length x depth x seed), e.g. 0,1,2 or 0-4."),
    needles: int = typer.Option(1, min=1, max=10, help="Needles per prompt (the others are distractors)."),
    chat: bool = typer.Option(True, help="Format with the model's chat template (error if it has none)."),
    max_new_tokens: int = typer.Option(40, min=1, max=200, help="Greedy tokens per trial."),
    source: str = typer.Option("pattern", help="Top-1 keys from 'pattern' (captured rows) or 'kernel' (stats argmax)."),
    ablate: str = typer.Option(None, help="Also ablate the top-k retrieval heads vs k random heads, e.g. 5,10,20."),
    ablate_seeds: str = typer.Option("0,1,2", help="Seeds of the random-head baseline."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Retrieval score of every head (Wu et al. 2024) from greedy needle-in-a-haystack decoding.

    Per decoding step and head: +1/|needle| when the top-1 attended key lies in the needle and
    the generated token equals it; trials count when the answer's ROUGE-1 recall > 0.5.

    Example: lens heads retrieval smollm2-135m --lengths 512,1024 --depths 0,0.25,0.5,0.75,1 --ablate 5,10 --out results/retrieval
    """
    check_source(source)
    lm = _load(model)
    trials = niah_trials(lm, lengths=[int(x) for x in parse_float_list(lengths, "lengths")],
                         depths=parse_float_list(depths, "depths"), seeds=_ints(seeds, "seeds", [0]),
                         n_needles=needles, chat=chat)
    out = prepare_out_dir(out, force)
    with progress() as bar:
        results = run_retrieval(lm, trials, source=source, max_new_tokens=max_new_tokens, bar=bar)
        if ablate:
            results += run_ablation(lm, trials, results[0].scores, name="retrieval", ks=_ints(ablate, "ablate", []),
                                    seeds=_ints(ablate_seeds, "ablate-seeds", [0]), max_new_tokens=max_new_tokens,
                                    bar=bar)
    finish(results, out, model, json_out, f"{lm.facts.name}: retrieval heads")


@heads_app.command("sinks")
@_friendly
def sinks(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A prompt; repeat for several (default: built-in)."),
    source: str = typer.Option("pattern", help="'pattern' (captured) or 'kernel' (stats kernel, no N x N matrix)."),
    min_queries: int = typer.Option(10, min=1, help="Hidden sinks: ignore keys seen by fewer queries (1 = bare ACT)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """First-token sinks, hidden sinks (ACT: s_j > 0.1, j > 0) and massive activations.

    Example: lens heads sinks smollm2-135m --prompt "The river wound through the valley." --out results/sinks
    """
    from analyses.prompts import GENERAL_PROMPTS

    check_source(source)
    lm = _load(model)
    prompts = list(prompt or GENERAL_PROMPTS)
    for p in prompts:
        lm.encode(p)
    out = prepare_out_dir(out, force)
    with progress() as bar:
        results = run_sinks(lm, prompts, source=source, min_queries=min_queries, bar=bar)
    finish(results, out, model, json_out, f"{lm.facts.name}: attention sinks")
    if not json_out:
        _print_sink_details(results)


def _print_sink_details(results) -> None:
    first = next(r for r in results if r.metric == "first_token_mass")
    hidden = next(r for r in results if r.metric == "hidden_sinks")
    share = first.summary["share_above_0.5_per_layer"]
    console.print("share of heads with first-token mass > 0.5 per layer: "
                  + " ".join(f"{i}:{s:.2f}" for i, s in enumerate(share)), highlight=False)
    tops = hidden.summary["top_hidden_sinks"][:6]
    if tops:
        console.print("strongest hidden sinks: " + "; ".join(
            f"prompt {e['prompt']} pos {e['position']} {e['token']!r} in {e['n_heads']} heads"
            + (" (massive act.)" if e["massive"] else "") for e in tops), highlight=False)
    console.print(f"massive activations: {hidden.summary['massive_total']} (dims {hidden.summary['massive_dims'][:12]}), "
                  f"{hidden.summary['massive_on_sink_tokens']} on sink tokens", highlight=False)


@heads_app.command("taxonomy")
@_friendly
def taxonomy(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    repeat_len: int = typer.Option(50, min=2, help="Length of the random sequence that is repeated once."),
    batch: int = typer.Option(4, min=1, max=64, help="Random sequences (>= 2 for the positional score)."),
    seed: int = typer.Option(0, help="Seed of the random tokens."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Previous-token, duplicate-token, induction, local and positional scores on repeated random tokens.

    Example: lens heads taxonomy smollm2-135m --repeat-len 100 --batch 8 --out results/taxonomy
    """
    lm = _load(model)
    if 1 + 2 * repeat_len > lm.facts.context_length:
        raise SelectionError(f"--repeat-len {repeat_len} is too long: 2 x repeat_len must fit in the context of "
                             f"{lm.facts.context_length}")
    out = prepare_out_dir(out, force)
    with progress() as bar:
        results = run_taxonomy(lm, repeat_len=repeat_len, batch=batch, seed=seed, bar=bar)
    finish(results, out, model, json_out, f"{lm.facts.name}: head taxonomy")


@heads_app.command("streaming")
@_friendly
def streaming(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    length: int = typer.Option(512, min=32, help="Prompt length in tokens (haystack prompts)."),
    prompts: int = typer.Option(2, min=1, help="How many prompts."),
    sink: int = typer.Option(None, min=1, help="Sink tokens (default: 64 scaled by length/8192)."),
    recent: int = typer.Option(None, min=1, help="Recent window (default: 256 scaled by length/8192)."),
    source: str = typer.Option("pattern", help="'pattern' (captured) or 'kernel' (sink/window masses)."),
    retrieval_file: Path = typer.Option(None, "--retrieval", exists=True, dir_okay=False,
                                        help="A retrieval.retrieval_score.json to compare with (Spearman, overlap)."),
    chat: bool = typer.Option(True, help="Format with the model's chat template."),
    gates: bool = typer.Option(True, help="Also optimise DuoAttention gates per KV head (frozen model)."),
    gate_steps: int = typer.Option(6, min=1, help="Gate optimisation steps (thorough: 100+)."),
    gate_length: int = typer.Option(256, min=64, help="Tokens per synthetic passkey prompt for the gates."),
    gate_prompts: int = typer.Option(1, min=1, help="Passkey prompts for the gates."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Streaming vs retrieval heads (DuoAttention): attention mass on sink + recent keys per head,
    and gates alpha per KV head optimised on synthetic passkeys (alpha * full + (1 - alpha) * streaming).

    Example: lens heads streaming smollm2-135m --length 1024 --retrieval results/retrieval/retrieval.retrieval_score.json --out results/streaming
    """
    from analyses import HeadScores

    check_source(source)
    lm = _load(model)
    retr = HeadScores.load(retrieval_file).scores if retrieval_file else None
    out = prepare_out_dir(out, force)
    with progress() as bar:
        results = run_streaming(lm, length=length, n_prompts=prompts, source=source, sink=sink, recent=recent,
                                retrieval=retr, chat=chat, bar=bar)
        if gates:
            results += run_gates(lm, steps=gate_steps, length=gate_length, prompts=gate_prompts, retrieval=retr,
                                 bar=bar)
    finish(results, out, model, json_out, f"{lm.facts.name}: streaming profile")
