import numpy as np
import pytest
import torch

import lens
from attnlens.analyses.circuits import Example, MlpRef, Task, encode_task, prepare, score_sets
from attnlens.analyses.circuits._hooks import CircuitModules, last_logits
from attnlens.analyses.circuits.ablation import (
    all_heads,
    edits_for,
    per_position_effects,
    random_sets,
)
from attnlens.analyses.circuits.path_patching import path_patch
from lens.heads import HeadRef


@pytest.mark.parametrize("method", ["zero", "mean", "resample", "patch"])
def test_ablating_nothing_changes_nothing(tiny_lm, tiny_task, method):
    ctx = prepare(tiny_lm, tiny_task, method, "logit-diff")
    assert score_sets(ctx, [[]])[0] == pytest.approx(ctx.baseline, abs=1e-6)


def test_patching_clean_into_clean_is_identity(tiny_lm, tiny_task):
    same = Task("same", [Example(e.prompt, e.answer, e.prompt, e.distractor) for b in tiny_task.batches for e in b.examples])
    ctx = prepare(tiny_lm, encode_task(same, tiny_lm.tokenizer), "patch", "logit-diff")
    everything = all_heads(tiny_lm.facts) + [MlpRef(l) for l in range(tiny_lm.facts.n_layers)]
    vals = score_sets(ctx, [everything, [HeadRef(2, 1)]])
    np.testing.assert_allclose(vals, ctx.baseline, atol=1e-5)


def test_zero_ablation_matches_lens_interventions(tiny_lm, tiny_task):
    """The batched hooks agree with lens' own HeadEdit path for the same edit."""
    b = tiny_task.batches[0]
    heads = [HeadRef(1, 2), HeadRef(3, 0)]
    edits = edits_for(prepare(tiny_lm, tiny_task, "zero", "logit-diff"), 0, heads)
    ours = last_logits(CircuitModules(tiny_lm), b.clean, [[], edits])
    ref = lens.run(tiny_lm, b.clean, sites=[lens.Site.Z], layers=[0],
                   edits=lens.zero_ablation([(h.layer, h.head) for h in heads])).logits[:, -1]
    torch.testing.assert_close(ours[1], ref.float(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[0], ours[1])


def test_batched_sets_equal_one_at_a_time(tiny_lm, tiny_task):
    ctx = prepare(tiny_lm, tiny_task, "mean", "prob")
    sets = [[HeadRef(0, 1)], [HeadRef(2, 3), MlpRef(1)], [MlpRef(3)]]
    together = score_sets(ctx, sets, max_rows=64)
    alone = [score_sets(ctx, [s], max_rows=4)[0] for s in sets]
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_per_position_effects_sum_near_whole(tiny_lm, tiny_task):
    ctx = prepare(tiny_lm, tiny_task, "patch", "logit-diff")
    eff = per_position_effects(ctx, [HeadRef(3, 1)])
    assert eff.shape == (1, tiny_task.batches[0].clean.shape[1])
    # the last layer's head only reaches the answer from the last position
    np.testing.assert_allclose(eff[0, :-1], 0, atol=1e-6)
    whole = score_sets(ctx, [[HeadRef(3, 1)]])[0] - ctx.baseline
    assert eff[0, -1] == pytest.approx(whole, abs=1e-6)


def test_random_sets_are_seeded():
    pool = [HeadRef(l, h) for l in range(4) for h in range(4)]
    assert random_sets(pool, 3, 5, 7) == random_sets(pool, 3, 5, 7)
    assert all(len(set(s)) == 3 for s in random_sets(pool, 3, 5, 7))


def test_path_patching(tiny_lm, tiny_task):
    senders = [HeadRef(0, h) for h in range(4)] + [HeadRef(3, 0)]
    eff = path_patch(tiny_lm, tiny_task, senders, [HeadRef(2, 1)], which="q")
    assert np.isnan(eff[-1]) and np.isfinite(eff[:-1]).all()
    same = Task("same", [Example(e.prompt, e.answer, e.prompt, e.distractor) for b in tiny_task.batches for e in b.examples])
    zero = path_patch(tiny_lm, encode_task(same, tiny_lm.tokenizer), senders[:2], [HeadRef(2, 1), HeadRef(3, 2)], which="k")
    np.testing.assert_allclose(zero, 0, atol=1e-5)
