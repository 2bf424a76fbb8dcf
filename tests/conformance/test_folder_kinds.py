"""Loading by what the folder is: encoders, Whisper and vision encoders (text encoder-decoders such as T5
and BART: test_encoder_decoder.py).

Each tiny folder (2 layers, seed 0, saved with ``save_pretrained``) must load as its own kind of
model, with facts from the loaded model (bidirectional encoders are not causal), and its
attention patterns must equal the eager model's ``output_attentions``; or be refused in one line.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import lens
from lens import Site
from lens.errors import ModelUnavailableError

T = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
IMAGE = np.random.RandomState(0).randint(0, 255, (32, 32, 3)).astype("uint8")


def _image_processor():
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": 32, "width": 32})


def _build(kind: str):
    import transformers as tf

    from lens.zoo import tiny

    vision = dict(image_size=32, patch_size=8, **T)
    if kind == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(vocab_size=259, **T)), None
    if kind == "roberta":
        return tf.RobertaModel(tf.RobertaConfig(vocab_size=259, pad_token_id=2, **T)), None
    if kind == "vit":
        return tf.ViTModel(tf.ViTConfig(**vision)), _image_processor()
    if kind == "clip":
        return tf.CLIPModel(tf.CLIPConfig(text_config=dict(vocab_size=259, **T), vision_config=vision)), _image_processor()
    if kind == "siglip":
        return (tf.SiglipModel(tf.SiglipConfig(text_config=dict(vocab_size=259, **T), vision_config=vision)),
                _image_processor())
    if kind == "whisper":
        return tiny.tiny_whisper()
    # beyond the list: the other encoders and vision encoders a tiny config builds
    if kind == "distilbert":
        return tf.DistilBertForMaskedLM(tf.DistilBertConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4,
                                                            hidden_dim=64, pad_token_id=2)), None
    if kind == "albert":
        return tf.AlbertForMaskedLM(tf.AlbertConfig(vocab_size=259, embedding_size=16, pad_token_id=2, **T)), None
    if kind == "electra":
        return tf.ElectraForMaskedLM(tf.ElectraConfig(vocab_size=259, embedding_size=32, pad_token_id=2, **T)), None
    if kind == "deberta_v2":
        return tf.DebertaV2ForMaskedLM(tf.DebertaV2Config(vocab_size=259, pad_token_id=2, **T)), None
    if kind == "modernbert":
        return tf.ModernBertForMaskedLM(tf.ModernBertConfig(vocab_size=259, pad_token_id=2, bos_token_id=0,
                                                            eos_token_id=1, cls_token_id=0, sep_token_id=1, **T)), None
    if kind == "xlm_roberta":
        return tf.XLMRobertaForMaskedLM(tf.XLMRobertaConfig(vocab_size=259, pad_token_id=2, **T)), None
    if kind == "deit":
        return tf.DeiTModel(tf.DeiTConfig(**vision)), _image_processor()
    if kind == "beit":
        return tf.BeitModel(tf.BeitConfig(**vision)), _image_processor()
    if kind == "dinov2":
        return tf.Dinov2Model(tf.Dinov2Config(**vision)), _image_processor()
    if kind == "swin":
        return tf.SwinModel(tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                          window_size=4)), _image_processor()
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from lens.zoo import tiny

    tok = tmp_path_factory.mktemp("tok")
    tiny.build_byte_tokenizer(tok)

    def make(kind: str):
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            model, processor = _build(kind)
        finally:
            torch.random.set_rng_state(state)
        folder = tmp_path_factory.mktemp(kind)
        model.eval().save_pretrained(folder)
        shutil.copytree(tok, folder, dirs_exist_ok=True)
        if processor is not None:
            processor.save_pretrained(folder)
        return folder

    return make


# kind -> (class lens.load gives, modality, causal)
KINDS = {
    "bert": ("BertForMaskedLM", "text", False),
    "roberta": ("RobertaModel", "text", False),
    "vit": ("ViTModel", "vision", False),
    "clip": ("CLIPVisionModel", "vision", False),
    "siglip": ("SiglipVisionModel", "vision", False),
    "whisper": ("WhisperForConditionalGeneration", "speech", True),
    "distilbert": ("DistilBertForMaskedLM", "text", False),
    "electra": ("ElectraForMaskedLM", "text", False),
    "deberta_v2": ("DebertaV2ForMaskedLM", "text", False),
    "modernbert": ("ModernBertForMaskedLM", "text", False),
    "xlm_roberta": ("XLMRobertaForMaskedLM", "text", False),
    "deit": ("DeiTModel", "vision", False),
    "beit": ("BeitModel", "vision", False),
    "dinov2": ("Dinov2Model", "vision", False),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_folder_loads_as_its_kind(request, folders, kind):
    """The right class, modality and causality; patterns equal the eager model's own (Whisper's are
    checked in test_whisper_cells.py: here its cell in the table is facts only)."""
    cls, modality, causal = KINDS[kind]
    folder = folders(kind)
    lm = lens.load(str(folder))
    assert (type(lm.model).__name__, lm.facts.modality.value, lm.facts.causal) == (cls, modality, causal)
    if modality == "speech":
        assert lm.extras["encoder"].n_layers == 2 and lm.processor is not None
        request.node.user_properties.append(("facts only", True))  # for the generated table (conftest.py)
        return
    ref = type(lm.model).from_pretrained(folder, attn_implementation="eager").eval()
    if modality == "vision":
        result = lens.run(lm, IMAGE, sites=[Site.PATTERN], layers=[0, 1])
        pixels = torch.from_numpy(np.asarray(lm.processor(IMAGE, return_tensors="np")["pixel_values"]))
        with torch.no_grad():
            want = ref(pixel_values=pixels, output_attentions=True).attentions
        n_tokens = result.capture.pattern(0).shape[-1]
        assert len(result.capture.meta.tokens[0]) == n_tokens  # the labels fit the tokens (SigLIP: no CLS)
    else:
        ids = lm.encode("hello there")
        result = lens.run(lm, ids, sites=[Site.PATTERN], layers=[0, 1])
        with torch.no_grad():
            want = ref(ids, output_attentions=True).attentions
    for layer in (0, 1):
        got = result.capture.pattern(layer)
        assert got.shape == want[layer].shape
        assert (got - want[layer]).abs().max() < 2e-5
    if modality == "text":  # bidirectional: the first query sees the last key
        assert result.capture.pattern(0)[0, :, 0, -1].min() > 0


# kind -> words of its one-line refusal when it loads
REFUSED = {
    "albert": "its layers share one set of weights",
    "swin": "a hierarchical vision encoder (stages of different widths, windowed attention)",
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_load(request, folders, kind):
    """Encoders attnlens cannot hook layer by layer are refused when they load, in one line naming the family."""
    with pytest.raises(ModelUnavailableError) as info:
        lens.load(str(folders(kind)))
    message = str(info.value)
    assert "\n" not in message and f"is a{'n' if kind == 'albert' else ''} {kind} model: " in message, message
    assert REFUSED[kind] in message, message
    request.node.user_properties.append(("refusal", message))
