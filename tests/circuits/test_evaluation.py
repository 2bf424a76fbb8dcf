"""Edge- and node-level circuit evaluation, mean references per template, faithfulness curves."""

import numpy as np
import pytest
import torch

from attnlens.analyses.circuits import Example, Task, TaskError, encode_task
from attnlens.analyses.circuits._hooks import CircuitModules, capture
from attnlens.analyses.circuits.ablation import MeanOver, prepare
from attnlens.analyses.circuits.curves import (
    edge_circuits,
    faithfulness_curves,
    head_circuits,
    smallest_reaching,
    stays_from,
)
from attnlens.analyses.circuits.eap import edge_attribution
from attnlens.analyses.circuits.evaluation import (
    HANNA_2024,
    WANG_2022,
    Ablated,
    EvalSetting,
    Graph,
    Level,
    Replacement,
    circuit_metrics,
    edge_receiver_count,
    empty_circuit,
    faithfulness_of,
    kept_edges,
    prepare_setting,
    published_setting,
)
from attnlens.analyses.circuits.path_patching import path_patch
from attnlens.analyses.circuits.reuse import random_overlap
from attnlens.formats import Curves, Provenance
from attnlens.formats.circuit import Circuit, Edge, Input, Node, NodeKind, Receiver
from lens.heads import HeadRef


def _all_edges(facts) -> Circuit:
    g = Graph.of(facts)
    return Circuit([], [], edges=[Edge(g.senders[i], g.receivers[j], 1.0) for i, j in zip(*np.nonzero(g.valid))])


@pytest.mark.parametrize("replacement", list(Replacement))
def test_keeping_every_edge_is_the_clean_model(tiny_lm, tiny_task, replacement):
    setting = EvalSetting(Level.EDGE, replacement, Ablated.HEADS_AND_MLPS)
    ctx = prepare_setting(tiny_lm, tiny_task, "logit-diff", setting)
    full, = circuit_metrics(ctx, [_all_edges(tiny_lm.facts)], setting)
    assert full == pytest.approx(ctx.baseline, abs=1e-6)


def test_ablating_every_edge_is_the_corrupted_model(tiny_lm, tiny_task):
    ctx = prepare_setting(tiny_lm, tiny_task, "logit-diff", HANNA_2024)
    empty, = circuit_metrics(ctx, [empty_circuit(tiny_lm.facts)], HANNA_2024)
    assert empty == pytest.approx(ctx.corrupted_baseline, abs=1e-6)
    assert abs(ctx.corrupted_baseline - ctx.baseline) > 1e-3  # the two runs differ: the check can fail


@pytest.mark.parametrize("ablated", list(Ablated))
@pytest.mark.parametrize("replacement", list(Replacement))
def test_node_circuit_at_edge_level_equals_node_level(tiny_lm, tiny_task, ablated, replacement):
    node = Circuit([(1, 2), (3, 0), (2, 1), (0, 3)], [1], n_layers=4, n_heads=4, group_size=2)
    e, n = EvalSetting(Level.EDGE, replacement, ablated), EvalSetting(Level.NODE, replacement, ablated)
    ve = circuit_metrics(prepare_setting(tiny_lm, tiny_task, "logit-diff", e), [node], e)
    ctx = prepare_setting(tiny_lm, tiny_task, "logit-diff", n)
    vn = circuit_metrics(ctx, [node], n)
    np.testing.assert_allclose(ve, vn, atol=1e-6)
    assert abs(vn[0] - ctx.baseline) > 1e-4


def test_one_ablated_edge_is_path_patching(tiny_lm, tiny_task):
    g = Graph.of(tiny_lm.facts)
    s, r = Node(NodeKind.HEAD, 0, 1), Receiver(Input.Q, 2, 1)
    kept = [e for e in _all_edges(tiny_lm.facts).edges if not (e.sender == s and e.receiver == r)]
    assert len(kept) == int(g.valid.sum()) - 1
    ctx = prepare_setting(tiny_lm, tiny_task, "logit-diff", HANNA_2024)
    effect = circuit_metrics(ctx, [Circuit([], [], edges=kept)], HANNA_2024)[0] - ctx.baseline
    expected = path_patch(tiny_lm, tiny_task, [HeadRef(0, 1)], [HeadRef(2, 1)], which="q")[0]
    assert effect == pytest.approx(expected, rel=0.05, abs=1e-8)


