"""The pure cross-attention analyses on hand-built maps whose answers are known."""

import numpy as np
import pytest
import torch

from attnlens.analyses.cross_attention import (
    METRICS,
    CrossAttentionError,
    TimedTokens,
    UtteranceMaps,
    alignment_head_scores,
    cross_attention_agreement,
    dtw_onset_errors,
    dtw_path,
    head_mean,
    peak_distance,
    ranks,
    saliency_agreement,
    token_measures,
)
from attnlens.analyses.registry import analyses
from attnlens.analyses.result import HeadScores, Provenance

PROV = Provenance(model="hand-built")


def _norm(x):
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / x.sum(-1, keepdim=True)


def test_token_measures_on_known_pairs():
    s = np.array([[1.0, 2.0, 3.0, 4.0]])
    same = token_measures(_norm(s).numpy(), s)
    assert same["pearson"][0] == pytest.approx(1.0) and same["spearman"][0] == pytest.approx(1.0)
    assert same["saliency_share"][0] == pytest.approx(1.0)
    reverse = token_measures(_norm(s[:, ::-1].copy()).numpy(), s)
    assert reverse["pearson"][0] == pytest.approx(-1.0) and reverse["spearman"][0] == pytest.approx(-1.0)
    # attention on the first half, saliency uniform: half of the saliency is where the attention is
    half = token_measures(np.array([[0.5, 0.5, 0.0, 0.0]]), np.ones((1, 4)))
    assert half["saliency_share"][0] == pytest.approx(0.5)
    assert np.isnan(half["pearson"][0])  # constant saliency: no correlation, skipped later
    # disjoint supports share nothing
    apart = token_measures(np.array([[1.0, 0.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0, 1.0]]))
    assert apart["saliency_share"][0] == 0.0 and apart["saliency_in_focus"][0] == 0.0


def test_saliency_in_focus_uses_the_smallest_set_holding_the_mass():
    a = np.array([[0.6, 0.3, 0.1, 0.0]])
    s = np.array([[0.1, 0.2, 0.3, 0.4]])
    m = token_measures(a, s, focus_mass=0.5)  # frame 0 alone holds 0.6 >= 0.5
    assert m["saliency_in_focus"][0] == pytest.approx(0.1) and m["focus_size"][0] == pytest.approx(0.25)
    m = token_measures(a, s, focus_mass=0.8)  # frames 0 and 1 (0.9)
    assert m["saliency_in_focus"][0] == pytest.approx(0.3) and m["focus_size"][0] == pytest.approx(0.5)


def test_ranks_average_ties():
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    np.testing.assert_array_equal(ranks(np.array([[0.0, 0.0], [2.0, 1.0]])), [[1.5, 1.5], [2.0, 1.0]])


def _utterance(n_layers=2, n_heads=3, n_tok=4, n_frames=12, n_valid=10, seed=0):
    """Head (1, 2) copies the saliency; head (0, 0) is its mirror image; the rest random."""
    g = torch.Generator().manual_seed(seed)
    sal = torch.rand(n_tok, n_frames, generator=g, dtype=torch.float64) + 0.01
    att = {}
    for layer in range(n_layers):
        a = torch.rand(n_heads, n_tok, n_frames, generator=g, dtype=torch.float64)
        att[layer] = a / a.sum(-1, keepdim=True)
    att[1][2] = _norm(sal)
    mirror = sal.clone()
    mirror[:, :n_valid] = sal[:, :n_valid].max() + sal[:, :n_valid].min() - sal[:, :n_valid]
    att[0][0] = _norm(mirror)
    return UtteranceMaps(tokens=tuple(f"t{i}" for i in range(n_tok)), cross_attention=att, saliency=sal,
                         n_valid=n_valid)


def test_agreement_scores_summary_and_best_head():
    results = cross_attention_agreement([_utterance(seed=0), _utterance(seed=1)], n_layers=2, n_heads=3,
                                        provenance=PROV)
    assert [r.metric for r in results] == list(METRICS)
    by = {r.metric: r for r in results}
    pearson = by["pearson"]
    assert isinstance(pearson, HeadScores) and pearson.shape == (2, 3)
    assert pearson.scores[1, 2] == pytest.approx(1.0)
    assert pearson.scores[0, 0] == pytest.approx(-1.0)
    assert pearson.summary["best_head"][:2] == [1, 2]
    assert by["spearman"].scores[1, 2] == pytest.approx(1.0)
    # the copying head's attention differs from its saliency only beyond n_valid, which is left out
    assert by["saliency_share"].scores[1, 2] == pytest.approx(1.0)
    assert pearson.summary["n_tokens"] == 8 and pearson.summary["n_utterances"] == 2
    assert 0 < by["saliency_share"].summary["chance"] < 1
    assert by["saliency_in_focus"].arrays["focus_size"].shape == (2, 3)
    assert len(pearson.summary["layer_mean"]) == 2 and pearson.arrays["layer_mean"].shape == (2,)


