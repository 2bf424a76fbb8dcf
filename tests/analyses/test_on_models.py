"""The analyses run unchanged on a real model path: tiny random Llama (fast) and SmolLM2 (slow tier)."""

import numpy as np
import pytest
import torch

import lens
from attnlens.analyses import Provenance
from attnlens.analyses.collect import (
    needle_accuracy,
    sink_inputs,
    streaming_masses,
    taxonomy_patterns,
)
from attnlens.analyses.decode import greedy_decode
from attnlens.analyses.niah import make_trial, make_trials
from attnlens.analyses.sinks import sink_scores
from attnlens.analyses.streaming import streaming_profile
from attnlens.analyses.taxonomy import taxonomy_scores


@pytest.fixture(scope="module")
def tiny_trial(tiny_lm):
    return make_trial(tiny_lm.tokenizer, length=400, depth=0.5, context_length=512, n_needles=1, chat=False)


def test_decode_pattern_and_kernel_give_the_same_top1(tiny_lm, tiny_trial):
    gen_p, top_p = greedy_decode(tiny_lm, tiny_trial.input_ids, max_new_tokens=6, source="pattern")
    gen_k, top_k = greedy_decode(tiny_lm, tiny_trial.input_ids, max_new_tokens=6, source="kernel")
    f = tiny_lm.facts
    assert top_p.shape == (len(gen_p), f.n_layers, f.n_heads)
    assert torch.equal(gen_p, gen_k) and torch.equal(top_p, top_k)


def test_decode_matches_generate(tiny_lm, tiny_trial):
    gen, _ = greedy_decode(tiny_lm, tiny_trial.input_ids, max_new_tokens=6, source="none")
    ids = tiny_trial.input_ids.reshape(1, -1)
    ref = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=2)[0, ids.shape[1]:]
    assert gen.tolist() == ref[: len(gen)].tolist()


def test_ablating_nothing_changes_nothing(tiny_lm, tiny_trial):
    a, _ = greedy_decode(tiny_lm, tiny_trial.input_ids, max_new_tokens=5, source="none")
    b, _ = greedy_decode(tiny_lm, tiny_trial.input_ids, max_new_tokens=5, source="none", edits=lens.zero_ablation([]))
    assert torch.equal(a, b)
    trials = make_trials(tiny_lm.tokenizer, context_length=512, lengths=(400,), depths=(0.5,), chat=False)
    assert needle_accuracy(tiny_lm, trials, heads=[(0, 1)], max_new_tokens=4) == 0.0  # random model never answers


def test_sinks_pattern_vs_kernel_on_tiny(tiny_lm):
    f, prov = tiny_lm.facts, Provenance(model="tiny")
    prompts = ["hello world, hello attention sinks and heads", "a quick brown fox jumps over the lazy dog"]
    res = {src: sink_scores(sink_inputs(tiny_lm, prompts, source=src), n_layers=f.n_layers, n_heads=f.n_heads,
                            provenance=prov) for src in ("pattern", "kernel")}
    for a, b in zip(res["pattern"], res["kernel"]):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_taxonomy_and_streaming_run_on_tiny(tiny_lm, tiny_trial):
    f, prov = tiny_lm.facts, Provenance(model="tiny")
    pats, offset = taxonomy_patterns(tiny_lm, repeat_len=10, batch=2)
    assert offset == 1  # the byte tokenizer adds BOS
    res = taxonomy_scores(pats, n_layers=f.n_layers, n_heads=f.n_heads, repeat_len=10, offset=offset, provenance=prov)
    assert all(np.isfinite(r.scores).all() for r in res)
    runs = {src: streaming_masses(tiny_lm, [tiny_trial.input_ids], sink=2, recent=8, source=src)
            for src in ("pattern", "kernel")}
    out = {src: streaming_profile(r, n_layers=f.n_layers, n_heads=f.n_heads, sink=2, recent=8, provenance=prov)[0]
           for src, r in runs.items()}
    np.testing.assert_allclose(out["pattern"].scores, out["kernel"].scores, atol=1e-5)


