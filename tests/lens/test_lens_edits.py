"""The one edit system: zero / mean / resample / patch / scale of heads, MLPs and the residual stream."""

import pytest
import torch

import lens
from lens import HeadRef, MlpRef, ResidRef, Site
from lens.edits import Edit, Over, Reference, Replace, Scale, Zero, apply_edits


def _ref(lm, ids):
    cap = lens.run(lm, ids, sites=[Site.Z, Site.MLP_OUT, Site.RESID_POST]).capture
    return Reference.from_capture(cap)


def test_no_edits_change_nothing(tiny_lm):
    ids = tiny_lm.encode("nothing changes")
    a = lens.run(tiny_lm, ids, sites=[Site.Z])
    b = lens.run(tiny_lm, ids, sites=[Site.Z], edits=[])
    assert torch.equal(a.logits, b.logits)


def test_zero_ablation_zeroes_only_that_head(tiny_lm):
    ids = tiny_lm.encode("ablate one head")
    clean = lens.run(tiny_lm, ids, sites=[Site.Z], layers=[1]).capture.get(Site.Z, 1)
    cap = lens.run(tiny_lm, ids, sites=[Site.Z], layers=[1], edits=lens.zero_ablation([(1, 2)])).capture
    z = cap.get(Site.Z, 1)
    assert torch.count_nonzero(z[:, 2]) == 0
    torch.testing.assert_close(z[:, [0, 1, 3]], clean[:, [0, 1, 3]])


def test_patching_a_run_with_itself_is_identity(tiny_lm):
    ids = tiny_lm.encode("patch clean into clean")
    clean = lens.run(tiny_lm, ids, sites=[Site.Z])
    ref = _ref(tiny_lm, ids)
    comps = [HeadRef(la, h) for la in range(4) for h in range(4)] + [MlpRef(la) for la in range(4)]
    patched = lens.run(tiny_lm, ids, sites=[Site.Z], edits=lens.patch(ref, comps + [ResidRef(2)]))
    torch.testing.assert_close(patched.logits, clean.logits, atol=1e-6, rtol=0)


def test_patching_every_head_from_another_prompt_moves_logits_there(tiny_lm):
    """Patching all heads of the last layer with a source run's z makes the last layer's
    attention output the source's."""
    a, b = tiny_lm.encode("source text!"), tiny_lm.encode("target text?")
    src = lens.run(tiny_lm, a, sites=[Site.Z, Site.ATTN_OUT], layers=[3]).capture
    edits = lens.patch(Reference(z={3: src.get(Site.Z, 3).transpose(1, 2)}), [(3, h) for h in range(4)])
    got = lens.run(tiny_lm, b, sites=[Site.ATTN_OUT], layers=[3], edits=edits).capture
    torch.testing.assert_close(got.get(Site.ATTN_OUT, 3), src.get(Site.ATTN_OUT, 3), atol=1e-5, rtol=0)


def test_patching_the_residual_stream_replaces_everything_after_it(tiny_lm):
    a, b = tiny_lm.encode("source text!"), tiny_lm.encode("target text?")
    src = lens.run(tiny_lm, a, sites=[Site.RESID_POST], layers=[3])
    got = lens.run(tiny_lm, b, sites=[Site.Z], layers=[0], edits=lens.patch(_ref(tiny_lm, a), [ResidRef(3)]))
    torch.testing.assert_close(got.logits, src.logits, atol=1e-5, rtol=0)


def test_mean_states_what_it_averages_over(tiny_lm):
    ids = torch.cat([tiny_lm.encode("aaaa"), tiny_lm.encode("bbbb"), tiny_lm.encode("cccc")])
    ref = _ref(tiny_lm, ids)
    pooled, = lens.mean_ablation(ref, [(2, 1)])
    per_pos, = lens.mean_ablation(ref, [(2, 1)], over=Over.BATCH)
    z = ref.z[2][:, :, 1]
    assert pooled.action.over is Over.BATCH_AND_POSITION and pooled.action.value.shape == (16,)
    assert per_pos.action.over is Over.BATCH and per_pos.action.value.shape == (ids.shape[1], 16)
    torch.testing.assert_close(pooled.action.value, z.mean((0, 1)))
    torch.testing.assert_close(per_pos.action.value, z.mean(0))
    with pytest.raises(lens.InterventionError, match="not ROW"):
        lens.mean_ablation(ref, [(2, 1)], over=Over.ROW)


