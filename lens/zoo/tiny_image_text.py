"""Tiny random image-text models of the families transformers ships, saved as folders with their processors.

Each builder writes what a hub id gives once downloaded: ``config.json`` and weights of the family's own
model class (2 text layers, seeded), and a processor (the family's PIL image processor and the byte-level
tokenizer of :mod:`lens.zoo.tiny` with the family's special tokens). Tests and the conformance matrix load
them with ``lens.load(folder)``, exactly as a user's download would be loaded.

>>> build("qwen2_vl", tmp_path / "qwen2_vl")   # then lens.load(str(tmp_path / "qwen2_vl"))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

D_TEXT = 32  # hidden size of every tiny text model (4 heads of 8)
_TEXT = dict(hidden_size=D_TEXT, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=2)
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _tokenizer(specials: list[str], **named: str):
    """The byte tokenizer with ``specials`` added as special tokens; ``named`` become the tokenizer's
    attributes (``image_token="<image>"``), as the family's own tokenizer has them."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from lens.zoo import _cache, tiny

    folder, _ = _cache.cached_folder("byte-tokenizer-v1", tiny.build_byte_tokenizer)
    tok = AutoTokenizer.from_pretrained(folder, extra_special_tokens=dict(named))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _seeded(make: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = make().eval()
    finally:
        torch.random.set_rng_state(state)
    with torch.no_grad():  # random init is small: make the image move the text model
        for name, p in model.named_parameters():
            if "projector" in name or "merger" in name or "connector" in name:
                p.mul_(8)
    return model


def _vocab(tok) -> int:
    return len(tok) + 2


def _save(dest: Path, model, processor) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def _save_parts(dest: Path, model, image_processor, tokenizer, processor_class: str, *, video: bool = True,
                **processor_kw) -> Path:
    """A folder as the hub has it for a processor that needs torchvision (for its video processor, or
    itself: Pixtral's), so that it cannot be built here: its parts and configs are written."""
    import json

    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    image_processor.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "processor_config.json").write_text(json.dumps({"processor_class": processor_class, **processor_kw}))
    if video:
        (dest / "video_preprocessor_config.json").write_text(json.dumps(
            {"video_processor_type": processor_class.replace("Processor", "VideoProcessor"),
             "processor_class": processor_class}))
    return dest


def _llava(dest: Path, *, vip: bool = False) -> Path:
    import transformers as t

    tok = _tokenizer([], image_token="<image>")
    vision = t.CLIPVisionConfig(**_VISION, image_size=16, patch_size=4)
    text = t.LlamaConfig(**_TEXT, vocab_size=_vocab(tok))
    kw = dict(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"))
    if vip:  # ViP-LLaVA: features of several vision layers, CLS dropped
        config = t.VipLlavaConfig(**kw, vision_feature_layers=[-2, -1])
        model = _seeded(lambda: t.VipLlavaForConditionalGeneration(config))
    else:  # CLS kept ("full"): 1 + 4 x 4 tokens
        config = t.LlavaConfig(**kw, vision_feature_layer=-1, vision_feature_select_strategy="full")
        model = _seeded(lambda: t.LlavaForConditionalGeneration(config))
    ip = t.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    proc = t.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=4, num_additional_image_tokens=1,
                            vision_feature_select_strategy="default" if vip else "full")
    return _save(dest, model, proc)


def _llava_next(dest: Path, *, onevision: bool = False) -> Path:
    import transformers as t

    tok = _tokenizer([], image_token="<image>")
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = (t.SiglipVisionConfig if onevision else t.CLIPVisionConfig)(**_VISION, image_size=16, patch_size=4)
    text = (t.Qwen2Config if onevision else t.LlamaConfig)(**_TEXT, vocab_size=_vocab(tok))
    pinpoints = [[16, 16], [16, 32], [32, 16], [32, 32]]
    kw = dict(vision_config=vision, text_config=text, image_token_id=image_id, image_grid_pinpoints=pinpoints,
              vision_feature_layer=-1, vision_feature_select_strategy="full" if onevision else "default")
    if onevision:
        config = t.LlavaOnevisionConfig(**kw, vision_aspect_ratio="anyres_max_9")
        model = _seeded(lambda: t.LlavaOnevisionForConditionalGeneration(config))
        ip = t.LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16}, image_grid_pinpoints=pinpoints)
        return _save_parts(dest, model, ip, tok, "LlavaOnevisionProcessor", num_image_tokens=16,
                           vision_feature_select_strategy="full")
    else:
        config = t.LlavaNextConfig(**kw)
        model = _seeded(lambda: t.LlavaNextForConditionalGeneration(config))
        ip = t.LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                          image_grid_pinpoints=pinpoints)
        proc = t.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=4,
                                    vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return _save(dest, model, proc)


def _qwen2_vl(dest: Path, *, v25: bool = False) -> Path:
    import transformers as t

    tok = _tokenizer(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"], image_token="<|image_pad|>")
    ids = {k: tok.convert_tokens_to_ids(k) for k in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>",
                                                     "<|video_pad|>")}
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, in_chans=3, out_hidden_size=D_TEXT)
    if v25:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3, out_hidden_size=D_TEXT, window_size=16,
                      fullatt_block_indexes=[1])
    text = dict(**_TEXT, vocab_size=_vocab(tok), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                   "mrope_section": [1, 1, 2]})
    cfg_cls, model_cls, proc_cls = ((t.Qwen2_5_VLConfig, t.Qwen2_5_VLForConditionalGeneration, t.Qwen2_5_VLProcessor)
                                    if v25 else (t.Qwen2VLConfig, t.Qwen2VLForConditionalGeneration, t.Qwen2VLProcessor))
    config = cfg_cls(vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
                     video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                     vision_end_token_id=ids["<|vision_end|>"])
    model = _seeded(lambda: model_cls(config))
    ip = t.Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})
    return _save_parts(dest, model, ip, tok, proc_cls.__name__)


