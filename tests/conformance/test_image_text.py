"""Conformance of the image-text families transformers ships: a tiny random folder of each
(:mod:`lens.zoo.tiny_image_text`, saved with its processor) loaded with ``lens.load(folder)``, every
capability checked against the model's own eager forward on the processor's own inputs.

The reference is a second copy of the folder loaded by transformers with ``attn_implementation="eager"``
and fed what ``AutoProcessor`` returns for the prompt and image (``token_type_ids``, ``image_sizes``,
``pixel_attention_mask``, ``cross_attention_mask``... all of it): its ``output_attentions``, hidden states
and logits. Families whose processor needs a package this install lacks (torchvision) refuse in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import lens
from lens import Edit, HeadRef, Site, Zero, vlm
from lens.zoo import tiny_image_text

ATOL = 2e-5  # float32, two or three layers of width 32: matches are ~1e-7, real mismatches are > 1e-3
QUESTION = "What colour is it?"


@dataclass(frozen=True)
class ImageFamily:
    model_type: str
    marker: str  # what the processor expands into the image's tokens
    out_proj: str = "model.language_model.layers.{layer}.self_attn.o_proj"
    self_layers: tuple[int, ...] = (0, 1)
    cross_layers: tuple[int, ...] = ()
    processor: str = ""  # the processor class's name, when not the family's own (ViP-LLaVA uses LLaVA's)
    mapped: bool = True  # the first image's tokens form a patch grid over it (the overlay's layout)
    pooled: int = 1  # patches per side merged into one of its tokens


LOADABLE = [
    ImageFamily("llava", "<image>"),  # CLS + 4 x 4 patches
    ImageFamily("vipllava", "<image>", processor="LlavaProcessor"),
    ImageFamily("llava_next", "<image>"),
    ImageFamily("gemma3", "<start_of_image>", pooled=2),  # 4 x 4 patches pooled to 2 x 2 tokens
    ImageFamily("paligemma", ""),  # its processor puts the image first by itself
    ImageFamily("idefics3", "<image>", out_proj="model.text_model.layers.{layer}.self_attn.o_proj",
                pooled=2),  # pixel shuffle, scale factor 2
    ImageFamily("mllama", "<|image|>", self_layers=(0, 2), cross_layers=(1,), mapped=False),
]
NEEDS_TORCHVISION = ["llava_onevision", "qwen2_vl", "qwen2_5_vl", "smolvlm", "mistral3"]


@pytest.fixture(scope="session")
def image():
    from attnlens.analyses.scenes import make_scene

    return make_scene(1_000_000).image


class Built:
    """One family loaded through lens, and the eager reference on the processor's inputs."""

    def __init__(self, family: ImageFamily, folder, image):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.family = family
        self.lm = lens.load(str(folder))
        self.prompt = f"{vlm.placeholder(self.lm)}\n{QUESTION}"
        self.x = vlm.prepare(self.lm, self.prompt, [image])
        processor = AutoProcessor.from_pretrained(folder)
        text = f"{family.marker}\n{QUESTION}" if family.marker else f"<image>\n{QUESTION}"
        images = [[image]] if family.model_type in ("idefics3", "mllama") else [image]
        self.inputs = {k: v for k, v in processor(text=[text], images=images, return_tensors="pt").items()
                       if k != "labels"}
        self.ref = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").eval()
        with torch.no_grad():
            out = self.ref(**self.inputs, output_attentions=True, output_hidden_states=True)
        self.logits, self.hidden = out.logits, out.hidden_states
        self.attentions = out.attentions

    def out_proj(self, layer: int) -> torch.nn.Module:
        path = self.family.out_proj
        if layer in self.family.cross_layers:
            path = path.replace("self_attn", "cross_attn")
        return self.ref.get_submodule(path.format(layer=layer))


