"""Argument checks of the public entry points (``lens.run``, ``lens.capture``, ``lens.run_stats``,
``lens.stats_mode``, ``lens.load``, ``LoadedModel.generate``).

Each entry point calls these first, so a wrong type or range is one line in the project's own
errors, naming the argument, what is valid and what came, before anything runs. Values are
taken strictly: ``layers="12"`` is not layers 1 and 2, ``1.5`` is not layer 1, ``True`` is not 1.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence

import torch

from lens.errors import (
    BackendError,
    InterventionError,
    KernelInputError,
    PromptError,
    SelectionError,
)

# dtypes a capture may store patterns in: they must hold probabilities in [0, 1]
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DEVICE_TYPES = ("cpu", "cuda", "mps")
MAX_NEW_TOKENS = 1_000_000
MAX_SELECTION = 100_000  # layers or heads in one selection


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def integer(value, what: str) -> int:
    """``value`` as an int: Python and numpy integers and integer 0-d tensors; never bool, float or text."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise SelectionError(f"{what} must be an integer, got {type(value).__name__} {_shown(value)}")
    try:
        return operator.index(value)
    except TypeError:
        raise SelectionError(f"{what} must be an integer, got {type(value).__name__} {_shown(value)}") from None


def model(lm, what: str = "lm"):
    """``lm`` is a :class:`~lens.loaded.LoadedModel` (what :func:`lens.load` returns)."""
    if not _is(lm, "lens.loaded", "LoadedModel"):
        hint = f" (load it first: lens.load({lm!r}))" if isinstance(lm, str) else " (from lens.load)"
        raise SelectionError(f"{what} must be a lens.LoadedModel{hint}, got {type(lm).__name__}")
    return lm


def index_list(values, what: str) -> tuple[int, ...] | None:
    """``layers``/``heads``: None (all) or a sequence of integers (their range is checked against the
    model's facts by the caller, e.g. :meth:`CaptureSpec.resolve`)."""
    if values is None:
        return None
    kind = "layer" if what.startswith("layer") else "head"
    example = "[0, 2]"
    if isinstance(values, (str, bytes)):
        raise SelectionError(f"{what} must be a list of integers like {example}, got text {_shown(values)}")
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex() or values.dtype is torch.bool or values.ndim > 1:
            raise SelectionError(f"{what} must be a list of integers like {example}, got a {values.dtype} tensor "
                                 f"of shape {tuple(values.shape)}")
        values = values.reshape(-1).tolist()
    if not isinstance(values, Iterable) or isinstance(values, Mapping):
        hint = f" (write [{values}])" if isinstance(values, int) and not isinstance(values, bool) else ""
        raise SelectionError(f"{what} must be a list of integers like {example}, got {type(values).__name__} "
                             f"{_shown(values)}{hint}")
    out = []
    for v in values:
        if isinstance(v, bool) or isinstance(v, (str, bytes)) or not hasattr(v, "__index__"):
            raise SelectionError(f"{what} must be a list of integers like {example}, got {type(v).__name__} "
                                 f"{_shown(v)} in it")
        out.append(integer(v, what))
        if len(out) > MAX_SELECTION:  # an endless iterator stops here, not in memory
            raise SelectionError(f"{what} names more than {MAX_SELECTION} values")
    if not out:
        raise SelectionError(f"{what} is empty: give at least one {kind} (or None for all)")
    return tuple(dict.fromkeys(out))


def sites(values) -> tuple:
    from lens.sites import Site

    if isinstance(values, Site):
        raise SelectionError(f"sites must be a list of lens.Site, got one Site (write [Site.{values.name}])")
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or isinstance(values, Mapping):
        raise SelectionError(f"sites must be a list of lens.Site like [lens.Site.PATTERN], got "
                             f"{type(values).__name__} {_shown(values)}")
    out = tuple(values)
    for s in out:
        if not isinstance(s, Site):
            raise SelectionError(f"site {_shown(s)} is not a lens.Site: choose from "
                                 + ", ".join(f"Site.{x.name}" for x in Site))
    if not out:
        raise SelectionError("sites is empty: choose at least one of " + ", ".join(s.value for s in Site))
    return out


def storage_dtype(dtype, what: str = "dtype"):
    """None (keep the model's) or a floating dtype that holds probabilities."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or dtype not in STORAGE_DTYPES:
        raise SelectionError(f"{what} must be one of torch.float32, float16, bfloat16, float64 (or None), got "
                             f"{_shown(dtype)}")
    return dtype


def model_dtype(dtype, what: str = "dtype"):
    """A dtype a model's weights can be loaded in."""
    if not isinstance(dtype, torch.dtype) or dtype not in STORAGE_DTYPES:
        raise SelectionError(f"{what} must be one of torch.float32, float16, bfloat16, float64, got {_shown(dtype)}")
    return dtype


