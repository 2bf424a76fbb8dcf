"""Sinks, taxonomy and streaming scores on hand-built patterns, and pattern-vs-kernel agreement."""

import numpy as np
import pytest
import torch

from attnlens.analyses import Provenance
from attnlens.analyses.causal import AblationError, ablation_plan
from attnlens.analyses.sinks import (
    SinkInput,
    key_stats_from_kernel,
    key_stats_from_pattern,
    sink_scores,
)
from attnlens.analyses.streaming import (
    agreement,
    masses_from_pattern,
    scaled_window,
    streaming_profile,
)
from attnlens.analyses.taxonomy import TaxonomyError, head_type_scores, taxonomy_scores

PROV = Provenance(model="synthetic")


def causal_pattern(scores):
    """Softmax over causal rows of ``scores [head, q, k]`` -> ``[1, head, q, k]``."""
    n = scores.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1).unsqueeze(0)


def one_hot_rows(targets, n):
    """A pattern whose query i attends fully to key targets(i)."""
    p = torch.zeros(n, n)
    for i in range(n):
        p[i, targets(i)] = 1.0
    return p


def test_first_token_and_hidden_sinks():
    n = 40
    sink0 = one_hot_rows(lambda i: 0, n)
    hidden = one_hot_rows(lambda i: 5 if i >= 5 else i, n)  # key 5 receives all attention of later queries
    uniform = causal_pattern(torch.zeros(1, n, n))[0, 0]
    pattern = torch.stack([sink0, hidden, uniform]).unsqueeze(0)
    ks = key_stats_from_pattern(pattern)
    res = sink_scores([SinkInput(layers={0: ks}, tokens=[f"t{i}" for i in range(n)])], n_layers=1, n_heads=3,
                      provenance=PROV)
    first, hid = res
    assert first.scores[0, 0] == pytest.approx(1.0) and first.scores[0, 1] < 0.1
    assert hid.scores[0].tolist()[:2] == [0.0, 1.0]  # only head 1 has a hidden sink (key 5)
    top = hid.summary["top_hidden_sinks"][0]
    assert (top["position"], top["token"], top["n_heads"]) == (5, "t5", 1)
    assert first.summary["share_above_0.5_per_layer"] == [pytest.approx(1 / 3, abs=1e-3)]


def test_min_queries_ignores_the_tail():
    n = 30
    prev = one_hot_rows(lambda i: max(i - 1, 0), n).unsqueeze(0).unsqueeze(0)
    ks = key_stats_from_pattern(prev)
    inp = [SinkInput(layers={0: ks}, tokens=["x"] * n)]
    bare = sink_scores(inp, n_layers=1, n_heads=1, provenance=PROV, min_queries=1)[1]
    default = sink_scores(inp, n_layers=1, n_heads=1, provenance=PROV)[1]
    assert bare.scores[0, 0] > 0 and default.scores[0, 0] == 0


def test_massive_activations_and_sink_tokens():
    n, d = 12, 16
    h = torch.randn(n, d) * 0.1
    h[0, 3] = 500.0  # the first token carries a massive activation
    ks = key_stats_from_pattern(causal_pattern(torch.zeros(1, n, n)))
    res = sink_scores([SinkInput(layers={0: ks}, tokens=["<s>"] + ["a"] * (n - 1), hidden={0: h})],
                      n_layers=1, n_heads=1, provenance=PROV)[1]
    assert res.summary["massive_dims"] == [3] and res.summary["massive_on_sink_tokens"] == 1
    assert res.arrays["massive_max_abs_per_layer"][0] == pytest.approx(500.0)


def test_pattern_and_kernel_key_stats_agree():
    from attnlens.kernels import StatsSpec, attention_with_stats

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 20, 16, generator=g) for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    stats = attention_with_stats(q, k, v, causal=True, spec=StatsSpec(sink_tokens=1, window=0, key_stats=True),
                                 backend="torch").stats
    kk = k.repeat_interleave(2, dim=1)
    pattern = causal_pattern((q @ kk.transpose(-1, -2))[0] / 4.0)
    a, b = key_stats_from_pattern(pattern), key_stats_from_kernel(stats)
    torch.testing.assert_close(a.first_mass, b.first_mass, atol=1e-5, rtol=1e-4, check_dtype=False)
    torch.testing.assert_close(a.received_mean, b.received_mean, atol=1e-5, rtol=1e-4, check_dtype=False)


