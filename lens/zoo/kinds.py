"""What a transformers folder (or hub id) is, read off its config, and the loader for each kind.

The config's ``model_type`` and ``architectures`` decide: a causal LM, a bidirectional encoder
(BERT, RoBERTa: ``causal=False``), a speech encoder-decoder (Whisper), a vision encoder (ViT;
CLIP and SigLIP load their vision tower), an image-text model (loaded through its family's own
processor: :mod:`lens.zoo.image_text`), or a text encoder-decoder (T5, BART, mBART, Pegasus,
Marian: the encoder, decoder and cross-attention, see :mod:`lens.seq2seq`). Facts come from the
model that was loaded, never assumed causal.
"""

from __future__ import annotations

import enum

from lens.errors import ModelUnavailableError


class Kind(enum.Enum):
    CAUSAL_LM = "causal language model"
    ENCODER = "bidirectional text encoder"
    SPEECH = "speech encoder-decoder"
    VISION = "vision encoder"
    IMAGE_TEXT = "image-text model"
    TEXT_ENCODER_DECODER = "encoder-decoder text model"


_DUAL_ENCODERS = ("clip", "siglip", "siglip2")  # image-text dual encoders: their vision tower is loaded
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def kind_of(config) -> Kind:
    """The kind of model a config describes (see the module docstring)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "") or ""
    archs = tuple(getattr(config, "architectures", None) or ())
    if model_type in _DUAL_ENCODERS or model_type.endswith("_vision_model"):
        return Kind.VISION
    if getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None:
        return Kind.IMAGE_TEXT
    if getattr(config, "is_encoder_decoder", False):
        return Kind.SPEECH if model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES else Kind.TEXT_ENCODER_DECODER
    if getattr(config, "patch_size", None) is not None and (getattr(config, "vocab_size", None) is None
                                                            or getattr(config, "image_size", None) is not None):
        return Kind.VISION  # BEiT keeps a visual-token vocabulary for its masked-image pre-training
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):  # what the folder was saved from
        return Kind.CAUSAL_LM
    if _is_encoder_type(model_type) and not getattr(config, "is_decoder", False):
        return Kind.ENCODER  # BertModel, RobertaForMaskedLM, a config without architectures
    if archs and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return Kind.ENCODER  # an encoder without a masked-LM head in transformers
    return Kind.CAUSAL_LM  # a decoder (also one saved with another head, e.g. for classification)


def _is_encoder_type(model_type: str) -> bool:
    """Families with a masked-LM head: encoders (a config without ``architectures`` of one is read as the
    encoder unless it says ``is_decoder``, as BERT's BertLMHeadModel does)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


# text encoder-decoders whose attention attnlens cannot capture faithfully, and why (one line each)
_UNSUPPORTED_ENCODER_DECODERS = {
    "led": "its encoder runs Longformer's local and global attention, not one pattern per layer",
    "longt5": "its encoder runs local or transient-global attention, not one pattern per layer",
    "pegasus_x": "its encoder runs block-local attention with global tokens, not one pattern per layer",
    "bigbird_pegasus": "its encoder runs BigBird's block-sparse attention, not one pattern per layer",
    "fsmt": "it computes attention time-major ([pos, batch, ...]) in its own code",
    "prophetnet": "its decoder runs n-gram streams of its own attention",
    "switch_transformers": "its feed-forward blocks are sparse experts unlike T5's",
    "nllb-moe": "its blocks are laid out unlike BART's (expert feed-forward layers)",
}


def refuse(kind: Kind, name: str, config) -> None:
    """A one-line refusal for the kinds attnlens cannot analyse yet: text encoder-decoders without a
    sequence-to-sequence head, or whose attention it cannot capture (see the table above)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    if kind is not Kind.TEXT_ENCODER_DECODER:
        return
    why = _UNSUPPORTED_ENCODER_DECODERS.get(config.model_type)
    if why is None and config.model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        why = "an encoder-decoder without a sequence-to-sequence head in transformers"
    if why is not None:
        raise ModelUnavailableError(f"{str(name)!r} is a {config.model_type} model: {why}; attnlens does not "
                                    "support it (T5- and BART-style encoder-decoders are)")


def _processor(loader, name, *, what: str, local_only: bool, trust_remote_code: bool):
    try:
        return loader.from_pretrained(name, local_files_only=local_only, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(f"{str(name)!r} has no usable {what} (save it with the model, e.g. "
                                    f"preprocessor_config.json): {first}") from None


def load_encoder(name, *, dtype, device, local_only: bool, trust_remote_code: bool):
    """(model, tokenizer, facts) of a bidirectional text encoder: its masked-LM head when the folder has
    one, else the bare encoder."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    from lens.zoo.minilm import encoder_facts

    config = AutoConfig.from_pretrained(name, local_files_only=local_only, trust_remote_code=trust_remote_code)
    if config.model_type == "albert":
        raise ModelUnavailableError(f"{str(name)!r} is an albert model: its layers share one set of weights (one "
                                    "module runs every layer), so per-layer hooks cannot tell its layers apart; "
                                    "attnlens does not support it")
    head = any(a.endswith("ForMaskedLM") for a in (config.architectures or ()))
    auto = AutoModelForMaskedLM if head else AutoModel
    model = auto.from_pretrained(name, dtype=dtype, local_files_only=local_only, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only, trust_remote_code=trust_remote_code)
    facts = encoder_facts(model.config, name=str(name), architecture=type(model).__name__)
    return model.to(device).eval(), tokenizer, facts


def load_vision(name, *, dtype, device, local_only: bool, trust_remote_code: bool):
    """(model, processor, facts) of a vision encoder; CLIP and SigLIP give their vision tower."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from lens.zoo.dinov2 import vision_facts

    config = AutoConfig.from_pretrained(name, local_files_only=local_only, trust_remote_code=trust_remote_code)
    if isinstance(getattr(config, "num_heads", None), (list, tuple)) or isinstance(getattr(config, "depths", None),
                                                                                     (list, tuple)):
        raise ModelUnavailableError(f"{str(name)!r} is a {config.model_type} model: a hierarchical vision encoder "
                                    "(stages of different widths, windowed attention); attnlens supports plain ViT "
                                    "encoders (ViT, DeiT, BEiT, DINOv2, CLIP and SigLIP towers)")
    kw = dict(dtype=dtype, local_files_only=local_only, trust_remote_code=trust_remote_code)
    if config.model_type in _DUAL_ENCODERS:
        import transformers

        tower = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}
        model = getattr(transformers, tower[config.model_type]).from_pretrained(name, **kw)
    else:
        model = AutoModel.from_pretrained(name, **kw)
    processor = _processor(AutoImageProcessor, name, what="image processor", local_only=local_only,
                           trust_remote_code=trust_remote_code)
    facts = vision_facts(model.config, name=str(name), architecture=type(model).__name__)
    return model.to(device).eval(), processor, facts


def load_speech(name, *, dtype, device, local_only: bool, trust_remote_code: bool):
    """(model, tokenizer, feature extractor, facts, extras) of a Whisper-style speech encoder-decoder,
    with eager attention (cross-attention weights come only from the eager path)."""
    from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer

    from lens.audio import EncoderFacts
    from lens.zoo.whisper import decoder_facts

    kw = dict(local_files_only=local_only, trust_remote_code=trust_remote_code)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(name, dtype=dtype, attn_implementation="eager", **kw)
    if getattr(model.config, "model_type", "") != "whisper":
        raise ModelUnavailableError(f"{str(name)!r} is a {model.config.model_type} speech model: only Whisper-style "
                                    "speech encoder-decoders are supported")
    tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    extractor = _processor(AutoFeatureExtractor, name, what="feature extractor", local_only=local_only,
                           trust_remote_code=trust_remote_code)
    facts = decoder_facts(model.config, name=str(name), architecture=type(model).__name__)
    return model.to(device).eval(), tokenizer, extractor, facts, {"encoder": EncoderFacts.from_whisper_config(model.config)}


def load_text_encoder_decoder(name, *, dtype, device, local_only: bool, trust_remote_code: bool):
    """(model, tokenizer, facts, extras) of a text encoder-decoder (T5, BART-style): the decoder's facts,
    the encoder's in ``extras["encoder"]`` (:class:`lens.seq2seq.TextEncoderFacts`)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lens.adapters import adapter_for
    from lens.seq2seq import facts_of

    kw = dict(local_files_only=local_only, trust_remote_code=trust_remote_code)
    model = AutoModelForSeq2SeqLM.from_pretrained(name, dtype=dtype, **kw)
    try:
        adapter_for(model).attention_modules()
    except (AttributeError, IndexError, TypeError) as err:
        raise ModelUnavailableError(f"{str(name)!r} is a {model.config.model_type} encoder-decoder whose blocks attnlens "
                                    f"cannot find (T5- and BART-style layouts are supported): {err}") from None
    tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    facts, encoder = facts_of(model.config, name=str(name), architecture=type(model).__name__)
    return model.to(device).eval(), tokenizer, facts, {"encoder": encoder}