def test_groups_in_one_forward_equal_one_at_a_time(tiny_lm, tiny_task):
    eap = edge_attribution(tiny_lm, tiny_task, "logit-diff")
    circuits = edge_circuits(eap, tiny_lm.facts, [5, 20, 80])
    ctx = prepare_setting(tiny_lm, tiny_task, "logit-diff", HANNA_2024)
    together = circuit_metrics(ctx, circuits, HANNA_2024, max_rows=64)
    alone = [circuit_metrics(ctx, [c], HANNA_2024, max_rows=4)[0] for c in circuits]
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_kept_edges_follow_the_setting(tiny_lm):
    g = Graph.of(tiny_lm.facts)
    c = Circuit([], [], edges=[Edge(Node(NodeKind.HEAD, 0, 1), Receiver(Input.LOGITS), 1.0)])
    k_all = kept_edges(c, g, Ablated.HEADS_AND_MLPS)
    k_heads = kept_edges(c, g, Ablated.HEADS)
    assert k_all.sum() == 1
    mlp_rows = [i for i, n in enumerate(g.senders) if n.kind in (NodeKind.MLP, NodeKind.EMBED)]
    assert k_heads[mlp_rows].sum() == g.valid[mlp_rows].sum() and k_heads.sum() == 1 + g.valid[mlp_rows].sum()
    with pytest.raises(TaskError, match="is not in this model's graph"):
        kept_edges(Circuit([], [], edges=[Edge(Node(NodeKind.HEAD, 9, 0), Receiver(Input.LOGITS), 1.0)]), g,
                   Ablated.HEADS)


def test_settings_record_their_choices():
    assert published_setting(Circuit([(1, 1)], [])) is WANG_2022
    assert published_setting(Circuit([], [], edges=[Edge(Node(NodeKind.EMBED), Receiver(Input.LOGITS), 1.0)])) \
        is HANNA_2024
    p = WANG_2022.params()
    assert p["level"] == "node" and p["replacement"] == "mean" and p["ablated"] == "heads" and \
        p["mean_over"] == "template" and "Wang" in p["paper"]
    assert "mean_over" not in HANNA_2024.params()
    assert EvalSetting("node", "mean", "heads").level is Level.NODE
    with pytest.raises(TaskError, match="level must be one of edge, node, got 'path'"):
        EvalSetting("path")


def test_mean_reference_is_per_template_pooled_over_batches(tiny_lm):
    # two templates of one token length; template t0 spans two batches (max_batch 2)
    exs = [Example(f"{a}b{c}", "q", f"{d}b{c}", "z", group="t0") for a, c, d in zip("abc", "hgf", "mno")]
    exs += [Example(f"x{a}{c}", "q", f"y{d}{c}", "z", group="t1") for a, c, d in zip("ab", "hg", "mn")]
    enc = encode_task(Task("two", exs), tiny_lm.tokenizer, max_batch=2)
    assert [(b.group, b.size) for b in enc.batches] == [("t0", 2), ("t0", 1), ("t1", 2)]
    parts = CircuitModules(tiny_lm)
    corrupted_t0 = torch.cat([b.corrupted for b in enc.batches if b.group == "t0"])
    expected = capture(parts, corrupted_t0).z[2].mean(0)
    ctx = prepare(tiny_lm, enc, "mean", "logit-diff", mean_over=MeanOver.TEMPLATE)
    for i in (0, 1):
        torch.testing.assert_close(ctx.refs[i].z[2][0], expected)
    per_batch = prepare(tiny_lm, enc, "mean", "logit-diff", mean_over=MeanOver.BATCH)
    torch.testing.assert_close(per_batch.refs[1].z[2][0], capture(parts, enc.batches[1].corrupted).z[2][0])
    assert not torch.allclose(ctx.refs[2].z[2][0], expected)


