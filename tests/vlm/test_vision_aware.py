"""VHD, T-VHD and VHR on hand-built head outputs and on the tiny random LLaVA."""

import numpy as np
import pytest
import torch

from attnlens.analyses.result import Provenance
from attnlens.analyses.scenes import make_scene, questions
from attnlens.analyses.vision_aware import (
    HeadOutputPair,
    VisionAwareError,
    head_divergence,
    random_scales_like,
    token_divergence,
    vhr_edits,
    vhr_scales,
    vision_aware_scores,
)
from attnlens.analyses.vlm_collect import head_output_pairs
from lens import vlm
from lens.attention import modifying_weights
from lens.edits import editing

PROV = Provenance(model="test")


def _pair(seed=0, steps=2, layers=3, heads=4, d=8):
    g = torch.Generator().manual_seed(seed)
    return HeadOutputPair(torch.randn(steps, layers, heads, d, generator=g), torch.randn(steps, layers, heads, d, generator=g))


def test_vhd_is_the_euclidean_distance_per_head():
    p = _pair()
    vhd = head_divergence(p)
    assert vhd.shape == (2, 3, 4)
    torch.testing.assert_close(vhd[1, 2, 3], (p.z_image[1, 2, 3] - p.z_text[1, 2, 3]).double().norm())
    same = HeadOutputPair(p.z_image, p.z_image.clone())
    assert head_divergence(same).abs().max() == 0


def test_t_vhd_is_the_mean_of_the_top_k_heads():
    vhd = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4)
    assert token_divergence(vhd, 3).item() == pytest.approx((11 + 10 + 9) / 3)
    assert token_divergence(vhd, 12).item() == pytest.approx(5.5)
    with pytest.raises(VisionAwareError, match="k must be in 1-12"):
        token_divergence(vhd, 13)


def test_scores_average_over_prompts_and_permute_with_heads():
    pairs = [_pair(0), _pair(1)]
    r = vision_aware_scores(pairs, provenance=PROV, k=3)
    expected = torch.cat([head_divergence(p) for p in pairs]).mean(0).numpy()
    np.testing.assert_allclose(r.scores, expected)
    assert r.arrays["t_vhd"].shape == (2, 2)
    assert r.arrays["rank"].min() == 0 and sorted(r.arrays["rank"].ravel()) == list(range(12))
    layer, head, _ = r.top(1)[0]
    assert r.arrays["rank"][layer, head] == 0
    perm = torch.tensor([2, 0, 3, 1])
    permuted = [HeadOutputPair(p.z_image[:, :, perm], p.z_text[:, :, perm]) for p in pairs]
    np.testing.assert_allclose(vision_aware_scores(permuted, provenance=PROV, k=3).scores, r.scores[:, perm.numpy()])


def test_mismatched_pairs_are_refused():
    with pytest.raises(VisionAwareError, match="must both be"):
        HeadOutputPair(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5))
    with pytest.raises(VisionAwareError, match="no head-output pairs"):
        vision_aware_scores([], provenance=PROV)


def test_vhr_scales_heads_above_the_median_without_outliers():
    vhd = np.array([[1.0, 2.0, 3.0, 4.0, 100.0],   # 100 is an outlier: median of the rest is 2.5
                    [5.0, 5.0, 5.0, 5.0, 5.0]])    # no head above the median
    s = vhr_scales(vhd, alpha=2.0)
    np.testing.assert_array_equal(s, [[1, 1, 2, 2, 1], [1, 1, 1, 1, 1]])
    s2 = vhr_scales(vhd, alpha=3.0, scale_outliers=True)
    np.testing.assert_array_equal(s2[0], [1, 1, 3, 3, 3])
    with pytest.raises(VisionAwareError, match="alpha must be > 0"):
        vhr_scales(vhd, alpha=0)


def test_random_control_has_the_same_size_per_layer():
    rng = np.random.default_rng(0)
    s = vhr_scales(rng.random((6, 9)))
    c = random_scales_like(s, seed=1)
    np.testing.assert_array_equal((c != 1).sum(1), (s != 1).sum(1))
    assert not np.array_equal(c, s)
    assert set(np.unique(c)) <= {1.0, 2.0}


def _z_of_layer(lm, x, layer):
    store = {}
    o_proj = lm.model.model.language_model.layers[layer].self_attn.o_proj
    h = o_proj.register_forward_hook(lambda m, args, out: store.setdefault("z", args[0].detach().clone()))
    try:
        with torch.no_grad():
            lm.model(**x.model_kwargs())
    finally:
        h.remove()
    return store["z"]