@pytest.fixture(scope="module", params=LOADABLE, ids=[f.model_type for f in LOADABLE])
def built(request, tmp_path_factory, image):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    family: ImageFamily = request.param
    folder = tiny_image_text.build(family.model_type, tmp_path_factory.mktemp(family.model_type))
    return Built(family, folder, image)


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert diff < ATOL, f"{what}: off by {diff:.2e} from the reference"


def test_the_family_loads_with_its_own_processor_and_model_class(built):
    lm, x = built.lm, built.x
    assert lm.facts.modality is lens.Modality.VISION_TEXT
    assert type(lm.model).__name__.lower().startswith(built.family.model_type.replace("_", ""))
    want = built.family.processor or built.family.model_type.replace("_", "")
    assert type(lm.extras["processor"]).__name__.lower().startswith(want.lower())
    # the ids and every keyword are the processor's own
    assert torch.equal(x.input_ids, built.inputs["input_ids"])
    kw = x.model_kwargs()
    for key, value in built.inputs.items():
        assert key in kw, f"{key} from the processor is not passed to the model"
        assert torch.equal(kw[key], value), key


def test_image_spans_are_the_image_tokens_of_the_processed_ids(built):
    x, lm = built.x, built.lm
    image_id = lm.model.config.image_token_id if hasattr(lm.model.config, "image_token_id") \
        else lm.model.config.image_token_index
    is_image = built.inputs["input_ids"][0] == image_id
    if built.family.cross_layers:  # read through cross-attention: one marker token, no span
        assert x.spans == () and int(is_image.sum()) == 1
        return
    assert torch.equal(x.image_mask(), is_image)
    span, pixels = vlm.overlay_grid(x)
    assert (span is not None) == built.family.mapped
    rows, cols = span.grid
    assert span.mappable and rows * cols + span.prefix == span.n_tokens and pixels.shape[-3:] == (3, 16, 16)


def test_patterns_equal_the_eager_forward_and_capture_leaves_the_logits(built):
    layers = list(built.family.self_layers)
    with torch.no_grad():
        plain = built.lm.model(**built.x.model_kwargs()).logits
    _close(plain, built.logits, "logits of the loaded model (SDPA) against its eager forward")
    res = lens.run(built.lm, built.prompt, image=_image(built), sites=[Site.PATTERN], layers=layers)
    _close(res.logits, plain, "logits while capturing patterns")
    for layer in layers:
        _close(res.capture.pattern(layer), built.attentions[layer], f"pattern of layer {layer}")
    every = lens.run(built.lm, built.prompt, image=_image(built), layers=layers,
                     sites=[Site.PATTERN, Site.Q, Site.K, Site.V, Site.Z, Site.RESID_PRE, Site.MLP_OUT])
    _close(every.logits, plain, "logits while capturing every site")
    for layer in layers:
        _close(every.capture.get(Site.RESID_PRE, layer), built.hidden[layer], f"resid_pre of layer {layer}")
    layout = res.capture.meta.layout
    assert (layout is not None) == built.family.mapped
    if layout is not None:  # the overlay's grid is the span's: pooled tokens cover several patches
        span, _ = vlm.overlay_grid(built.x)
        assert layout.grid == span.grid and layout.start == span.start and layout.prefix == span.prefix
        assert layout.pooled == built.family.pooled


def _image(built):
    from attnlens.analyses.scenes import make_scene

    return make_scene(1_000_000).image


def test_stats_follow_the_mask_the_model_uses(built):
    """Stats mode's statistics equal those of the eager patterns (prefix-LM and bidirectional image
    blocks included), and the logits do not move."""
    from attnlens.kernels import StatsSpec

    layers = list(built.family.self_layers)
    got = lens.run_stats(built.lm, built.x, spec=StatsSpec(sink_tokens=1), layers=layers)
    _close(got.logits, built.logits, "logits in stats mode")
    for layer in layers:
        p = built.attentions[layer].float()
        s = got.stats[layer]
        _close(s.max_weight, p.amax(-1), f"max_weight of layer {layer}")
        _close(s.sink_mass, p[..., 0], f"sink_mass of layer {layer}")
        _close(s.entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), f"entropy of layer {layer}")