def repeated_pattern(kind, r=8, offset=1):
    n = offset + 2 * r

    def target(i):
        if kind == "prev":
            return max(i - 1, 0)
        if i >= offset + r:
            return i - r + (1 if kind == "induction" else 0)
        return 0

    return one_hot_rows(target, n)


def typed_patterns(r=12, offset=1, batch=2, seed=0):
    """Hand-built heads of each type on prefix + r + r: ``(pattern, shuffled)``, each ``[batch, 7, q, k]``.

    Heads: 0 sink, 1 previous token, 2 self (offset 0), 3 fixed offset 3, 4 induction (sink in
    the first copy), 5 duplicate token (likewise), 6 content-driven: each row attends to a key
    that depends on the tokens (drawn per sequence, so it moves between sequences and between
    the original and the shuffled input).
    """
    n = offset + 2 * r
    g = torch.Generator().manual_seed(seed)

    def fixed(fn):
        return one_hot_rows(lambda i: max(fn(i), 0), n)

    def content():
        keys = [int(torch.randint(0, i + 1, (1,), generator=g)) if i > 0 else 0 for i in range(n)]
        return one_hot_rows(lambda i: keys[i], n)

    def batch_of():
        rows = []
        for _ in range(batch):
            rows.append(torch.stack([fixed(lambda i: 0), fixed(lambda i: i - 1), fixed(lambda i: i),
                                     fixed(lambda i: i - 3 if i - 3 >= offset else 0),
                                     fixed(lambda i: i - r + 1 if i >= offset + r else 0),
                                     fixed(lambda i: i - r if i >= offset + r else 0), content()]))
        return torch.stack(rows)

    return batch_of(), batch_of()


def test_taxonomy_types_hand_built_heads():
    pattern, shuffled = typed_patterns()
    s = head_type_scores(pattern, repeat_len=12, offset=1, window=2, shuffled=shuffled)
    assert s["sink"][0] == pytest.approx(1.0) and s["sink"][4] > 0.4
    assert s["previous_token"][1] == pytest.approx(1.0)
    assert s["induction"][4] == pytest.approx(1.0) and s["duplicate_token"][5] == pytest.approx(1.0)
    pos = s["positional"]
    assert pos[2] == pytest.approx(1.0) and pos[3] == pytest.approx(1.0)  # position-driven heads
    assert pos[0] == 0 and pos[1] == 0  # sinks and previous-token heads are their own types
    assert pos[4] < 0.1 and pos[5] < 0.1 and pos[6] < 0.25  # content-driven heads
    # the old content-independence score flags every fixed-position head, sinks included
    assert s["content_independence"][0] == pytest.approx(1.0) and s["content_independence"][1] == pytest.approx(1.0)
    results = {r.metric: r for r in taxonomy_scores({0: pattern}, n_layers=1, n_heads=7, repeat_len=12, offset=1,
                                                    window=2, shuffled={0: shuffled}, provenance=PROV)}
    names = results["head_type"].params["type_names"]
    types = [names[int(c)] for c in results["head_type"].scores[0]]
    assert types == ["sink", "previous-token", "positional", "positional", "induction", "duplicate-token", "other"]
    assert results["positional"].summary["sink_heads_above_0.4"] == 0
    assert results["content_independence"].summary["sink_heads_above_0.4"] == 1
    assert results["head_type"].summary["counts"]["positional"] == 2
    assert results["head_type"].scale == "categorical" and results["head_type"].categories == names  # a code, not a rank
    assert results["sink"].scale == "sequential"


def test_positional_needs_the_same_offsets_in_every_condition():
    # a head at offset 2 on the original sequences but offset 4 on the shuffled ones follows content
    r, n = 12, 25
    a = one_hot_rows(lambda i: max(i - 2, 0), n)
    b = one_hot_rows(lambda i: max(i - 4, 0), n)
    same = head_type_scores(torch.stack([a, a])[None], repeat_len=r, offset=1, shuffled=torch.stack([a, a])[None])
    moved = head_type_scores(torch.stack([a, a])[None], repeat_len=r, offset=1, shuffled=torch.stack([b, b])[None])
    assert same["positional"][0] == pytest.approx(1.0) and moved["positional"][0] == pytest.approx(0.0)
    # and it scores like the sink where the offset would reach the sink keys: none of it counts
    assert same["sink"][0] < 0.1


