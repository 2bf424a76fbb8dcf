"""The three capture backends, one meaning: each runs a forward pass over ``input_ids``
with the same head edits and returns logits plus the same per-step records.

- ``torch``: plain PyTorch hooks on the transformers model (:mod:`lens.recording.native`).
- ``transformer_lens``: TransformerLens 4.x ``TransformerBridge`` hook points.
- ``nnsight``: an nnsight trace of the same model.
"""

from __future__ import annotations

import enum


class Backend(enum.Enum):
    TORCH = "torch"
    TRANSFORMER_LENS = "transformer_lens"
    NNSIGHT = "nnsight"


def check_backend_sites(backend: str, sites) -> None:
    """A one-line :class:`~lens.errors.BackendError` for sites a backend cannot capture (before any run)."""
    from lens.errors import BackendError
    from lens.sites import Site

    if Backend(backend) is Backend.NNSIGHT:
        bad = [s.value for s in sites if s in (Site.Q, Site.K, Site.V)]
        if bad:
            raise BackendError(f"the nnsight backend cannot capture {', '.join(bad)}: use backend torch or "
                               "transformer_lens")
