"""lens.vlm: prompt + images -> input ids, pixel values and image spans; one-line errors for bad input."""

import pytest
import torch

from attnlens.analyses.scenes import make_scene
from lens import vlm
from lens.errors import PromptError


def test_image_tokens_sit_at_the_placeholder(tiny_llava):
    lm = tiny_llava
    x = vlm.prepare(lm, "ab<image>cd", [make_scene(0).image])
    (span,) = x.spans
    ids = x.input_ids[0]
    image_id = lm.model.config.image_token_id
    # <bos> a b, then CLS + 4x4 patches, then c d
    assert (span.start, span.end, span.grid, span.prefix) == (3, 20, (4, 4), 1)
    assert (ids[span.start:span.end] == image_id).all()
    assert (ids[: span.start] != image_id).all() and (ids[span.end:] != image_id).all()
    assert x.image_mask().nonzero().flatten().tolist() == list(range(3, 20))
    assert span.patch_position(0, 0) == 4 and span.patch_position(3, 3) == 19
    assert span.labels()[0] == "img0:CLS" and span.labels()[-1] == "img0:patch(3,3)"
    assert vlm.ImageSpan.from_json(span.to_json()) == span


def test_image_features_land_on_the_span(tiny_llava):
    """What the language model receives at the span is the projector's output for the image."""
    lm = tiny_llava
    x = vlm.prepare(lm, "ab<image>cd", [make_scene(0).image])
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = lm.model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(**x.model_kwargs())
            feats = lm.model.model.get_image_features(pixel_values=x.pixel_values).pooler_output[0]
    finally:
        hook.remove()
    span = x.spans[0]
    torch.testing.assert_close(seen["embeds"][0, span.start:span.end], feats)
    text_embeds = lm.model.get_input_embeddings()(x.input_ids)[0]
    torch.testing.assert_close(seen["embeds"][0, : span.start], text_embeds[: span.start])


def test_two_images_two_spans_and_left_padding(tiny_llava):
    lm = tiny_llava
    a = vlm.prepare(lm, "<image>x<image>y", [make_scene(0).image, make_scene(1).image])
    b = vlm.prepare(lm, "longer text <image>?", [make_scene(2).image])
    assert [(s.image, s.start, s.end) for s in a.spans] == [(0, 1, 18), (1, 19, 36)]
    batch = vlm.collate([a, b], pad_id=2)
    assert batch.pixel_values.shape[0] == 3
    width = batch.input_ids.shape[1]
    for row, x in enumerate([a, b]):
        pad = width - x.n_tokens
        assert batch.attention_mask[row].sum() == x.n_tokens
        for s_batch, s in zip(batch.spans[row], x.spans):
            assert s_batch.start == s.start + pad
            assert (batch.input_ids[row, s_batch.start:s_batch.end] == lm.model.config.image_token_id).all()
    with torch.no_grad():
        out = lm.model(**batch.model_kwargs())  # the placeholder count matches the features
    assert out.logits.shape[:2] == batch.input_ids.shape


def test_text_only_prompt_on_a_vlm(tiny_llava):
    x = vlm.prepare(tiny_llava, "no image here")
    assert x.spans == () and x.pixel_values is None
    assert vlm.without_images(tiny_llava, "<image>\nWhat?") == "\nWhat?"


def test_undecodable_image_file(tiny_llava, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(PromptError, match=r"^image file '.*broken.png' cannot be decoded as an image"):
        vlm.prepare(tiny_llava, "<image>hi", [bad])
    with pytest.raises(PromptError, match="does not exist"):
        vlm.prepare(tiny_llava, "<image>hi", [tmp_path / "missing.png"])
    with pytest.raises(PromptError, match="image bytes .* cannot be decoded"):
        vlm.prepare(tiny_llava, "<image>hi", [b"nope"])


def test_real_image_file_is_read(tiny_llava, tmp_path):
    path = tmp_path / "scene.png"
    make_scene(3).image.save(path)
    x = vlm.prepare(tiny_llava, "<image>hi", [path])
    ref = vlm.prepare(tiny_llava, "<image>hi", [make_scene(3).image])
    torch.testing.assert_close(x.pixel_values, ref.pixel_values)


def test_image_for_a_text_only_model(tiny_lm):
    with pytest.raises(PromptError, match=r"^tiny-llama is a text model: it takes no images \(got 1\)"):
        vlm.prepare(tiny_lm, "<image>hi", [make_scene(0).image])
    # without images the placeholder is ordinary text for a text model
    assert vlm.prepare(tiny_lm, "<image>hi").spans == ()


def test_no_placeholder(tiny_llava):
    with pytest.raises(PromptError, match=r"^prompt has no <image> placeholder for the 1 image\(s\) given"):
        vlm.prepare(tiny_llava, "what colour?", [make_scene(0).image])


def test_more_and_fewer_images_than_placeholders(tiny_llava):
    im = make_scene(0).image
    with pytest.raises(PromptError, match=r"^more images than <image> placeholders: 2 image\(s\), 1 placeholder"):
        vlm.prepare(tiny_llava, "<image>what?", [im, im])
    with pytest.raises(PromptError, match=r"^fewer images than <image> placeholders: 1 image\(s\), 2 placeholder"):
        vlm.prepare(tiny_llava, "<image><image>what?", [im])
    with pytest.raises(PromptError, match="fewer images"):
        vlm.prepare(tiny_llava, "<image>what?")


def test_errors_are_one_line(tiny_llava, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_text("garbage")
    for call in (lambda: vlm.prepare(tiny_llava, "<image>", [bad]),
                 lambda: vlm.prepare(tiny_llava, "q", [make_scene(0).image]),
                 lambda: vlm.prepare(tiny_llava, "<image>", [make_scene(0).image] * 2)):
        with pytest.raises(PromptError) as info:
            call()
        assert "\n" not in str(info.value)


def test_hub_llava_offline_is_one_line(monkeypatch):
    from lens.errors import ModelUnavailableError
    from lens.zoo import hub, image_text

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    try:
        with pytest.raises(ModelUnavailableError, match=r"^cannot load 'llava-hf/llava-1.5-7b-hf' from the Hugging Face hub") as info:
            image_text.load("llava-hf/llava-1.5-7b-hf")
    finally:
        hub.hub_reachable.cache_clear()
    assert "\n" not in str(info.value)
