"""Ablation studies: one set of components against random sets of the same size, and
resumable sweeps (every head alone, or each layer's attention and MLP).

:func:`ablate_set` returns an :class:`~formats.AblationResult`. :func:`sweep` writes as it
goes into a sweep folder (:func:`formats.open_sweep`: locked, resumable, a forced rerun
swapped in only when complete) and ends with its result files there: per-head effects as
:class:`~formats.HeadScores` (``--sweep heads``) or per-layer curves as
:class:`~formats.Curves` (``--sweep layers``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnlens.formats.ablation import AblationResult
from attnlens.formats.curves import Curves
from attnlens.formats.errors import SelectionError
from attnlens.formats.head_scores import HeadScores
from attnlens.formats.provenance import Provenance, inputs_digest
from attnlens.formats.sweep import open_sweep
from attnlens.formats.vocab import SweepKind
from attnlens.pipelines.executors import Executor, Job, SerialExecutor
from attnlens.pipelines.progress import SILENT, Progress
from lens.heads import HeadRef, MlpRef


def _split(components) -> tuple[list[tuple[int, int]], list[int]]:
    return ([(c.layer, c.head) for c in components if isinstance(c, HeadRef)],
            [c.layer for c in components if isinstance(c, MlpRef)])


def ablate_set(lm, enc, components: Sequence, *, method, metric, seeds: Sequence[int] = (0,), compare_random: int = 0,
               max_rows: int = 64, task_name: str = "", progress: Progress = SILENT) -> AblationResult:
    """The metric with ``components`` ablated, and (``compare_random`` > 0) with that many random
    head sets of the same size per seed."""
    from attnlens.analyses.circuits import prepare, random_sets, score_sets
    from attnlens.analyses.circuits.ablation import all_heads

    heads, mlps = _split(components)
    if compare_random and not heads:
        raise SelectionError("comparing with random sets needs heads (random sets are drawn from heads)")
    t0 = time.perf_counter()
    task = progress.task("reference runs and ablation", total=1 + len(seeds) * bool(compare_random))
    ctx = prepare(lm, enc, method, metric, seed=seeds[0])
    value = float(score_sets(ctx, [list(components)], max_rows=max_rows)[0])
    task.advance()
    rand = []
    if compare_random:
        for s in seeds:
            ctx_s = ctx if s == seeds[0] else prepare(lm, enc, method, metric, seed=s)
            sets = random_sets(all_heads(lm.facts), len(heads), compare_random, s)
            rand.extend(float(v) - ctx.baseline for v in score_sets(ctx_s, sets, max_rows=max_rows))
            task.advance()
    prov = Provenance.for_model(lm.facts, seeds=tuple(seeds), prompts=f"{enc.n_examples} {task_name} prompts",
                                inputs=[b.clean.tolist() for b in enc.batches])
    return AblationResult(task=task_name, method=ctx.method.value, metric=ctx.metric.value, heads=heads, mlps=mlps,
                          baseline=ctx.baseline, ablated=value, n_examples=enc.n_examples, provenance=prov,
                          random_effects=rand, random_seeds=list(seeds) if compare_random else [],
                          params={"compare_random": compare_random, "skipped": len(enc.skipped)},
                          seconds=time.perf_counter() - t0)


@dataclass
class SweepOutcome:
    folder: Path
    result: HeadScores | Curves
    computed: int  # items computed in this run
    resumed_from: int  # items already done before it
    seconds: float


def sweep_items(facts, kind: SweepKind, components: Sequence = ()) -> list[tuple[str, list]]:
    """The named component sets a sweep ablates, in order."""
    from attnlens.analyses.circuits.ablation import all_heads

    if kind is SweepKind.HEADS:
        items = [c for c in components if isinstance(c, HeadRef)] or all_heads(facts)
        items += [c for c in components if isinstance(c, MlpRef)]
        return [(str(c), [c]) for c in items]
    named = []
    for layer in range(facts.n_layers):
        named.append((f"L{layer}.attn", [HeadRef(layer, h) for h in range(facts.n_heads)]))
        named.append((str(MlpRef(layer)), [MlpRef(layer)]))
    return named


@dataclass
class Scoring:
    """A worker's state for scoring ablation sets: the prepared task (:class:`analyses.circuits.Context`)."""

    ctx: object
    max_rows: int
    score: Callable


def _prepare_scoring(lm, enc, method, metric, seed: int, max_rows: int, score: Callable | None) -> Scoring:
    import attnlens.analyses.circuits as circuits

    return Scoring(circuits.prepare(lm, enc, method, metric, seed=seed), max_rows, score or circuits.score_sets)


def _score_chunk(state: Scoring, sets: list) -> tuple[np.ndarray, float, float]:
    """``(metric per set, baseline, seconds)``; an empty chunk gives just the baseline."""
    t0 = time.perf_counter()
    values = state.score(state.ctx, sets, max_rows=state.max_rows) if sets else np.zeros(0)
    return np.asarray(values, dtype=np.float64), float(state.ctx.baseline), time.perf_counter() - t0


def scoring_job(enc, method, metric, *, seed: int = 0, max_rows: int = 64, score: Callable | None = None) -> Job:
    """A :class:`~pipelines.executors.Job` whose items are lists of component sets and whose
    results are ``(metric per set, clean baseline, seconds)``: each worker prepares the task
    once (clean and reference passes) and scores many chunks. ``score`` replaces
    :func:`analyses.circuits.score_sets` (tests inject failures with it)."""
    return Job(work=_score_chunk, setup=_prepare_scoring, setup_args=(enc, method, metric, seed, max_rows, score))


