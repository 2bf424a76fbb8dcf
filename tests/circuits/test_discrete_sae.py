"""Discrete-SAE circuit identification (O'Neill & Bui 2024): training, codes, scores, CLI."""

import json

import numpy as np
import pytest
import torch

from attnlens.analyses.circuits.discrete_sae import (
    SAEConfig,
    discrete_sae_scores,
    edge_scores,
    node_scores,
    precision_recall,
    train_saes,
)
from attnlens.analyses.circuits.tasks import TaskError
from attnlens.formats.circuit import Circuit
from attnlens.formats.head_scores import HeadScores


def _clusters(n_units=3, d=8, n=10, seed=0):
    """Per unit: points around 4 well-separated centres (so an SAE of 16 latents can code them)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_units, 4, d, generator=g) * 3
    which = torch.randint(0, 4, (n, n_units), generator=g)
    x = centres[torch.arange(n_units), which] + 0.05 * torch.randn(n, n_units, d, generator=g)
    return x


def test_sae_trains_reconstructs_and_codes_are_discrete():
    x = _clusters()
    sae = train_saes(x, SAEConfig(steps=400))
    untrained = train_saes(x, SAEConfig(steps=1, lr=1e-9))
    assert (sae.unexplained(x) < 0.2).all() and (sae.unexplained(x) < untrained.unexplained(x)).all()
    codes = sae.codes(x)
    assert codes.dtype == torch.int64 and codes.shape == (10, 3)
    assert ((codes >= 0) & (codes <= sae.n_codes)).all()  # a latent index, or n_codes for "nothing active"
    f = sae.encode(x)
    assert (f >= 0).all() and (f > 0).float().mean() < 1.0  # ReLU latents, some inactive
    # the same point always gets the same code: codes are a function of the input
    assert torch.equal(sae.codes(torch.cat([x, x])), torch.cat([codes, codes]))


def test_node_and_edge_scores_by_hand():
    pos = torch.tensor([[0, 5], [1, 5], [1, 6]])  # [example, unit]
    neg = torch.tensor([[0, 5], [2, 7], [2, 7]])
    unique, coverage = node_scores(pos, neg)
    assert unique.tolist() == [1, 1]  # unit 0: code 1 only on positives; unit 1: code 6
    assert coverage.tolist() == pytest.approx([2 / 3, 1 / 3])
    e = edge_scores(pos, neg, np.array([0, 1]))
    # pairs on positives (0,5) (1,5) (1,6); (0,5) is on a negative too -> 2 unique; no edge backwards
    assert e.tolist() == [[0, 2], [0, 0]]
    e_same_layer = edge_scores(pos, neg, np.array([0, 0]))
    assert not e_same_layer.any()


def test_the_head_that_differs_is_found_first():
    """Closed form: heads whose outputs are the same on positive and negative prompts cannot have
    a code unique to positives (the encoder is a function), so they score exactly 0; the one head
    whose positive outputs sit in their own cluster scores above 0 and ranks first."""
    n, layers, heads, d = 8, 3, 4, 16
    g = torch.Generator().manual_seed(1)
    shared = torch.randn(n, layers, heads, d, generator=g)
    pos, neg = shared.clone(), shared.clone()
    pos[:, 1, 2] = 4.0 + 0.1 * torch.randn(n, d, generator=g)  # head L1H2: positives far from negatives
    s = discrete_sae_scores(pos, neg, SAEConfig(seed=3))
    assert s.unique[1, 2] >= 1 and s.coverage[1, 2] == 1.0
    mask = np.ones((layers, heads), bool)
    mask[1, 2] = False
    assert (s.unique[mask] == 0).all() and (s.score[mask] == 0).all()
    assert np.unravel_index(np.argmax(s.score), s.score.shape) == (1, 2)
    # edges: only pairs through L1H2 can have a code pair unique to positives
    e = s.edges.reshape(layers, heads, layers, heads)
    assert e[:, :, 1, 2].sum() + e[1, 2].sum() == e.sum() > 0
    assert all(t["sender"] == "L1H2" or t["receiver"] == "L1H2" for t in s.top_edges(5))


def test_deterministic_with_a_seed():
    x = _clusters(n_units=4, seed=2)
    pos, neg = x[:5, None], x[5:, None]  # [example, layer=1, head=4, d]
    a = discrete_sae_scores(pos, neg, SAEConfig(seed=7))
    b = discrete_sae_scores(pos, neg, SAEConfig(seed=7))
    assert np.array_equal(a.unique, b.unique) and np.array_equal(a.edges, b.edges)
    assert np.array_equal(a.unexplained, b.unexplained)
    sa, sb = train_saes(x, SAEConfig(seed=7)), train_saes(x, SAEConfig(seed=8))
    assert torch.equal(sa.w_enc, train_saes(x, SAEConfig(seed=7)).w_enc) and not torch.equal(sa.w_enc, sb.w_enc)


def test_bad_inputs_name_what_was_expected():
    for kw, message in (({"n_codes": 1}, "n_codes must be an integer 2-4096"), ({"l1": -1.0}, "l1 must be a finite"),
                        ({"steps": 0}, "steps must be an integer 1-100000"), ({"lr": 0}, "lr must be a finite"),
                        ({"seed": -1}, "seed must be an integer >= 0")):
        with pytest.raises(TaskError, match=message):
            SAEConfig(**kw)
    with pytest.raises(TaskError, match="same layer, head and d"):
        discrete_sae_scores(torch.zeros(2, 2, 2, 4), torch.zeros(2, 2, 3, 4))
    with pytest.raises(TaskError, match="at least one positive and one negative"):
        discrete_sae_scores(torch.zeros(2, 2, 2, 4), torch.zeros(0, 2, 2, 4))
    with pytest.raises(TaskError, match="NaN or inf"):
        train_saes(torch.full((3, 2, 4), float("nan")))


def test_precision_recall():
    pr = precision_recall([(0, 1), (2, 3), (4, 5)], [(0, 1), (4, 5)])
    assert pr == {"found": 3, "truth": 2, "shared": 2, "precision": pytest.approx(2 / 3), "recall": 1.0}


def test_on_a_tiny_model(tiny_lm, tiny_task):
    from attnlens.pipelines.circuits import CircuitMethod, find_circuit, head_outputs

    pos, neg = head_outputs(tiny_lm, tiny_task, 5)
    f = tiny_lm.facts
    assert pos.shape == neg.shape == (5, f.n_layers, f.n_heads, f.d_head)
    a = find_circuit(tiny_lm, tiny_task, CircuitMethod.SAE, "logit-diff", top_n=4, sae_examples=5)
    b = find_circuit(tiny_lm, tiny_task, CircuitMethod.SAE, "logit-diff", top_n=4, sae_examples=5)
    assert a.circuit.method == "sae" and len(a.circuit.heads) == 4 and not a.circuit.mlps
    assert a.circuit.heads == b.circuit.heads and np.array_equal(a.head_scores, b.head_scores)
    assert a.head_scores.shape == (f.n_layers, f.n_heads) and a.seconds > 0
    top = sorted(np.ndindex(a.head_scores.shape), key=lambda i: -a.head_scores[i])[:4]
    assert sorted(a.circuit.heads) == sorted(top)
    assert (np.asarray(a.circuit.details["sae"]["unexplained_variance"]) < 1).all()


def test_cli_writes_a_circuit_formats_reads(cli, tmp_path):
    task = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{a}b{c} {a}x", "answer": "q", "corrupted": f"{d}b{c} {a}x", "distractor": "z"}
            for a, c, d in zip("abcdef", "hgfedc", "mnopqr")]
    task.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "sae"
    code, _, err = cli("circuit", "tiny-llama", "--task", task, "--method", "sae", "--top-n", "5",
                       "--sae-examples", "6", "--sae-codes", "8", "--compare-patching", "--out", out)
    assert code == 0, err
    c = Circuit.load(out / "pairs_sae.circuit.json")
    assert c.method == "sae" and len(c.heads) == 5 and c.params["sae_examples"] == 6 and c.params["sae_n_codes"] == 8
    assert c.faithfulness["setting"] == "wang2022" and c.params["unit"] == "heads"
    v = c.details["vs_patching"]
    assert {"sae", "eap", "eap-ig"} <= set(v) and v["sae"]["top5_heads_vs_patching"]["found"] == 5
    assert 0 <= v["sae"]["heads_vs_eap-ig"]["precision"] <= 1 and v["sae"]["seconds"] > 0
    hs = HeadScores.load(out / "circuit.pairs_sae_logit-diff.json")
    assert hs.shape == (4, 4) and "codes unique to positive" in hs.description
    assert "sae vs per-head patching" in err and "precision" in err
    for bad, message in ((["--method", "eap", "--sae-codes", "4"], "--sae-codes does nothing here"),
                         (["--method", "sae", "--unit", "edges"], "--unit does nothing here"),
                         (["--method", "sae", "--threshold", "0.1"], "--threshold does nothing here"),
                         (["--method", "sae", "--sae-codes", "1"], "--sae-codes")):
        code, _, err = cli("circuit", "tiny-llama", "--task", task, "--out", tmp_path / "never", *bad)
        assert code == 2 and message in err and "a bug in attnlens" not in err, (bad, err)
    assert not (tmp_path / "never").exists()
