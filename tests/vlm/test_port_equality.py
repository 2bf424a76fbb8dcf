"""Old private hooks (analyses.vlm_edits) against the project's systems (lens.edits, lens.attention):
the same numbers on the tiny random LLaVA. Deleted with the old module once it passes."""

import numpy as np
import torch

from analyses import vlm_edits
from analyses.scenes import make_scene, questions
from analyses.visual_sinks import SinkDimensions
from analyses.vlm_collect import var_inputs, vhr_edit
from lens import vlm
from lens.attention import modifying_weights
from lens.edits import editing


def _scales():
    s = np.ones((4, 4))
    s[0, 1], s[2, 3], s[3, 0] = 2.0, 2.0, 0.5
    return s


def test_vhr_scaling_is_the_same(tiny_llava):
    from analyses.vision_aware import vhr_edits

    lm = tiny_llava
    x = vlm.prepare(lm, "<image>hello", [make_scene(3).image])
    with torch.no_grad():
        with vlm_edits.scale_head_outputs(lm.model, _scales()):
            old = lm.model(**x.model_kwargs()).logits
        with editing(lm, vhr_edits(_scales(), n_layers=4, n_heads=4)):
            new = lm.model(**x.model_kwargs()).logits
        base = lm.model(**x.model_kwargs()).logits
    torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(new, base, atol=1e-3)


def test_weight_modifier_is_the_same(tiny_llava):
    lm = tiny_llava
    x = vlm.prepare(lm, "<image>hello", [make_scene(4).image])

    def sharpen(layer, w):
        w = w ** 2 if layer % 2 == 0 else w
        return w / w.sum(-1, keepdim=True)

    with torch.no_grad():
        with vlm_edits.modify_attention_weights(lm.model, sharpen):
            old = lm.model(**x.model_kwargs()).logits
        with modifying_weights(lm, sharpen):
            new = lm.model(**x.model_kwargs()).logits
        base = lm.model(**x.model_kwargs()).logits
    torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(new, base, atol=1e-3)


def _var_logits(lm, batch, dims, **kw):
    from analyses.vlm_collect import _dtype, var_edit

    with torch.no_grad(), var_edit(lm, dims, tau=0.5, factor=0.6, **kw)(batch) as sinks:
        logits = lm.model(**batch.model_kwargs(lm.device, _dtype(lm))).logits
    return logits, sinks


def test_var_edit_vhr_edit_and_var_inputs_are_the_same(tiny_llava, monkeypatch):
    """VAR's whole path (sinks from a clean pass, then the redistributed pass), its random-head
    control, VHR as a BatchEdit, and the recorded attention of var_inputs: the same numbers through
    the old hooks and the new systems."""
    import analyses.vlm_collect as vc

    lm = tiny_llava
    items = [(make_scene(i), q) for i in range(3) for q in questions(make_scene(i))[:2]]
    batch = vlm.collate([vlm.prepare(lm, vc.question_prompt(lm, q.text, with_image=True), [s.image], chat=True)
                         for s, q in items], vc._pad_id(lm))
    dims = SinkDimensions(dims=(3, 17), prompt_share={}, max_abs={})
    kw = batch.model_kwargs(lm.device, vc._dtype(lm))
    with torch.no_grad():
        base = lm.model(**kw).logits
        with vhr_edit(lm, _scales())(batch):
            new_vhr = lm.model(**kw).logits
    new_var, sinks = _var_logits(lm, batch, dims)
    new_ctl, _ = _var_logits(lm, batch, dims, random_heads_seed=1)
    new_in = var_inputs(lm, items[:2])
    monkeypatch.setattr(vc, "modifying_weights", lambda lm, fn: vlm_edits.modify_attention_weights(lm.model, fn))
    with torch.no_grad(), vlm_edits.scale_head_outputs(lm.model, _scales()):
        old_vhr = lm.model(**kw).logits
    old_var, _ = _var_logits(lm, batch, dims)
    old_ctl, _ = _var_logits(lm, batch, dims, random_heads_seed=1)
    assert sum(int(m.sum()) for m in sinks.values()) > 0  # the edit had sinks to redistribute from
    for new, old in ((new_var, old_var), (new_ctl, old_ctl), (new_vhr, old_vhr)):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(new, base, atol=1e-4)

    def record(layer, w, store):
        store[layer] = w[0].float().clone()
        return w

    for x_new, (s, q) in zip(new_in, items[:2]):
        x = vlm.prepare(lm, vc.question_prompt(lm, q.text, with_image=True), [s.image], chat=True)
        start = max(sp.end for sp in x.spans)
        store = {}
        with torch.no_grad(), vlm_edits.modify_attention_weights(lm.model, lambda l, w: record(l, w, store)):
            lm.model(**x.model_kwargs())
        for layer in range(4):
            torch.testing.assert_close(x_new.attention[layer], store[layer][:, start:], atol=1e-6, rtol=1e-6)
