"""What to capture: sites, layers, heads, storage dtype and device, memory budget."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from lens.errors import SelectionError
from lens.loaded import Modality, ModelFacts
from lens.sites import Site

DEFAULT_BUDGET_BYTES = 8 * 2**30  # capped at half the machine's memory, see default_budget()


def default_budget() -> int:
    """8 GiB, or half of physical memory if that is less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_BUDGET_BYTES
    return min(DEFAULT_BUDGET_BYTES, physical // 2)


@dataclass(frozen=True)
class CaptureSpec:
    """A validated selection. Build it with :meth:`resolve` against a model's facts."""

    sites: tuple[Site, ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...]  # query heads kept in per-head sites
    kv_heads: tuple[int, ...]  # KV heads those query heads read (for K and V)
    dtype: torch.dtype | None  # None keeps the model's dtype
    device: str  # where captured tensors are stored
    budget_bytes: int

    @classmethod
    def resolve(
        cls,
        facts: ModelFacts,
        *,
        sites: Iterable[Site] = (Site.PATTERN,),
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        device: str = "cpu",
        budget_bytes: int | None = None,
    ) -> CaptureSpec:
        from lens import _checks

        sites = tuple(dict.fromkeys(_checks.sites(sites)))
        layers, heads = _checks.index_list(layers, "layers"), _checks.index_list(heads, "heads")
        dtype, device = _checks.storage_dtype(dtype), _checks.device(device)
        budget_bytes = _checks.budget(budget_bytes)
        layers = tuple(range(facts.n_layers)) if layers is None else layers
        heads = tuple(range(facts.n_heads)) if heads is None else heads
        if not layers:
            raise SelectionError("layers is empty")
        if not heads:
            raise SelectionError("heads is empty")
        for layer in layers:
            facts.check_layer(int(layer))
        # image-text models may have cross-attention over the image (Mllama): the adapter finds its layers
        other = [s.value for s in sites if s.part is not Site.PATTERN.part
                 and not (s is Site.CROSS_PATTERN and facts.modality is Modality.VISION_TEXT)]
        if other and not facts.encoder_layers:
            raise SelectionError(f"sites {', '.join(other)} need an encoder-decoder: {facts.name} has no encoder")
        if Site.ENC_PATTERN in sites and max(layers) >= facts.encoder_layers:
            raise SelectionError(f"layer {max(layers)} is out of range for enc_pattern: {facts.name}'s encoder has "
                                 f"layers 0-{facts.encoder_layers - 1}")
        for head in heads:
            facts.check_head(int(head))
        kv_heads = tuple(dict.fromkeys(facts.kv_head_of(h) for h in heads))
        budget = default_budget() if budget_bytes is None else int(budget_bytes)
        if budget <= 0:
            raise SelectionError(f"budget_bytes must be positive, got {budget}")
        return cls(sites, tuple(int(x) for x in layers), tuple(int(h) for h in heads), kv_heads,
                   dtype, device, budget)

    def heads_for(self, site: Site) -> tuple[int, ...]:
        return self.kv_heads if site.per_kv_head else self.heads

    def estimate_bytes(self, facts: ModelFacts, *, batch: int, q_len: int, k_len: int | None = None,
                       model_dtype: torch.dtype = torch.float32, frames: int = 0) -> int:
        """Bytes one forward pass over ``q_len`` new tokens (``k_len`` keys) will allocate for the capture:
        the stored tensors plus, when patterns are captured, the eager attention of one captured layer
        (scores and probabilities of every query head in the model's dtype, the float32 softmax, and
        the additive mask), which exists while that layer runs."""
        k_len = q_len if k_len is None else k_len
        stored = self.stored_bytes(facts, batch=batch, q_len=q_len, k_len=k_len, model_dtype=model_dtype, frames=frames)
        transient = self.transient_bytes(facts, batch=batch, q_len=q_len, k_len=k_len, model_dtype=model_dtype)
        if Site.ENC_PATTERN in self.sites:
            transient = max(transient, frames * frames * batch * (facts.n_heads * (2 * model_dtype.itemsize + 4)))
        return stored + transient

    def transient_bytes(self, facts: ModelFacts, *, batch: int, q_len: int, k_len: int,
                        model_dtype: torch.dtype = torch.float32) -> int:
        """Peak working memory of the eager attention of one captured layer (0 without patterns)."""
        if Site.PATTERN not in self.sites:
            return 0
        cells = batch * q_len * k_len
        return cells * (facts.n_heads * (2 * model_dtype.itemsize + 4) + model_dtype.itemsize)

    def stored_bytes(self, facts: ModelFacts, *, batch: int, q_len: int, k_len: int,
                     model_dtype: torch.dtype = torch.float32, frames: int = 0) -> int:
        """Bytes the captured tensors of one forward pass take."""
        itemsize = (self.dtype or model_dtype).itemsize
        per_layer = 0
        for site in self.sites:
            if site is Site.PATTERN:
                n = len(self.heads) * q_len * k_len
            elif site is Site.ENC_PATTERN:
                n = len(self.heads) * frames * frames
            elif site is Site.CROSS_PATTERN:
                n = len(self.heads) * q_len * frames
            elif site is Site.Q:
                n = len(self.heads) * q_len * facts.d_head
            elif site is Site.Z:
                n = len(self.heads) * q_len * facts.d_value
            elif site is Site.K:
                n = len(self.kv_heads) * k_len * facts.d_head
            elif site is Site.V:
                n = len(self.kv_heads) * k_len * facts.d_value
            else:
                n = q_len * facts.d_model
            per_layer += n
        return per_layer * batch * len(self.layers) * itemsize


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # unreachable
