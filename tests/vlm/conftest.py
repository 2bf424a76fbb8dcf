"""Fixtures: a tiny random LLaVA (tiny DINOv2 + tiny Llama, seeded) for the fast tier, the real tiny-vlm
for the slow tier."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_llava():
    """A random ``LlavaForConditionalGeneration`` assembled like tiny-vlm: DINOv2 2 layers x 4 heads
    (patch 4; 16-px images are CLS + 4x4 patches = 17 tokens), Llama 4 layers x 4 heads (2 KV heads,
    d_model 64), byte tokenizer plus ``<image>``."""
    from transformers import AutoTokenizer, Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    from lens.loaded import LoadedModel
    from lens.zoo import _cache, tiny
    from lens.zoo.tiny_vlm import CHAT_TEMPLATE, assemble, vlm_facts

    torch.manual_seed(0)
    vision = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                      patch_size=4, image_size=16, layerscale_value=0.5)).eval()
    text = tiny.tiny_llama(seed=1)
    folder, _ = _cache.cached_folder("byte-tokenizer-v1", tiny.build_byte_tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(2)
    model, tokenizer = assemble(vision, text, None, tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    model.config.vision_feature_layer = -1
    # a visible projector: random init is small, scale it so the image moves the text model
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.mul_(20)
    processor = BitImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    facts = vlm_facts(model.config, name="tiny-llava", architecture=type(model).__name__)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, facts=facts, processor=processor)


@pytest.fixture(scope="session")
def tiny_vlm():
    import lens

    return lens.load("tiny-vlm")