def test_layer_mean_averages_attention_before_scoring():
    u = _utterance()
    by = {r.metric: r for r in cross_attention_agreement([u], n_layers=2, n_heads=3, provenance=PROV)}
    v = u.n_valid
    mean_att = u.cross_attention[1][:, :, :v].mean(0).numpy()
    expected = token_measures(mean_att, u.saliency[:, :v].numpy())["pearson"].mean()
    assert by["pearson"].summary["layer_mean"][1] == pytest.approx(expected)
    every = np.stack([u.cross_attention[layer][:, :, :v].numpy() for layer in range(2)]).mean((0, 1))
    assert by["pearson"].summary["all_heads"] == pytest.approx(
        token_measures(every, u.saliency[:, :v].numpy())["pearson"].mean())
    assert by["pearson"].summary["head_mean"] == pytest.approx(np.nanmean(by["pearson"].scores))


def test_agreement_results_save_and_load(tmp_path):
    for r in cross_attention_agreement([_utterance()], n_layers=2, n_heads=3, provenance=PROV):
        back = HeadScores.load(r.save(tmp_path))
        np.testing.assert_array_equal(back.scores, r.scores)
        assert back.summary["best_head"] == r.summary["best_head"]


def test_agreement_input_errors():
    u = _utterance()
    with pytest.raises(CrossAttentionError, match="no utterances"):
        cross_attention_agreement([], n_layers=2, n_heads=3, provenance=PROV)
    with pytest.raises(CrossAttentionError, match="expected \\[head=4"):
        cross_attention_agreement([u], n_layers=2, n_heads=4, provenance=PROV)
    with pytest.raises(CrossAttentionError, match="layers \\[0, 1\\], expected 0-2"):
        cross_attention_agreement([u], n_layers=3, n_heads=3, provenance=PROV)
    neg = UtteranceMaps(u.tokens, u.cross_attention, -u.saliency, u.n_valid)
    with pytest.raises(CrossAttentionError, match="non-negative"):
        cross_attention_agreement([neg], n_layers=2, n_heads=3, provenance=PROV)
    short = UtteranceMaps(u.tokens[:2], u.cross_attention, u.saliency, u.n_valid)
    with pytest.raises(CrossAttentionError, match="token=2"):
        cross_attention_agreement([short], n_layers=2, n_heads=3, provenance=PROV)
    with pytest.raises(CrossAttentionError, match="focus_mass"):
        cross_attention_agreement([u], n_layers=2, n_heads=3, provenance=PROV, focus_mass=1.0)


def test_saliency_agreement_between_two_maps():
    a = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    out = saliency_agreement(a, 2 * a + 1)
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0) and out["n_tokens"] == 2
    with pytest.raises(CrossAttentionError, match="both be \\[token, frame\\]"):
        saliency_agreement(a, a[0])


# ---- alignment heads -------------------------------------------------------------------
def _diagonal_utterance(n_layers=2, n_heads=4, n_valid=40, n_frames=50, seed=0, aligned=((1, 0), (1, 2))):
    """Eight words of five frames each; the ``aligned`` heads peak inside each token's word,
    the others at a fixed frame; a punctuation token at the end has no span."""
    g = torch.Generator().manual_seed(seed)
    spans = [(5 * w, 5 * w + 5) for w in range(8)]
    token_spans = [s for s in spans for _ in range(2)] + [None]  # two tokens per word, then "."
    n_tok = len(token_spans)
    att = {layer: torch.rand(n_heads, n_tok, n_frames, generator=g) * 0.01 for layer in range(n_layers)}
    for layer in range(n_layers):
        for head in range(n_heads):
            for t, span in enumerate(token_spans):
                if (layer, head) in aligned and span is not None:
                    att[layer][head, t, span[0] + 2] += 1.0
                else:
                    att[layer][head, t, 3] += 1.0  # a fixed peak: right only for the first word
                att[layer][head, t, n_valid + 5] += 5.0  # a padding peak, beyond the audio: ignored
    return TimedTokens(tokens=tuple(f"t{i}" for i in range(n_tok)), spans=tuple(token_spans),
                       cross_attention=att, n_valid=n_valid)


