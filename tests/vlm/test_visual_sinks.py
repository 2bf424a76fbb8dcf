"""VAR pieces: sink dimensions, visual sinks, image-centric heads and redistribution."""

import numpy as np
import pytest
import torch

from attnlens.analyses.result import Provenance
from attnlens.analyses.scenes import make_scene, questions
from attnlens.analyses.visual_sinks import (
    VarInput,
    VisualSinkError,
    image_centric,
    redistribute,
    rms_normalise,
    sink_dimensions,
    var_modifier,
    visual_sink_mask,
    visual_sink_scores,
)
from attnlens.analyses.vlm_collect import var_edit, var_inputs
from lens import vlm


def _hidden(seed, pos=10, d=32, massive=None):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(pos, d, generator=g)
    for p, dim, value in massive or ():
        h[p, dim] = value
    return h


def test_sink_dimensions_come_from_massive_activations():
    prompts = [{0: _hidden(0, massive=[(0, 5, 900.0)]), 1: _hidden(1, massive=[(0, 5, -1200.0), (3, 9, 400.0)])},
               {0: _hidden(2, massive=[(0, 5, 800.0)])},
               {0: _hidden(3)}]
    dims = sink_dimensions(prompts, min_prompt_share=0.5)
    assert dims.dims == (5,)  # dim 9 is massive in one prompt of three only
    assert dims.prompt_share == {5: pytest.approx(2 / 3), 9: pytest.approx(1 / 3)}
    assert dims.max_abs[5] == pytest.approx(1200.0)
    assert sink_dimensions(prompts, min_prompt_share=0.3).dims == (5, 9)
    assert sink_dimensions([{0: _hidden(4)}]).dims == ()  # ordinary activations: no sink dimension
    with pytest.raises(VisualSinkError, match="no prompts"):
        sink_dimensions([])


def test_visual_sinks_are_image_tokens_over_tau_on_sink_dims():
    d = 64
    h = torch.randn(8, d) * 0.1
    h[2, 7] = 50.0   # image token, massive on the sink dim: RMS-normalised value ~ sqrt(64) = 8 * ... > 20? see below
    h[6, 7] = 50.0   # text token with the same value: a sink, but not a visual one
    h[3, 11] = 50.0  # image token, massive on another dim
    image = torch.tensor([False, True, True, True, True, False, False, False])
    normed = rms_normalise(h)
    assert normed[2, 7] > 7.5  # with d = 64 the largest possible |value| is sqrt(64) = 8
    assert visual_sink_mask(h, image, [7], tau=7.0).nonzero().flatten().tolist() == [2]
    assert visual_sink_mask(h, image, [7, 11], tau=7.0).nonzero().flatten().tolist() == [2, 3]
    assert not visual_sink_mask(h, image, [7], tau=8.0).any()  # tau above what any token can reach
    assert not visual_sink_mask(h, image, [], tau=1.0).any()


def test_image_centric_thresholds():
    # keys: 0 text, 1-4 image (1 a sink), 5 text; three queries
    w = torch.tensor([[[0.5, 0.05, 0.05, 0.05, 0.05, 0.3],     # image 0.2, sink share 0.25 -> centric
                       [0.7, 0.15, 0.0, 0.0, 0.0, 0.15],       # image 0.15 < 0.2 -> not
                       [0.2, 0.5, 0.1, 0.1, 0.0, 0.1]]])       # image 0.7, share 0.71 > 0.5 -> not
    image = torch.tensor([False, True, True, True, True, False])
    sink = torch.tensor([False, True, False, False, False, False])
    centric, img, share = image_centric(w, image, sink)
    assert centric.tolist() == [[True, False, False]]
    torch.testing.assert_close(img, torch.tensor([[0.2, 0.15, 0.7]], dtype=torch.float64))
    torch.testing.assert_close(share[0, 0], torch.tensor(0.25, dtype=torch.float64))


def test_redistribution_moves_sink_mass_to_the_other_image_tokens():
    w = torch.tensor([[[[0.3, 0.2, 0.1, 0.3, 0.0, 0.1]]]])  # [batch, head, q, k]; image 1-4, sink 1
    image = torch.tensor([[False, True, True, True, True, False]])
    sink = torch.tensor([[False, True, False, False, False, False]])
    out = redistribute(w, image, sink, factor=0.6)
    torch.testing.assert_close(out.sum(-1), w.sum(-1))                       # rows keep their sum
    assert out[0, 0, 0, 1].item() == pytest.approx(0.12)                     # sink x 0.6
    freed = 0.08
    assert out[0, 0, 0, 2].item() == pytest.approx(0.1 + freed * 0.1 / 0.4)  # in proportion: 1/4 and 3/4
    assert out[0, 0, 0, 3].item() == pytest.approx(0.3 + freed * 0.3 / 0.4)
    assert out[0, 0, 0, 4].item() == 0.0                                     # zero attention stays zero
    torch.testing.assert_close(out[..., [0, 5]], w[..., [0, 5]])             # text keys untouched


def test_redistribution_leaves_non_centric_rows_alone():
    w = torch.tensor([[[[0.9, 0.05, 0.05, 0.0]],      # image 0.1 < 0.2: not image-centric
                       [[0.1, 0.8, 0.1, 0.0]]]])      # sink share 0.89 > 0.5: not image-centric
    image = torch.tensor([[False, True, True, False]])
    sink = torch.tensor([[False, True, False, False]])
    torch.testing.assert_close(redistribute(w, image, sink), w)
    with pytest.raises(VisualSinkError, match=r"factor must be in \[0, 1\]"):
        redistribute(w, image, sink, factor=1.5)


