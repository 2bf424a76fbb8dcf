"""A finished capture: tensors per step, site and layer, plus metadata; saved without pickle.

On disk a capture is a folder with ``tensors.safetensors`` and ``capture.json``. The JSON
lists every tensor with its typed site, layer and step (never recovered by parsing the
tensor's name), the tokens and text, the model's facts, the selection and the package
versions, and the SHA-256 of the tensor file so that truncation is caught on load.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lens.errors import CorruptCaptureError, OutputExistsError, SelectionError
from lens.loaded import ModelFacts
from lens.sites import Site, SiteKey

FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
META_FILE = "capture.json"
_VERSIONED = ("attnlens", "torch", "transformers", "safetensors", "transformer-lens", "nnsight", "triton")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class CaptureMeta:
    facts: ModelFacts
    token_ids: list[list[int]]  # [batch][pos] of the prompt (generated tokens are in `generated`)
    tokens: list[list[str]]
    text: list[str]
    sites: list[Site]
    layers: list[int]
    heads: list[int]
    kv_heads: list[int]
    backend: str = "torch"
    generated: list[list[int]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=package_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "facts": self.facts.to_json(),
            "token_ids": self.token_ids,
            "tokens": self.tokens,
            "text": self.text,
            "sites": [s.value for s in self.sites],
            "layers": self.layers,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "backend": self.backend,
            "generated": self.generated,
            "versions": self.versions,
            "created": self.created,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaptureMeta:
        d = dict(d)
        d["facts"] = ModelFacts.from_json(d["facts"])
        d["sites"] = [Site(s) for s in d["sites"]]
        return cls(**d)


@dataclass
class Capture:
    """Recorded tensors, ``steps[i][SiteKey(site, layer)]``: one step per forward pass.

    A plain forward gives one step; ``generate()`` gives the prompt's pass and then one
    step per new token. Per-head sites hold only the selected heads, in the order of
    ``meta.heads`` (K and V: ``meta.kv_heads``); :meth:`head_index` maps a model head to
    its index there.
    """

    meta: CaptureMeta
    steps: list[dict[SiteKey, torch.Tensor]]

    def get(self, site: Site, layer: int, step: int = 0) -> torch.Tensor:
        if not 0 <= step < len(self.steps):
            raise SelectionError(f"step {step} is out of range: this capture has steps 0-{len(self.steps) - 1}")
        key = SiteKey(site, layer)
        if key not in self.steps[step]:
            have = sorted({k.site.value for k in self.steps[step]})
            raise SelectionError(
                f"{site.value} at layer {layer} was not captured: sites {', '.join(have)} "
                f"at layers {self.meta.layers}"
            )
        return self.steps[step][key]

    def pattern(self, layer: int, head: int | None = None, step: int = 0) -> torch.Tensor:
        """Attention pattern ``[batch, head, q, k]``, or ``[batch, q, k]`` for one model head."""
        p = self.get(Site.PATTERN, layer, step)
        return p if head is None else p[:, self.head_index(head)]

    def head_index(self, head: int) -> int:
        try:
            return self.meta.heads.index(head)
        except ValueError:
            raise SelectionError(f"head {head} was not captured: heads {self.meta.heads}") from None

    @property
    def n_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for step in self.steps for t in step.values())

    # ---- storage -------------------------------------------------------------------
    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """Write the capture to ``folder``; refuses to overwrite a non-empty one without ``force``."""
        from safetensors.torch import save_file

        from lens.zoo._cache import sha256_file

        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not force:
            raise OutputExistsError(f"{folder} already exists and is not empty: pass force=True (--force) to overwrite")
        folder.mkdir(parents=True, exist_ok=True)
        tensors, entries = {}, []
        for step, record in enumerate(self.steps):
            for key in sorted(record, key=lambda k: (k.layer, k.site.value)):
                name = f"step{step}.{key.site.value}.{key.layer}"
                t = record[key].detach().to("cpu").contiguous()
                tensors[name] = t
                entries.append({"name": name, "step": step, "site": key.site.value, "layer": key.layer,
                                "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")})
        save_file(tensors, str(folder / TENSORS_FILE))
        doc = {"format_version": FORMAT_VERSION, "n_steps": len(self.steps), "entries": entries,
               "tensors_sha256": sha256_file(folder / TENSORS_FILE), "meta": self.meta.to_json()}
        (folder / META_FILE).write_text(json.dumps(doc, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Capture:
        """Read a capture folder; :class:`CorruptCaptureError` names the file and what is wrong."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from lens.zoo._cache import sha256_file

        folder = Path(folder)
        meta_path, tensor_path = folder / META_FILE, folder / TENSORS_FILE
        if not folder.is_dir():
            raise CorruptCaptureError(f"{folder} is not a capture folder: it does not exist")
        for path in (meta_path, tensor_path):
            if not path.is_file():
                raise CorruptCaptureError(f"{path} is missing: {folder} is not a complete capture")
        try:
            doc = json.loads(meta_path.read_text())
            entries, meta = doc["entries"], CaptureMeta.from_json(doc["meta"])
            n_steps, digest = int(doc["n_steps"]), doc["tensors_sha256"]
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptCaptureError(f"{meta_path} is not valid capture metadata: {err}") from None
        if doc.get("format_version") != FORMAT_VERSION:
            raise CorruptCaptureError(f"{meta_path} has format_version {doc.get('format_version')}, expected {FORMAT_VERSION}")
        if sha256_file(tensor_path) != digest:
            raise CorruptCaptureError(f"{tensor_path} does not match its recorded SHA-256: truncated or altered")
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError) as err:
            raise CorruptCaptureError(f"{tensor_path} cannot be read: {err}") from None
        steps: list[dict[SiteKey, torch.Tensor]] = [{} for _ in range(n_steps)]
        for e in entries:
            t = tensors.get(e["name"])
            if t is None or list(t.shape) != e["shape"]:
                raise CorruptCaptureError(f"{tensor_path} lacks {e['name']} with shape {e['shape']}")
            steps[e["step"]][SiteKey(Site(e["site"]), int(e["layer"]))] = t
        return cls(meta=meta, steps=steps)
