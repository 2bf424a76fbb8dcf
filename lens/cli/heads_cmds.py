"""`lens heads retrieval|streaming|sinks|taxonomy|vision-aware|visual-sinks`: the head analyses one at a time
(see :mod:`pipelines.heads` and, for vision-language models, :mod:`pipelines.vlm`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from attnlens.formats.errors import SelectionError
from attnlens.formats.vocab import Objective, Source
from lens.cli import _common as _c
from lens.cli import app
from lens.cli._common import (
    MODEL_HELP,
    check_out,
    check_prompt,
    check_text,
    console,
    float_list,
    int_list,
    load_model,
    print_json,
    progress,
    prompt_lines,
    say,
    writing,
)
from lens.cli._options import (
    FORCE_OPTION,
    JSON_OPTION,
    PlacementGroup,
    RayGroup,
    group,
    option_field,
    placement_options,
    ray_options,
)
from lens.cli._terminal import printable

heads_app = typer.Typer(name="heads", no_args_is_help=True, rich_markup_mode="rich",
                        help="Head analyses: retrieval, streaming, sinks, taxonomy, calibration (language models); "
                             "cross-attention (speech models); vision-aware, visual-sinks (vision-language models).\n\n"
                             "Example: lens heads sinks smollm2-135m --out results/sinks")
app.add_typer(heads_app, name="heads")


# ---- output ------------------------------------------------------------------------------
def print_results(results, title: str) -> None:
    """One row per result: distribution and top heads; then each result's headline numbers."""
    from attnlens.formats.head_scores import HeadScores

    table = Table(title=Text(printable(title)))  # a model name: no markup, no control characters
    for col in ("result", "mean", "p50", "p90", "max", "top heads"):
        table.add_column(col, justify="right" if col not in ("result", "top heads") else "left")
    scored = [r for r in results if isinstance(r, HeadScores)]
    for r in scored:
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
        if r.metric.endswith("_ablation") and "rows" in r.summary:
            headline["rows"] = r.summary["rows"]
        if headline:
            say(f"{r.name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in headline.items()))


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def save_into(results, tmp: Path) -> None:
    for r in results:
        r.save(tmp)


def finish(results, out: Path, model: str, json_out: bool, title: str) -> None:
    """Print the saved ``results``."""
    if json_out:
        print_json({"model": model, "out": str(out), "results": [
            {"name": r.name, "params": r.params, "summary": r.summary,
             "top": r.top(10) if hasattr(r, "top") else []} for r in results]})
        return
    print_results(results, title)
    say(f"results saved to {out.resolve()}")


def _niah_grid(lengths: str, depths: str, seeds: str) -> tuple[list[int], list[float], list[int]]:
    """``--lengths/--depths/--seeds`` parsed strictly (a length of 300.5 is refused, not rounded), before any model loads."""
    length_list = int_list(lengths, "lengths", lo=32, hi=1_000_000, max_count=64)
    if not length_list:
        raise SelectionError("--lengths is empty: give prompt lengths in tokens like 300,600")
    return (length_list, float_list(depths, "depths", lo=0, hi=1, max_count=64),
            int_list(seeds, "seeds", max_count=1000, default=[0]))


def _trials(lm, grid: tuple[list[int], list[float], list[int]], needles: int, chat: bool):
    from attnlens.pipelines.heads import niah_trials

    lengths, depths, seeds = grid
    return niah_trials(lm, lengths=lengths, depths=depths, seeds=seeds, n_needles=needles, chat=chat)


def _check_ablation_sizes(ks: list[int] | None, facts) -> None:
    """``--ablate`` sizes against the model's heads, before the needle trials run: the top k heads
    are compared with k random other heads, so k can be at most half of them."""
    total = facts.n_layers * facts.n_heads
    for k in ks or []:
        if k > total // 2:
            raise SelectionError(f"--ablate {k} is out of range: {facts.name} has {total} heads, so k can be "
                                 f"1-{total // 2} (the random baseline draws k of the other heads)")


# ---- commands ----------------------------------------------------------------------------
@heads_app.command("retrieval")
@ray_options
@placement_options
def retrieval(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    lengths: str = typer.Option("300,600", help="Prompt lengths in tokens, comma-separated (up to the context)."),
    depths: str = typer.Option("0,0.5,1", help="Needle depths in [0, 1], comma-separated."),
    seeds: str = typer.Option("0", help="Seeds (one trial per length x depth x seed), e.g. 0,1,2 or 0-4."),
    needles: int = typer.Option(1, min=1, max=10, help="Needles per prompt (the others are distractors)."),
    chat: bool = typer.Option(True, help="Format with the model's chat template (error if it has none)."),
    max_new_tokens: int = typer.Option(40, min=1, max=200, help="Greedy tokens per trial."),
    source: Source = typer.Option(Source.PATTERN, help="Top-1 keys from captured rows (pattern) or the kernel's argmax."),
    ablate: str = typer.Option(None, help="Also ablate the top-k retrieval heads vs k random heads, e.g. 5,10,20."),
    ablate_seeds: str = typer.Option(None, help="Seeds of the random-head baseline of --ablate (default 0,1,2)."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
    cluster: RayGroup = None,
    place: PlacementGroup = None,
) -> None:
    """Retrieval score of every head (Wu et al. 2024) from greedy needle-in-a-haystack decoding.

    Per decoding step and head: +1/|needle| when the top-1 attended key lies in the needle and
    the generated token equals it; trials count when the answer's ROUGE-1 recall > 0.5.

    Example: lens heads retrieval smollm2-135m --lengths 512,1024 --depths 0,0.25,0.5,0.75,1 --ablate 5,10 --out results/retrieval
    """
    from attnlens.pipelines import heads

    ks = int_list(ablate, "ablate", lo=1, max_count=32)
    if ablate_seeds is not None and not ks:
        raise SelectionError("--ablate-seeds does nothing here: it seeds the random-head baseline of --ablate: add "
                             "--ablate K")
    a_seeds = int_list(ablate_seeds, "ablate-seeds", max_count=100, default=[0, 1, 2])
    grid = _niah_grid(lengths, depths, seeds)
    load_kw = place.load_kwargs()
    ray_opts = cluster.options()
    check_out(out, force)
    lm = load_model(model, **load_kw)
    _check_ablation_sizes(ks, lm.facts)
    trials = _trials(lm, grid, needles, chat)
    with _c.executor(lm, model, ray_opts, load_kw) as ex, writing(out, force) as tmp, progress() as bar:
        results = heads.run_retrieval(lm, trials, source=source.value, max_new_tokens=max_new_tokens, progress=bar,
                                      executor=ex if ex.distributed else None)
        if ks:
            results += heads.run_needle_ablation(lm, trials, results[0].scores, name="retrieval", ks=ks,
                                                 seeds=a_seeds, max_new_tokens=max_new_tokens, progress=bar)
        save_into(results, tmp)
    finish(results, out, model, json_out, f"{lm.facts.name}: retrieval heads")


@heads_app.command("sinks")
def sinks(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A prompt; repeat for several (default: built-in)."),
    file: Path = typer.Option(None, "--file", "-f", help="A UTF-8 text file with one prompt per line.",
                              exists=True, dir_okay=False, readable=True),
    source: Source = typer.Option(Source.PATTERN, help="Captured patterns, or the stats kernel (no N x N matrix)."),
    min_queries: int = typer.Option(10, min=1, max=1_000_000, help="Hidden sinks: ignore keys seen by fewer queries (1 = bare ACT)."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """First-token sinks, hidden sinks (ACT: s_j > 0.1, j > 0) and massive activations.

    Example: lens heads sinks smollm2-135m --prompt "The river wound through the valley." --out results/sinks
    """
    from attnlens.analyses.prompts import GENERAL_PROMPTS
    from attnlens.pipelines import heads

    prompts = [check_prompt(p) for p in prompt or []] + (prompt_lines(file, "file") if file else [])
    check_out(out, force)
    lm = load_model(model)
    prompts = prompts or list(GENERAL_PROMPTS)
    for p in prompts:
        lm.encode(p)
    with writing(out, force) as tmp, progress() as bar:
        results = heads.run_sinks(lm, prompts, source=source.value, min_queries=min_queries, progress=bar)
        save_into(results, tmp)
    finish(results, out, model, json_out, f"{lm.facts.name}: attention sinks")
    if not json_out:
        _print_sink_details(results)


def _print_sink_details(results) -> None:
    first = next(r for r in results if r.metric == "first_token_mass")
    hidden = next(r for r in results if r.metric == "hidden_sinks")
    share = first.summary["share_above_0.5_per_layer"]
    say("share of heads with first-token mass > 0.5 per layer: " + " ".join(f"{i}:{s:.2f}" for i, s in enumerate(share)))
    tops = hidden.summary["top_hidden_sinks"][:6]
    if tops:
        say("strongest hidden sinks: " + "; ".join(
            f"prompt {e['prompt']} pos {e['position']} {e['token']!r} in {e['n_heads']} heads"
            + (" (massive act.)" if e["massive"] else "") for e in tops))
    say(f"massive activations: {hidden.summary['massive_total']} (dims {hidden.summary['massive_dims'][:12]}), "
        f"{hidden.summary['massive_on_sink_tokens']} on sink tokens")


@heads_app.command("taxonomy")
def taxonomy(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    repeat_len: int = typer.Option(50, min=2, max=100_000, help="Length of the random sequence that is repeated once."),
    batch: int = typer.Option(4, min=1, max=64, help="Random sequences (>= 2 for the positional score)."),
    seed: int = typer.Option(0, min=0, help="Seed of the random tokens."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Sink, previous-token, positional, duplicate-token, induction and local scores and a type per head.

    On repeated random tokens, original and shuffled: a positional head attends at fixed offsets
    whatever the tokens.

    Example: lens heads taxonomy smollm2-135m --repeat-len 100 --batch 8 --out results/taxonomy
    """
    from attnlens.pipelines import heads

    check_out(out, force)
    lm = load_model(model)
    if 1 + 2 * repeat_len > lm.facts.context_length:
        raise SelectionError(f"--repeat-len {repeat_len} is too long: 1 + 2 x repeat_len must fit in the context of "
                             f"{lm.facts.context_length}")
    with writing(out, force) as tmp, progress() as bar:
        results = heads.run_taxonomy(lm, repeat_len=repeat_len, batch=batch, seed=seed, progress=bar)
        save_into(results, tmp)
    finish(results, out, model, json_out, f"{lm.facts.name}: head taxonomy")


@heads_app.command("streaming")
def streaming(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    length: int = typer.Option(512, min=32, max=1_000_000, help="Prompt length in tokens (haystack prompts)."),
    prompts: int = typer.Option(2, min=1, max=1000, help="How many prompts."),
    sink: int = typer.Option(None, min=1, max=1_000_000, help="Sink tokens (default: 64 scaled by length/8192)."),
    recent: int = typer.Option(None, min=1, max=1_000_000, help="Recent window (default: 256 scaled by length/8192)."),
    source: Source = typer.Option(Source.PATTERN, help="Captured patterns, or the kernel's sink/window masses."),
    retrieval_file: Path = typer.Option(None, "--retrieval", exists=True, dir_okay=False,
                                        help="A retrieval.retrieval_score.json to compare with (Spearman, overlap)."),
    chat: bool = typer.Option(True, help="Format with the model's chat template."),
    gates: bool = typer.Option(True, help="Also optimise DuoAttention gates per KV head (frozen model)."),
    gate_steps: int = typer.Option(None, min=1, max=100_000, help="At most this many gate optimisation steps (default "
                                   "100; it stops earlier once the retrieval heads stay the same for 10 steps)."),
    gate_length: int = typer.Option(None, min=64, max=1_000_000, help="Tokens per synthetic passkey prompt for the "
                                    "gates (default 256)."),
    gate_prompts: int = typer.Option(None, min=1, max=1000, help="Passkey prompts for the gates (default 1)."),
    gate_objective: Objective = typer.Option(None, help="decode (the default): the context from the full model, "
                                                 "only the answer tokens run the mixed attention (minutes on a CPU); "
                                                 "prefill: every position does (DuoAttention's objective, much slower)."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Streaming vs retrieval heads (DuoAttention): attention mass on sink + recent keys per head,
    and gates alpha per KV head optimised on synthetic passkeys (alpha * full + (1 - alpha) * streaming).

    Example: lens heads streaming smollm2-135m --length 1024 --retrieval results/retrieval/retrieval.retrieval_score.json --out results/streaming
    """
    from attnlens.formats.head_scores import HeadScores
    from attnlens.pipelines import heads

    if sink is not None and recent is not None and sink + recent >= length:
        raise SelectionError(f"--sink {sink} + --recent {recent} must be less than --length {length}: no query would "
                             "have distant keys")
    gate_given = [flag for flag, v in (("--gate-steps", gate_steps), ("--gate-length", gate_length),
                                       ("--gate-prompts", gate_prompts), ("--gate-objective", gate_objective))
                  if v is not None]
    if gate_given and not gates:
        raise SelectionError(f"{gate_given[0]} does nothing here: it sets the DuoAttention gates, which --no-gates "
                             "turns off")
    gate_steps = 100 if gate_steps is None else gate_steps
    gate_length = 256 if gate_length is None else gate_length
    gate_prompts = 1 if gate_prompts is None else gate_prompts
    gate_objective = gate_objective or Objective.DECODE
    retr_scores = HeadScores.load(retrieval_file) if retrieval_file else None
    check_out(out, force)
    lm = load_model(model)
    retr = _retrieval_for(retr_scores, retrieval_file, lm.facts) if retr_scores is not None else None
    with writing(out, force) as tmp, progress() as bar:
        results = heads.run_streaming(lm, length=length, n_prompts=prompts, source=source.value, sink=sink,
                                      recent=recent, retrieval=retr, chat=chat, progress=bar)
        if gates:
            results += heads.run_gates(lm, steps=gate_steps, length=gate_length, prompts=gate_prompts, retrieval=retr,
                                       objective=gate_objective.value, progress=bar)
        save_into(results, tmp)
    finish(results, out, model, json_out, f"{lm.facts.name}: streaming profile")


def _retrieval_for(scores, path: Path, facts) -> np.ndarray:
    """The retrieval scores of ``--retrieval`` if they fit ``facts``' heads (one score per layer and head)."""
    want = (facts.n_layers, facts.n_heads)
    if scores.scores.shape != want:
        raise SelectionError(f"--retrieval {path} holds scores of shape {list(scores.scores.shape)} (from "
                             f"{scores.provenance.model!r}), but {facts.name} has {want[0]} layers x {want[1]} heads: "
                             "give a retrieval result of this model")
    if scores.provenance.model != facts.name:
        say(f"note: --retrieval {path} was computed on {scores.provenance.model!r}, not {facts.name!r}", "yellow")
    return scores.scores


@heads_app.command("calibration")
def calibration(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    task: str = typer.Option("ioi", "--task", "-t", help="ioi, colored-objects, greater-than, niah, object-recall, "
                             "or a UTF-8 .jsonl file (prompt, answer, corrupted, distractor)."),
    heads: str = typer.Option("search", "--heads", help="Heads to calibrate: 'search' (ACT's choice: heads whose "
                              "calibration alone helps on --search-prompts other prompts), 'all' (every head of layers "
                              ">= --first-layer), or a selection like 'L3H4,L5H*'."),
    n_prompts: int = typer.Option(64, "--n-prompts", "-n", min=1, max=100_000, help="Prompts measured."),
    search_prompts: int = typer.Option(None, "--search-prompts", min=1, max=100_000,
                                       help="Prompts of the head search (other prompts: seed + 1; default 32)."),
    top_k: int = typer.Option(None, "--top-k", min=1, max=100_000, help="At most this many heads from the search."),
    beta: float = typer.Option(0.4, "--beta", min=0.0, max=1.0, help="Sink columns are multiplied by this (ACT: 0.4)."),
    threshold: float = typer.Option(0.1, "--threshold", min=1e-6, max=1.0, help="Sink when s_j exceeds this (ACT: 0.1)."),
    first_layer: int = typer.Option(2, "--first-layer", min=0, max=10_000, help="Layers before this are not calibrated "
                                    "(ACT skips the first two)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds of the random-column control."),
    seed: int = typer.Option(0, "--seed", min=0, help="Prompt generation seed."),
    templates: str = typer.Option(None, "--templates", help="IOI only: the templates, e.g. '0-5' (default 0-4)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=4096, help="Prompts per forward."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """ACT attention calibration (Yu et al. 2024): sink columns x beta, the freed mass to the other
    keys, on the chosen heads; accuracy with and without it, and with random columns instead.

    Example: lens heads calibration smollm2-135m --task ioi --heads search --out results/act
    """
    from attnlens.pipelines.calibration import run_calibration
    from lens.cli.ablate_cmds import _check_task_file, _task
    from lens.heads import parse_head_spec

    seed_list = int_list(seeds, "seeds", max_count=100, default=[0])
    tpl = int_list(templates, "templates", max_count=100) if templates else None
    for flag, value in (("--search-prompts", search_prompts), ("--top-k", top_k)):
        if value is not None and heads != "search":
            raise SelectionError(f"{flag} does nothing here: it applies to the head search (--heads search), not "
                                 f"--heads {heads!r}")
    search_prompts = 32 if search_prompts is None else search_prompts
    _check_task_file(task, templates=templates)
    check_out(out, force)
    lm = load_model(model)
    if first_layer >= lm.facts.n_layers:
        raise SelectionError(f"--first-layer {first_layer} is out of range: {lm.facts.name} has layers "
                             f"0-{lm.facts.n_layers - 1}")
    chosen, search_enc = None, None
    if heads == "search":
        search_enc = _task(lm, task, search_prompts, seed + 1, batch_size, False, templates=tpl)
    elif heads != "all":
        chosen = {}
        for h in parse_head_spec(heads, lm.facts):
            chosen.setdefault(h.layer, []).append(h.head)
    enc = _task(lm, task, n_prompts, seed, batch_size, False, templates=tpl)
    with writing(out, force) as tmp, progress() as bar:
        curves, search = run_calibration(lm, enc, task_name=Path(task).stem, heads=chosen, search_enc=search_enc,
                                         top_k=top_k, beta=beta, threshold=threshold, first_layer=first_layer,
                                         seeds=seed_list, progress=bar)
        curves.save(tmp)
        if search is not None:
            search.save(tmp)
    s = curves.summary
    if json_out:
        print_json({"model": model, "out": str(out), "params": curves.params, "summary": s})
        return
    say(f"{task} on {lm.facts.name} ({s['n_examples']} prompts), {s['n_heads_calibrated']} heads calibrated "
        f"({curves.params['head_choice']}):")
    say(f"  accuracy without {s['accuracy_without']:.3f}, with ACT {s['accuracy_act']:.3f}, random columns "
        f"{s['accuracy_random_mean']:.3f} (per seed {', '.join(f'{a:.3f}' for a in s['accuracy_random_per_seed'])})")
    say(f"  logit diff without {s['logit_diff_without']:.3f}, with ACT {s['logit_diff_act']:.3f}, random columns "
        f"{s['logit_diff_random_mean']:.3f}; {s['examples_whose_answer_changed']} answers changed by ACT")
    say(f"results saved to {out.resolve()}")


# ---- vision-language models --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageInputs:
    """``--image/--images/--scenes/--question``: the images and questions of a vision-language analysis."""

    image: list[Path] | None = option_field(None, "--image", "-i", help="An image file; repeat for several.",
                                            dir_okay=False)
    images: Path | None = option_field(None, "--images", help="A folder: every image file directly in it.",
                                       file_okay=False)
    scenes: int | None = option_field(None, "--scenes", min=1, max=10_000, help="N held-out synthetic scenes "
                                      "(seeds 1000+, never trained on) with their questions.")
    question: list[str] | None = option_field(None, "--question", "-q", help="A question put with each image; "
                                              "repeat for several (default: 'What colour is the shape?'). Not "
                                              "with --scenes.")

    def items(self):
        """``(items, what)`` from exactly one of --image/--images/--scenes; every image decoded now,
        so a bad file fails before the model loads and nothing is written."""
        from attnlens.pipelines import vlm as vp
        from lens.vlm import DEFAULT_PLACEHOLDER

        given = [n for n, v in (("--image", self.image), ("--images", self.images), ("--scenes", self.scenes)) if v]
        if len(given) != 1:
            raise SelectionError("give exactly one of --image FILE, --images FOLDER or --scenes N"
                                 + (f" (got {', '.join(given)})" if given else ""))
        if self.scenes:
            if self.question:
                raise SelectionError("--question goes with --image/--images; --scenes asks each scene its own questions")
            return vp.scene_items(self.scenes), f"{self.scenes} held-out synthetic scenes"
        files = list(self.image) if self.image else vp.image_files(self.images)
        questions = [check_text(q, "question") for q in (self.question or [vp.DEFAULT_QUESTION]) if q.strip()]
        if not questions:
            raise SelectionError("--question is empty: give the text to ask about each image")
        marked = [q for q in questions if DEFAULT_PLACEHOLDER in q]
        if marked:
            raise SelectionError(f"--question {marked[0]!r} holds {DEFAULT_PLACEHOLDER}: give the question only, "
                                 "the image goes before it")
        return vp.file_items(files, questions), f"{len(files)} image file(s) x {len(questions)} question(s)"


image_inputs = group(ImageInputs, "inputs")
VLM_MODEL_ARGUMENT = typer.Argument("tiny-vlm", help=MODEL_HELP + " A vision-language (LLaVA-style) model.")


def _vlm_heads(model: str, out: Path, inputs: ImageInputs, force: bool, json_out: bool, run, title: str) -> list:
    """The body of every vision-language head analysis: inputs checked, the model loaded and
    checked, ``run(lm, items, what, progress)`` scored and saved into ``out``, the table printed."""
    from attnlens.pipelines import vlm as vp

    items, what = inputs.items()
    check_out(out, force)
    lm = load_model(model)
    vp.check_vision_text(lm)
    with writing(out, force) as tmp, progress() as bar:
        results = run(lm, items, what, bar)
        save_into(results, tmp)
    finish(results, out, model, json_out, f"{lm.facts.name}: {title}")
    return results


@heads_app.command("vision-aware")
@image_inputs
def vision_aware(
    model: str = VLM_MODEL_ARGUMENT,
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    inputs: ImageInputs = None,
    steps: int = typer.Option(2, min=1, max=32, help="Positions compared: the prompt's last, then each greedy token."),
    k: int = typer.Option(20, min=1, max=10_000, help="T-VHD: mean of the top-k head VHDs per position."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Vision-aware heads (VHD, He et al. 2025): per head, the distance between its output with and
    without the image for the same text; T-VHD per position; the ranking.

    Example: lens heads vision-aware tiny-vlm --image photo.png --question "What colour is the shape?" --out results/vhd
    """
    from attnlens.pipelines import vlm as vp

    _vlm_heads(model, out, inputs, force, json_out, title="vision-aware heads (VHD)",
               run=lambda lm, items, what, bar: vp.run_vision_aware(lm, items, steps=steps, k=k, what=what,
                                                                    progress=bar))


@heads_app.command("visual-sinks")
@image_inputs
def visual_sinks(
    model: str = VLM_MODEL_ARGUMENT,
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    inputs: ImageInputs = None,
    tau: float = typer.Option(20.0, min=0.0, max=1e6, help="Visual sink: RMS-normalised |h| above tau on a sink dimension."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Visual sinks and image-centric heads (VAR, Kang et al. 2025): the base LM's sink dimensions from
    its massive activations on text, the image tokens that are sinks, and per head the share of text
    queries for which it attends >= 0.2 to the image with <= 0.5 of that on sinks.

    Example: lens heads visual-sinks tiny-vlm --scenes 16 --out results/visual_sinks
    """
    from attnlens.pipelines import vlm as vp

    results = _vlm_heads(model, out, inputs, force, json_out, title="visual sinks and image-centric heads (VAR)",
                         run=lambda lm, items, what, bar: vp.run_visual_sinks(lm, items, tau=tau, what=what,
                                                                              progress=bar))
    if not json_out:
        s = results[0].summary
        say(f"sink dimensions: {s['sink_dims']['dims']}; visual sinks per prompt {s['visual_sinks_per_prompt']} "
            f"(layers {s['layers_with_visual_sinks'][:12]}); commonest: "
            + ", ".join(f"{t} x{n}" for t, n in s["most_frequent_sink_tokens"][:5]))


@heads_app.command("qk")
def qk(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    layer: int = typer.Option(..., "--layer", "-l", help="The head's layer."),
    head: int = typer.Option(..., "--head", help="The head's index in its layer."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    query_pos: int = typer.Option(-1, "--query-pos", help="Query position (-1: the last token)."),
    key_pos: int = typer.Option(None, "--key-pos", help="Key position to explain (default: the head's argmax key)."),
    answer: list[str] = typer.Option(None, "--answer", "-a",
                                     help="A one-token answer the head's OV output is projected on; repeat for several."),
    top: int = typer.Option(10, min=1, max=200, help="Terms printed."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Why a head attends where it does: its pre-softmax score split into query-side x key-side terms
    (embeddings, earlier heads, MLPs, biases; norm scales frozen at this input).

    Example: lens heads qk smollm2-135m --layer 9 --head 5 --prompt "When Mary and John went to the store, John gave a drink to" --answer " Mary" --answer " John" --out results/qk

    Example: lens heads qk tiny-llama --layer 3 --head 1 --prompt "abcabc" --query-pos 5 --key-pos 2 --out results/qk
    """
    from attnlens.pipelines.qk import run_qk

    check_out(out, force)
    lm = load_model(model)
    res = run_qk(lm, prompt, layer, head, query_pos=query_pos, key_pos=key_pos, answers=list(answer or []))
    with writing(out, force) as tmp:
        res.save(tmp)
    k = res.key_pos
    if json_out:
        print_json({"model": model, "out": str(out), "name": res.name, "layer": layer, "head": head,
                    "query_pos": res.query_pos, "key_pos": k, "score": float(res.scores[k]),
                    "attention": float(res.pattern[k]), "top": res.top(top),
                    "ov": {a: float(v) for a, v in zip(res.answers, res.ov.sum(1))}})
        return
    say(f"{lm.facts.name} L{layer}H{head}: query {res.query_pos} {res.tokens[res.query_pos]!r} -> key {k} "
        f"{res.tokens[k]!r}: score {float(res.scores[k]):+.4f} (attention {float(res.pattern[k]):.3f}), "
        f"terms sum to {float(res.terms[k].sum()):+.4f}")
    table = Table(title=Text(f"top {top} terms"), title_justify="left")
    table.add_column("query side x key side")
    table.add_column("score", justify="right")
    for name, v in res.top(top):
        table.add_row(Text(printable(name)), f"{v:+.4f}")
    console.print(table)
    if res.answers:
        say("OV (what the head writes at the query, on each answer's logit): "
            + ", ".join(f"{a!r} {v:+.4f}" for a, v in zip(res.answers, res.ov.sum(1))))
    say(f"results saved to {out.resolve()}")


@heads_app.command("loadings")
def loadings(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    layer: int = typer.Option(..., "--layer", "-l", help="The target head's layer (1 or later)."),
    head: int = typer.Option(..., "--head", help="The target head's index in its layer."),
    file: Path = typer.Option(..., "--file", "-f", help="Prompts, one per line."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    name: str = typer.Option(None, "--name", help="The result's file name (NAME.loadings.json; default LxHy)."),
    top: int = typer.Option(8, min=1, max=200, help="Heads printed per side."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """QK head loadings: which earlier heads' outputs a head's query and key read most, averaged over a
    prompt set (per prompt: the score from the last token to the head's argmax key, split by QK attribution).

    Example: lens heads loadings smollm2-135m --layer 23 --head 3 --file ioi_prompts.txt --out results/loadings

    Example: lens heads loadings tiny-llama --layer 3 --head 1 --file prompts.txt --out results/loadings
    """
    from attnlens.pipelines.qk import run_loadings

    prompts = prompt_lines(file, "file")
    if name is not None and (not name or "/" in name or "\\" in name or name.startswith(".")):
        raise SelectionError(f"--name must be a plain file name, got {name!r}")
    check_out(out, force)
    lm = load_model(model)
    for p in prompts:
        lm.encode(p)
    with progress() as bar:
        res = run_loadings(lm, prompts, layer, head, name=name, progress=bar)
    with writing(out, force) as tmp:
        res.save(tmp)
    if json_out:
        print_json({"model": model, "out": str(out), "name": res.name, "layer": layer, "head": head,
                    "n_prompts": res.n_prompts, "query": res.top("query", top), "key": res.top("key", top)})
        return
    table = Table(title=Text(printable(f"{lm.facts.name} L{layer}H{head}: head loadings over {res.n_prompts} "
                                       "prompts")), title_justify="left")
    for col in ("query side", "loading", "key side", "loading "):
        table.add_column(col, justify="right" if col.startswith("loading") else "left")
    for (qn, qv), (kn, kv) in zip(res.top("query", top), res.top("key", top)):
        table.add_row(qn, f"{qv:+.4f}", kn, f"{kv:+.4f}")
    console.print(table)
    say(f"results saved to {out.resolve()}")


@heads_app.command("dla")
def dla(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    target: list[str] = typer.Option(None, "--target", "-t",
                                     help="A one-token target whose logit is attributed; repeat for several."),
    pos: list[int] = typer.Option(None, "--pos", help="A position to attribute (-1, the default: the last token); "
                                                      "repeat for several."),
    top: int = typer.Option(5, "--top", min=0, max=100, help="The model's top predictions attributed too."),
    name: str = typer.Option("dla", "--name", help="The result's file name (NAME.dla.json)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder (only once the new one is complete)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Direct logit attribution: every head's, MLP's and embedding's direct share of a target's logit
    (the final norm's scale frozen at this input), saved for the dashboard and the report.

    Example: lens heads dla smollm2-135m --prompt "When Mary and John went to the store, John gave a drink to" --target " Mary" --target " John" --out results/dla

    Example: lens heads dla tiny-llama --prompt "abcabc" --pos -1 --pos 2 --top 3 --out results/dla
    """
    from attnlens.pipelines.dla import run_dla

    check_out(out, force)
    lm = load_model(model)
    res = run_dla(lm, prompt, list(target or []), positions=list(pos or [-1]), top=top, name=name)
    with writing(out, force) as tmp:
        res.save(tmp)
    if json_out:
        print_json({"model": model, "out": str(out), "name": res.name, "positions": res.positions,
                    "targets": res.targets, "logits": res.logits.tolist(),
                    "top": {t: res.top(10, res.positions[0], j) for j, t in enumerate(res.targets)}})
        return
    p = res.positions[0]
    table = Table(title=Text(printable(f"{lm.facts.name}: direct logit attribution at position {p} "
                                       f"{res.tokens[p]!r}")), title_justify="left")
    for col in ("target", "logit", "parts sum", "top parts"):
        table.add_column(col, justify="right" if col in ("logit", "parts sum") else "left")
    totals = res.totals()
    for j, t in enumerate(res.targets):
        tops = ", ".join(f"{k} {v:+.3f}" for k, v in res.top(4, p, j))
        table.add_row(Text(printable(repr(t)) + ("" if j < res.n_given else " (top)")), f"{res.logits[0, j]:+.4f}",
                      f"{totals[0, j]:+.4f}", Text(printable(tops)))
    console.print(table)
    say(f"{res.linearisation}; results saved to {out.resolve()}")