def test_resample_draws_rows_reproducibly(tiny_lm):
    ids = torch.cat([tiny_lm.encode("aaaa"), tiny_lm.encode("bbbb"), tiny_lm.encode("cccc")])
    ref = _ref(tiny_lm, ids)
    e1 = lens.resample_ablation(ref, [(2, 1)], batch=5, seed=3)
    e2 = lens.resample_ablation(ref, [(2, 1)], batch=5, seed=3)
    assert torch.equal(e1[0].action.value, e2[0].action.value)
    assert e1[0].action.value.shape == (5, ids.shape[1], 16)


def test_scale_multiplies_only_the_chosen_head(tiny_lm):
    ids = tiny_lm.encode("scale a head")
    clean = lens.run(tiny_lm, ids, sites=[Site.Z], layers=[1]).capture.get(Site.Z, 1)
    got = lens.run(tiny_lm, ids, sites=[Site.Z], layers=[1], edits=lens.scale_heads({(1, 2): 3.0})).capture
    torch.testing.assert_close(got.get(Site.Z, 1)[:, 2], 3 * clean[:, 2])
    torch.testing.assert_close(got.get(Site.Z, 1)[:, [0, 1, 3]], clean[:, [0, 1, 3]])


def test_position_edits_touch_one_position():
    z = torch.ones(2, 5, 4, 8)
    out = apply_edits(z, [Edit(HeadRef(0, 1), Zero(), position=3)], n_heads=4)
    assert out[:, 3, 1].abs().sum() == 0 and out.sum() == z.sum() - 2 * 8


def test_groups_edit_their_own_rows():
    z = torch.ones(6, 2, 4, 8)  # 3 groups of 2 rows
    edits = [Edit(HeadRef(0, 0), Zero()), Edit(HeadRef(0, 1), Scale(2.0))]
    out = apply_edits(z, edits, n_heads=4, n_groups=3, group_of=[0, 2])
    assert out[0:2, :, 0].sum() == 0 and out[2:, :, 0].sum() == 4 * 2 * 8
    assert out[4:6, :, 1].sum() == 2 * 2 * 2 * 8 and out[0:4, :, 1].sum() == 4 * 2 * 8


def test_bad_edits_are_refused(tiny_lm):
    z = torch.zeros(1, 5, 4, 16)
    with pytest.raises(lens.InterventionError, match=r"shape \(1, 7, 16\) does not fit \[batch=1, pos=5"):
        apply_edits(z, [Edit(HeadRef(1, 2), Replace(torch.zeros(1, 7, 16), Over.ROW))], n_heads=4)
    with pytest.raises(lens.InterventionError, match="head 4 is out of range"):
        apply_edits(z, [Edit(HeadRef(1, 4))], n_heads=4)
    with pytest.raises(lens.InterventionError, match="must have 1 dims"):
        Replace(torch.zeros(2, 2), Over.BATCH_AND_POSITION)
    with pytest.raises(lens.InterventionError, match="NaN or inf"):
        Replace(torch.tensor([float("nan")]), Over.BATCH_AND_POSITION)
    with pytest.raises(lens.InterventionError, match="finite number"):
        Scale(float("inf"))
    with pytest.raises(lens.InterventionError, match="layer 9 is out of range: tiny-llama has layers 0-3"):
        lens.run(tiny_lm, "x y", edits=lens.zero_ablation([(9, 0)]))


def test_ablation_applies_during_generation(tiny_lm):
    ids = tiny_lm.encode("generate")
    heads = [(layer, head) for layer in range(4) for head in range(4)]
    with lens.capture(tiny_lm, sites=[Site.Z], layers=[0], edits=lens.zero_ablation(heads)) as cap:
        tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert len(cap.steps) == 3
    assert all(torch.count_nonzero(step[lens.SiteKey(Site.Z, 0)]) == 0 for step in cap.steps)
