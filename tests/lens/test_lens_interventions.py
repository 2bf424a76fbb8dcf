import pytest
import torch

import lens
from lens import HeadEdit, Site
from lens.interventions import edit_z


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
    z = {layer: clean.capture.get(Site.Z, layer) for layer in range(4)}
    all_heads = [(layer, head) for layer in range(4) for head in range(4)]
    patched = lens.run(tiny_lm, ids, sites=[Site.Z], edits=lens.patch_heads(z, all_heads))
    torch.testing.assert_close(patched.logits, clean.logits, atol=1e-6, rtol=0)


def test_patching_every_head_from_another_prompt_moves_logits_there(tiny_lm):
    """Patching all heads of the last layer with a source run's z makes the last layer's
    attention output the source's, so the logits change toward it."""
    a, b = tiny_lm.encode("source text!"), tiny_lm.encode("target text?")
    src = lens.run(tiny_lm, a, sites=[Site.Z, Site.ATTN_OUT], layers=[3]).capture
    edits = lens.patch_heads({3: src.get(Site.Z, 3)}, [(3, h) for h in range(4)])
    got = lens.run(tiny_lm, b, sites=[Site.ATTN_OUT], layers=[3], edits=edits).capture
    torch.testing.assert_close(got.get(Site.ATTN_OUT, 3), src.get(Site.ATTN_OUT, 3), atol=1e-5, rtol=0)


def test_resample_draws_rows_reproducibly(tiny_lm):
    ids = torch.cat([tiny_lm.encode("aaaa"), tiny_lm.encode("bbbb"), tiny_lm.encode("cccc")])
    z = {2: lens.run(tiny_lm, ids, sites=[Site.Z], layers=[2]).capture.get(Site.Z, 2)}
    e1 = lens.resample_ablation(z, [(2, 1)], batch=5, seed=3)
    e2 = lens.resample_ablation(z, [(2, 1)], batch=5, seed=3)
    assert torch.equal(e1[0].replacement, e2[0].replacement)
    assert e1[0].replacement.shape == (5, ids.shape[1], 16)


def test_edit_with_wrong_shape_is_refused():
    z = torch.zeros(1, 5, 4, 16)
    with pytest.raises(lens.InterventionError, match=r"replacement for L1H2 has shape \(1, 7, 16\)"):
        edit_z(z, [HeadEdit(1, 2, torch.zeros(1, 7, 16))])
    with pytest.raises(lens.InterventionError, match="head 4 is out of range"):
        edit_z(z, [HeadEdit(1, 4)])
    with pytest.raises(lens.InterventionError, match="must be"):
        HeadEdit(0, 0, torch.zeros(2, 2))


def test_ablation_applies_during_generation(tiny_lm):
    ids = tiny_lm.encode("generate")
    heads = [(layer, head) for layer in range(4) for head in range(4)]
    with lens.capture(tiny_lm, sites=[Site.Z], layers=[0], edits=lens.zero_ablation(heads)) as cap:
        tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert all(torch.count_nonzero(step[lens.SiteKey(Site.Z, 0)]) == 0 for step in cap.steps)
