"""Hook sites: a typed enum plus an integer layer, never strings parsed back into parts.

Axis vocabulary used everywhere (docstrings, annotations, file metadata):
``batch head q k d_head`` for attention, ``batch pos d_model`` for the residual stream.
Per-head tensors are stored head-major, ``[batch, head, pos, d_head]``, like the kernels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from attnlens.formats.errors import SelectionError


class Part(enum.Enum):
    """Which attention of a layer: the model's own self-attention, an encoder-decoder's encoder
    self-attention, or its decoder's cross-attention over the encoder's positions."""

    SELF = "self"
    ENCODER = "encoder"
    CROSS = "cross"


class Site(enum.Enum):
    """What a capture records at one layer, with the shape it is stored in."""

    PATTERN = "pattern"  #: attention probabilities  [batch, head, q, k]
    Q = "q"  #: queries after rotary embedding  [batch, head, q, d_head]
    K = "k"  #: keys after rotary embedding, one per KV head  [batch, kv_head, k, d_head]
    V = "v"  #: values, one per KV head  [batch, kv_head, k, d_head]
    Z = "z"  #: per-head attention output, the input of the output projection  [batch, head, q, d_head]
    RESID_PRE = "resid_pre"  #: residual stream entering the block  [batch, pos, d_model]
    RESID_POST = "resid_post"  #: residual stream leaving the block  [batch, pos, d_model]
    ATTN_OUT = "attn_out"  #: attention block output after the output projection  [batch, pos, d_model]
    MLP_OUT = "mlp_out"  #: MLP output  [batch, pos, d_model]
    ENC_PATTERN = "enc_pattern"  #: encoder self-attention (encoder-decoders)  [batch, head, frames, frames]
    CROSS_PATTERN = "cross_pattern"  #: decoder cross-attention over encoder positions  [batch, head, q, frames]

    @property
    def per_head(self) -> bool:
        return self in (Site.PATTERN, Site.Q, Site.Z, Site.K, Site.V, Site.ENC_PATTERN, Site.CROSS_PATTERN)

    @property
    def part(self) -> Part:
        """The attention a site is recorded in."""
        return {Site.ENC_PATTERN: Part.ENCODER, Site.CROSS_PATTERN: Part.CROSS}.get(self, Part.SELF)

    @property
    def is_pattern(self) -> bool:
        return self in (Site.PATTERN, Site.ENC_PATTERN, Site.CROSS_PATTERN)

    @property
    def per_kv_head(self) -> bool:
        return self in (Site.K, Site.V)

    @property
    def in_attention(self) -> bool:
        """Recorded inside the attention function (needs the attention-implementation switch)."""
        return self in (Site.PATTERN, Site.Q, Site.K, Site.V, Site.ENC_PATTERN, Site.CROSS_PATTERN)

    @classmethod
    def parse(cls, name: str) -> Site:
        """The site called ``name`` (its value, case-insensitive), for CLI input."""
        try:
            return cls(str(name).strip().lower())
        except ValueError:
            valid = ", ".join(s.value for s in cls)
            raise SelectionError(f"unknown site {name!r}: valid sites are {valid}") from None


@dataclass(frozen=True)
class SiteKey:
    """One recorded tensor: a site at a layer."""

    site: Site
    layer: int

    def __str__(self) -> str:
        return f"{self.site.value}@{self.layer}"

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.layer, self.site.value)


# ---- components: the one identity of a head, an MLP and a residual stream ------------------
@dataclass(frozen=True, order=True)
class HeadRef:
    """One attention head: query head ``head`` of layer ``layer`` (the one head identity: edits, circuit
    nodes and results name heads with it)."""

    layer: int
    head: int

    def __post_init__(self) -> None:
        _set_index(self, "layer")
        _set_index(self, "head")

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True, order=True)
class MlpRef:
    """The MLP of layer ``layer``."""

    layer: int

    def __post_init__(self) -> None:
        _set_index(self, "layer")

    def __str__(self) -> str:
        return f"L{self.layer}.mlp"


@dataclass(frozen=True, order=True)
class ResidRef:
    """The residual stream leaving block ``layer``."""

    layer: int

    def __post_init__(self) -> None:
        _set_index(self, "layer")

    def __str__(self) -> str:
        return f"L{self.layer}.resid"


Component = HeadRef | MlpRef | ResidRef


def _set_index(ref, name: str) -> None:
    """``ref.<name>`` as a plain non-negative int (numpy and 0-d tensor integers too; never bool,
    float or text: ``HeadRef("3", 1)`` is refused, not read as layer 3)."""
    value = getattr(ref, name)
    kind = type(ref).__name__
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__index__"):
        raise SelectionError(f"{kind} {name} must be an integer >= 0, got {type(value).__name__} {value!r}"[:200])
    index = value.__index__()
    if index < 0:
        raise SelectionError(f"{kind} {name} must be an integer >= 0, got {index}")
    object.__setattr__(ref, name, int(index))
