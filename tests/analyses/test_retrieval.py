"""Retrieval score on hand-built traces: the copying head is found, invariances, errors."""

import numpy as np
import pytest
import torch

from attnlens.analyses import Provenance
from attnlens.analyses.retrieval import DecodeTrace, RetrievalError, copy_counts, retrieval_scores

PROV = Provenance(model="synthetic")
L, H = 3, 4


def copying_trace(copier=(1, 2), recall=1.0, seed=0):
    """Prompt of 30 random ids, needle at [10, 16); head `copier` attends to the needle token it then emits."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(100, 200, (30,), generator=g)
    needle = list(range(10, 16))
    generated = prompt[needle]
    top1 = torch.randint(0, 30, (len(needle), L, H), generator=g)
    top1[:, copier[0], copier[1]] = torch.tensor(needle)
    # A head that attends into the needle but emits nothing it attends to: never counted.
    top1[:, 0, 0] = torch.tensor([n + 1 if n + 1 < 16 else 10 for n in needle])
    return DecodeTrace(prompt_ids=prompt, generated=generated, top1=top1, needle_span=(10, 16), recall=recall,
                       length=30, depth=0.5)


def test_copying_head_scores_one():
    r = retrieval_scores([copying_trace()], provenance=PROV)[0]
    assert r.scores.shape == (L, H)
    assert r.scores[1, 2] == pytest.approx(1.0)
    assert r.top(1)[0][:2] == (1, 2)
    assert r.scores[0, 0] < 0.2  # attends inside the needle, but not to the token it emits


def test_permuting_heads_permutes_scores():
    t = copying_trace()
    perm = torch.tensor([2, 0, 3, 1])
    tp = DecodeTrace(prompt_ids=t.prompt_ids, generated=t.generated, top1=t.top1[:, :, perm],
                     needle_span=t.needle_span, recall=t.recall)
    a = retrieval_scores([t], provenance=PROV)[0].scores
    b = retrieval_scores([tp], provenance=PROV)[0].scores
    np.testing.assert_allclose(b, a[:, perm.numpy()])


def test_failed_trials_do_not_count():
    good, bad = copying_trace(copier=(1, 2)), copying_trace(copier=(2, 3), recall=0.5, seed=1)
    r = retrieval_scores([good, bad], provenance=PROV)[0]
    assert r.scores[1, 2] == pytest.approx(1.0) and r.scores[2, 3] < 0.5
    assert r.summary["trials_passed"] == 1 and r.summary["needle_accuracy"] == 0.5


def test_score_is_mean_over_passing_trials():
    a, b = copying_trace(copier=(1, 2)), copying_trace(copier=(2, 3), seed=1)
    r = retrieval_scores([a, b], provenance=PROV)[0]
    expected = (copy_counts(a)[1, 2].item() + copy_counts(b)[1, 2].item()) / 6 / 2
    assert r.scores[1, 2] == pytest.approx(expected)


def test_no_passing_trial_is_a_clear_error():
    with pytest.raises(RetrievalError, match="0 of 2 needle trials passed"):
        retrieval_scores([copying_trace(recall=0.2), copying_trace(recall=0.5)], provenance=PROV)
    with pytest.raises(RetrievalError, match="no needle trials"):
        retrieval_scores([], provenance=PROV)


def test_step_mismatch_is_an_error():
    t = copying_trace()
    bad = DecodeTrace(prompt_ids=t.prompt_ids, generated=t.generated[:3], top1=t.top1, needle_span=(10, 16), recall=1)
    with pytest.raises(RetrievalError, match="generated tokens"):
        retrieval_scores([bad], provenance=PROV)


def test_result_round_trips(tmp_path):
    r = retrieval_scores([copying_trace()], provenance=PROV)[0]
    from attnlens.analyses import HeadScores

    back = HeadScores.load(r.save(tmp_path))
    np.testing.assert_array_equal(back.scores, r.scores)
    assert back.summary["heads_above_0.1"] == r.summary["heads_above_0.1"]
