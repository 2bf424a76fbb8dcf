import numpy as np
import pytest
from scipy.stats import spearmanr

from attnlens.analyses.circuits import MlpRef, TaskError, prepare, score_sets
from attnlens.analyses.circuits.ablation import all_heads
from attnlens.analyses.circuits.circuit import faithfulness, overlap, select_edges, select_nodes
from attnlens.analyses.circuits.eap import edge_attribution, graph_names
from attnlens.formats.circuit import Input, Node, NodeKind, Receiver


@pytest.fixture(scope="module")
def eap(tiny_lm, tiny_task):
    return edge_attribution(tiny_lm, tiny_task, "logit-diff")


def test_eap_correlates_with_actual_patching(tiny_lm, tiny_task, eap):
    ctx = prepare(tiny_lm, tiny_task, "patch", "logit-diff")
    heads = all_heads(tiny_lm.facts)
    effects = score_sets(ctx, [[h] for h in heads]) - ctx.baseline
    assert spearmanr(eap.head_scores.ravel(), effects).statistic > 0.8
    mlp_eff = score_sets(ctx, [[MlpRef(l)] for l in range(4)]) - ctx.baseline
    assert spearmanr(eap.mlp_scores, mlp_eff).statistic > 0.5


def test_node_score_is_sum_of_outgoing_edges(eap):
    s = np.nan_to_num(eap.scores)
    np.testing.assert_allclose(s[1:5].sum(1), eap.head_scores[0], atol=1e-6)  # L0H0..L0H3
    np.testing.assert_allclose(s[5].sum(), eap.mlp_scores[0], atol=1e-6)  # L0.mlp


def test_graph_is_gqa_aware_and_acyclic(tiny_lm, eap):
    senders, so, receivers, ro = graph_names(tiny_lm.facts)
    assert len(senders) == 1 + 4 * (4 + 1) and len(receivers) == 4 * (4 + 2 + 2 + 1) + 1
    names = [str(r) for r in receivers]
    assert "L1KV1.k" in names and "L1KV2.k" not in names
    assert receivers[names.index("L1KV1.k")] == Receiver(Input.K, 1, 1)
    assert Receiver(Input.K, 1, 1).nodes(tiny_lm.facts.group_size) == [Node(NodeKind.HEAD, 1, 2), Node(NodeKind.HEAD, 1, 3)]
    i, j = senders.index(Node(NodeKind.HEAD, 2, 0)), names.index("L2H1.q")
    assert np.isnan(eap.scores[i, j]) and not np.isnan(eap.scores[i, names.index("L2.mlp")])


def test_eap_ig_single_step_is_eap(tiny_lm, tiny_task, eap):
    ig = edge_attribution(tiny_lm, tiny_task, "logit-diff", ig_steps=1)
    np.testing.assert_allclose(ig.head_scores, eap.head_scores, atol=1e-6)
    assert ig.method == "eap-ig"


def test_eap_rejects_accuracy(tiny_lm, tiny_task):
    with pytest.raises(TaskError, match="differentiable"):
        edge_attribution(tiny_lm, tiny_task, "acc")


def test_circuit_selection_faithfulness_and_overlap(tiny_lm, tiny_task, eap):
    c = select_edges(eap, tiny_lm.facts, top_n=15)
    assert 0 < len(c.edges) <= 15 and c.heads
    assert all(abs(e.score) >= abs(c.edges[-1].score) for e in c.edges)
    whole = select_edges(eap, tiny_lm.facts, threshold=0.0)
    f = faithfulness(tiny_lm, tiny_task, whole, "logit-diff")
    assert len(whole.heads) == 16 and f["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    o = overlap(c, c)
    assert o["heads_jaccard"] == 1.0 and o["edges_jaccard"] == 1.0
    n = select_nodes(eap.head_scores, eap.mlp_scores, top_n=3)
    assert len(n.heads) + len(n.mlps) == 3
    with pytest.raises(TaskError, match="exactly one of top_n and threshold"):
        select_edges(eap, tiny_lm.facts)


def test_receivers_through_the_attention_graph_equal_those_through_projection_rows(tiny_lm, monkeypatch):
    """The per-head receiver gradients that multi-head latent attention takes (each head's slice of the gradient at
    the attention function's q/k/v, pulled back through the attention's own graph) equal, on a model with plain
    projections (tiny-llama, GQA), the ones taken through the projections' rows: the split per head is right."""
    import torch

    from attnlens.analyses.circuits import eap
    from attnlens.analyses.circuits._hooks import CircuitModules
    from attnlens.analyses.circuits.metrics import Metric
    from attnlens.analyses.circuits.tasks import TaskBatch

    parts = CircuitModules(tiny_lm)
    ids = torch.tensor([[1, 40, 77, 12, 99, 40, 77, 150]])
    batch = TaskBatch(ids, ids, torch.tensor([40]), torch.tensor([77]), [])
    emb = tiny_lm.model.get_input_embeddings()(ids).detach()
    rows, gz, _ = eap._grad_pass(parts, emb, batch, Metric.LOGIT_DIFF)
    monkeypatch.setattr(eap, "_latent", lambda parts: True)
    graph, gz2, _ = eap._grad_pass(parts, emb, batch, Metric.LOGIT_DIFF)
    assert rows.shape == graph.shape and rows.abs().max() > 1e-4
    torch.testing.assert_close(graph, rows, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gz2[0], gz[0])
