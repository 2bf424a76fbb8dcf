"""Circuit discovery: score edges (EAP, EAP-IG) or nodes (per-head activation patching),
select a circuit, measure its faithfulness (with the published ablation setting by default),
faithfulness curves over circuit size, the comparison with patching, and the overlap with a
second task's circuit against random circuits of the same size.

:func:`find_circuit` is one method on one task; :func:`circuit_study` is what ``lens
circuit`` runs. Results are :class:`formats.Circuit` (nodes, edges, faithfulness and
settings), :class:`formats.HeadScores` (the per-head estimates) and :class:`formats.Curves`
(faithfulness against size).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from attnlens.formats.circuit import Circuit
from attnlens.formats.curves import Curves
from attnlens.formats.errors import SelectionError
from attnlens.formats.head_scores import HeadScores
from attnlens.formats.provenance import Provenance
from attnlens.formats.vocab import CircuitMethod, Unit
from attnlens.pipelines.progress import SILENT, Progress

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class Found:
    circuit: Circuit
    head_scores: np.ndarray  # [layer, head]
    mlp_scores: np.ndarray  # [layer]
    seconds: float
    baseline: float | None = None
    edge_scores: object | None = None  # analyses.circuits.eap.EdgeScores for eap / eap-ig


def resolve_setting(method: CircuitMethod, *, level=None, replacement=None, ablated=None, mean_over=None):
    """The published setting of ``method``'s kind of circuit with the given choices changed
    (named "custom" when one differs), or None when nothing is given (published defaults)."""
    import dataclasses

    from attnlens.analyses.circuits.evaluation import HANNA_2024, WANG_2022, EvalSetting

    given = {k: v for k, v in dict(level=level, replacement=replacement, ablated=ablated, mean_over=mean_over).items()
             if v is not None}
    if not given:
        return None
    base = WANG_2022 if method in (CircuitMethod.PATCHING, CircuitMethod.SAE) else HANNA_2024
    setting = dataclasses.replace(base, **{k: getattr(v, "value", v) for k, v in given.items()})
    same = all(getattr(setting, k) == getattr(base, k) for k in given)
    return base if same else EvalSetting(setting.level, setting.replacement, setting.ablated, setting.mean_over, "custom")


def patching_scores(lm, enc, metric, *, mlps: bool = True, max_rows: int = 64, task_name: str = "",
                    progress: Progress = SILENT, executor=None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-head (and per-MLP) activation patching: the metric change when one component's
    corrupted output is patched into the clean run. ``(heads [layer, head], mlps [layer] (NaN
    when not run), baseline, seconds)``. ``executor`` (:mod:`pipelines.executors`, e.g. Ray
    workers) runs the chunks of components (``max_rows // batch`` per item); default here."""
    from attnlens.analyses.circuits import prepare, score_sets
    from attnlens.analyses.circuits.ablation import all_heads
    from lens.heads import MlpRef

    facts = lm.facts
    comps = all_heads(facts) + ([MlpRef(la) for la in range(facts.n_layers)] if mlps else [])
    t0 = time.perf_counter()
    ctx = prepare(lm, enc, "patch", metric)
    per_chunk = max(1, max_rows // max(b.size for b in enc.batches))
    task = progress.task(f"patching {len(comps)} components ({task_name})", total=len(comps))
    chunks = [comps[s:s + per_chunk] for s in range(0, len(comps), per_chunk)]
    values = []
    if executor is not None:
        from attnlens.pipelines.sweeps import scoring_job

        job = scoring_job(enc, "patch", metric, max_rows=max_rows)
        done = executor.map_ordered(job, [[[c] for c in ch] for ch in chunks],
                                    on_result=lambda i: task.advance(len(chunks[i])))
        values = [v - ctx.baseline for vals, _, _ in done for v in vals]
    else:
        for chunk in chunks:
            values.extend(score_sets(ctx, [[c] for c in chunk], max_rows=max_rows) - ctx.baseline)
            task.advance(len(chunk))
    values = np.asarray(values)
    n = facts.n_layers * facts.n_heads
    mlp = values[n:] if mlps else np.full(facts.n_layers, np.nan)
    return values[:n].reshape(facts.n_layers, facts.n_heads), mlp, ctx.baseline, time.perf_counter() - t0


def head_outputs(lm, enc, n_examples: int) -> tuple[Tensor, Tensor]:
    """Every head's z at the last position of the first ``n_examples`` clean (positive) and
    corrupted (negative) prompts of ``enc``: two ``[example, layer, head, d_head]`` tensors."""
    import torch

    from attnlens.analyses.circuits._hooks import CircuitModules, capture

    parts = CircuitModules(lm)
    pos, neg = [], []
    left = n_examples
    for b in enc.batches:
        if left <= 0:
            break
        k = min(left, b.size)
        for ids, out in ((b.clean[:k], pos), (b.corrupted[:k], neg)):
            z = capture(parts, ids).z  # per layer [batch, pos, head, d_head]
            out.append(torch.stack([zl[:, -1].float().cpu() for zl in z], 1))
        left -= k
    return torch.cat(pos), torch.cat(neg)


def sae_scores(lm, enc, *, n_examples: int = 10, config=None):
    """The discrete-SAE scores (:func:`analyses.circuits.discrete_sae.discrete_sae_scores`) on
    the first ``n_examples`` clean prompts of ``enc`` (positive) and their corrupted pairs
    (negative); ``seconds`` counts the forward passes too."""
    from attnlens.analyses.circuits.discrete_sae import SAEConfig, discrete_sae_scores

    if not isinstance(n_examples, int) or n_examples < 1:
        raise SelectionError(f"sae examples must be an integer >= 1, got {n_examples!r}")
    t0 = time.perf_counter()
    pos, neg = head_outputs(lm, enc, n_examples)
    scores = discrete_sae_scores(pos, neg, config or SAEConfig())
    scores.seconds = time.perf_counter() - t0
    return scores


def find_circuit(lm, enc, method: CircuitMethod, metric, *, ig_steps: int = 5, top_n: int | None = None,
                 threshold: float | None = None, max_rows: int = 64, task_name: str = "", patch_mlps: bool = True,
                 unit: Unit = Unit.EDGES, progress: Progress = SILENT, executor=None, sae_examples: int = 10,
                 sae_config=None) -> Found:
    """Scores and circuit of one method on one task: ``top_n`` edges (EAP, EAP-IG; default 100)
    or, for patching, the discrete-SAE method or with ``unit=Unit.HEADS``, heads (default 20;
    patching: and MLPs). ``executor`` runs the patching loop (see :func:`patching_scores`); EAP
    and the SAEs run here (``sae_examples`` positive and as many negative prompts)."""
    from attnlens.analyses.circuits.circuit import select_edges, select_nodes
    from attnlens.analyses.circuits.eap import edge_attribution

    facts = lm.facts
    if method is CircuitMethod.SAE:
        task = progress.task(f"discrete SAEs on {sae_examples} + {sae_examples} {task_name} prompts", total=1)
        s = sae_scores(lm, enc, n_examples=sae_examples, config=sae_config)
        task.advance()
        circ = select_nodes(s.score, None, top_n=top_n or 20, facts=facts)
        circ.method = "sae"
        circ.params.update({"sae_examples": s.n_positive, "sae_n_codes": s.config.n_codes, "sae_l1": s.config.l1,
                            "sae_steps": s.config.steps, "sae_lr": s.config.lr, "sae_seed": s.config.seed,
                            "sae_input": "z at the last position"})
        circ.details["sae"] = {"top_edges": s.top_edges(20), "unique_codes": s.unique.tolist(),
                               "coverage": s.coverage.tolist(), "unexplained_variance": s.unexplained.tolist(),
                               "score": "codes unique to positive examples + 0.999 x share of positive examples on "
                                        "them (a tie-breaker below 1)"}
        return Found(circ, s.score, np.full(facts.n_layers, np.nan), s.seconds)
    if method is CircuitMethod.PATCHING:
        heads, mlps, baseline, seconds = patching_scores(lm, enc, metric, mlps=patch_mlps, max_rows=max_rows,
                                                         task_name=task_name, progress=progress, executor=executor)
        circ = select_nodes(heads, mlps if patch_mlps else None, top_n=top_n or 20, facts=facts)
        return Found(circ, heads, mlps, seconds, baseline)
    task = progress.task(f"{method.value} on {enc.n_examples} {task_name} prompts", total=1)
    scores = edge_attribution(lm, enc, metric, ig_steps=ig_steps if method is CircuitMethod.EAP_IG else 0)
    task.advance()
    if Unit(unit) is Unit.HEADS:
        if threshold is not None:
            raise SelectionError("a head circuit takes top_n heads, not a threshold")
        circ = select_nodes(scores.head_scores, None, top_n=top_n or 20, facts=facts)
        circ.method = scores.method
    else:
        circ = select_edges(scores, facts, top_n=None if threshold is not None else (top_n or 100),
                            threshold=threshold)
    return Found(circ, scores.head_scores, scores.mlp_scores, scores.seconds, edge_scores=scores)


@dataclass
class CircuitStudy:
    circuit: Circuit
    head_scores: list[HeadScores] = field(default_factory=list)
    others: list[Circuit] = field(default_factory=list)  # the overlap task's circuit
    curves: list[Curves] = field(default_factory=list)  # faithfulness against circuit size
    examples: list = field(default_factory=list)  # pipelines.examples.Example: the task's prompts, captured

    def save(self, folder) -> None:
        from pathlib import Path

        for ex in self.examples:
            ex.capture.write_into(Path(folder) / ex.name)
        self.circuit.save(folder)
        for c in self.others:
            c.save(folder)
        for r in self.head_scores:
            r.save(folder)
        for c in self.curves:
            c.save(folder)


def faithfulness_curves(lm, enc, rankings: dict[str, Found], *, metric, task_name: str, provenance: Provenance,
                        setting_edges=None, setting_heads=None, edge_sizes: Sequence[int] | None = None,
                        head_sizes: Sequence[int] | None = None, max_rows: int = 32, params: dict | None = None,
                        progress: Progress = SILENT) -> list[Curves]:
    """Faithfulness against size on ``enc`` for every ranking: edge curves for the rankings with
    edge scores (``setting_edges``, default Hanna et al.'s), head curves for all
    (``setting_heads``, default Wang et al.'s)."""
    from attnlens.analyses.circuits.curves import (
        EDGE_SIZES,
        HEAD_SIZES,
        edge_circuits,
        head_circuits,
    )
    from attnlens.analyses.circuits.curves import faithfulness_curves as make_curves
    from attnlens.analyses.circuits.evaluation import (
        HANNA_2024,
        WANG_2022,
        faithfulness_of,
        prepare_setting,
    )

    setting_edges, setting_heads = setting_edges or HANNA_2024, setting_heads or WANG_2022
    edge_sizes, head_sizes = list(edge_sizes or EDGE_SIZES), list(head_sizes or HEAD_SIZES)
    out = []
    with_edges = {k: f for k, f in rankings.items() if f.edge_scores is not None}
    if with_edges:
        task = progress.task(f"edge faithfulness curves ({setting_edges.name})", total=len(with_edges))
        ctx = prepare_setting(lm, enc, metric, setting_edges)
        rows = {}
        for label, f in with_edges.items():
            sizes = [s for s in edge_sizes if s <= f.edge_scores.n_edges]
            rows[label] = faithfulness_of(ctx, edge_circuits(f.edge_scores, lm.facts, sizes), setting_edges,
                                          max_rows=max_rows)
            task.advance()
        sizes = [s for s in edge_sizes if all(s <= f.edge_scores.n_edges for f in with_edges.values())]
        rows = {k: v[:len(sizes)] for k, v in rows.items()}
        out.append(make_curves(rows, sizes, unit="edges", task=task_name, provenance=provenance, params=params))
    task = progress.task(f"head faithfulness curves ({setting_heads.name})", total=len(rankings))
    ctx = prepare_setting(lm, enc, metric, setting_heads)
    sizes = [s for s in head_sizes if s <= lm.facts.n_layers * lm.facts.n_heads]
    rows = {}
    for label, f in rankings.items():
        rows[label] = faithfulness_of(ctx, head_circuits(f.head_scores, lm.facts, sizes, label), setting_heads,
                                      max_rows=max_rows)
        task.advance()
    out.append(make_curves(rows, sizes, unit="heads", task=task_name, provenance=provenance, params=params))
    return out


def compare_settings(lm, enc, circuit: Circuit, metric, *, max_rows: int = 32) -> list[dict]:
    """The circuit's faithfulness under each ablation setting (the published ones and their
    variations), to show what each choice does."""
    from attnlens.analyses.circuits.ablation import MeanOver
    from attnlens.analyses.circuits.evaluation import (
        HANNA_2024,
        WANG_2022,
        Ablated,
        EvalSetting,
        Level,
        Replacement,
        faithfulness_of,
        prepare_setting,
    )

    settings = [HANNA_2024, WANG_2022,
                EvalSetting(Level.EDGE, Replacement.MEAN, Ablated.HEADS_AND_MLPS, MeanOver.TEMPLATE, "edge-mean"),
                EvalSetting(Level.NODE, Replacement.CORRUPTED, Ablated.HEADS_AND_MLPS, name="node-corrupted"),
                EvalSetting(Level.NODE, Replacement.MEAN, Ablated.HEADS_AND_MLPS, MeanOver.TEMPLATE,
                            "node-mean-mlps-too"),
                EvalSetting(Level.NODE, Replacement.MEAN, Ablated.HEADS_AND_MLPS, MeanOver.LENGTH,
                            "node-mean-mlps-too-per-length"),
                EvalSetting(Level.NODE, Replacement.MEAN, Ablated.HEADS, MeanOver.LENGTH, "wang2022-per-length")]
    rows = []
    for s in settings:
        ctx = prepare_setting(lm, enc, metric, s)
        rows.append(faithfulness_of(ctx, [circuit], s, max_rows=max_rows)[0])
    return rows


def circuit_study(lm, enc, *, task_name: str, method: CircuitMethod, metric, ig_steps: int = 5,
                  top_n: int | None = None, threshold: float | None = None, compare_patching: bool = False,
                  overlap_enc=None, overlap_name: str = "", max_rows: int = 64, seed: int = 0,
                  setting=None, curves: bool = False, eval_enc=None, edge_sizes: Sequence[int] | None = None,
                  head_sizes: Sequence[int] | None = None, settings_table: bool = False, random_circuits: int = 1000,
                  patch_mlps: bool = True, patching: Found | None = None, unit: Unit = Unit.EDGES,
                  progress: Progress = SILENT, executor=None, sae_examples: int = 10,
                  sae_config=None) -> CircuitStudy:
    """Find the circuit of a task, its faithfulness (``setting``; default the published one for
    the circuit's kind) on ``eval_enc`` (default: the same prompts), optionally faithfulness
    curves over size, the comparison with per-head patching and the other EAP variant on the
    same prompts, the circuit under every ablation setting, and the overlap with another
    task's circuit against ``random_circuits`` random circuits of the same size. ``patching``:
    per-head patching scores computed before on the same prompts (:func:`load_patching`), used
    instead of running the loop again. ``executor``: where the patching loops' chunks run (see
    :func:`patching_scores`). ``sae_examples``, ``sae_config``: the discrete-SAE method's
    prompts (that many positive and negative) and hyperparameters. With ``compare_patching``
    every other method runs on the same prompts too (timings side by side), and the circuit's
    heads are compared with the same number of top heads of each ranking (precision, recall)."""
    from attnlens.analyses.circuits.circuit import faithfulness
    from attnlens.analyses.circuits.eap import edge_attribution

    if top_n is not None and threshold is not None:
        raise SelectionError("give one of top_n and threshold, not both")
    eval_enc = eval_enc or enc
    inputs = [b.clean.tolist() for b in enc.batches] + ([b.clean.tolist() for b in eval_enc.batches]
                                                        if eval_enc is not enc else [])
    prov = Provenance.for_model(lm.facts, seeds=(seed,), prompts=f"{enc.n_examples} {task_name} prompts to find"
                                + (f", {eval_enc.n_examples} other prompts to evaluate" if eval_enc is not enc else ""),
                                inputs=inputs)
    found = find_circuit(lm, enc, method, metric, ig_steps=ig_steps, top_n=top_n, threshold=threshold,
                         max_rows=max_rows, task_name=task_name, patch_mlps=patch_mlps, unit=unit, progress=progress,
                         executor=executor, sae_examples=sae_examples, sae_config=sae_config)
    task = progress.task("faithfulness", total=1)
    circ = found.circuit
    circ.faithfulness = faithfulness(lm, eval_enc, circ, metric, setting=setting, max_rows=min(max_rows, 32))
    task.advance()
    metric_name = getattr(metric, "value", str(metric))
    circ.name, circ.task, circ.metric, circ.provenance = f"{task_name}_{method.value}", task_name, metric_name, prov
    circ.params.update({"ig_steps": ig_steps if method is CircuitMethod.EAP_IG else 0, "max_rows": max_rows,
                        "unit": "heads" if method in (CircuitMethod.PATCHING, CircuitMethod.SAE) else Unit(unit).value,
                        "n_examples": enc.n_examples, "n_examples_eval": eval_enc.n_examples,
                        "eval_prompts": "same" if eval_enc is enc else "held out", "skipped": len(enc.skipped),
                        "task_notes": list(enc.notes),
                        **{f"eval_{k}": v for k, v in circ.faithfulness.items()
                           if k in ("setting", "level", "replacement", "ablated", "mean_over")}})
    circ.details.update({"seconds": found.seconds, "mlp_scores": found.mlp_scores.tolist(),
                         "timings_note": "wall-clock on the machine named in the provenance"})
    circ.description = f"{method.value} circuit of {task_name} ({metric_name})"
    out = CircuitStudy(circ, examples=task_examples(lm, enc))
    out.head_scores.append(_head_result(task_name, method.value, metric_name, found, prov, ig_steps))
    rankings = {method.value: found}
    if compare_patching and method is not CircuitMethod.PATCHING:
        from scipy.stats import pearsonr, spearmanr

        from attnlens.analyses.circuits.discrete_sae import precision_recall

        truth = patching or find_circuit(lm, enc, CircuitMethod.PATCHING, metric, top_n=20, max_rows=max_rows,
                                         task_name=task_name, patch_mlps=patch_mlps, progress=progress,
                                         executor=executor)
        rankings[CircuitMethod.PATCHING.value] = truth
        b = truth.head_scores.ravel()
        vs = {"seconds_patching_loop": truth.seconds, "patching_from": "this run" if patching is None else
              patching.circuit.description}
        compared = [(method, found)]
        for other in (m for m in (CircuitMethod.EAP, CircuitMethod.EAP_IG) if m is not method):
            task = progress.task(f"{other.value} on the same prompts", total=1)
            other_scores = edge_attribution(lm, enc, metric, ig_steps=ig_steps if other is CircuitMethod.EAP_IG else 0)
            task.advance()
            other_found = Found(Circuit([], []), other_scores.head_scores, other_scores.mlp_scores,
                                other_scores.seconds, edge_scores=other_scores)
            rankings[other.value] = other_found
            compared.append((other, other_found))
            out.head_scores.append(_head_result(task_name, other.value, metric_name, other_found, prov, ig_steps))
        k = len(circ.heads)  # heads of the same count from each ranking, for precision / recall
        top = {m.value: _top_heads(f.head_scores, k) for m, f in [*compared, (CircuitMethod.PATCHING, truth)]}
        for m, f in compared:
            a = f.head_scores.ravel()
            vs[m.value] = {"spearman": float(spearmanr(a, b).statistic), "pearson": float(pearsonr(a, b).statistic),
                           "spearman_abs": float(spearmanr(np.abs(a), np.abs(b)).statistic), "seconds": f.seconds,
                           "speedup": truth.seconds / f.seconds,
                           f"top{k}_heads_vs_patching": precision_recall(top[m.value], top["patching"])}
        if method is CircuitMethod.SAE:
            vs["sae"]["heads_vs_eap-ig"] = precision_recall(circ.heads, top["eap-ig"])
        circ.details["vs_patching"] = vs
        out.head_scores.append(_head_result(task_name, "patching", metric_name, truth, prov, 0))
    if curves:
        out.curves = faithfulness_curves(lm, eval_enc, rankings, metric=metric, task_name=task_name, provenance=prov,
                                         setting_edges=setting, setting_heads=setting, edge_sizes=edge_sizes, head_sizes=head_sizes, max_rows=min(max_rows, 32),
                                         params={"n_examples_find": enc.n_examples, "ig_steps": ig_steps,
                                                 "eval_prompts": "same" if eval_enc is enc else "held out"},
                                         progress=progress)
        circ.details["curves"] = {c.metric: c.summary["smallest_reaching"] for c in out.curves}
    if settings_table:
        task = progress.task("faithfulness under each ablation setting", total=1)
        circ.details["settings"] = compare_settings(lm, eval_enc, circ, metric, max_rows=min(max_rows, 32))
        task.advance()
    if overlap_enc is not None:
        out.others.append(_overlap(lm, circ, overlap_enc, overlap_name, method, metric, ig_steps=ig_steps, top_n=top_n,
                                   threshold=threshold, max_rows=max_rows, seed=seed, setting=setting,
                                   random_circuits=random_circuits, patch_mlps=patch_mlps, unit=unit,
                                   progress=progress, executor=executor, sae_examples=sae_examples,
                                   sae_config=sae_config))
    return out


def load_patching(path, facts) -> Found:
    """Per-head patching scores saved by an earlier ``lens circuit --method patching`` (or ``lens
    ablate --sweep heads --method patch``) run, as a :class:`Found` for :func:`circuit_study`."""
    from pathlib import Path

    hs = HeadScores.load(path)
    if hs.shape != (facts.n_layers, facts.n_heads) or hs.provenance.model != facts.name:
        raise SelectionError(f"patching scores {path} are for {hs.provenance.model} ({hs.shape[0]}x{hs.shape[1]} heads), "
                             f"not {facts.name} ({facts.n_layers}x{facts.n_heads})")
    mlp = hs.arrays.get("mlp_scores", hs.arrays.get("mlp_effect", np.full(facts.n_layers, np.nan)))
    c = Circuit([], [], description=f"{Path(path).name} ({hs.provenance.prompts}, {hs.provenance.created})")
    return Found(c, hs.scores, np.asarray(mlp, dtype=float), float(hs.summary.get("seconds", hs.summary.get(
        "seconds_all_items", float("nan")))))


TASK_CAPTURES = "captures/task"  # the example captures of lens circuit: captures/task-000, -001


def task_examples(lm, enc, n: int = 2) -> list:
    """Every head's pattern on the first clean prompt of the first ``n`` batches (one template
    each), stored as float16, so that a head of the circuit opens on the task's own prompts;
    their focus (:func:`formats.set_focus`) is the row the answer is read at (the last), so the
    explorer opens there."""
    import torch

    import lens
    from attnlens.formats import set_focus
    from attnlens.pipelines.examples import Example

    out = []
    for i, b in enumerate(enc.batches[:n]):
        cap = lens.run(lm, b.clean[:1], sites=[lens.Site.PATTERN], dtype=torch.float16).capture
        end = int(b.clean.shape[1]) - 1
        set_focus(cap.meta, rows=(end, end + 1), why="the answer is read at the last position")
        cap.meta.extra["task_group"] = b.group
        out.append(Example(f"{TASK_CAPTURES}-{i:03d}", cap))
    return out


def _top_heads(scores: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest ``|score|`` (NaN last), as ``(layer, head)``."""
    flat = np.nan_to_num(np.abs(scores), nan=-1.0).ravel()
    return [divmod(int(i), scores.shape[1]) for i in np.argsort(-flat, kind="stable")[:k]]


def _head_result(task_name, method, metric_name, found: Found, prov, ig_steps) -> HeadScores:
    what = {"patching": "change when the head's corrupted output is patched into the clean run",
            "sae": "codes unique to positive (clean) prompts in the head's discrete SAE, ties broken by coverage"}.get(
        method, "estimate of the change when the head's corrupted output is patched in")
    return HeadScores("circuit", f"{task_name}_{method}_{metric_name}", found.head_scores, prov,
                      description=f"{method} {metric_name} {what}",
                      params={"task": task_name, "ig_steps": ig_steps if method == "eap-ig" else 0,
                              "example_capture": TASK_CAPTURES},
                      summary={"seconds": found.seconds}, arrays={"mlp_scores": found.mlp_scores},
                      scale="sequential" if method == "sae" else "signed")  # SAE scores count codes, never negative


def _overlap(lm, circ: Circuit, overlap_enc, overlap_name: str, method, metric, *, ig_steps, top_n, threshold,
             max_rows, seed, setting, random_circuits, patch_mlps, unit, progress, executor=None, sae_examples=10,
             sae_config=None) -> Circuit:
    from attnlens.analyses.circuits.circuit import faithfulness, overlap
    from attnlens.analyses.circuits.reuse import random_overlap

    found_b = find_circuit(lm, overlap_enc, method, metric, ig_steps=ig_steps, top_n=top_n, threshold=threshold,
                           max_rows=max_rows, task_name=overlap_name, patch_mlps=patch_mlps, unit=unit,
                           progress=progress, executor=executor, sae_examples=sae_examples, sae_config=sae_config)
    circ_b = found_b.circuit
    task = progress.task(f"faithfulness on {overlap_name}", total=1)
    circ_b.faithfulness = faithfulness(lm, overlap_enc, circ_b, metric, setting=setting, max_rows=min(max_rows, 32))
    task.advance()
    metric_name = getattr(metric, "value", str(metric))
    circ_b.name, circ_b.task, circ_b.metric = f"{overlap_name}_{method.value}", overlap_name, metric_name
    if circ_b.name == circ.name:
        circ_b.name += "_overlap"
    circ_b.provenance = Provenance.for_model(lm.facts, seeds=(seed,), prompts=f"{overlap_enc.n_examples} "
                                             f"{overlap_name} prompts",
                                             inputs=[b.clean.tolist() for b in overlap_enc.batches])
    circ_b.description = f"{method.value} circuit of {overlap_name} ({metric_name})"
    circ.details["overlap"] = {"task_b": overlap_name, "circuit_b": circ_b.name, **overlap(circ, circ_b),
                               "random_baseline": random_overlap(circ, circ_b, lm.facts, n=random_circuits, seed=seed)}
    return circ_b