def test_modifier_pads_masks_for_generated_tokens_and_permutes_heads():
    image = torch.tensor([[False, True, True, True]])
    sinks = {0: torch.tensor([[False, True, False, False]])}
    w = torch.zeros(1, 2, 1, 6)  # one decoding query over 6 keys (2 generated after the prompt)
    w[0, 0, 0] = torch.tensor([0.4, 0.1, 0.2, 0.1, 0.1, 0.1])   # image 0.4, share 0.25: centric
    w[0, 1, 0] = torch.tensor([0.8, 0.1, 0.05, 0.0, 0.0, 0.05])  # image 0.15: not centric
    out = var_modifier(image, sinks)(0, w)
    assert out[0, 0, 0, 1].item() == pytest.approx(0.06)
    torch.testing.assert_close(out[0, 1], w[0, 1])
    torch.testing.assert_close(out.sum(-1), w.sum(-1))
    assert var_modifier(image, sinks)(1, w) is w  # a layer without sinks passes through
    swapped = var_modifier(image, sinks, head_permutation={0: torch.tensor([1, 0])})(0, w)
    torch.testing.assert_close(swapped[0, 0], w[0, 0])  # the edit moved from head 0 to head 1
    assert swapped[0, 1, 0, 1].item() == pytest.approx(0.06)
    assert swapped[0, 1, 0, 2].item() == pytest.approx(0.09)


def test_scores_on_the_tiny_llava(tiny_llava):
    lm = tiny_llava
    items = [(make_scene(i), questions(make_scene(i))[0]) for i in range(2)]
    inputs = var_inputs(lm, items)
    x = inputs[0]
    assert x.image_mask.sum() == 17 and len(x.hidden) == 4
    assert x.attention[0].shape == (4, len(x.queries), x.image_mask.numel())
    torch.testing.assert_close(x.attention[2].sum(-1), torch.ones(4, len(x.queries)), atol=1e-5, rtol=0)
    assert x.labels[int(x.image_mask.nonzero()[0])] == "img0:CLS"
    # a random model has no massive activations: pretend dim 0 is a sink dim with a low tau
    from attnlens.analyses.visual_sinks import SinkDimensions

    dims = SinkDimensions(dims=(0,), prompt_share={0: 1.0}, max_abs={0: 1.0})
    r = visual_sink_scores(inputs, dims, n_layers=4, n_heads=4, provenance=Provenance(model="t"), tau=1.5)
    assert r.scores.shape == (4, 4) and np.all((r.scores >= 0) & (r.scores <= 1))
    assert r.arrays["sink_position_counts"].shape == (4, 17)
    assert np.all((r.arrays["image_attention"] >= 0) & (r.arrays["image_attention"] <= 1))


def test_var_edit_changes_answers_only_through_sinks(tiny_llava):
    from attnlens.analyses.visual_sinks import SinkDimensions

    lm = tiny_llava
    x = vlm.prepare(lm, "<image>what colour?", [make_scene(5).image])
    batch = vlm.collate([x], pad_id=2)
    with torch.no_grad():
        ref = lm.model(**batch.model_kwargs()).logits
    none = SinkDimensions(dims=(), prompt_share={}, max_abs={})
    with var_edit(lm, none)(batch) as sinks, torch.no_grad():
        same = lm.model(**batch.model_kwargs()).logits
    assert not any(s.any() for s in sinks.values())
    torch.testing.assert_close(same, ref, atol=1e-5, rtol=1e-5)  # no sinks: nothing to redistribute
    some = SinkDimensions(dims=(0, 1, 2), prompt_share={}, max_abs={})
    with var_edit(lm, some, tau=1.0)(batch) as sinks, torch.no_grad():
        edited = lm.model(**batch.model_kwargs()).logits
    assert any(s.any() for s in sinks.values())
    assert all(not (s & ~x.image_mask()[None]).any() for s in sinks.values())  # sinks only inside the image
    assert not torch.allclose(edited, ref)


def test_var_input_shapes_are_checked():
    x = VarInput(hidden={0: torch.zeros(5, 8)}, attention={0: torch.zeros(2, 1, 4)},
                 image_mask=torch.tensor([False, True, True, False, False]), queries=[4])
    from attnlens.analyses.visual_sinks import SinkDimensions

    with pytest.raises(VisualSinkError, match="attention of layer 0"):
        visual_sink_scores([x], SinkDimensions((), {}, {}), n_layers=1, n_heads=2, provenance=Provenance(model="t"))


def test_edits_run_through_generation(tiny_llava):
    """ask() with VAR's edit and with VHR's decodes with the KV cache; no edit gives the plain answers."""
    from attnlens.analyses.vision_aware import vhr_scales
    from attnlens.analyses.visual_sinks import SinkDimensions
    from attnlens.analyses.vlm_collect import ask, vhr_edit

    lm = tiny_llava
    items = [(make_scene(i), q) for i in range(3) for q in questions(make_scene(i))[:2]]
    plain = ask(lm, items, batch_size=4)
    none = SinkDimensions(dims=(), prompt_share={}, max_abs={})
    assert [r.given for r in ask(lm, items, batch_size=4, edit=var_edit(lm, none))] == [r.given for r in plain]
    some = SinkDimensions(dims=(0, 1, 2), prompt_share={}, max_abs={})
    edited = ask(lm, items, batch_size=4, edit=var_edit(lm, some, tau=1.0))
    assert len(edited) == len(items)
    scales = vhr_scales(np.random.default_rng(0).random((4, 4)), alpha=3.0)
    assert len(ask(lm, items, batch_size=4, edit=vhr_edit(lm, scales))) == len(items)