# ---- SmolLM2 (slow tier) -------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_finds_the_needle_and_retrieval_heads_agree_across_sources(smollm2):
    from attnlens.analyses.decode import decode_trials
    from attnlens.analyses.retrieval import retrieval_scores

    torch.set_num_threads(1)  # on a shared 2-core machine one thread is faster
    trials = make_trials(smollm2.tokenizer, context_length=8192, lengths=(300,), depths=(0.25, 0.75), chat=True)
    pat = decode_trials(smollm2, trials, max_new_tokens=32, source="pattern")
    ker = decode_trials(smollm2, trials[:1], max_new_tokens=32, source="kernel")
    assert all(t.recall > 0.5 for t in pat), [t.answer for t in pat]
    assert torch.equal(pat[0].top1, ker[0].top1)
    r = retrieval_scores(pat, provenance=Provenance(model="smollm2"))[0]
    assert 0 < r.summary["heads_above_0.1"] < 0.1 * 270  # a few heads, not most of them


@pytest.mark.slow
def test_smollm2_sinks(smollm2):
    f = smollm2.facts
    res = sink_scores(sink_inputs(smollm2, ["The river wound through the valley, past farms and orchards, until it "
                                            "reached the old stone bridge where the villagers gathered."]),
                      n_layers=f.n_layers, n_heads=f.n_heads, provenance=Provenance(model="smollm2"))
    first, hidden = res
    share = first.arrays["share_of_heads_above_0.5_per_layer"]
    assert share[:2].max() == 0 and share[20:].mean() > 0.5  # sinks form after the first layers
    assert hidden.summary["sink_positions_found"] > 0 and hidden.summary["massive_total"] > 0


def test_duo_gates_start_at_full_attention_and_restore_the_model(tiny_lm):
    from attnlens.analyses.duo_gates import GateConfig, train_gates

    ids = torch.randint(3, 200, (1, 40))
    before = tiny_lm.model(ids).logits
    gates, rec = train_gates(tiny_lm, GateConfig(length=400, steps=2, prompts=1, needles=1))
    assert gates.shape == (tiny_lm.facts.n_layers, tiny_lm.facts.n_kv_heads)
    assert rec["losses"][0][0] == pytest.approx(0.0, abs=1e-8)  # alpha = 1 is exactly the full model
    assert ((gates >= 0) & (gates <= 1)).all() and rec["sink"] >= 1
    assert torch.equal(tiny_lm.model(ids).logits, before)  # attention implementation and weights restored


def test_duo_gates_objectives_converge_and_record(tiny_lm):
    from attnlens.analyses.duo_gates import GateConfig, Objective, train_gates

    cfg = dict(length=400, prompts=1, needles=1, steps=40, min_steps=5, patience=3, lr=0.2)
    gates, rec = train_gates(tiny_lm, GateConfig(**cfg))
    assert rec["objective"] == "decode" and rec["losses"][0][0] == pytest.approx(0.0, abs=1e-8)
    assert rec["converged"] and rec["steps_run"] < 40 and len(rec["retrieval_kv_heads_per_step"]) == rec["steps_run"]
    assert rec["retrieval_kv_heads_per_step"][-1] == int((gates > 0.5).sum())
    assert gates.min() < 0.5  # the regulariser moved gates: the run optimised
    pre, rec_p = train_gates(tiny_lm, GateConfig(**{**cfg, "steps": 3}, objective=Objective.PREFILL))
    assert rec_p["objective"] == "prefill" and rec_p["losses"][0][0] == pytest.approx(0.0, abs=1e-8)
    assert not rec_p["converged"] and rec_p["steps_run"] == 3


def test_gate_convergence_rule():
    from attnlens.analyses.duo_gates import GateConfig, converged

    cfg = GateConfig(min_steps=4, patience=3, tol=0.01)
    assert not converged([(1,), (1,), (1,)], [1.0, 1.0, 1.0], cfg)  # before min_steps
    assert converged([(2,), (1,), (1,), (1,), (1,)], [2.0, 1.0, 1.0, 1.0, 1.0], cfg)
    assert not converged([(1,), (1,), (1, 2), (1,), (1,)], [1.0] * 5, cfg)  # the set moved inside the window
    assert not converged([(1,)] * 5, [1.0, 1.0, 1.2, 1.1, 1.05], cfg)  # the loss still moves
    with pytest.raises(Exception, match="objective must be decode or prefill"):
        GateConfig(objective="both")
