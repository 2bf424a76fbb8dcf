"""Head interventions: ablate (zero, mean, resample) or patch a head's output ``z``.

Every intervention is a list of :class:`HeadEdit` — replace head ``head`` of layer
``layer`` in ``z`` (the input of the output projection) by a replacement — so all three
backends apply exactly the same thing through :func:`edit_z`. Edits compose: any number
of heads, in any layers, at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lens.errors import InterventionError


@dataclass(frozen=True)
class HeadEdit:
    """Replace one head's ``z``.

    ``replacement`` is None (zero ablation), ``[d_head]`` (broadcast over batch and
    positions, e.g. a mean), or ``[batch, pos, d_head]`` (patching, resampling).
    """

    layer: int
    head: int
    replacement: Tensor | None = None

    def __post_init__(self) -> None:
        if self.layer < 0 or self.head < 0:
            raise InterventionError(f"layer and head must be >= 0, got layer {self.layer}, head {self.head}")
        if self.replacement is not None and self.replacement.ndim not in (1, 3):
            raise InterventionError(
                f"replacement for L{self.layer}H{self.head} must be [d_head] or [batch, pos, d_head], "
                f"got shape {tuple(self.replacement.shape)}"
            )


def edits_by_layer(edits: Iterable[HeadEdit]) -> dict[int, list[HeadEdit]]:
    out: dict[int, list[HeadEdit]] = {}
    for e in edits:
        out.setdefault(e.layer, []).append(e)
    return out


def edit_z(z: Float[Tensor, "batch pos head d_head"], edits: Sequence[HeadEdit]) -> Tensor:
    """``z`` with the edited heads replaced (a new tensor; ``z`` is left as it was)."""
    if not edits:
        return z
    z = z.clone()
    batch, pos, n_heads, d_head = z.shape
    for e in edits:
        if e.head >= n_heads:
            raise InterventionError(f"head {e.head} is out of range: layer {e.layer} has heads 0-{n_heads - 1}")
        if e.replacement is None:
            z[:, :, e.head] = 0
            continue
        r = e.replacement.to(device=z.device, dtype=z.dtype)
        if r.shape[-1] != d_head or (r.ndim == 3 and r.shape[1] != pos) or (r.ndim == 3 and r.shape[0] not in (1, batch)):
            raise InterventionError(
                f"replacement for L{e.layer}H{e.head} has shape {tuple(r.shape)} but the head's z "
                f"is [batch={batch}, pos={pos}, d_head={d_head}]"
            )
        z[:, :, e.head] = r
    return z


def zero_ablation(heads: Iterable[tuple[int, int]]) -> list[HeadEdit]:
    """Zero the ``(layer, head)`` heads."""
    return [HeadEdit(layer, head) for layer, head in heads]


def mean_ablation(z_by_layer: dict[int, Float[Tensor, "batch head pos d_head"]],
                  heads: Iterable[tuple[int, int]], head_index: Sequence[int] | None = None) -> list[HeadEdit]:
    """Replace each head by its mean ``z`` over a reference set (batch and positions).

    ``z_by_layer`` maps layer to a captured Z tensor (``Capture.get(Site.Z, layer)``);
    ``head_index`` is the capture's head list when it kept only some heads.
    """
    edits = []
    for layer, head in heads:
        z = _captured_head(z_by_layer, layer, head, head_index)
        edits.append(HeadEdit(layer, head, z.mean(dim=(0, 1))))
    return edits


def patch_heads(z_by_layer: dict[int, Float[Tensor, "batch head pos d_head"]],
                heads: Iterable[tuple[int, int]], head_index: Sequence[int] | None = None) -> list[HeadEdit]:
    """Replace each head's ``z`` by the one captured in another run (same positions)."""
    return [HeadEdit(layer, head, _captured_head(z_by_layer, layer, head, head_index)) for layer, head in heads]


def resample_ablation(z_by_layer: dict[int, Float[Tensor, "batch head pos d_head"]],
                      heads: Iterable[tuple[int, int]], *, batch: int, seed: int = 0,
                      head_index: Sequence[int] | None = None) -> list[HeadEdit]:
    """Replace each head's ``z`` by the one of a randomly drawn other prompt.

    ``z_by_layer`` holds Z captured on source prompts of the same length as the target;
    each of the ``batch`` target rows gets one source row drawn with ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    edits = []
    for layer, head in heads:
        z = _captured_head(z_by_layer, layer, head, head_index)
        rows = torch.randint(0, z.shape[0], (batch,), generator=g)
        edits.append(HeadEdit(layer, head, z[rows]))
    return edits


def _captured_head(z_by_layer, layer, head, head_index) -> Tensor:
    if layer not in z_by_layer:
        raise InterventionError(f"no captured z for layer {layer}: have layers {sorted(z_by_layer)}")
    idx = head if head_index is None else list(head_index).index(head)
    return z_by_layer[layer][:, idx]  # [batch, pos, d_head]
