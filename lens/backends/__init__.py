"""The three capture backends, one meaning: each runs a forward pass over ``input_ids``
with the same head edits and returns logits plus the same per-step records.

- ``torch``: plain PyTorch hooks on the transformers model (:mod:`lens.recording.native`).
- ``transformer_lens``: TransformerLens 4.x ``TransformerBridge`` hook points.
- ``nnsight``: an nnsight trace of the same model.
"""

from __future__ import annotations

from attnlens.formats.vocab import Backend

__all__ = ["Backend", "check_backend_model", "check_backend_sites"]


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
    if b is Backend.TRANSFORMER_LENS:
        if facts.encoder_layers or not facts.causal:  # attnlens' bridge path feeds token ids to a causal LM
            raise BackendError(f"the transformer_lens backend runs causal language models here; {arch} "
                               f"({facts.name}) is {'an encoder-decoder' if facts.encoder_layers else 'an encoder'}: "
                               "use backend torch" + ("" if not facts.encoder_layers else " or nnsight"))
        bridges = tl_architectures()
        if bridges is not None and arch not in bridges:
            raise BackendError(f"TransformerLens has no bridge for {arch} ({facts.name}) in its registry: "
                               "use backend torch or nnsight")
    if b is Backend.NNSIGHT and (facts.encoder_layers or not facts.causal):
        raise BackendError(f"the nnsight backend runs causal language models here; {facts.name} is "
                           f"{'an encoder-decoder' if facts.encoder_layers else 'an encoder'}: use backend torch")


def tl_architectures() -> frozenset[str] | None:
    """The architectures TransformerLens' bridge registry supports (None without transformer-lens 4.x:
    the backend then says so itself)."""
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:
        return None
    return frozenset(SUPPORTED_ARCHITECTURES)


def backend_failure(backend: str, facts, err: Exception):
    """A one-line :class:`~lens.errors.BackendError` for a raw error a backend raised on this model."""
    from lens.errors import BackendError

    text = " ".join(str(err).split())[:200] or type(err).__name__
    return BackendError(f"backend {backend} failed on {facts.architecture} ({facts.name}): "
                        f"{type(err).__name__}: {text}; use backend torch")


SUPPORT = {  # what `lens models` prints: which backends run which kind of model
    "decoder LM": "torch, transformer_lens, nnsight",
    "encoder (BERT)": "torch (TransformerLens: no BERT bridge without a masked-LM head)",
    "vision (ViT)": "torch",
    "speech (encoder-decoder)": "torch (TransformerLens 4.3 has no Whisper bridge)",
}
