"""Circuit discovery: score edges (EAP, EAP-IG) or nodes (per-head activation patching),
select a circuit, measure its faithfulness, compare with patching, and overlap with a
second task's circuit.

:func:`find_circuit` is one method on one task; :func:`circuit_study` is what ``lens
circuit`` runs. Results are :class:`formats.Circuit` (nodes, edges, faithfulness and
settings) and :class:`formats.HeadScores` (the per-head estimates).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from formats.circuit import Circuit
from formats.errors import SelectionError
from formats.head_scores import HeadScores
from formats.provenance import Provenance
from pipelines.progress import SILENT, Progress


class CircuitMethod(str, enum.Enum):
    EAP = "eap"
    EAP_IG = "eap-ig"
    PATCHING = "patching"


@dataclass
class Found:
    circuit: Circuit
    head_scores: np.ndarray  # [layer, head]
    mlp_scores: np.ndarray  # [layer]
    seconds: float
    baseline: float | None = None


def find_circuit(lm, enc, method: CircuitMethod, metric, *, ig_steps: int = 5, top_n: int | None = None,
                 threshold: float | None = None, max_rows: int = 64, task_name: str = "",
                 progress: Progress = SILENT, executor=None) -> Found:
    """Scores and circuit of one method on one task (``top_n`` edges, or heads/MLPs for patching).

    ``executor`` (:mod:`pipelines.executors`, e.g. Ray workers) runs the patching loop's
    chunks of components (``max_rows // batch`` per item); EAP runs here.
    """
    from analyses.circuits import prepare, score_sets
    from analyses.circuits.ablation import all_heads
    from analyses.circuits.circuit import select_edges, select_nodes
    from analyses.circuits.eap import edge_attribution
    from lens.heads import MlpRef

    facts = lm.facts
    if method is CircuitMethod.PATCHING:
        comps = all_heads(facts) + [MlpRef(la) for la in range(facts.n_layers)]
        t0 = time.perf_counter()
        ctx = prepare(lm, enc, "patch", metric)
        per_chunk = max(1, max_rows // max(b.size for b in enc.batches))
        task = progress.task(f"patching {len(comps)} components ({task_name})", total=len(comps))
        values = []
        chunks = [comps[s:s + per_chunk] for s in range(0, len(comps), per_chunk)]
        if executor is not None:
            from pipelines.sweeps import scoring_job

            job = scoring_job(enc, "patch", metric, max_rows=max_rows)
            done = executor.map_ordered(job, [[[c] for c in ch] for ch in chunks],
                                        on_result=lambda i: task.advance(len(chunks[i])))
            values = [v - ctx.baseline for vals, _, _ in done for v in vals]
        else:
            for chunk in chunks:
                values.extend(score_sets(ctx, [[c] for c in chunk], max_rows=max_rows) - ctx.baseline)
                task.advance(len(chunk))
        seconds = time.perf_counter() - t0
        values = np.asarray(values)
        heads = values[: facts.n_layers * facts.n_heads].reshape(facts.n_layers, facts.n_heads)
        mlps = values[facts.n_layers * facts.n_heads:]
        circ = select_nodes(heads, mlps, top_n=top_n or 20, facts=facts)
        return Found(circ, heads, mlps, seconds, ctx.baseline)
    task = progress.task(f"{method.value} on {enc.n_examples} {task_name} prompts", total=1)
    scores = edge_attribution(lm, enc, metric, ig_steps=ig_steps if method is CircuitMethod.EAP_IG else 0)
    task.advance()
    circ = select_edges(scores, facts, top_n=None if threshold is not None else (top_n or 100), threshold=threshold)
    return Found(circ, scores.head_scores, scores.mlp_scores, scores.seconds)


@dataclass
class CircuitStudy:
    circuit: Circuit
    head_scores: list[HeadScores] = field(default_factory=list)
    others: list[Circuit] = field(default_factory=list)  # the overlap task's circuit

    def save(self, folder) -> None:
        self.circuit.save(folder)
        for c in self.others:
            c.save(folder)
        for r in self.head_scores:
            r.save(folder)


def circuit_study(lm, enc, *, task_name: str, method: CircuitMethod, metric, ig_steps: int = 5,
                  top_n: int | None = None, threshold: float | None = None, compare_patching: bool = False,
                  overlap_enc=None, overlap_name: str = "", max_rows: int = 64, seed: int = 0,
                  progress: Progress = SILENT, executor=None) -> CircuitStudy:
    """Find the circuit of a task, its faithfulness, optionally the comparison with per-head
    patching on the same prompts and the overlap with another task's circuit (``executor``:
    where the patching loops' chunks run, see :func:`find_circuit`)."""
    from analyses.circuits.circuit import faithfulness, overlap
    from analyses.circuits.eap import edge_attribution

    if top_n is not None and threshold is not None:
        raise SelectionError("give one of top_n and threshold, not both")
    prov = Provenance.for_model(lm.facts, seeds=(seed,), prompts=f"{enc.n_examples} {task_name} prompts",
                                inputs=[b.clean.tolist() for b in enc.batches])
    found = find_circuit(lm, enc, method, metric, ig_steps=ig_steps, top_n=top_n, threshold=threshold,
                         max_rows=max_rows, task_name=task_name, progress=progress, executor=executor)
    task = progress.task("faithfulness", total=1)
    circ = found.circuit
    circ.faithfulness = faithfulness(lm, enc, circ, metric, max_rows=max_rows)
    task.advance()
    metric_name = getattr(metric, "value", str(metric))
    circ.name, circ.task, circ.metric, circ.provenance = f"{task_name}_{method.value}", task_name, metric_name, prov
    circ.params.update({"ig_steps": ig_steps if method is CircuitMethod.EAP_IG else 0, "max_rows": max_rows,
                        "n_examples": enc.n_examples, "skipped": len(enc.skipped)})
    circ.details.update({"seconds": found.seconds, "mlp_scores": found.mlp_scores.tolist(),
                         "timings_note": "wall-clock on the machine named in the provenance"})
    circ.description = f"{method.value} circuit of {task_name} ({metric_name})"
    out = CircuitStudy(circ)
    out.head_scores.append(HeadScores(
        "circuit", f"{task_name}_{method.value}_{metric_name}", found.head_scores, prov,
        description=f"{method.value} estimate of the {metric_name} change when the head's corrupted output is "
                    "patched in", params={"task": task_name, "ig_steps": ig_steps}, summary={"seconds": found.seconds},
        arrays={"mlp_scores": found.mlp_scores}))
    if compare_patching and method is not CircuitMethod.PATCHING:
        from scipy.stats import pearsonr, spearmanr

        truth = find_circuit(lm, enc, CircuitMethod.PATCHING, metric, top_n=20, max_rows=max_rows,
                             task_name=task_name, progress=progress, executor=executor)
        other = CircuitMethod.EAP if method is CircuitMethod.EAP_IG else CircuitMethod.EAP_IG
        task = progress.task(f"{other.value} on the same prompts", total=1)
        other_scores = edge_attribution(lm, enc, metric, ig_steps=ig_steps if other is CircuitMethod.EAP_IG else 0)
        task.advance()
        b = truth.head_scores.ravel()
        vs = {"seconds_patching_loop": truth.seconds}
        for m, a, secs in ((method, found.head_scores.ravel(), found.seconds),
                           (other, other_scores.head_scores.ravel(), other_scores.seconds)):
            vs[m.value] = {"spearman": float(spearmanr(a, b).statistic), "pearson": float(pearsonr(a, b).statistic),
                           "spearman_abs": float(spearmanr(np.abs(a), np.abs(b)).statistic), "seconds": secs,
                           "speedup": truth.seconds / secs}
        circ.details["vs_patching"] = vs
        out.head_scores.append(HeadScores(
            "circuit", f"{task_name}_patching_{metric_name}", truth.head_scores, prov,
            description=f"{metric_name} change when the head's corrupted output is patched into the clean run",
            params={"task": task_name}, summary={"seconds": truth.seconds}, arrays={"mlp_scores": truth.mlp_scores}))
    if overlap_enc is not None:
        found_b = find_circuit(lm, overlap_enc, method, metric, ig_steps=ig_steps, top_n=top_n, threshold=threshold,
                               max_rows=max_rows, task_name=overlap_name, progress=progress, executor=executor)
        circ_b = found_b.circuit
        task = progress.task(f"faithfulness on {overlap_name}", total=1)
        circ_b.faithfulness = faithfulness(lm, overlap_enc, circ_b, metric, max_rows=max_rows)
        task.advance()
        circ_b.name, circ_b.task, circ_b.metric = f"{overlap_name}_{method.value}", overlap_name, metric_name
        if circ_b.name == circ.name:
            circ_b.name += "_overlap"
        circ_b.provenance = Provenance.for_model(lm.facts, seeds=(seed,), prompts=f"{overlap_enc.n_examples} "
                                                 f"{overlap_name} prompts",
                                                 inputs=[b.clean.tolist() for b in overlap_enc.batches])
        circ_b.description = f"{method.value} circuit of {overlap_name} ({metric_name})"
        circ.details["overlap"] = {"task_b": overlap_name, "circuit_b": circ_b.name, **overlap(circ, circ_b)}
        out.others.append(circ_b)
    return out
