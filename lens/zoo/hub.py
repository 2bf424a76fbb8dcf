"""Any Hugging Face hub id or local folder, through transformers."""

from __future__ import annotations

from pathlib import Path

from lens.errors import ModelUnavailableError


def load_pretrained(name_or_path: str | Path, *, dtype, device):
    """(model, tokenizer) for a causal LM; a clear error when it cannot be had here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(
            f"cannot load {str(name_or_path)!r} from the Hugging Face hub or its local cache "
            f"(offline, or not a model id?): {first}"
        ) from None
    return model.to(device).eval(), tokenizer