def _gemma3(dest: Path) -> Path:
    import transformers as t

    tok = _tokenizer([], boi_token="<start_of_image>", image_token="<image_soft_token>", eoi_token="<end_of_image>")
    ids = {k: tok.convert_tokens_to_ids(k) for k in ("<start_of_image>", "<image_soft_token>", "<end_of_image>")}
    vision = t.SiglipVisionConfig(**_VISION, image_size=16, patch_size=4)
    text = t.Gemma3TextConfig(**_TEXT, vocab_size=_vocab(tok), head_dim=8, sliding_window=64)
    config = t.Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=4,
                            boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                            image_token_index=ids["<image_soft_token>"])
    model = _seeded(lambda: t.Gemma3ForConditionalGeneration(config))
    ip = t.Gemma3ImageProcessorPil(size={"height": 16, "width": 16})
    return _save(dest, model, t.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4))


def _paligemma(dest: Path) -> Path:
    import transformers as t

    tok = _tokenizer([], image_token="<image>")
    vision = t.SiglipVisionConfig(**_VISION, image_size=16, patch_size=4, projection_dim=D_TEXT)
    text = t.GemmaConfig(**_TEXT, vocab_size=_vocab(tok), head_dim=8)
    config = t.PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=D_TEXT,
                               image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = _seeded(lambda: t.PaliGemmaForConditionalGeneration(config))
    ip = t.SiglipImageProcessorPil(size={"height": 16, "width": 16})
    ip.image_seq_length = 16
    return _save(dest, model, t.PaliGemmaProcessor(image_processor=ip, tokenizer=tok))


def _idefics3(dest: Path, *, smolvlm: bool = False) -> Path:
    import transformers as t

    tok = _tokenizer(["<fake_token_around_image>", "<global-img>"], image_token="<image>",
                     end_of_utterance_token="<end_of_utterance>")
    ids = {k: tok.convert_tokens_to_ids(k) for k in ("<image>",)}
    vision = dict(**_VISION, image_size=16, patch_size=4)
    text = t.LlamaConfig(**_TEXT, vocab_size=_vocab(tok))
    if smolvlm:
        config = t.SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=2,
                                 image_token_id=ids["<image>"])
        model = _seeded(lambda: t.SmolVLMForConditionalGeneration(config))
        ip = t.SmolVLMImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                        do_image_splitting=True)
        return _save_parts(dest, model, ip, tok, "SmolVLMProcessor", image_seq_len=4)
    else:
        config = t.Idefics3Config(vision_config=vision, text_config=text, scale_factor=2,
                                  image_token_id=ids["<image>"])
        model = _seeded(lambda: t.Idefics3ForConditionalGeneration(config))
        ip = t.Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                         do_image_splitting=True)
        proc = t.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)
    return _save(dest, model, proc)


def _mllama(dest: Path) -> Path:
    import transformers as t

    tok = _tokenizer(["<|python_tag|>", "<|begin_of_text|>"], image_token="<|image|>")
    image_id = tok.convert_tokens_to_ids("<|image|>")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                  attention_heads=4, image_size=16, patch_size=4, max_num_tiles=2, vision_output_dim=64,
                  intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    text = dict(hidden_size=D_TEXT, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=_vocab(tok), cross_attention_layers=[1], bos_token_id=0,
                eos_token_id=1, pad_token_id=2, max_position_embeddings=512)
    config = t.MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_id)
    model = _seeded(lambda: t.MllamaForConditionalGeneration(config))
    with torch.no_grad():  # the gates start closed (tanh 0): open them so that the image reaches the text
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(1.0)
    ip = t.MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=2)
    return _save(dest, model, t.MllamaProcessor(image_processor=ip, tokenizer=tok))


def _mistral3(dest: Path) -> Path:
    import transformers as t

    tok = _tokenizer(["[IMG_BREAK]", "[IMG_END]"], image_token="[IMG]")
    vision = t.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=16, patch_size=4, head_dim=8)
    text = t.MistralConfig(**_TEXT, vocab_size=_vocab(tok), head_dim=8)
    config = t.Mistral3Config(vision_config=vision, text_config=text, spatial_merge_size=2, vision_feature_layer=-1,
                              image_token_index=tok.convert_tokens_to_ids("[IMG]"))
    model = _seeded(lambda: t.Mistral3ForConditionalGeneration(config))
    ip = t.PixtralImageProcessorPil(size={"longest_edge": 16}, patch_size=4)
    return _save_parts(dest, model, ip, tok, "PixtralProcessor", video=False, patch_size=4, spatial_merge_size=2)


FAMILIES: dict[str, Callable[[Path], Path]] = {
    "llava": _llava,
    "vipllava": lambda d: _llava(d, vip=True),
    "llava_next": _llava_next,
    "llava_onevision": lambda d: _llava_next(d, onevision=True),
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": lambda d: _qwen2_vl(d, v25=True),
    "gemma3": _gemma3,
    "paligemma": _paligemma,
    "idefics3": _idefics3,
    "smolvlm": lambda d: _idefics3(d, smolvlm=True),
    "mllama": _mllama,
    "mistral3": _mistral3,
}


def build(family: str, dest: Path) -> Path:
    """Write the tiny ``family`` model and its processor to ``dest`` (see :data:`FAMILIES`); returns ``dest``."""
    if family not in FAMILIES:
        raise KeyError(f"no tiny {family!r}: one of {', '.join(FAMILIES)}")
    return FAMILIES[family](Path(dest))
