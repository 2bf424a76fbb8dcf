"""Any Hugging Face hub id or local folder, through transformers.

Offline (no route to the hub, or ``HF_HUB_OFFLINE=1``) only the local cache is tried, so an
id that is not cached fails at once with one line instead of a minute of retries.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path

from lens.errors import ModelUnavailableError, UnknownModelError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@functools.cache
def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the hub answers a TCP connection (False with ``HF_HUB_OFFLINE`` set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_name(name: str) -> None:
    """A one-line :class:`UnknownModelError` for something that cannot be a hub id."""
    if not _HUB_ID.match(name):
        raise UnknownModelError(f"model {name!r} is neither a zoo name, a local folder nor a hub id like org/name")


def read_config(name_or_path: str | Path, *, trust_remote_code: bool = False):
    """The model's transformers config, or a one-line :class:`ModelUnavailableError`.

    Code shipped with a model (a config with ``auto_map``) never runs unless ``trust_remote_code``
    is True; transformers is told so explicitly, so it never asks on a terminal either.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    local = isinstance(name_or_path, Path)
    if local and not (name_or_path / "config.json").is_file():
        raise ModelUnavailableError(f"{name_or_path} is a folder but not a transformers model (no config.json)")
    if not local:
        check_name(str(name_or_path))
    if not trust_remote_code and local and _has_auto_map(name_or_path / "config.json"):
        raise ModelUnavailableError(f"{str(name_or_path)!r} ships its own model code (auto_map in config.json): "
                                    "it runs only with trust_remote_code=True (CLI: lens --trust-remote-code ...)")
    offline = not local and not hub_reachable()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=local or offline,
                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = " (its code runs only with trust_remote_code=True)" if "trust_remote_code" in str(err) else ""
        where = "its folder" if local else ("the local cache (the hub is not reachable from here)" if offline
                                            else "the Hugging Face hub or its local cache")
        raise ModelUnavailableError(f"cannot load {str(name_or_path)!r} from {where}{hint}: {first[:200]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _has_auto_map(config_json: Path) -> bool:
    import json

    try:
        return "auto_map" in json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def is_image_text(name_or_path: str | Path, *, trust_remote_code: bool = False) -> bool:
    """Whether the model's config is an image-text one (a ``vision_config`` and a ``text_config``:
    LLaVA, Gemma 3, PaliGemma, Idefics3, Mllama...); False when the config cannot be read (the loader
    then says why)."""
    try:
        cfg = read_config(name_or_path, trust_remote_code=trust_remote_code)
    except ModelUnavailableError:
        return False
    return getattr(cfg, "vision_config", None) is not None and getattr(cfg, "text_config", None) is not None


def load_pretrained(name_or_path: str | Path, *, dtype, device, placement: dict | None = None,
                    trust_remote_code: bool = False, loader=None):
    """(model, tokenizer) for a causal LM; a clear one-line error when it cannot be had here.

    ``loader(name, local_only=...)``: another kind's loader (see :mod:`lens.zoo.kinds`) run
    under the same one-line errors; its result is returned as it is.

    ``placement``: ``from_pretrained`` keywords that split the model while it loads
    (``device_map``, ``max_memory``, ``offload_folder``; see :mod:`lens.zoo.placement`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    local = isinstance(name_or_path, Path)
    if local and not (name_or_path / "config.json").is_file():
        raise ModelUnavailableError(f"{name_or_path} is a folder but not a transformers model (no config.json)")
    if not local:
        check_name(str(name_or_path))
    offline = not local and not hub_reachable()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if loader is not None:
            return loader(name_or_path, local_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline,
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, local_files_only=offline,
                                                     trust_remote_code=trust_remote_code, **(placement or {}))
    except ModelUnavailableError:
        raise
    except (OSError, ValueError, KeyError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "its folder" if local else ("the local cache (the hub is not reachable from here)" if offline
                                            else "the Hugging Face hub or its local cache")
        raise ModelUnavailableError(f"cannot load {str(name_or_path)!r} from {where}: {first[:200]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return (model if placement else model.to(device)).eval(), tokenizer
