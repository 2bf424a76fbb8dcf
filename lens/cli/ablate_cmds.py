"""`lens ablate` (head/MLP ablation, resumable sweeps) and `lens circuit` (EAP, EAP-IG, patching);
the workflows are :mod:`pipelines.sweeps` and :mod:`pipelines.circuits`."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from attnlens.formats.errors import SelectionError
from attnlens.formats.vocab import (
    Ablated,
    CircuitMethod,
    Level,
    MeanOver,
    Method,
    Metric,
    Replacement,
    SweepKind,
    Unit,
)
from lens.cli import app
from lens.cli._common import (
    MODEL_HELP,
    check_out,
    executor,
    int_list,
    load_model,
    print_json,
    progress,
    say,
    writing,
)
from lens.cli._options import PlacementGroup, RayGroup, placement_options, ray_options

TASK_HELP = "ioi, colored-objects, greater-than, niah, or a UTF-8 .jsonl file (prompt, answer, corrupted, distractor)."


def _task(lm, task: str, n_prompts: int, seed: int, batch_size: int, strict: bool, template=None, templates=None):
    from attnlens.analyses.circuits.tasks import encode_task, load_task

    t = load_task(task, lm.tokenizer, n=n_prompts, seed=seed, strict=strict, template=template, templates=templates)
    enc = encode_task(t, lm.tokenizer, max_batch=batch_size, skip_bad=not strict)
    for why in enc.skipped[:10]:
        say(f"skipped {why}", "yellow")
    if len(enc.skipped) > 10:
        say(f"... and {len(enc.skipped) - 10} more skipped", "yellow")
    return enc


def _components(lm, heads: str | None, mlps: str | None):
    from lens.heads import MlpRef, parse_head_spec, parse_layer_list

    comps = list(parse_head_spec(heads, lm.facts)) if heads else []
    comps += [MlpRef(layer) for layer in parse_layer_list(mlps, lm.facts)] if mlps else []
    return comps


def _check_task_file(task: str, *, template: int | None = None, templates: str | None = None,
                     strict: bool = False) -> None:
    """Refuse, before any model loads, a task that is neither built in nor a readable task file
    (parsed here, so a bad file fails in seconds), and IOI-only options (``--template``,
    ``--templates``) given with another task."""
    from attnlens.analyses.circuits.tasks import TASK_NAMES, TaskError, load_jsonl

    if task not in TASK_NAMES and not Path(task).is_file():
        raise TaskError(f"unknown task {task!r}: use one of {', '.join(TASK_NAMES)} or a .jsonl file")
    if task not in TASK_NAMES:
        load_jsonl(task, strict=strict)
    for flag, value in (("--template", template), ("--templates", templates)):
        if value is not None and task != "ioi":
            what = "the task file" if task not in TASK_NAMES else "the task"
            raise SelectionError(f"{flag} applies to the ioi task only: {what} {task!r} has no templates")


def _builtin_tasks() -> tuple[str, ...]:
    from attnlens.analyses.circuits.tasks import TASK_NAMES

    return tuple(TASK_NAMES)


def _check_strict(strict: bool, *tasks: str | None) -> None:
    from attnlens.analyses.circuits.tasks import TASK_NAMES

    if strict and all(t is None or t in TASK_NAMES for t in tasks):
        raise SelectionError("--strict applies to a .jsonl task file (a bad line fails the run instead of being "
                             f"skipped); the built-in task {tasks[0]!r} has no lines to check")


def _task_digest(task: str) -> str | None:
    """SHA-256 of a task file's bytes (None for a built-in task): a resumed sweep must run on the same file."""
    import hashlib

    from attnlens.analyses.circuits.tasks import TASK_NAMES

    if task in TASK_NAMES:
        return None
    h = hashlib.sha256()
    try:
        with open(task, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        from attnlens.analyses.circuits.tasks import TaskError

        raise TaskError(f"task file {task} cannot be read: {err.strerror or err}") from None
    return h.hexdigest()


@app.command("ablate")
@ray_options
@placement_options
def ablate(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    task: str = typer.Option("ioi", "--task", "-t", help=TASK_HELP),
    heads: str = typer.Option(None, "--heads", help="Heads to ablate: 'L3H4,L5H*', 'L*H0', 'L2-4H0-1', 'all'."),
    mlps: str = typer.Option(None, "--mlps", help="MLP layers to ablate: '3,5-7'."),
    method: Method = typer.Option(Method.MEAN, "--method", "-m",
                                          help="What replaces a component (patch: its corrupted-prompt activation)."),
    metric: Metric = typer.Option(Metric.LOGIT_DIFF, "--metric", help="Task metric read at the last position."),
    sweep: SweepKind = typer.Option(None, "--sweep", help="heads: every head (or --heads) one at a time; layers: each "
                                "layer's heads together and its MLP."),
    compare_random: int = typer.Option(0, "--compare-random", min=0, max=10_000,
                                       help="Also ablate K random head sets of the same size."),
    seeds: str = typer.Option("0", "--seeds", help="Seeds for random sets and resampling, e.g. '0,1,2'."),
    n_prompts: int = typer.Option(64, "--n-prompts", "-n", min=1, max=100_000, help="Prompts generated (or read)."),
    template: int = typer.Option(None, "--template", min=0, help="IOI only: use this one template (0-5), so all "
                                 "prompts share one length and batch best; default all templates."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=4096, help="Prompts per forward."),
    max_rows: int = typer.Option(64, "--max-rows", min=1, max=65_536, help="Rows per forward when batching ablations."),
    strict: bool = typer.Option(False, "--strict", help="Fail on a bad JSONL line instead of skipping it."),
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (sweeps: default results/ablate-TASK-SWEEP)."),
    force: bool = typer.Option(False, "--force", help="Replace --out (only once the new run is complete); without it a "
                               "finished or different run is refused and an unfinished sweep with the same settings resumes."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
    cluster: RayGroup = None,
    place: PlacementGroup = None,
) -> None:
    """Ablate heads (and MLPs) of MODEL on a task and report the metric change.

    Examples:

      lens ablate smollm2-135m --task ioi --heads "L3H4,L5H*" --method mean

      lens ablate smollm2-135m --task ioi --heads "L22H*" --compare-random 20 --seeds 0,1

      lens ablate smollm2-135m --task ioi --sweep heads --n-prompts 16 --out results/ioi-sweep

    (run the last one again after an interruption: it resumes where it stopped, also with
    or without --ray)

      lens ablate smollm2-135m --task ioi --sweep heads --ray auto --workers 2 --out results/ioi-sweep
    """
    from attnlens.pipelines import sweeps

    seed_list = int_list(seeds, "seeds", max_count=1000, default=[0])
    if sweep is None and not (heads or mlps):
        raise SelectionError("give --heads and/or --mlps to ablate, or --sweep heads|layers")
    if sweep is not None and compare_random:
        raise SelectionError("--compare-random applies to one set of --heads, not to a --sweep")
    if compare_random and not heads:
        raise SelectionError("--compare-random draws random head sets the size of --heads: give --heads")
    if len(seed_list) > 1 and not compare_random:
        raise SelectionError(f"--seeds {seeds!r} names {len(seed_list)} seeds, but only --compare-random uses more "
                             "than one (random sets per seed): give one seed, or add --compare-random K")
    _check_task_file(task, template=template, strict=strict)
    _check_strict(strict, task)
    load_kw = place.load_kwargs()
    ray_opts = cluster.options()
    if ray_opts is not None and sweep is None:
        raise SelectionError("--ray runs the items of a --sweep: add --sweep heads|layers")
    if sweep is None and out is not None:
        check_out(out, force)
    task_sha256 = _task_digest(task) if sweep is not None else None  # the file as it is when the run starts
    lm = load_model(model, **load_kw)
    comps = _components(lm, heads, mlps)
    enc = _task(lm, task, n_prompts, seed_list[0], batch_size, strict, template)
    if sweep is not None:
        settings = dict(model=model, task=task, method=method.value, metric=metric.value, sweep=sweep.value, heads=heads,
                        mlps=mlps, n_prompts=n_prompts, seed=seed_list[0], template=template, n_examples=enc.n_examples,
                        task_sha256=task_sha256)
        target = out or Path(f"results/ablate-{Path(task).stem}-{sweep.value}")
        with executor(lm, model, ray_opts, load_kw) as ex, progress() as bar:
            outcome = sweeps.sweep(lm, enc, sweep, out=target, settings=settings, method=method,
                                   metric=metric, components=comps, seed=seed_list[0], max_rows=max_rows, force=force,
                                   progress=bar, executor=ex)
        summary = outcome.result.summary
        if json_out:
            print_json({"out": str(outcome.folder), **summary})
            return
        if outcome.resumed_from:
            say(f"resumed {target}: {outcome.resumed_from} item(s) were already done")
        say(f"baseline {metric.value} {summary['baseline']:.3f}; largest drops: "
            + ", ".join(f"{r['item']} {r['effect']:+.3f}" for r in summary["top"][:5]))
        say(f"{outcome.computed} item(s) in {outcome.seconds:.1f} s; results in {outcome.folder.resolve()}")
        return
    with progress() as bar:
        result = sweeps.ablate_set(lm, enc, comps, method=method, metric=metric, seeds=seed_list,
                                   compare_random=compare_random, max_rows=max_rows, task_name=task, progress=bar)
    if out is not None:
        with writing(out, force) as tmp:
            result.save(tmp)
    doc = {"model": model, "task": task, "method": method.value, "metric": metric.value, "n_examples": enc.n_examples,
           "skipped": len(enc.skipped), "components": [str(c) for c in comps], "baseline": result.baseline,
           "ablated": result.ablated, "effect": result.effect, "seconds": result.seconds}
    if compare_random:
        import numpy as np

        r = np.asarray(result.random_effects)
        doc["random"] = {"k": len(r), "seeds": seed_list, "effect_mean": float(r.mean()), "effect_std": float(r.std()),
                         "share_with_larger_drop": result.share_of_random_with_larger_drop}
    if json_out:
        print_json(doc)
        return
    say(f"{task} on {model} ({enc.n_examples} prompts), {metric.value}: baseline {result.baseline:.3f}, "
        f"{method.value}-ablating {len(comps)} component(s): {result.ablated:.3f} (effect {result.effect:+.3f})")
    if "random" in doc:
        rr = doc["random"]
        say(f"random sets of the same size (k={rr['k']}): effect {rr['effect_mean']:+.3f} ± {rr['effect_std']:.3f}; "
            f"share of random sets with an equal or larger drop: {rr['share_with_larger_drop']:.2f}")


# `lens circuit --help` groups its options in these panels
_P_TASK_AND_PROMPTS = "Task and prompts"
_P_SCORING_AND_SELECTION = "Scoring and selection"
_P_FAITHFULNESS = "Faithfulness"
_P_COMPARISONS = "Comparisons"
_P_BATCHING = "Batching"
_P_OUTPUT = "Output"


@app.command("circuit")
@ray_options
@placement_options
def circuit(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    task: str = typer.Option("ioi", "--task", "-t", rich_help_panel=_P_TASK_AND_PROMPTS, help=TASK_HELP),
    method: CircuitMethod = typer.Option(CircuitMethod.EAP_IG, "--method", "-m",
                                             rich_help_panel=_P_SCORING_AND_SELECTION,
                                             help="Edge attribution (eap, eap-ig), per-head activation patching, or "
                                             "discrete sparse autoencoders on head outputs (sae; O'Neill & Bui 2024)."),
    metric: Metric = typer.Option(Metric.LOGIT_DIFF, "--metric", rich_help_panel=_P_SCORING_AND_SELECTION, help="Task metric (acc: patching only)."),
    ig_steps: int = typer.Option(None, "--ig-steps", min=1, max=1000, rich_help_panel=_P_SCORING_AND_SELECTION, help="Interpolation steps for eap-ig (default 5)."),
    top_n: int = typer.Option(None, "--top-n", min=1, max=10_000_000,
                              rich_help_panel=_P_SCORING_AND_SELECTION, help="Edges to keep (eap, eap-ig; default 100) or heads/MLPs (patching; default 20)."),
    unit: Unit = typer.Option(None, "--unit", rich_help_panel=_P_SCORING_AND_SELECTION, help="eap, eap-ig: an edge circuit (top-n edges; the default) or a "
                                  "head circuit (top-n heads by node score, like patching)."),
    threshold: float = typer.Option(None, "--threshold", rich_help_panel=_P_SCORING_AND_SELECTION, help="Keep edges with |score| >= this instead of --top-n."),
    compare_patching: bool = typer.Option(False, "--compare-patching", rich_help_panel=_P_COMPARISONS, help="Also run the per-head patching loop on "
                                          "the same prompts: Spearman correlation and time ratio."),
    overlap_task: str = typer.Option(None, "--overlap-task", rich_help_panel=_P_COMPARISONS, help="Find the circuit of this task too and report the "
                                     "overlap, against random circuits of the same size."),
    level: Level = typer.Option(None, "--level", rich_help_panel=_P_FAITHFULNESS, help="Faithfulness: ablate edges (each receiver reads its own "
                                    "input) or nodes outside the circuit. Default: the published setting (edge circuits: "
                                    "edge, Hanna et al. 2024; head circuits: node, Wang et al. 2022)."),
    replacement: Replacement = typer.Option(None, "--replacement", rich_help_panel=_P_FAITHFULNESS, help="What replaces what is ablated: the paired "
                                                "corrupted activation or the mean over corrupted prompts. Default: "
                                                "published (edge: corrupted; heads: mean)."),
    ablate_what: Ablated = typer.Option(None, "--ablate", rich_help_panel=_P_FAITHFULNESS, help="What is ablated outside the circuit: heads only "
                                            "(MLPs kept, Wang et al.) or heads and MLPs (Hanna et al.). Default: "
                                            "published."),
    mean_over: MeanOver = typer.Option(None, "--mean-over", rich_help_panel=_P_FAITHFULNESS, help="Mean references per template (default), per "
                                           "token length whatever the template (misaligned), or per encoded batch."),
    curve: bool = typer.Option(False, "--curve", rich_help_panel=_P_FAITHFULNESS, help="Faithfulness against circuit size for every ranking computed "
                               "(edges 50-5000, heads 5-60) and the smallest size reaching 0.8."),
    edge_sizes: str = typer.Option(None, "--edge-sizes", rich_help_panel=_P_FAITHFULNESS, help="Edge counts of the curve, e.g. '50,100,500'."),
    head_sizes: str = typer.Option(None, "--head-sizes", rich_help_panel=_P_FAITHFULNESS, help="Head counts of the curve, e.g. '5,10,30'."),
    eval_prompts: int = typer.Option(0, "--eval-prompts", min=0, max=100_000, rich_help_panel=_P_TASK_AND_PROMPTS, help="Measure faithfulness on this many "
                                     "other prompts (seed + 1) instead of the prompts the circuit was found on."),
    settings_table: bool = typer.Option(False, "--settings-table", rich_help_panel=_P_FAITHFULNESS, help="Also report the circuit's faithfulness under "
                                        "each ablation setting."),
    random_circuits: int = typer.Option(None, "--random-circuits", min=1, max=1_000_000,
                                        rich_help_panel=_P_COMPARISONS, help="Random circuits of the same size for the "
                                        "--overlap-task baseline (default 1000)."),
    patch_mlps: bool = typer.Option(None, "--patch-mlps/--no-patch-mlps", rich_help_panel=_P_SCORING_AND_SELECTION,
                                    help="Per-head patching also patches each MLP (default: yes)."),
    patching_scores: Path = typer.Option(None, "--patching-scores", exists=True, dir_okay=False,
                                         rich_help_panel=_P_COMPARISONS, help="With --compare-patching: per-head patching scores of an earlier run on "
                                         "the same prompts (circuit.TASK_patching_METRIC.json) instead of a new loop."),
    sae_examples: int = typer.Option(None, "--sae-examples", min=1, max=10_000, rich_help_panel=_P_SCORING_AND_SELECTION,
                                     help="sae: positive (clean) prompts, and as many negative (corrupted) ones, the "
                                     "SAEs train on (default 10)."),
    sae_codes: int = typer.Option(None, "--sae-codes", min=2, max=4096, rich_help_panel=_P_SCORING_AND_SELECTION,
                                  help="sae: latents per head SAE (default 16)."),
    sae_steps: int = typer.Option(None, "--sae-steps", min=1, max=100_000, rich_help_panel=_P_SCORING_AND_SELECTION,
                                  help="sae: training steps (default 300)."),
    n_prompts: int = typer.Option(32, "--n-prompts", "-n", min=1, max=100_000, rich_help_panel=_P_TASK_AND_PROMPTS, help="Prompts generated (or read)."),
    template: int = typer.Option(None, "--template", min=0, rich_help_panel=_P_TASK_AND_PROMPTS, help="IOI only: use this one template (0-5); default "
                                 "templates 0-4 (5 is left out: SmolLM2 does not solve it)."),
    seed: int = typer.Option(0, "--seed", min=0, rich_help_panel=_P_TASK_AND_PROMPTS, help="Prompt generation seed."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=4096, rich_help_panel=_P_BATCHING, help="Prompts per forward."),
    max_rows: int = typer.Option(64, "--max-rows", min=1, max=65_536, rich_help_panel=_P_BATCHING, help="Rows per forward when batching patching runs."),
    strict: bool = typer.Option(False, "--strict", rich_help_panel=_P_TASK_AND_PROMPTS, help="Fail on a bad JSONL line instead of skipping it."),
    out: Path = typer.Option(Path("results/circuit"), "--out", "-o", rich_help_panel=_P_OUTPUT, help="Results folder."),
    force: bool = typer.Option(False, "--force", rich_help_panel=_P_OUTPUT, help="Replace a non-empty --out folder (only once the new one is complete)."),
    json_out: bool = typer.Option(False, "--json", rich_help_panel=_P_OUTPUT, help="Print machine-readable JSON on stdout."),
    cluster: RayGroup = None,
    place: PlacementGroup = None,
) -> None:
    """Find the circuit of a task on MODEL: score edges (EAP, EAP-IG) or heads (patching), select, check faithfulness.

    Examples:

      lens circuit smollm2-135m --task ioi --method eap-ig --top-n 200 --out results/ioi-circuit

      lens circuit smollm2-135m --task ioi --method eap --compare-patching -n 16

      lens circuit smollm2-135m --task ioi --overlap-task colored-objects --force

      lens circuit smollm2-135m --task ioi --method sae --sae-examples 10 --top-n 30
    """
    from attnlens.pipelines.circuits import circuit_study, resolve_setting

    if top_n is not None and threshold is not None:
        raise SelectionError("give one of --top-n and --threshold, not both")
    if threshold is not None and (not math.isfinite(threshold) or threshold < 0):
        raise SelectionError(f"--threshold must be a finite number >= 0, got {threshold}")
    if metric is Metric.ACC and method is not CircuitMethod.PATCHING:
        raise SelectionError("--metric acc is not differentiable: use it with --method patching only")
    is_sae = method is CircuitMethod.SAE
    patching_runs = method is CircuitMethod.PATCHING or compare_patching
    unused = [
        ("--edge-sizes", edge_sizes is not None and not curve, "sets the sizes of the faithfulness curve: add --curve"),
        ("--head-sizes", head_sizes is not None and not curve, "sets the sizes of the faithfulness curve: add --curve"),
        ("--ig-steps", ig_steps is not None and method is not CircuitMethod.EAP_IG and not compare_patching,
         "applies to --method eap-ig (or --compare-patching, which runs it too)"),
        ("--threshold", threshold is not None and (method in (CircuitMethod.PATCHING, CircuitMethod.SAE)
                                                   or unit is Unit.HEADS),
         "selects edges by score: use it with --method eap or eap-ig and --unit edges (a head circuit takes --top-n)"),
        ("--unit", unit is not None and method in (CircuitMethod.PATCHING, CircuitMethod.SAE),
         "applies to eap and eap-ig: per-head patching and sae always find a head circuit"),
        ("--sae-examples", sae_examples is not None and not is_sae, "applies to --method sae"),
        ("--sae-codes", sae_codes is not None and not is_sae, "applies to --method sae"),
        ("--sae-steps", sae_steps is not None and not is_sae, "applies to --method sae"),
        ("--patching-scores", patching_scores is not None and not compare_patching,
         "replaces the patching loop of --compare-patching: add --compare-patching"),
        ("--random-circuits", random_circuits is not None and not overlap_task,
         "is the baseline of --overlap-task: add --overlap-task TASK"),
        ("--patch-mlps/--no-patch-mlps", patch_mlps is not None and not patching_runs,
         "applies to per-head patching: use it with --method patching or --compare-patching"),
    ]
    for flag, given, why in unused:
        if given:
            raise SelectionError(f"{flag} does nothing here: it {why}")
    _check_task_file(task, template=template, strict=strict)
    if overlap_task:
        _check_task_file(overlap_task, strict=strict)
    _check_strict(strict, task, overlap_task)
    if eval_prompts and task not in _builtin_tasks():
        raise SelectionError(f"--eval-prompts draws other prompts with seed + 1, which the task file {task!r} cannot: "
                             "its first lines would come back, the very prompts the circuit was found on")
    ig_steps = 5 if ig_steps is None else ig_steps
    unit = unit or Unit.EDGES
    random_circuits = 1000 if random_circuits is None else random_circuits
    patch_mlps = True if patch_mlps is None else patch_mlps
    load_kw = place.load_kwargs()
    ray_opts = cluster.options()
    if load_kw and (method is not CircuitMethod.PATCHING or compare_patching or curve or settings_table):
        raise SelectionError("--device-map works with --method patching only, without --curve and --settings-table: "
                             "EAP, EAP-IG and edge-level evaluation read the projection weights directly, which a "
                             "split model keeps on disk or other devices")
    if ray_opts is not None and method is not CircuitMethod.PATCHING and not compare_patching:
        raise SelectionError("--ray runs the per-component patching loop: use it with --method patching or "
                             "--compare-patching")
    e_sizes = int_list(edge_sizes, "edge-sizes", lo=1, max_count=64) if edge_sizes else None
    h_sizes = int_list(head_sizes, "head-sizes", lo=1, max_count=64) if head_sizes else None
    sae_config = None
    if is_sae:
        from attnlens.analyses.circuits.discrete_sae import SAEConfig

        defaults = SAEConfig()
        sae_config = SAEConfig(n_codes=sae_codes or defaults.n_codes, steps=sae_steps or defaults.steps, seed=seed)
    setting = resolve_setting(method, level=level, replacement=replacement, ablated=ablate_what, mean_over=mean_over)
    check_out(out, force)
    lm = load_model(model, **load_kw)
    enc = _task(lm, task, n_prompts, seed, batch_size, strict, template)
    eval_enc = _task(lm, task, eval_prompts, seed + 1, batch_size, strict, template) if eval_prompts else None
    other = _task(lm, overlap_task, n_prompts, seed, batch_size, strict) if overlap_task else None
    patching = None
    if patching_scores is not None:
        from attnlens.pipelines.circuits import load_patching

        patching = load_patching(patching_scores, lm.facts)
    with executor(lm, model, ray_opts, load_kw) as ex, writing(out, force) as tmp, progress() as bar:
        study = circuit_study(lm, enc, task_name=Path(task).stem, method=method, metric=metric, patching=patching,
                              ig_steps=ig_steps, top_n=top_n, threshold=threshold, compare_patching=compare_patching,
                              overlap_enc=other, overlap_name=Path(overlap_task).stem if overlap_task else "",
                              max_rows=max_rows, seed=seed, setting=setting, curves=curve, eval_enc=eval_enc,
                              edge_sizes=e_sizes, head_sizes=h_sizes, settings_table=settings_table,
                              random_circuits=random_circuits, patch_mlps=patch_mlps, unit=unit,
                              progress=bar, executor=ex if ex.distributed else None,
                              sae_examples=sae_examples or 10, sae_config=sae_config)
        study.save(tmp)
    c = study.circuit
    from attnlens.formats import faithfulness_warning

    warning = faithfulness_warning(c, study.curves)
    if json_out:
        print_json(c.to_json() | {"out": str(out), "warning": warning})
        return
    f = c.faithfulness
    say(f"{task}: full {metric.value} {f['full']:.3f}; circuit ({f['n_heads']} heads, {f['n_mlps']} MLPs, "
        f"{f['n_edges']} edges) {f['circuit']:.3f} -> faithfulness {f['faithfulness']:.2f} "
        f"(normalized {f['normalized_faithfulness']:.2f}, all ablated: {f['empty']:.3f}; setting {f['setting']}: "
        f"{f['level']}-level, {f['replacement']}, ablating {f['ablated']}); {method.value} took "
        f"{c.details['seconds']:.1f} s")
    for cv in study.curves:
        reach = ", ".join(f"{k} {'-' if v is None else int(v)}" for k, v in cv.summary["smallest_reaching"].items())
        say(f"{cv.x_label}: smallest reaching faithfulness {cv.summary['threshold']}: {reach} "
            f"(sizes {', '.join(str(int(x)) for x in cv.x)}; {cv.params.get('setting')})")
    if warning:
        say(f"warning: {warning}", "bold yellow")
    for row in c.details.get("settings", []):
        say(f"  setting {row['setting']:<30} faithfulness {row['faithfulness']:.2f} (normalized "
            f"{row['normalized_faithfulness']:.2f})")
    if "vs_patching" in c.details:
        v = c.details["vs_patching"]
        for name in (m.value for m in CircuitMethod if m.value in v):
            pr = next(x for k, x in v[name].items() if k.endswith("_heads_vs_patching"))
            say(f"{name} vs per-head patching: Spearman {v[name]['spearman']:.2f}; top {pr['found']} heads: precision "
                f"{pr['precision']:.2f}, recall {pr['recall']:.2f}; patching loop {v['seconds_patching_loop']:.1f} s vs "
                f"{v[name]['seconds']:.1f} s ({v[name]['speedup']:.0f}x)")
    if "sae" in c.details:
        top = ", ".join(f"{e['sender']}->{e['receiver']} ({e['score']:.0f})" for e in c.details["sae"]["top_edges"][:5])
        say(f"sae head pairs with the most unique positive code pairs: {top or 'none'}")
    if "overlap" in c.details:
        o = c.details["overlap"]
        say(f"overlap with {overlap_task}: {len(o['shared_heads'])} shared heads (Jaccard {o['heads_jaccard']:.2f}, "
            f"{o['share_of_a_heads_in_b']:.0%} of {task}'s heads), edges Jaccard {o['edges_jaccard']:.2f}")
        rb = o["random_baseline"]
        for kind in ("uniform", "layer_matched"):
            sh = rb[kind]["share_of_a_heads"]
            say(f"  random circuits of the same size ({kind}, n={rb['n_random']}): share of {task}'s heads "
                f"{sh['random_mean']:.0%} (95th pct {sh['random_p95']:.0%}), p = {sh['p_value']:.3f}")
    say(f"results in {out.resolve()}")
