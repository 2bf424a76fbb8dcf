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


def check_backend_model(backend: str, facts) -> None:
    """A one-line :class:`~lens.errors.BackendError` for a backend that cannot run this kind of model."""
    from lens.errors import BackendError

    b = Backend(backend)
    if b is Backend.TORCH:
        return
    arch = facts.architecture
    if b is Backend.TRANSFORMER_LENS and (facts.encoder_layers or not facts.causal or arch.endswith("Model")):
        raise BackendError(f"TransformerLens 4.x has no bridge for {arch} ({facts.name}): use backend torch"
                           + ("" if not facts.encoder_layers else " or nnsight"))
    if b is Backend.NNSIGHT and (facts.encoder_layers or not facts.causal):
        raise BackendError(f"the nnsight backend runs causal language models here; {facts.name} is "
                           f"{'an encoder-decoder' if facts.encoder_layers else 'an encoder'}: use backend torch")


SUPPORT = {  # what `lens models` prints: which backends run which kind of model
    "decoder LM": "torch, transformer_lens, nnsight",
    "encoder (BERT)": "torch (TransformerLens: no BERT bridge without a masked-LM head)",
    "vision (ViT)": "torch",
    "speech (encoder-decoder)": "torch (TransformerLens 4.3 has no Whisper bridge)",
}