def sweep_fingerprint(lm, enc, named: Sequence[tuple[str, list]]) -> dict[str, str | None]:
    """What a resumed sweep must share with the run it continues, beyond the caller's settings:
    a digest of every encoded example (clean and corrupted token ids, answer, distractor,
    template group), one of the item list, and the model's weights. A task file edited between
    runs, other prompts or another checkpoint under the same name change it, so the sweep is
    refused instead of mixing items computed on different inputs. Examples are hashed one by
    one, so the batch size does not count."""
    examples = []
    for b in enc.batches:
        for i in range(b.size):
            examples.append((b.group, b.clean[i].tolist(), b.corrupted[i].tolist(), int(b.answer[i]),
                             int(b.distractor[i])))
    return {"inputs_sha256": inputs_digest(examples), "items_sha256": inputs_digest(n for n, _ in named),
            "weights_sha256": getattr(lm.facts, "weights_sha256", None)}


def sweep(lm, enc, kind: SweepKind, *, out: str | Path, settings: dict, method, metric, components: Sequence = (),
          seed: int = 0, max_rows: int = 64, force: bool = False, progress: Progress = SILENT,
          score: Callable | None = None, executor: Executor | None = None) -> SweepOutcome:
    """Ablate each item alone and log it; resumes an interrupted sweep with the same settings.

    Items run in chunks of ``max_rows // batch`` sets on ``executor`` (default: this process);
    each chunk is logged as it comes back, so nothing finished is lost or redone.
    ``score`` replaces :func:`analyses.circuits.score_sets` (tests interrupt it).
    """
    from attnlens.analyses.circuits import Method, Metric

    executor = executor or SerialExecutor(lm)
    facts = lm.facts
    named = sweep_items(facts, kind, components)
    m, me = Method(method).value, Metric(metric).value
    settings = {**settings, **sweep_fingerprint(lm, enc, named)}
    with open_sweep(out, settings, force=force) as log:
        todo = [(n, s) for n, s in named if n not in log.done]
        t0 = time.perf_counter()
        per_chunk = max(1, max_rows // max(b.size for b in enc.batches))
        chunks = [todo[s:s + per_chunk] for s in range(0, len(todo), per_chunk)]
        task = progress.task(f"{m}-ablating {kind.value}" + ("" if not executor.distributed else
                             f" on {executor.workers} Ray workers"), total=len(named), completed=len(named) - len(todo))
        job = scoring_job(enc, method, metric, seed=seed, max_rows=max_rows, score=score)
        baseline = next((r["baseline"] for r in log.done.values() if "baseline" in r), None)
        items = [[c for _, c in ch] for ch in chunks]
        if not items and baseline is None:  # all done by a run that did not log the baseline: ask for it alone
            items = [[]]
        for i, (values, base, secs) in executor.map(job, items):
            baseline = base
            if not chunks:
                break
            chunk = chunks[i]
            each = secs / len(chunk)  # so that interrupted runs still add up
            log.append([{"item": n, "metric": float(v), "effect": float(v) - base, "baseline": base, "seconds": each}
                        for (n, _), v in zip(chunk, values)])
            task.advance(len(chunk))
        seconds = time.perf_counter() - t0
        rows = [log.done[n] for n, _ in named]
        summary = {"baseline": baseline, "n_items": len(rows), "done_before_this_run": len(named) - len(todo),
                   "computed_this_run": len(todo), "seconds_this_run": seconds,
                   "seconds_all_items": sum(r.get("seconds", float("nan")) for r in rows),
                   "top": sorted(rows, key=lambda r: r["effect"])[:10]}
        prov = Provenance.for_model(facts, seeds=(seed,), prompts=f"{enc.n_examples} {settings.get('task', '')} prompts",
                                    inputs=[b.clean.tolist() for b in enc.batches])
        if executor.distributed:
            summary["executor"] = executor.describe()
        if kind is SweepKind.HEADS:
            scores = np.full((facts.n_layers, facts.n_heads), np.nan)
            mlp = np.full(facts.n_layers, np.nan)
            for (_, c), r in zip(named, rows):
                if isinstance(c[0], HeadRef):
                    scores[c[0].layer, c[0].head] = r["effect"]
                else:
                    mlp[c[0].layer] = r["effect"]
            result = HeadScores("ablation", f"{m}_{me}", scores, prov, params=settings, summary=summary,
                                description=f"{me} change when the head is {m}-ablated alone (negative: the head helps)",
                                arrays={"mlp_effect": mlp} if np.isfinite(mlp).any() else {}, scale="signed")
        else:
            effects = {n: r["effect"] for (n, _), r in zip(named, rows)}
            result = Curves("ablation", f"{m}_{me}_layers", x=np.arange(facts.n_layers),
                            series={"attention (all heads)": [effects[f"L{la}.attn"] for la in range(facts.n_layers)],
                                    "MLP": [effects[f"L{la}.mlp"] for la in range(facts.n_layers)]},
                            provenance=prov, x_label="layer", y_label=f"Δ {me}", params=settings, summary=summary,
                            description=f"{me} change when each layer's attention heads (together) or its MLP are "
                                        f"{m}-ablated")
        result.save(log.folder)
        folder = log.finish()
    return SweepOutcome(folder, result, len(todo), len(named) - len(todo), seconds)
