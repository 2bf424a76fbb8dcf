"""The embedded dinov2-small: its facts, ONNX parity, pattern parity and golden behaviour
on a synthetic image (slow tier: the first run converts the ONNX file, about 15 s)."""

import numpy as np
import pytest
import torch

import lens
from lens import Site, vision

pytestmark = pytest.mark.slow


def test_facts_and_processor(dinov2):
    f = dinov2.facts
    assert (f.n_layers, f.n_heads, f.d_head, f.d_model) == (12, 6, 64, 384)
    assert f.modality is lens.Modality.VISION and f.causal is False
    assert f.weights_sha256 and dinov2.tokenizer is None
    pixels = vision.pixel_values(dinov2, vision.synthetic_image(300))
    assert pixels.shape == (1, 3, 224, 224)


def test_last_hidden_state_matches_onnxruntime(dinov2):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from lens.zoo.dinov2 import onnx_path

    model = onnx.load(str(onnx_path()))
    out = next(n.output[0] for n in model.graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = session.run([out], {"input_image": x})[0]
    with torch.no_grad():
        got = dinov2.model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert np.abs(got - expected).max() < 2.5e-5  # fp32, different kernels; MODELS.md reports 2.5e-5


def test_patterns_match_output_attentions_and_cls_finds_the_object(dinov2):
    img = vision.synthetic_image(224, center=(0.4, 0.6))
    res = lens.run(dinov2, img, sites=[Site.PATTERN])
    cap = res.capture
    assert cap.pattern(11).shape == (1, 6, 257, 257) and cap.meta.tokens[0][0] == "CLS"
    pixels = vision.pixel_values(dinov2, img)
    dinov2.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = dinov2.model(pixel_values=pixels, output_attentions=True)
    finally:
        dinov2.model.set_attn_implementation("sdpa")
    for layer in range(12):
        torch.testing.assert_close(cap.pattern(layer), ref.attentions[layer], atol=1e-5, rtol=0)
    # Where the disc lands after resize + crop: the same geometry applied to a mask image.
    mask_img = np.zeros((224, 224, 3), np.uint8)
    yy, xx = np.mgrid[0:224, 0:224] / 224
    mask_img[(yy - 0.4) ** 2 + (xx - 0.6) ** 2 <= 0.18**2] = 255
    mask = vision.pixel_values(dinov2, mask_img)[0, 0] > 0
    on_object = torch.nn.functional.avg_pool2d(mask[None, None].float(), 14)[0, 0] > 0.5  # [16, 16]
    cls_map = vision.cls_attention_map(cap.pattern(11), vision.layout_of(cap))[0].mean(0)
    assert on_object[divmod(int(cls_map.argmax()), 16)]
    share = float(cls_map[on_object].sum())
    assert share > 2 * float(on_object.float().mean())  # well above the object's area share


def test_head_analyses_golden_shape_of_the_layers(dinov2):
    from attnlens.analyses.result import Provenance
    from attnlens.analyses.vit_heads import (
        pruned_cls_embeddings,
        pruning_importance,
        vit_head_scores,
    )

    img = vision.synthetic_image(224)
    cap = lens.run(dinov2, img, sites=[Site.PATTERN]).capture
    prov = Provenance.for_model(dinov2.facts, prompts="synthetic disc")
    dist, cls, fam = vit_head_scores({layer: cap.pattern(layer) for layer in range(12)}, vision.layout_of(cap),
                                     n_layers=12, n_heads=6, provenance=prov)
    per_layer = dist.arrays["mean_distance_per_layer"]
    assert dist.scores[1:6].min() < 2.0  # local heads in the early-middle layers
    assert per_layer[10:].min() > 6.0 and per_layer[10:].min() > per_layer[3]  # global at the end
    assert np.nanmin(cls.scores) < 0.5 * cls.summary["uniform_entropy"]
    assert sorted(np.unique(fam.scores).tolist()) == [0, 1, 2, 3]
    clean, pruned = pruned_cls_embeddings(dinov2, img, [(11, 2), (0, 0)])
    imp = pruning_importance(clean, pruned, n_layers=12, n_heads=6, provenance=prov)
    assert imp.scores[11, 2] > 10 * imp.scores[0, 0]
