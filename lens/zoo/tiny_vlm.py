"""tiny-vlm: DINOv2-small + SmolLM2-135M-Instruct + a small trained projector, as a standard LLaVA.

The model is a plain transformers ``LlavaForConditionalGeneration``: ``vision_config`` is
DINOv2-small's ``Dinov2Config``, ``text_config`` SmolLM2's ``LlamaConfig`` and the
projector the stock two-layer ``LlavaMultiModalProjector`` (384 -> 576 -> 576, GELU), so
everything written for it runs unchanged on llava-hf models. Choices, all stock LLaVA
config fields:

- images are resized to 56 x 56 pixels (a 4 x 4 patch grid): short sequences keep
  training through the frozen LM affordable on two CPU cores;
- ``vision_feature_layer = 8`` (the output of DINOv2's 8th of 12 blocks): linear probes
  on its CLS token read colour at 0.995 and shape at 1.0 on held-out scenes, against
  0.91 / 0.99 from the last block, which DINOv2's colour augmentations made partly
  colour-blind (``benchmarks/tiny_vlm_layer_probe.py``, docs/vlm.md);
- ``vision_feature_select_strategy = "full"``: the CLS token is kept, so an image is 17
  tokens: CLS, then the 16 patches in row-major order;
- an ``<image>`` token is added to SmolLM2's vocabulary (id 49152, as llava-hf adds
  theirs); its embedding and output rows are zero, and its input rows are always
  replaced by image features, so text-only runs match SmolLM2's logits (the extra
  vocabulary entry only adds one zero logit);
- the chat template is SmolLM2's without the default system prompt (20 tokens fewer).

Only the projector belongs to this project: ``weights/tiny_vlm_projector.safetensors``
(fp16, about 1 MB), reproduced by ``python -m attnlens.pipelines.tiny_vlm_train`` (docs/vlm.md).
The two towers come from the dinov2-small and smollm2-135m caches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lens.errors import ModelUnavailableError
from lens.loaded import LoadedModel, Modality, ModelFacts

NAME = "tiny-vlm"
IMAGE_SIZE = 56
FEATURE_LAYER = 8
SELECT_STRATEGY = "full"
IMAGE_TOKEN = "<image>"
WEIGHTS = Path(__file__).parent / "weights" / "tiny_vlm_projector.safetensors"
# SmolLM2's template minus its default system message (the image and question come first).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def image_processor():
    """DINOv2's preprocessing at ``IMAGE_SIZE``: bicubic resize of the short side, centre crop, ImageNet norm."""
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    from lens.zoo.dinov2 import IMAGENET_MEAN, IMAGENET_STD

    return BitImageProcessorPil(
        do_resize=True, size={"shortest_edge": IMAGE_SIZE}, resample=3, do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )


def llava_config(vision_config, text_config, *, image_token_id: int):
    """A ``LlavaConfig`` joining the two towers with tiny-vlm's choices (module docstring)."""
    from transformers import LlavaConfig

    n_tokens = (1 if SELECT_STRATEGY == "full" else 0) + (IMAGE_SIZE // vision_config.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=image_token_id,
        image_seq_length=n_tokens, projector_hidden_act="gelu", vision_feature_layer=FEATURE_LAYER,
        vision_feature_select_strategy=SELECT_STRATEGY, multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )


