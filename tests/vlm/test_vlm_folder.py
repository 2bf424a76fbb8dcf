"""A LLaVA-family model saved as a transformers folder (what a hub id gives once downloaded):
``lens.load`` recognises it from its config and loads it as a vision-text model, with the same
numbers; a hub LLaVA id offline is one line."""

import pytest
import torch

import lens
from lens.zoo import hub


def test_a_saved_llava_folder_loads_as_vision_text_with_the_same_logits(tmp_path):
    from transformers import LlavaProcessor

    from attnlens.analyses.scenes import make_scene

    lm = lens.load("tiny-llava")
    lm.model.save_pretrained(tmp_path)
    # the processor as llava-hf folders have it: it expands <image> into CLS + 4x4 patches
    LlavaProcessor(image_processor=lm.processor, tokenizer=lm.tokenizer, patch_size=4,
                   vision_feature_select_strategy="full", num_additional_image_tokens=1).save_pretrained(tmp_path)
    assert hub.is_image_text(tmp_path) and not hub.is_image_text(tmp_path / "missing")
    again = lens.load(str(tmp_path))
    assert again.facts.modality is lens.Modality.VISION_TEXT and again.facts.n_layers == lm.facts.n_layers
    image = make_scene(1_000_000).image
    a = lens.run(lm, "<image>\nWhat colour?", image=image, sites=[lens.Site.PATTERN], layers=[1])
    b = lens.run(again, "<image>\nWhat colour?", image=image, sites=[lens.Site.PATTERN], layers=[1])
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    assert b.capture.meta.layout.start == a.capture.meta.layout.start


def test_a_text_model_folder_is_not_taken_for_a_vision_text_one(tmp_path):
    lm = lens.load("tiny-llama")
    lm.model.config.save_pretrained(tmp_path)
    assert not hub.is_image_text(tmp_path)


def test_a_hub_llava_id_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    try:
        with pytest.raises(lens.ModelUnavailableError) as info:
            lens.load("llava-hf/llava-1.5-7b-hf-not-cached-here")
    finally:
        hub.hub_reachable.cache_clear()
    assert "\n" not in str(info.value) and "llava-hf/llava-1.5-7b-hf-not-cached-here" in str(info.value)