def test_a_head_edit_equals_zeroing_its_slice_on_the_reference(built):
    layers = (*built.family.self_layers, *built.family.cross_layers)
    for layer in layers[-1:] + built.family.cross_layers:
        head = 1

        def zero_head(module, args, head=head):
            x = args[0].clone()
            width = x.shape[-1] // built.lm.facts.n_heads
            x[..., head * width:(head + 1) * width] = 0
            return (x, *args[1:])

        handle = built.out_proj(layer).register_forward_pre_hook(zero_head)
        try:
            with torch.no_grad():
                want = built.ref(**built.inputs).logits
        finally:
            handle.remove()
        assert (want - built.logits).abs().max() > 1e-4, "the reference edit changes nothing"
        got = lens.run(built.lm, built.prompt, image=_image(built), sites=[Site.RESID_POST], layers=[layer],
                       edits=[Edit(HeadRef(layer, head), Zero())])
        _close(got.logits, want, f"logits with L{layer}H{head} zeroed")


def test_cross_attention_over_the_image_is_its_own_part(built):
    if not built.family.cross_layers:
        with pytest.raises(lens.SelectionError, match=r"have no cross-attention: site cross_pattern needs one of"):
            lens.run(built.lm, built.prompt, image=_image(built), sites=[Site.CROSS_PATTERN], layers=[0])
        return
    cross = list(built.family.cross_layers)
    res = lens.run(built.lm, built.prompt, image=_image(built), sites=[Site.CROSS_PATTERN], layers=cross)
    for layer in cross:
        _close(res.capture.get(Site.CROSS_PATTERN, layer), built.attentions[layer], f"cross pattern of {layer}")
    with pytest.raises(lens.SelectionError, match=r"have no attention: sites pattern need one of layers"):
        lens.run(built.lm, built.prompt, image=_image(built), sites=[Site.PATTERN], layers=cross)


@pytest.mark.parametrize("model_type", ["gemma3", "paligemma"])
def test_prefix_lm_masks_are_kept(model_type, tmp_path, image):
    """Image tokens attend to later image tokens (Gemma 3's bidirectional image block, PaliGemma's prefix),
    as the model's own mask says (a causal mask gives exactly 0 there); for Gemma 3 dropping
    token_type_ids moves the logits (PaliGemma's prompt is all prefix: bidirectional either way)."""
    lm = lens.load(str(tiny_image_text.build(model_type, tmp_path / model_type)))
    x = vlm.prepare(lm, f"{vlm.placeholder(lm)}\n{QUESTION}", [image])
    assert "token_type_ids" in x.extra
    span = x.spans[0]
    res = lens.run(lm, f"{vlm.placeholder(lm)}\n{QUESTION}", image=image, sites=[Site.PATTERN], layers=[0])
    p = res.capture.pattern(0)[0]
    assert p[:, span.start, span.start + 1:span.end].sum() > 0.01, "the first image token sees no later image token"
    kw = x.model_kwargs()
    with torch.no_grad():
        kept = lm.model(**kw).logits
        lost = lm.model(**{k: v for k, v in kw.items() if k != "token_type_ids"}).logits
    assert model_type == "paligemma" or (kept - lost).abs().max() > 1e-3
    _close(res.logits, kept, "logits while capturing")


@pytest.mark.parametrize("model_type", NEEDS_TORCHVISION)
def test_a_processor_that_needs_torchvision_is_refused_in_one_line(model_type, tmp_path):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: the family loads")
    folder = tiny_image_text.build(model_type, tmp_path / model_type)
    with pytest.raises(lens.ModelUnavailableError) as info:
        lens.load(str(folder))
    message = str(info.value)
    assert "\n" not in message and "needs the package torchvision" in message and "pip install torchvision" in message
