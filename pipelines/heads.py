"""Head-analysis workflows: collect each analysis' inputs from a model, score them, return results.

Each ``run_*`` function drives the model (through :mod:`analyses.collect` and
:mod:`analyses.decode`) and calls the analysis' pure scoring function; it returns the
result objects (:class:`~formats.HeadScores`, :class:`~formats.Curves`) without writing
anything. ``lens heads ...`` and ``lens scan`` call these, and so can a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnlens.formats.provenance import Provenance
from attnlens.pipelines.progress import SILENT, Progress


def niah_trials(lm, *, lengths: Sequence[int], depths: Sequence[float], seeds: Sequence[int], n_needles: int = 1,
                chat: bool = True):
    """Needle-in-a-haystack trials for ``lm``'s tokenizer (one per length x depth x seed)."""
    from attnlens.analyses.niah import make_trials

    return make_trials(lm.tokenizer, context_length=lm.facts.context_length, lengths=list(lengths),
                       depths=list(depths), seeds=list(seeds), n_needles=n_needles, chat=chat)


def run_summary(lm, prompts: Sequence[str], *, progress: Progress = SILENT):
    """The "summary" analysis (first-token mass, entropy) over ``prompts`` from captured patterns."""
    import lens
    from attnlens.analyses.attention_summary import attention_summary
    from attnlens.analyses.rows import row_stats_from_pattern

    runs = []
    task = progress.task("attention summary", total=len(prompts))
    for prompt in prompts:
        cap = lens.run(lm, prompt, sites=[lens.Site.PATTERN]).capture
        runs.append({layer: row_stats_from_pattern(cap.pattern(layer)) for layer in cap.meta.layers})
        task.advance()
    prov = Provenance.for_model(lm.facts, prompts=f"{len(prompts)} prompts", inputs=prompts)
    return attention_summary(runs, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, provenance=prov)


def run_sinks(lm, prompts: Sequence[str], *, source: str = "pattern", min_queries: int = 10,
              progress: Progress = SILENT):
    """First-token sinks, hidden sinks (ACT) and massive activations over ``prompts``."""
    from attnlens.analyses.collect import sink_inputs
    from attnlens.analyses.sinks import sink_scores

    task = progress.task(f"sinks ({source})", total=len(prompts))
    inputs = sink_inputs(lm, prompts, source=source, on_prompt=task.advance)
    prov = Provenance.for_model(lm.facts, prompts=f"{len(prompts)} prompts", inputs=prompts)
    results = sink_scores(inputs, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, provenance=prov,
                          min_queries=min_queries)
    for r in results:
        r.params["source"] = source
    return results