def add_image_token(tokenizer) -> int:
    """Add ``<image>`` as a special token (if absent) and return its id; sets ``tokenizer.image_token``."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tokenizer.image_token = IMAGE_TOKEN
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def assemble(vision_model, text_model, projector_state: dict[str, torch.Tensor] | None, tokenizer):
    """A ``LlavaForConditionalGeneration`` (eval, fp32) holding the given towers' weights.

    ``vision_model`` is a ``Dinov2Model``, ``text_model`` a ``LlamaForCausalLM``;
    ``projector_state`` has ``linear_1.{weight,bias}`` and ``linear_2.{weight,bias}``
    (None: the projector keeps its random initialisation). The vocabulary grows by the
    ``<image>`` token, whose rows are zero. Returns (model, tokenizer).
    """
    from transformers import LlavaForConditionalGeneration

    image_token_id = add_image_token(tokenizer)
    text_config = type(text_model.config).from_dict(text_model.config.to_dict())
    text_config.vocab_size = max(text_config.vocab_size, image_token_id + 1)
    config = llava_config(vision_model.config, text_config, image_token_id=image_token_id)
    model = LlavaForConditionalGeneration(config).eval()
    inner = model.model
    inner.vision_tower.load_state_dict(vision_model.state_dict())
    lm_state = {k.removeprefix("model."): v for k, v in text_model.state_dict().items() if k.startswith("model.")}
    embed = lm_state["embed_tokens.weight"]
    grown = torch.zeros(text_config.vocab_size, embed.shape[1], dtype=embed.dtype)
    grown[: embed.shape[0]] = embed
    lm_state["embed_tokens.weight"] = grown
    inner.language_model.load_state_dict(lm_state)
    if not config.tie_word_embeddings:
        head = torch.zeros_like(grown)
        head[: embed.shape[0]] = text_model.lm_head.weight.detach()
        model.lm_head.weight.data.copy_(head)
    if projector_state is not None:
        inner.multi_modal_projector.load_state_dict({k: v.float() for k, v in projector_state.items()})
    return model, tokenizer


def load_projector(path: Path = WEIGHTS) -> tuple[dict[str, torch.Tensor], dict]:
    """The shipped projector's tensors and its metadata (training command, data, accuracy)."""
    from safetensors import safe_open

    if not path.is_file():
        raise ModelUnavailableError(f"{NAME}'s projector weights are missing: expected {path}")
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        meta = dict(f.metadata() or {})
    return state, {k: json.loads(v) if v[:1] in "[{" else v for k, v in meta.items()}


def load_towers():
    """(Dinov2Model, LlamaForCausalLM, tokenizer) from the zoo's dinov2-small and smollm2-135m caches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Dinov2Model

    from lens.zoo import _cache, dinov2, smollm2

    dinov2.onnx_path()
    smollm2.gguf_folder()
    vfolder, _ = _cache.cached_folder(dinov2.CACHE_KEY, dinov2.build_folder)
    tfolder, _ = _cache.cached_folder(smollm2.CACHE_KEY, smollm2.build_fp32_folder)
    vision = Dinov2Model.from_pretrained(vfolder, dtype=torch.float32).eval()
    text = AutoModelForCausalLM.from_pretrained(tfolder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tfolder)
    return vision, text, tokenizer


def vlm_facts(config, *, name: str, architecture: str, weights_sha256: str | None = None) -> ModelFacts:
    """Facts of a LLaVA-style model: those of its language model (layers, heads, context), modality vision-text."""
    from dataclasses import replace

    from lens.zoo._facts import text_facts

    facts = text_facts(config.get_text_config(), name=name, architecture=architecture, weights_sha256=weights_sha256)
    return replace(facts, modality=Modality.VISION_TEXT)


def load(dtype: torch.dtype = torch.float32, device: str = "cpu", *, projector: Path | None = WEIGHTS,
         seed: int = 0) -> LoadedModel:
    """tiny-vlm as a :class:`LoadedModel` (``processor`` is the image processor).

    ``projector`` is the weights file; None builds the model with a random projector
    (initialised with ``seed``), the starting point of training.
    """
    from lens.zoo._cache import sha256_file

    state, meta = load_projector(projector) if projector is not None else (None, {"untrained": True, "seed": seed})
    vision, text, tokenizer = load_towers()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model, tokenizer = assemble(vision, text, state, tokenizer)
    finally:
        torch.random.set_rng_state(generator_state)
    tokenizer.chat_template = CHAT_TEMPLATE
    model.config.name_or_path = NAME
    model = model.to(dtype=dtype, device=device).eval()
    facts = vlm_facts(model.config, name=NAME, architecture=type(model).__name__,
                      weights_sha256=sha256_file(projector) if projector is not None else None)
    return LoadedModel(model=model, tokenizer=tokenizer, facts=facts, processor=image_processor(),
                       extras={"projector": meta})


def tiny_llava(dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """A random LLaVA assembled like tiny-vlm, for tests (seeded): DINOv2 2 layers x 4 heads (patch 4;
    16-px images are CLS + 4x4 patches = 17 tokens), Llama 4 layers x 4 heads (2 KV heads, d_model 64),
    byte tokenizer plus ``<image>``, the chat template of tiny-vlm."""
    from transformers import AutoTokenizer, Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    from lens.zoo import _cache, tiny

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
    # a visible projector: random init is small, scale it so that the image moves the text model
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.mul_(20)
    processor = BitImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    facts = vlm_facts(model.config, name="tiny-llava", architecture=type(model).__name__)
    return LoadedModel(model=model.eval().to(dtype=dtype, device=device), tokenizer=tokenizer, facts=facts,
                       processor=processor)
