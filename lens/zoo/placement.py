"""Big models on one machine: split a model over GPUs, CPU memory and disk with accelerate.

A :class:`Placement` is what ``lens.load(..., device_map=, max_memory=, offload_folder=)``
asks for. Hub ids and local folders load straight into place (transformers'
``from_pretrained(device_map=...)``: the full model is never in memory at once); zoo models
are built on the CPU first and then dispatched (:func:`dispatch`), which is fine for their
sizes. Either way each layer's weights live on (or are streamed from disk to) the device
accelerate chose, inputs enter at the embedding's device, and accelerate's hooks move
activations between layers. Hooks and edits of attnlens work on the tensors where they
are (every index and edit value is moved to its tensor's device).
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from attnlens.formats.vocab import DeviceMap
from lens.errors import SelectionError

DEVICE_MAPS = tuple(m.value for m in DeviceMap)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, what: str = "max_memory") -> int:
    """``'20GiB'``, ``'512MB'``, ``'1000000'`` as bytes (> 0)."""
    m = _SIZE.match(str(text))
    if not m:
        raise SelectionError(f"`{what}` {text!r} is not a size like 20GiB, 512MB or 1000000 (bytes)")
    n = float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()]
    if not 0 < n < 2**60:
        raise SelectionError(f"`{what}` {text!r} must be a positive size below 1 EiB")
    return int(n)


def parse_max_memory(text: str | None) -> dict[int | str, int] | None:
    """``'0=20GiB,1=20GiB,cpu=64GiB,disk=500GiB'`` as ``{0: bytes, 1: bytes, 'cpu': bytes, 'disk': bytes}``.

    Keys are GPU indices, ``cpu``, ``mps`` or ``disk``; each at most once.
    """
    if text is None or not text.strip():
        return None
    out: dict[int | str, int] = {}
    for part in text.split(","):
        key, sep, size = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise SelectionError(f"`max_memory` {text!r}: write DEVICE=SIZE pairs like 0=20GiB,cpu=64GiB,disk=500GiB")
        if key.isdigit() and len(key) <= 3:
            dev: int | str = int(key)
        elif key in ("cpu", "mps", "disk"):
            dev = key
        else:
            raise SelectionError(f"`max_memory`: device {key!r} is not a GPU index, cpu, mps or disk")
        if dev in out:
            raise SelectionError(f"`max_memory` names {key} twice")
        out[dev] = parse_size(size)
    return out


def check_devices(max_memory: Mapping | None, what: str = "max_memory") -> None:
    """Refuse a budget for a device this machine does not have (a GPU index past the last CUDA
    GPU, or mps without Apple's backend), before any model is built: accelerate would fail
    halfway through placing the weights."""
    if not max_memory:
        return
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for dev in max_memory:
        if isinstance(dev, int) and not isinstance(dev, bool) and dev >= n_gpus:
            have = f"GPUs 0-{n_gpus - 1}" if n_gpus else "no CUDA GPU"
            raise SelectionError(f"`{what}` names GPU {dev}, but this machine has {have}: give cpu, disk or an "
                                 "existing GPU index")
        if dev == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SelectionError(f"`{what}` names mps, but this machine has no Apple GPU (mps): give cpu, disk or a "
                                 "GPU index")


@dataclass(frozen=True)
class Placement:
    """How to split a model: ``device_map`` (one of :data:`DEVICE_MAPS`, or an explicit
    ``{module name: device}``), per-device ``max_memory`` in bytes, and where disk-offloaded
    weights go (default: a temporary folder removed at exit)."""

    device_map: str | tuple[tuple[str, str | int], ...] = "auto"
    max_memory: tuple[tuple[int | str, int], ...] = ()
    offload_folder: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.device_map, str) and self.device_map not in DEVICE_MAPS:
            raise SelectionError(f"`device_map` {self.device_map!r} is not one of {', '.join(DEVICE_MAPS)}")

    @classmethod
    def make(cls, device_map: str | Mapping | None, max_memory: Mapping | None = None,
             offload_folder: str | Path | None = None) -> Placement | None:
        """A placement, or None when nothing is asked for; ``max_memory`` alone is refused."""
        if device_map is None:
            if max_memory or offload_folder:
                raise SelectionError("`max_memory` and `offload_folder` need `device_map` (e.g. `device_map='auto'`)")
            return None
        dm = device_map if isinstance(device_map, str) else tuple(dict(device_map).items())
        mem = tuple((k, parse_size(v) if isinstance(v, str) else int(v)) for k, v in (max_memory or {}).items())
        check_devices(dict(mem))
        return cls(dm, mem, None if offload_folder is None else str(offload_folder))

    @property
    def memory(self) -> dict[int | str, int] | None:
        return dict(self.max_memory) or None

    @property
    def map_arg(self):
        return self.device_map if isinstance(self.device_map, str) else dict(self.device_map)

    def folder(self) -> str:
        """The offload folder (a temporary one, removed at exit, unless given)."""
        if self.offload_folder is not None:
            Path(self.offload_folder).mkdir(parents=True, exist_ok=True)
            return self.offload_folder
        tmp = tempfile.mkdtemp(prefix="attnlens-offload-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        return tmp

    def from_pretrained_kwargs(self) -> dict:
        """What transformers' ``from_pretrained`` takes for this placement."""
        kw: dict = {"device_map": self.map_arg}
        if self.memory:
            kw["max_memory"] = self.memory
        if self.memory is None or "disk" in self.memory or self.offload_folder:
            kw["offload_folder"] = self.folder()
        return kw


def dispatch(model, placement: Placement, dtype=None):
    """Split an already built ``model`` as ``placement`` says (accelerate); returns the model."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = sorted(getattr(model, "_no_split_modules", None) or [])
    dm = placement.map_arg
    if isinstance(dm, str):
        mem = placement.memory
        if dm != "sequential":
            # balancing spreads layers over GPUs; accelerate's balancer cannot read a "disk" entry,
            # so it balances the rest and the disk budget is put back
            rest = {k: v for k, v in (mem or {}).items() if k != "disk"} or None
            balanced = get_balanced_memory(model, max_memory=rest, no_split_module_classes=no_split, dtype=dtype,
                                           low_zero=dm == "balanced_low_0")
            mem = {**balanced, **({"disk": mem["disk"]} if mem and "disk" in mem else {})}
        dm = infer_auto_device_map(model, max_memory=mem, no_split_module_classes=no_split, dtype=dtype)
    devices = set(dm.values())
    if devices == {"disk"}:
        raise SelectionError("`max_memory` leaves no room in memory for any layer: everything would be on disk; "
                             "raise the cpu (or a GPU) budget")
    offload = placement.folder() if "disk" in devices else None
    model = dispatch_model(model, device_map=dm, offload_dir=offload)
    model.hf_device_map = dict(dm)
    return model


def layer_devices(model) -> dict[str, str]:
    """``{module name: device}`` of a split model (empty when it is not split)."""
    return {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
