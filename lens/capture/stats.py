"""The "stats" capture mode: per-layer, per-head attention statistics without patterns.

The model runs with the fused statistics kernel as its attention (Triton on a GPU, the
chunked PyTorch reference on CPU), so nothing N x N is ever built: long contexts cost
O(N) memory. Analyses take these statistics where they would take patterns
(:func:`analyses.row_stats_from_kernel`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch

from lens.capture.record import CaptureMeta
from lens.errors import CorruptCaptureError, OutputExistsError
from lens.loaded import LoadedModel

STATS_FILE, META_FILE = "stats.safetensors", "stats.json"


@dataclass
class StatsRun:
    """Logits ``[batch, pos, vocab]`` and ``stats[layer]`` (a :class:`kernels.AttnStats`) of one forward pass."""

    logits: torch.Tensor | None
    stats: dict[int, object]
    spec: object  # kernels.StatsSpec
    meta: CaptureMeta

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not force:
            raise OutputExistsError(f"{folder} already exists and is not empty: pass force=True (--force) to overwrite")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{layer}.{name}": getattr(s, name).contiguous()
                   for layer, s in self.stats.items() for name in type(s)._fields}
        save_file(tensors, str(folder / STATS_FILE))
        spec = {f.name: getattr(self.spec, f.name) for f in fields(self.spec)}
        doc = {"layers": sorted(self.stats), "spec": spec, "meta": self.meta.to_json()}
        (folder / META_FILE).write_text(json.dumps(doc, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> StatsRun:
        from safetensors.torch import load_file

        from kernels import AttnStats, StatsSpec

        folder = Path(folder)
        try:
            doc = json.loads((folder / META_FILE).read_text())
            tensors = load_file(str(folder / STATS_FILE))
            spec = doc["spec"]
            spec["spans"] = tuple(tuple(s) for s in spec["spans"])
            stats = {int(layer): AttnStats(**{f: tensors[f"{layer}.{f}"] for f in AttnStats._fields})
                     for layer in doc["layers"]}
            return cls(logits=None, stats=stats, spec=StatsSpec(**spec), meta=CaptureMeta.from_json(doc["meta"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptCaptureError(f"{folder} is not a readable stats capture: {type(err).__name__}: {err}") from None


def run_stats(lm: LoadedModel, prompt, *, spec=None, layers=None,
              backend: Literal["auto", "triton", "torch"] = "auto", chat: bool = False) -> StatsRun:
    """One forward pass of ``lm`` over ``prompt`` recording kernel statistics at ``layers`` (all by default)."""
    from kernels import StatsSpec
    from kernels.hf_attention import stats_attention
    from lens.capture import encode_batch
    from lens.capture.native import build_capture
    from lens.capture.spec import CaptureSpec

    spec = spec or StatsSpec()
    input_ids = encode_batch(lm, prompt, chat=chat)
    selection = CaptureSpec.resolve(lm.facts, layers=layers)  # validates the layers
    with torch.no_grad(), stats_attention(lm.model, spec, layers=selection.layers, backend=backend) as rec:
        logits = lm.model(input_ids.to(lm.device)).logits
    stats = {layer: calls[0] for layer, calls in rec.stats.items()}
    meta = build_capture(lm, selection, [], input_ids, backend=f"stats-{backend}").meta
    meta.sites = []
    return StatsRun(logits=logits, stats=stats, spec=spec, meta=meta)