def test_taxonomy_permutation_and_shape_error():
    heads = torch.stack([repeated_pattern("prev"), repeated_pattern("induction")]).unsqueeze(0)
    a = taxonomy_scores({0: heads}, n_layers=1, n_heads=2, repeat_len=8, offset=1, provenance=PROV)
    b = taxonomy_scores({0: heads[:, [1, 0]]}, n_layers=1, n_heads=2, repeat_len=8, offset=1, provenance=PROV)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.scores[:, ::-1], y.scores)
    with pytest.raises(TaxonomyError, match="positions were expected"):
        head_type_scores(heads, repeat_len=9, offset=1)
    with pytest.raises(TaxonomyError, match="shuffled pattern is"):
        head_type_scores(heads, repeat_len=8, offset=1, shuffled=heads[..., :-1, :-1])


def test_streaming_profile_and_scaling():
    assert scaled_window(8192) == (64, 256) and scaled_window(512) == (4, 16)
    n = 40
    sink_head = one_hot_rows(lambda i: 0, n)
    far_head = one_hot_rows(lambda i: 1 if i > 1 else 0, n)  # a distant, non-sink key
    s, w = masses_from_pattern(torch.stack([sink_head, far_head]).unsqueeze(0), sink=1, recent=4)
    r = streaming_profile([{0: (s, w)}], n_layers=1, n_heads=2, sink=1, recent=4, provenance=PROV)[0]
    assert r.scores[0, 0] == pytest.approx(1.0) and r.scores[0, 1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="longer than sink"):
        streaming_profile([{0: (s[..., :3], w[..., :3])}], n_layers=1, n_heads=2, sink=1, recent=4, provenance=PROV)


def test_agreement_of_identical_rankings():
    x = np.arange(12.0).reshape(3, 4)
    a = agreement(x, x / 100, top=3)
    assert a["spearman_vs_retrieval"] == pytest.approx(1.0) and a["top_k_overlap"] == 3


def test_ablation_plan():
    scores = np.arange(20.0).reshape(4, 5)
    plan = ablation_plan(scores, ks=[3], seeds=[0, 1])
    assert plan[3]["top"] == [(3, 4), (3, 3), (3, 2)]
    for rand in plan[3]["random"]:
        assert len(rand) == 3 and not set(rand) & set(plan[3]["top"])
    assert plan[3]["random"] == ablation_plan(scores, ks=[3], seeds=[0, 1])[3]["random"]
    with pytest.raises(AblationError, match="k=11 is out of range"):
        ablation_plan(scores, ks=[11], seeds=[0])


def test_gate_scores_expand_kv_heads_and_binarise():
    from attnlens.analyses.streaming import gate_scores

    g = torch.tensor([[1.0, 0.2], [0.4, 0.9]])
    r = gate_scores(g, n_heads=4, provenance=PROV)[0]
    np.testing.assert_allclose(r.scores, [[1, 1, 0.2, 0.2], [0.4, 0.4, 0.9, 0.9]])
    assert r.summary["retrieval_kv_heads"] == 2 and r.summary["sparsity"] == 0.5


def test_agreement_averages_tied_ranks():
    # Four heads tie at retrieval 0: they share rank 1.5, so the tie order creates no correlation.
    retrieval = np.array([0, 0, 0, 0, 0.5, 0.6])
    score = np.array([5.0, 4, 3, 2, 1, 6])
    expected = np.corrcoef([4, 3, 2, 1, 0, 5], [1.5, 1.5, 1.5, 1.5, 4, 5])[0, 1]
    assert agreement(score, retrieval, top=1)["spearman_vs_retrieval"] == pytest.approx(expected)


def test_kv_agreement_counts_retrieval_heads_in_full_kv_heads():
    from attnlens.analyses.streaming import kv_agreement

    keep = np.zeros((2, 4), dtype=bool)
    keep[1, 2:] = True  # one KV head of two query heads kept at full attention
    retrieval = np.zeros((2, 4))
    retrieval[1, 3], retrieval[0, 0] = 0.5, 0.3
    out = kv_agreement(keep, retrieval)
    assert out == {"retrieval_heads": 2, "retrieval_heads_in_full_kv_heads": 1,
                   "retrieval_heads_in_full_kv_heads_by_chance": 0.5}
