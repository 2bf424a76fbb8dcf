"""A finished capture: tensors per step, site and layer, plus metadata; saved without pickle.

The on-disk format (``capture.json`` + ``tensors.safetensors`` + the model-input image) is
:mod:`formats.capture`'s: this module turns tensors into its arrays and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnlens.formats.capture import CaptureFile, CaptureMeta, entry_name, write_capture
from attnlens.formats.errors import SelectionError
from attnlens.formats.output import output_folder
from attnlens.formats.provenance import package_versions
from attnlens.formats.sites import Site, SiteKey

__all__ = ["Capture", "CaptureMeta", "package_versions"]


@dataclass
class Capture:
    """Recorded tensors, ``steps[i][SiteKey(site, layer)]``: one step per forward pass.

    A plain forward gives one step; ``generate()`` gives the prompt's pass and then one
    step per new token. Per-head sites hold only the selected heads, in the order of
    ``meta.heads`` (K and V: ``meta.kv_heads``); :meth:`head_index` maps a model head to
    its index there. ``image_png`` is the model-input image of an image run and ``audio_wav`` the
    input audio of a speech run (saved with the capture).
    """

    meta: CaptureMeta
    steps: list[dict[SiteKey, torch.Tensor]]
    image_png: bytes | None = None
    audio_wav: bytes | None = None

    def get(self, site: Site, layer: int, step: int = 0) -> torch.Tensor:
        if not 0 <= step < len(self.steps):
            raise SelectionError(f"step {step} is out of range: this capture has steps 0-{len(self.steps) - 1}")
        key = SiteKey(site, layer)
        if key not in self.steps[step]:
            have = sorted({k.site.value for k in self.steps[step]})
            raise SelectionError(
                f"{site.value} at layer {layer} was not captured: sites {', '.join(have)} at layers {self.meta.layers}")
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

    def __repr__(self) -> str:
        m = self.meta
        sites = ", ".join(s.value for s in m.sites) or "none"
        n_tok = len(m.tokens[0]) if m.tokens else 0
        text = m.text[0] if m.text else ""
        text = text if len(text) <= 40 else text[:37] + "..."
        return (f"Capture({m.facts.name}: {len(m.tokens)} x {n_tok} tokens {text!r}, {len(self.steps)} step(s), "
                f"sites {sites}, {len(m.layers)} layers x {len(m.heads)} heads, {self.n_bytes / 2**20:.1f} MiB)")

    # ---- storage -------------------------------------------------------------------
    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """Write the capture to ``folder``; refuses to overwrite a non-empty one without ``force``.

        The folder is written next to the target and swapped in when complete, so a failed
        save leaves whatever was there before.
        """
        folder = Path(folder)
        with output_folder(folder, force=force) as tmp:
            self.write_into(tmp)
        return folder

    def write_into(self, folder: Path) -> Path:
        """Write the files into ``folder`` directly (it is the caller's output folder)."""
        steps, bf16 = [], set()
        for step, record in enumerate(self.steps):
            arrays = {}
            for key, t in record.items():
                t = t.detach().to("cpu").contiguous()
                if t.dtype == torch.bfloat16:
                    arrays[key] = t.view(torch.int16).numpy().view(np.uint16)
                    bf16.add(entry_name(step, key))
                else:
                    arrays[key] = t.numpy()
            steps.append(arrays)
        return write_capture(folder, self.meta, steps, bf16=frozenset(bf16), image_png=self.image_png,
                             audio_wav=self.audio_wav)

    @classmethod
    def load(cls, folder: str | Path) -> Capture:
        """Read a capture folder; :class:`~lens.errors.CorruptCaptureError` names the file and what is wrong."""
        f = CaptureFile.load(folder, verify=True)
        steps: list[dict[SiteKey, torch.Tensor]] = [{} for _ in range(f.n_steps)]
        for (step, key), entry in f.entries.items():
            a = f.read(key.site, key.layer, step, raw=entry.dtype == "bfloat16")
            t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if entry.dtype == "bfloat16" else torch.from_numpy(a)
            steps[step][key] = t
        image, audio = f.image_path(), f.audio_path()
        return cls(meta=f.meta, steps=steps, image_png=image.read_bytes() if image and image.is_file() else None,
                   audio_wav=audio.read_bytes() if audio and audio.is_file() else None)