def test_scale_head_outputs_scales_only_the_chosen_heads(tiny_llava):
    lm = tiny_llava
    x = vlm.prepare(lm, "<image>hi", [make_scene(0).image])
    with torch.no_grad():
        base_logits = lm.model(**x.model_kwargs()).logits
    base_z = _z_of_layer(lm, x, 3)  # the last layer: nothing upstream of it changes
    scales = np.ones((4, 4))
    scales[3, 1] = 2.0
    with editing(lm, vhr_edits(scales, n_layers=4, n_heads=4)):
        z = _z_of_layer(lm, x, 3)
        with torch.no_grad():
            logits = lm.model(**x.model_kwargs()).logits
    heads, base_heads = z.unflatten(-1, (4, -1)), base_z.unflatten(-1, (4, -1))
    torch.testing.assert_close(heads[..., 1, :], 2 * base_heads[..., 1, :])
    torch.testing.assert_close(heads[..., [0, 2, 3], :], base_heads[..., [0, 2, 3], :])
    assert not torch.allclose(logits, base_logits)
    assert vhr_edits(np.ones((4, 4)), n_layers=4, n_heads=4) == []
    with editing(lm, vhr_edits(np.ones((4, 4)), n_layers=4, n_heads=4)), torch.no_grad():
        torch.testing.assert_close(lm.model(**x.model_kwargs()).logits, base_logits)  # scaling nothing changes nothing
    with torch.no_grad():  # the hooks are gone after the block
        torch.testing.assert_close(lm.model(**x.model_kwargs()).logits, base_logits)
    with pytest.raises(VisionAwareError, match=r"scales must be \[layer, head\] = \[4, 4\]"):
        vhr_edits(np.ones((3, 4)), n_layers=4, n_heads=4)


def test_image_blind_head_has_zero_vhd(tiny_llava):
    """A layer-0 head that attends only to its own position reads no image: VHD 0; the others see it."""
    lm = tiny_llava
    items = [(make_scene(i), questions(make_scene(i))[0]) for i in range(2)]

    def self_only(layer, weights):
        if layer != 0:
            return weights
        eye = torch.eye(weights.shape[-1], dtype=weights.dtype)[-weights.shape[-2]:]
        out = weights.clone()
        out[:, 2] = eye
        return out

    with modifying_weights(lm, self_only):
        pairs = head_output_pairs(lm, items, steps=2)
    r = vision_aware_scores(pairs, provenance=PROV, k=4)
    assert r.scores[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert (np.delete(r.scores[0], 2) > 1e-4).all()
    assert (r.scores[1:] > 1e-4).all()
    assert np.isfinite(r.arrays["t_vhd"]).all() and r.arrays["t_vhd"].shape == (2, 2)


def test_identity_modifier_keeps_the_logits(tiny_llava):
    lm = tiny_llava
    x = vlm.prepare(lm, "<image>hello there", [make_scene(1).image])
    impl = lm.model.config._attn_implementation
    with torch.no_grad():
        ref = lm.model(**x.model_kwargs()).logits
        with modifying_weights(lm, lambda layer, w: w):
            got = lm.model(**x.model_kwargs()).logits
        again = lm.model(**x.model_kwargs()).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref)
    assert lm.model.config._attn_implementation == impl  # the model's own implementation is back


def test_the_adapter_finds_the_language_model_not_the_vision_tower():
    """A LLaVA whose vision tower has as many layers as its language model: edits and attention
    entries land on the language model."""
    from transformers import Dinov2Config, Dinov2Model

    from lens.adapters import adapter_for
    from lens.zoo import tiny
    from lens.zoo.tiny_vlm import assemble

    torch.manual_seed(0)
    vision = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2,
                                      patch_size=4, image_size=16)).eval()
    text = tiny.tiny_llama(seed=1)
    from transformers import AutoTokenizer

    from lens.zoo import _cache

    folder, _ = _cache.cached_folder("byte-tokenizer-v1", tiny.build_byte_tokenizer)
    model, _ = assemble(vision, text, None, AutoTokenizer.from_pretrained(folder))
    adapter = adapter_for(model)
    lm_layers = model.model.language_model.layers
    assert all(adapter.out_proj(i) is lm_layers[i].self_attn.o_proj for i in range(4))