def device(value, what: str = "device") -> str:
    """A device that exists here, as a string (``"cpu"``, ``"cuda:0"``, ``"mps"``)."""
    if isinstance(value, bool) or not isinstance(value, (str, torch.device, int)):
        raise SelectionError(f"{what} must be a device like 'cpu' or 'cuda:0', got {type(value).__name__} "
                             f"{_shown(value)}")
    try:
        dev = torch.device(f"cuda:{value}" if isinstance(value, int) else value)
    except (RuntimeError, TypeError, ValueError):
        raise SelectionError(f"{what} {_shown(value)} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type not in _DEVICE_TYPES:
        raise SelectionError(f"{what} {_shown(value)} is not supported: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SelectionError(f"{what} {_shown(value)}: this machine has no CUDA GPU (use 'cpu')")
        if dev.index is not None and not 0 <= dev.index < n:
            raise SelectionError(f"{what} {_shown(value)}: this machine has GPUs 0-{n - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SelectionError(f"{what} {_shown(value)}: MPS is not available here (use 'cpu')")
    return str(dev)


def budget(value, what: str = "budget_bytes") -> int | None:
    """None (the default budget) or a finite positive number of bytes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise SelectionError(f"{what} must be a positive number of bytes, got {type(value).__name__} {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SelectionError(f"{what} must be a positive number of bytes, got {value}")
    n = int(value)
    if n <= 0:
        raise SelectionError(f"{what} must be a positive number of bytes, got {value}")
    return n


def flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise SelectionError(f"{what} must be True or False, got {type(value).__name__} {_shown(value)}")
    return value


def backend(value):
    from lens.backends import Backend

    if isinstance(value, Backend):
        return value
    choices = ", ".join(b.value for b in Backend)
    if not isinstance(value, str):
        raise BackendError(f"backend must be one of {choices}, got {type(value).__name__} {_shown(value)}")
    try:
        return Backend(value)
    except ValueError:
        raise BackendError(f"backend {_shown(value)} is not one of {choices}") from None


def stats_backend(value) -> str:
    from attnlens.formats.vocab import KernelBackend

    choices = tuple(b.value for b in KernelBackend)
    if not isinstance(value, str) or value not in choices:
        raise KernelInputError(f"backend must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def edits(values) -> tuple:
    """A sequence of :class:`~lens.edits.Edit` (each already validated by its constructor)."""
    if _is(values, "lens.edits", "Edit"):
        raise InterventionError("edits must be a list of lens.Edit, got one Edit (write [edit])")
    if values is None or isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InterventionError(f"edits must be a list of lens.Edit, got {type(values).__name__} {_shown(values)}")
    out = tuple(values)
    for e in out:
        if not _is(e, "lens.edits", "Edit"):
            what = f"the class {e.__name__} (construct one: {e.__name__}(...))" if isinstance(e, type) \
                else f"{type(e).__name__} {_shown(e)}"
            raise InterventionError(f"edits must be lens.Edit, got {what}")
    return out


def token_ids(ids: torch.Tensor, what: str = "prompt") -> torch.Tensor:
    """Integer ids of rank 1 (``[pos]``) or 2 (``[batch, pos]``) as ``[batch, pos]``."""
    if ids.dtype is torch.bool or ids.is_complex():
        raise PromptError(f"token ids ({what}) must be an integer tensor, got {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise PromptError(f"token ids ({what}) must be [batch, pos] or [pos], got shape {tuple(ids.shape)}")
    ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
    if ids.shape[0] == 0:
        raise PromptError(f"token ids ({what}) have an empty batch: shape {tuple(ids.shape)}")
    return ids


def text_prompt(prompt, what: str = "prompt") -> None:
    """A text model's prompt: text, a non-empty list of texts, or integer token ids."""
    if isinstance(prompt, (str, torch.Tensor)):
        return
    if prompt is None or isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Sequence):
        raise PromptError(f"{what} must be text, a list of texts or token ids [batch, pos], got "
                          f"{type(prompt).__name__}")


def max_new_tokens(value, what: str = "max_new_tokens") -> int:
    n = integer(value, what)
    if not 1 <= n <= MAX_NEW_TOKENS:
        raise SelectionError(f"{what} must be in 1-{MAX_NEW_TOKENS}, got {n}")
    return n


def run_args(lm, prompt, *, sites_, layers, heads, dtype, device_, budget_bytes, edits_, backend_, chat, decoder_ids,
             remote) -> dict:
    """Everything :func:`lens.run` takes, checked; returns the normalised values."""
    from attnlens.formats.facts import Modality

    model(lm)
    facts = lm.facts
    out = dict(
        sites=sites(sites_),
        layers=index_list(layers, "layers"),
        heads=index_list(heads, "heads"),
        dtype=storage_dtype(dtype), device=device(device_), budget_bytes=budget(budget_bytes),
        edits=edits(edits_), backend=backend(backend_), chat=flag(chat, "chat"), remote=flag(remote, "remote"),
    )
    if decoder_ids is not None and facts.modality is not Modality.SPEECH and not facts.encoder_layers:
        raise PromptError(f"decoder_ids is for encoder-decoder (speech, T5/BART) models: {facts.name} is a "
                          f"{facts.modality.value} model, give its input as the prompt")
    if decoder_ids is not None:
        if isinstance(decoder_ids, torch.Tensor):
            decoder_ids = token_ids(decoder_ids, "decoder_ids").reshape(-1).tolist()
        if isinstance(decoder_ids, (str, bytes, Mapping)) or not isinstance(decoder_ids, Iterable):
            raise PromptError(f"decoder_ids must be a list of token ids, got {type(decoder_ids).__name__}")
        decoder_ids = [integer(i, "each of decoder_ids") for i in decoder_ids]
        if not decoder_ids:
            raise PromptError("decoder_ids is empty: give at least one token id (or None for the transcript)")
    out["decoder_ids"] = decoder_ids
    if facts.modality in (Modality.TEXT, Modality.VISION_TEXT) and not prepared(prompt):
        text_prompt(prompt)
    return out


def capture_args(lm, *, sites_, layers, heads, dtype, device_, budget_bytes, edits_) -> dict:
    model(lm)
    return dict(
        sites=sites(sites_),
        layers=index_list(layers, "layers"),
        heads=index_list(heads, "heads"),
        dtype=storage_dtype(dtype), device=device(device_), budget_bytes=budget(budget_bytes), edits=edits(edits_),
    )


def load_args(name, *, dtype, device_, device_map=None, max_memory=None, offload_folder=None) -> str:
    """``lens.load``'s arguments other than the folder's contents; returns the name as text."""
    import os

    if not isinstance(name, (str, os.PathLike)):
        raise SelectionError(f"model must be a zoo name, a folder or a hub id (text or a path), got "
                             f"{type(name).__name__} {_shown(name)}")
    model_dtype(dtype)
    device(device_)
    if offload_folder is not None and not isinstance(offload_folder, (str, os.PathLike)):
        raise SelectionError(f"offload_folder must be a folder path or None, got {type(offload_folder).__name__}")
    if device_map is not None and not isinstance(device_map, str):
        if not isinstance(device_map, Mapping) or not device_map:
            raise SelectionError(f"device_map must be one of auto, balanced, balanced_low_0, sequential or a dict "
                                 f"{{module name: device}}, got {type(device_map).__name__} {_shown(device_map)}")
        for module, where in device_map.items():
            if not isinstance(module, str):
                raise SelectionError(f"device_map keys are module names, got {type(module).__name__} {_shown(module)}")
            if where != "disk":
                device(where, f"device_map[{module!r}]")
    if max_memory is not None:
        if not isinstance(max_memory, Mapping):
            raise SelectionError(f"max_memory must be a dict like {{0: '20GiB', 'cpu': '64GiB'}}, got "
                                 f"{type(max_memory).__name__}")
        for key in max_memory:
            if isinstance(key, str) and key in ("cpu", "disk", "mps"):
                continue
            if integer(key, "each max_memory key (a GPU index, 'cpu', 'mps' or 'disk')") < 0:
                raise SelectionError(f"max_memory names GPU {key}: GPU indices start at 0")
        from lens.zoo.placement import check_devices

        check_devices(max_memory)  # GPUs or mps this machine lacks
        for key, size in max_memory.items():
            if not isinstance(size, str):  # sizes as text are parsed (and checked) by the placement
                budget(size, f"max_memory[{key!r}]")
    return os.fspath(name)


def prepared(prompt) -> bool:
    """An input already prepared (:class:`lens.inputs.ModelInput` or :class:`lens.vlm.VlmInput`)."""
    return _is(prompt, "lens.inputs", "ModelInput") or _is(prompt, "lens.vlm", "VlmInput")


def _is(obj, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)``, the class recognised by its name along ``obj``'s MRO: this module is
    the floor of ``lens`` and imports none of the modules whose inputs it checks (no import circles)."""
    return any((c.__module__, c.__name__) == (module, name) for c in type(obj).__mro__)
