"""Stats runs on disk: per-layer attention statistics of one forward pass in stats mode
(``lens stats``), as ``stats.json`` (metadata, settings, layers) + ``stats.safetensors``
(``LAYER.FIELD`` arrays, the fields of ``kernels.AttnStats``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats import _json, _safetensors
from attnlens.formats.capture import CaptureMeta
from attnlens.formats.errors import CorruptCaptureError, CorruptFileError, SelectionError

KIND = "stats_run"
FORMAT_VERSION = 2
READS = (1, 2)
META_FILE, STATS_FILE = "stats.json", "stats.safetensors"
ROW_FIELDS = ("lse", "entropy", "max_weight", "argmax", "sink_mass", "window_mass")  # [batch, head, q]
FIELDS = ROW_FIELDS + ("span_mass", "topk_weight", "topk_index", "received_sum", "received_mean")
SETTINGS = ("sink_tokens", "window", "spans", "topk", "key_stats")


def check_settings(spec: Any, where: Path) -> dict[str, Any]:
    """The statistics settings (``kernels.StatsSpec`` fields) from their JSON form."""
    if not isinstance(spec, dict) or not all(k in spec for k in SETTINGS):
        raise CorruptFileError(f"{where}: spec must be an object with {', '.join(SETTINGS)}")
    out = {}
    for k in ("sink_tokens", "window", "topk"):
        v = spec[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CorruptFileError(f"{where}: spec.{k} must be a non-negative integer, got {v!r}")
        out[k] = v
    if not isinstance(spec["key_stats"], bool):
        raise CorruptFileError(f"{where}: spec.key_stats must be true or false")
    out["key_stats"] = spec["key_stats"]
    spans = spec["spans"]
    if not isinstance(spans, list) or not all(isinstance(s, list) and len(s) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in s) for s in spans):
        raise CorruptFileError(f"{where}: spec.spans must be a list of [start, end] integer pairs")
    out["spans"] = tuple((int(a), int(b)) for a, b in spans)
    return out


def write_stats(folder: str | Path, meta: CaptureMeta, settings: Mapping[str, Any],
                stats: Mapping[int, Mapping[str, np.ndarray]]) -> Path:
    """Write ``stats[layer][field]`` arrays with the run's metadata and settings into ``folder``."""
    folder = Path(folder)
    arrays = {f"{layer}.{name}": np.asarray(a) for layer, fields in stats.items() for name, a in fields.items()}
    _safetensors.write(folder / STATS_FILE, arrays)
    spec = {k: settings[k] for k in SETTINGS}
    spec["spans"] = [list(s) for s in spec["spans"]]
    doc = {"kind": KIND, "format_version": FORMAT_VERSION, "layers": sorted(stats), "fields": sorted(
        {name for fields in stats.values() for name in fields}), "spec": spec, "meta": meta.to_json()}
    return _json.write_json(folder / META_FILE, doc).parent


class StatsFile:
    """A saved stats run, validated on load; arrays are read on demand."""

    def __init__(self, path: Path, meta: CaptureMeta, layers: list[int], settings: dict[str, Any],
                 tensors: _safetensors.SafetensorsFile):
        self.path, self.meta, self.layers, self.settings, self._tensors = path, meta, layers, settings, tensors

    @classmethod
    def load(cls, folder: str | Path) -> StatsFile:
        folder = Path(folder)
        meta_path = folder / META_FILE
        try:
            doc = _json.read_doc(meta_path, kind=KIND, versions=READS, what="stats run", legacy=True)
            meta = CaptureMeta.from_json(doc.get("meta"), str(meta_path))
            layers = _json.int_list(doc.get("layers"), meta_path, "layers", hi=meta.facts.n_layers)
            settings = check_settings(doc.get("spec"), meta_path)
            tensors = _safetensors.SafetensorsFile(folder / STATS_FILE)
        except CorruptCaptureError as err:
            raise CorruptFileError(str(err)) from None
        batch, n_heads = len(meta.tokens), meta.facts.n_heads
        n_q = len(meta.tokens[0])
        for layer in layers:
            for name in ROW_FIELDS:
                info = tensors.tensors.get(f"{layer}.{name}")
                if info is None:
                    raise CorruptFileError(f"{tensors.path} lacks {layer}.{name}")
                if info.shape != (batch, n_heads, n_q):
                    raise CorruptFileError(f"{tensors.path}: {layer}.{name} has shape {list(info.shape)}, expected "
                                           f"[{batch}, {n_heads}, {n_q}] from {meta_path.name}")
        return cls(folder, meta, layers, settings, tensors)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return self.meta.facts.name

    @property
    def tokens(self) -> list[str]:
        return list(self.meta.tokens[0])

    def fields(self, layer: int) -> list[str]:
        return [f for f in FIELDS if f"{layer}.{f}" in self._tensors.tensors]

    def read(self, layer: int, field: str, index: tuple | None = None) -> np.ndarray:
        """``field`` of ``layer`` (e.g. ``"entropy"`` ``[batch, head, q]``, ``"received_mean"`` ``[batch, head, k]``)."""
        if layer not in self.layers:
            raise SelectionError(f"{self.path.name} has no statistics for layer {layer}: layers {self.layers}")
        if field not in FIELDS:
            raise SelectionError(f"unknown statistic {field!r}: one of {', '.join(FIELDS)}")
        return self._tensors.read(f"{layer}.{field}", index)

    def head_means(self, field: str) -> np.ndarray:
        """``[n_layers, n_heads]`` mean of a row statistic over batch and query positions >= 1
        (NaN for layers not recorded)."""
        f = self.meta.facts
        out = np.full((f.n_layers, f.n_heads), np.nan)
        for layer in self.layers:
            a = self.read(layer, field).astype(np.float64)
            a = a[:, :, 1:] if a.shape[-1] > 1 else a
            out[layer] = a.mean(axis=(0, 2))
        return out

    def __repr__(self) -> str:
        return f"StatsFile({self.path.name}: {self.model}, {len(self.tokens)} tokens, layers {len(self.layers)})"
