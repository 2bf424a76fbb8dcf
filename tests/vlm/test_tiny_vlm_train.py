"""The trainer's defaults are the shipped projector's recorded run; the experimental options are off."""

import torch

from attnlens.pipelines.tiny_vlm_train import fold_standardisation, parse
from lens.zoo import tiny_vlm

EXPERIMENTAL_OFF = {"standardise": 0, "align_mode": "bag", "copy_weight": 0.0}


def test_defaults_reproduce_the_shipped_run():
    _, meta = tiny_vlm.load_projector()
    recorded = meta["settings"]
    defaults = vars(parse(["--out", "x.safetensors"]))
    assert {k: defaults[k] for k in recorded} == recorded
    # options added after the shipped run must default to what that run did (they did not exist then)
    added = {k: v for k, v in defaults.items() if k not in recorded and k not in ("out", "cache")}
    assert added == EXPERIMENTAL_OFF


def test_folding_the_standardisation_keeps_the_projection():
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config={"model_type": "dinov2", "hidden_size": 8, "num_attention_heads": 2},
                      text_config={"model_type": "llama", "hidden_size": 12, "num_attention_heads": 2}, projector_hidden_act="gelu")
    proj = LlavaMultiModalProjector(cfg)
    x = torch.randn(3, 5, 8) * 0.1 + 2.0
    mu, sigma = x.reshape(-1, 8).mean(0), x.reshape(-1, 8).std(0)
    before = proj((x - mu) / sigma)
    fold_standardisation(proj, mu, sigma)
    torch.testing.assert_close(proj(x), before, atol=1e-5, rtol=1e-5)
