"""Fixtures: a tiny random DINOv2 (2 layers x 4 heads, 4-pixel patches) for fast tests,
the real embedded dinov2-small for the slow tier."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_vit():
    """Random ``Dinov2Model``: 2 layers x 4 heads, d_model 32, patch 4, 8x8 position grid;
    its processor resizes and crops images to 32x32 (an 8x8 patch grid)."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    from lens.loaded import LoadedModel
    from lens.zoo.dinov2 import vision_facts

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                          patch_size=4, image_size=32, layerscale_value=0.5)
    model = Dinov2Model(config).eval()
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LoadedModel(model=model, tokenizer=None, processor=processor,
                       facts=vision_facts(config, name="tiny-dinov2", architecture="Dinov2Model"))


@pytest.fixture(scope="session")
def dinov2():
    import lens

    return lens.load("dinov2-small")