def test_faithfulness_rows_and_curves(tiny_lm, tiny_task):
    eap = edge_attribution(tiny_lm, tiny_task, "logit-diff")
    ctx = prepare_setting(tiny_lm, tiny_task, "logit-diff", HANNA_2024)
    sizes = [2, 10, eap.n_edges]
    rows = faithfulness_of(ctx, edge_circuits(eap, tiny_lm.facts, sizes), HANNA_2024)
    assert rows[-1]["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert rows[-1]["normalized_faithfulness"] == pytest.approx(1.0, abs=1e-3)
    assert rows[0]["setting"] == "hanna2024" and rows[0]["empty"] == pytest.approx(ctx.corrupted_baseline, abs=1e-6)
    ctx_h = prepare_setting(tiny_lm, tiny_task, "logit-diff", WANG_2022)
    head_rows = faithfulness_of(ctx_h, head_circuits(eap.head_scores, tiny_lm.facts, [1, 16]), WANG_2022)
    assert head_rows[-1]["faithfulness"] == pytest.approx(1.0, abs=1e-5) and head_rows[0]["n_heads"] == 1
    prov = Provenance(model="tiny-llama")
    curves = faithfulness_curves({"eap": rows}, sizes, unit="edges", task="tiny", provenance=prov)
    assert curves.name == "circuit.tiny_faithfulness_edges" and curves.params["setting"] == "hanna2024"
    assert curves.summary["smallest_reaching"]["eap"] == smallest_reaching(sizes, curves.series["eap"])
    assert curves.summary["smallest_reaching"]["eap"] is not None
    assert smallest_reaching([1, 2, 3], [0.1, 0.85, 0.7]) == 2.0 and smallest_reaching([1], [0.5]) is None
    assert stays_from([1, 2, 3, 4], [0.9, 0.5, 0.8, 0.95]) == 3.0 and stays_from([1, 2], [0.9, 0.5]) is None


def test_curves_round_trip(tmp_path, tiny_lm, tiny_task):
    eap = edge_attribution(tiny_lm, tiny_task, "logit-diff")
    ctx = prepare_setting(tiny_lm, tiny_task, "logit-diff", WANG_2022)
    rows = faithfulness_of(ctx, head_circuits(eap.head_scores, tiny_lm.facts, [2, 4]), WANG_2022)
    c = faithfulness_curves({"eap": rows}, [2, 4], unit="heads", task="tiny", provenance=Provenance(model="m"))
    back = Curves.load(c.save(tmp_path))
    assert back.summary["kept_heads"]["eap"] == [2, 4] and back.params["ablated"] == "heads"


def test_graph_counts_add_up(tiny_lm):
    f = tiny_lm.facts
    c = edge_receiver_count(f)
    assert c["senders"] == 1 + f.n_layers * (f.n_heads + 1)
    assert c["receivers"] == f.n_layers * (f.n_heads + 2 * f.n_kv_heads + 1) + 1
    # attention inputs of layer l read 1 + l (H + 1) senders, its MLP l H + H + 1 more, the logits all senders
    per_layer = [(f.n_heads + 2 * f.n_kv_heads) * (1 + la * (f.n_heads + 1)) + (1 + la * (f.n_heads + 1) + f.n_heads)
                 for la in range(f.n_layers)]
    assert c["edges"] == sum(per_layer) + c["senders"]


def test_random_overlap_baseline(tiny_lm):
    f = tiny_lm.facts
    a = Circuit([(3, 0), (3, 1), (2, 0), (2, 1)], [])
    same = random_overlap(a, a, f, n=500, seed=1)
    assert same["uniform"]["share_of_a_heads"]["observed"] == 1.0
    assert same["uniform"]["share_of_a_heads"]["random_mean"] == pytest.approx(4 / 16, abs=0.04)
    assert same["uniform"]["share_of_a_heads"]["p_value"] < 0.01
    # a layer-matched draw of two full layers is the same set: no evidence of reuse beyond depth
    full_layers = Circuit([(3, h) for h in range(4)] + [(2, h) for h in range(4)], [])
    lm_ = random_overlap(full_layers, full_layers, f, n=50)
    assert lm_["layer_matched"]["share_of_a_heads"]["random_mean"] == 1.0
    assert lm_["layer_matched"]["share_of_a_heads"]["p_value"] == 1.0
    disjoint = random_overlap(a, Circuit([(0, 0), (0, 1)], []), f, n=200)
    assert disjoint["uniform"]["share_of_a_heads"]["observed"] == 0.0
    assert disjoint["uniform"]["share_of_a_heads"]["p_value"] == 1.0


def test_mean_over_length_mixes_templates(tiny_lm):
    exs = [Example(f"{a}b{c}", "q", f"{d}b{c}", "z", group="t0") for a, c, d in zip("abc", "hgf", "mno")]
    exs += [Example(f"x{a}{c}", "q", f"y{d}{c}", "z", group="t1") for a, c, d in zip("ab", "hg", "mn")]
    enc = encode_task(Task("two", exs), tiny_lm.tokenizer, max_batch=8)
    parts = CircuitModules(tiny_lm)
    everything = capture(parts, torch.cat([b.corrupted for b in enc.batches])).z[1].mean(0)
    ctx = prepare(tiny_lm, enc, "mean", "logit-diff", mean_over=MeanOver.LENGTH)
    for ref in ctx.refs:
        torch.testing.assert_close(ref.z[1][0], everything)