def run_taxonomy(lm, *, repeat_len: int = 50, batch: int = 4, seed: int = 0, progress: Progress = SILENT):
    """Head-type scores on repeated random token sequences ``prefix + r + r`` and on the same
    tokens shuffled (``prefix + s + s``, ``s`` a seeded permutation of ``r``), which separates
    position-driven from content-driven attention."""
    import torch

    import lens
    from attnlens.analyses.collect import repeated_tokens
    from attnlens.analyses.taxonomy import taxonomy_scores

    task = progress.task("taxonomy: repeated random tokens, original and shuffled", total=2)
    ids, offset = repeated_tokens(lm, repeat_len=repeat_len, batch=batch, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    r = ids[:, offset:offset + repeat_len]
    perm = torch.stack([torch.randperm(repeat_len, generator=g) for _ in range(batch)])
    s = torch.gather(r, 1, perm)
    shuffled_ids = torch.cat([ids[:, :offset], s, s], dim=1)
    patterns, shuffled = {}, {}
    for out, x in ((patterns, ids), (shuffled, shuffled_ids)):
        cap = lens.run(lm, x, sites=[lens.Site.PATTERN]).capture
        out.update({layer: cap.pattern(layer) for layer in range(lm.facts.n_layers)})
        task.advance()
    prov = Provenance.for_model(lm.facts, seeds=(seed,), prompts=f"{batch} x repeated random tokens ({repeat_len}), "
                                "and the same shuffled", inputs=[repeat_len, batch, seed])
    return taxonomy_scores(patterns, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, repeat_len=repeat_len,
                           offset=offset, shuffled=shuffled, provenance=prov)


def run_retrieval(lm, trials, *, source: str = "pattern", max_new_tokens: int = 40, progress: Progress = SILENT,
                  executor=None):
    """Retrieval scores (Wu et al.) from greedy decoding of ``trials``.

    ``executor`` (:mod:`pipelines.executors`, e.g. Ray workers) decodes the trials, one item
    per trial (length x depth x seed); the scores are computed here from the traces.
    """
    from attnlens.analyses.decode import decode_trials
    from attnlens.analyses.retrieval import retrieval_scores

    task = progress.task(f"retrieval: decoding needle trials ({source})", total=len(trials))
    if executor is None:
        traces = decode_trials(lm, trials, max_new_tokens=max_new_tokens, source=source, on_trial=task.advance)
    else:
        from attnlens.pipelines.executors import CALLS, call

        per_trial = executor.map_ordered(CALLS, [call(decode_trials, [t], max_new_tokens=max_new_tokens, source=source)
                                                 for t in trials], on_result=lambda i: task.advance())
        traces = [trace for one in per_trial for trace in one]
    prov = Provenance.for_model(lm.facts, seeds=tuple(sorted({t.seed for t in trials})),
                                prompts=f"{len(trials)} NIAH trials, lengths {sorted({t.length for t in trials})}, "
                                        f"depths {sorted({t.depth for t in trials})}",
                                inputs=[t.input_ids.tolist() for t in trials])
    results = retrieval_scores(traces, provenance=prov)
    results[0].summary["answers"] = [{"length": t.length, "depth": t.depth, "recall": round(t.recall, 3),
                                      "answer": t.answer[:120]} for t in traces]
    results[0].params["source"] = source
    results[0].params["max_new_tokens"] = max_new_tokens
    return results


def run_needle_ablation(lm, trials, ranking: np.ndarray, *, name: str, ks: Sequence[int], seeds: Sequence[int],
                        max_new_tokens: int = 40, progress: Progress = SILENT):
    """Needle accuracy with the top-k heads of ``ranking`` zero-ablated vs k random heads (Wu et al.'s causal test)."""
    from attnlens.analyses.causal import ablation_plan, ablation_scores
    from attnlens.analyses.collect import needle_accuracy

    plan = ablation_plan(ranking, ks, seeds)
    task = progress.task(f"ablation of top {name} heads vs random", total=len(trials) * (1 + len(ks) * (1 + len(seeds))))
    full = needle_accuracy(lm, trials, max_new_tokens=max_new_tokens, on_trial=task.advance)
    top_acc, rand_acc = [], []
    for k in ks:
        top_acc.append(needle_accuracy(lm, trials, heads=plan[k]["top"], max_new_tokens=max_new_tokens,
                                       on_trial=task.advance))
        rand_acc.append([needle_accuracy(lm, trials, heads=h, max_new_tokens=max_new_tokens, on_trial=task.advance)
                         for h in plan[k]["random"]])
    prov = Provenance.for_model(lm.facts, seeds=tuple(seeds), prompts=f"{len(trials)} NIAH trials",
                                inputs=[t.input_ids.tolist() for t in trials])
    return ablation_scores(ranking, ranking_name=name, ks=ks, seeds=seeds, full_accuracy=full, top_accuracy=top_acc,
                           random_accuracy=rand_acc, n_trials=len(trials), provenance=prov, plan=plan)


def run_streaming(lm, *, length: int = 512, n_prompts: int = 2, source: str = "pattern", sink: int | None = None,
                  recent: int | None = None, retrieval: np.ndarray | None = None, chat: bool = True,
                  progress: Progress = SILENT):
    """Streaming-vs-retrieval profile: attention mass on sink + recent keys per head (DuoAttention's view)."""
    from attnlens.analyses.collect import streaming_masses
    from attnlens.analyses.streaming import scaled_window, streaming_profile

    default_sink, default_recent = scaled_window(length)
    sink, recent = sink or default_sink, recent or default_recent
    trials = niah_trials(lm, lengths=[length], depths=[0.5], seeds=list(range(n_prompts)), chat=chat)
    task = progress.task(f"streaming profile ({source})", total=len(trials))
    runs = streaming_masses(lm, [t.input_ids for t in trials], sink=sink, recent=recent, source=source,
                            on_prompt=task.advance)
    prov = Provenance.for_model(lm.facts, seeds=tuple(range(n_prompts)), prompts=f"{n_prompts} NIAH prompts of ~{length}",
                                inputs=[t.input_ids.tolist() for t in trials])
    results = streaming_profile(runs, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, sink=sink, recent=recent,
                                provenance=prov, retrieval=retrieval)
    results[0].params.update({"source": source, "length": length})
    return results


def run_gates(lm, *, steps: int = 100, length: int = 256, prompts: int = 1, lr: float = 0.1,
              objective: str = "decode", retrieval: np.ndarray | None = None, progress: Progress = SILENT):
    """DuoAttention gates per KV head, optimised on synthetic passkeys with the model frozen,
    until the split converges or ``steps`` (see :mod:`analyses.duo_gates`)."""
    from attnlens.analyses.duo_gates import GateConfig, train_gates
    from attnlens.analyses.streaming import gate_scores

    cfg = GateConfig(steps=steps, length=length, prompts=prompts, lr=lr, objective=objective)
    task = progress.task(f"DuoAttention gates ({cfg.objective.value} objective): optimising until the split is "
                         "stable", total=steps)
    gates, record = train_gates(lm, cfg, on_step=lambda i, loss: task.advance())
    prov = Provenance.for_model(lm.facts, seeds=(cfg.seed,), prompts=f"{prompts} synthetic passkey prompts of {length}",
                                inputs=[cfg])
    return gate_scores(gates, n_heads=lm.facts.n_heads, provenance=prov, retrieval=retrieval, params=record)