def test_alignment_heads_follow_the_diagonal():
    r = alignment_head_scores([_diagonal_utterance(seed=0), _diagonal_utterance(seed=1)], n_layers=2, n_heads=4,
                              provenance=PROV, config_heads=[(1, 0), (0, 3)], tolerance=0)
    assert r.scores[1, 0] == 1.0 and r.scores[1, 2] == 1.0
    assert r.scores[0, 1] == pytest.approx(2 / 16)  # the fixed peak hits the first word's two tokens
    assert sorted(map(tuple, r.summary["top_heads"])) == [(1, 0), (1, 2)]
    assert r.summary["overlap"] == 1 and r.summary["config_ranks"][0] in (1, 2) and r.summary["config_ranks"][1] > 2
    assert r.summary["n_tokens"] == 32 and r.summary["chance"] == pytest.approx(5 / 40)
    assert r.arrays["mean_distance_s"][1, 0] == 0.0 and r.arrays["mean_distance_s"][0, 1] > 0
    assert sorted(r.arrays["rank"].ravel().tolist()) == list(range(1, 9))
    dtw = r.summary["dtw_onset_error_s"]
    assert dtw["top"] <= 0.04 and dtw["config"] > dtw["top"] and set(dtw) == {"top", "config", "all"}


def test_dtw_path_and_onsets():
    cost = np.ones((3, 6))
    cost[0, 0:2] = cost[1, 2:4] = cost[2, 4:6] = 0.0  # token k is cheap on frames 2k, 2k + 1
    tokens, frames = dtw_path(cost)
    assert tokens.tolist() == [0, 0, 1, 1, 2, 2] and frames.tolist() == [0, 1, 2, 3, 4, 5]
    u = _diagonal_utterance()
    errors = dtw_onset_errors(u, [(1, 0), (1, 2)])
    # peaks 2 frames into each 5-frame word: onsets land within 3 frames (less than a word)
    assert len(errors) == 8 and errors.max() <= 0.06 + 1e-9 and errors.mean() <= 0.04
    far = dtw_onset_errors(u, [(0, 1)])  # a head fixed on frame 3 cannot time the words
    assert far.mean() > 2 * errors.mean()


def test_alignment_tolerance_and_distance():
    np.testing.assert_array_equal(peak_distance(np.array([0, 4, 5, 9, 12]), np.array([5] * 5), np.array([10] * 5)),
                                  [5, 1, 0, 0, 3])
    near = _diagonal_utterance(aligned=())
    # every head peaks at frame 3; with a tolerance of 2 frames words 0 and 1 (frames 0-9) count
    r = alignment_head_scores([near], n_layers=2, n_heads=4, provenance=PROV, tolerance=2, top_k=3)
    assert r.scores[0, 0] == pytest.approx(4 / 16) and r.summary["top_k"] == 3


def test_alignment_input_errors():
    u = _diagonal_utterance()
    with pytest.raises(CrossAttentionError, match="outside 2 layers x 4 heads"):
        alignment_head_scores([u], n_layers=2, n_heads=4, provenance=PROV, config_heads=[(2, 0)])
    bad = TimedTokens(u.tokens, u.spans[:-1], u.cross_attention, u.n_valid)
    with pytest.raises(CrossAttentionError, match="spans for"):
        alignment_head_scores([bad], n_layers=2, n_heads=4, provenance=PROV)
    none = TimedTokens(u.tokens, (None,) * len(u.tokens), u.cross_attention, u.n_valid)
    with pytest.raises(CrossAttentionError, match="no utterance has a word token"):
        alignment_head_scores([none], n_layers=2, n_heads=4, provenance=PROV)


def test_head_mean_and_registry():
    u = _diagonal_utterance()
    m = head_mean(u.cross_attention, [(1, 0), (0, 1)])
    torch.testing.assert_close(m, (u.cross_attention[1][0] + u.cross_attention[0][1]) / 2)
    entries = analyses()
    assert entries["cross_attention"].metrics == METRICS and entries["alignment_heads"].metrics == ("hit_rate",)
