"""Shape facts of a model: what selections are validated and captures sized against."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from attnlens.formats.errors import CorruptFileError, SelectionError


class Modality(enum.Enum):
    TEXT = "text"
    VISION = "vision"
    SPEECH = "speech"
    VISION_TEXT = "vision-text"


@dataclass(frozen=True)
class ModelFacts:
    """Shape facts of a model, enough to validate selections and size captures."""

    name: str  # zoo name, hub id or folder it was loaded from
    architecture: str  # transformers class name, e.g. "LlamaForCausalLM"
    n_layers: int
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per layer (fewer than n_heads with GQA)
    d_head: int
    d_model: int
    context_length: int
    vocab_size: int
    modality: Modality = Modality.TEXT
    causal: bool = True
    weights_sha256: str | None = None  # of the weight files, where known
    # Sliding-window attention (Gemma 3, Mistral...): the window in keys and the layers that
    # use it; the other layers attend over the whole context. None/() for full attention.
    sliding_window: int | None = None
    local_layers: tuple[int, ...] = ()
    encoder_layers: int = 0  # an encoder-decoder's encoder layers (0: decoder-only or encoder-only)
    # MLA (DeepSeek-V2/V3): values and z are d_head_v wide while queries and keys are d_head; None: the same
    d_head_v: int | None = None

    @property
    def d_value(self) -> int:
        """The width of each head's values and of z (``d_head`` except in MLA models)."""
        return self.d_head_v or self.d_head

    def window_of(self, layer: int) -> int | None:
        """The key window of ``layer`` (keys ``q - window + 1 .. q``), or None for full attention."""
        return self.sliding_window if layer in self.local_layers else None

    @property
    def group_size(self) -> int:
        """How many query heads share one KV head."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The KV head that query ``head`` reads (transformers' repeat_kv convention)."""
        return head // self.group_size

    def query_heads_of(self, kv_head: int) -> list[int]:
        return list(range(kv_head * self.group_size, (kv_head + 1) * self.group_size))

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise SelectionError(f"layer {layer} is out of range: {self.name} has layers 0-{self.n_layers - 1}")
        return layer

    def check_head(self, head: int) -> int:
        if not 0 <= head < self.n_heads:
            raise SelectionError(
                f"head {head} is out of range: {self.name} has heads 0-{self.n_heads - 1} in each layer")
        return head

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["modality"] = self.modality.value
        d["local_layers"] = list(self.local_layers)
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "facts") -> ModelFacts:
        """Facts from their JSON form; :class:`CorruptFileError` naming ``where`` for bad fields."""
        if not isinstance(d, dict):
            raise CorruptFileError(f"{where}: model facts must be an object")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        ints = ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_model", "context_length", "vocab_size")
        for key in ("name", "architecture", *ints):
            if key not in d:
                raise CorruptFileError(f"{where}: model facts lack {key}")
        for key in ints:
            v = d[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 10**7:
                raise CorruptFileError(f"{where}: model facts' {key} must be an integer 0-10^7, got {v!r}")
        if min(d["n_layers"], d["n_heads"], d["n_kv_heads"]) < 1 or d["n_heads"] % d["n_kv_heads"]:
            raise CorruptFileError(f"{where}: model facts have {d['n_heads']} heads on {d['n_kv_heads']} KV heads "
                                   f"in {d['n_layers']} layers")
        try:
            d["modality"] = Modality(d.get("modality", "text"))
        except ValueError:
            raise CorruptFileError(f"{where}: unknown modality {d.get('modality')!r}") from None
        d["name"], d["architecture"] = str(d["name"]), str(d["architecture"])
        d["causal"] = bool(d.get("causal", True))
        local = d.get("local_layers") or ()
        if not isinstance(local, (list, tuple)) or not all(isinstance(x, int) and 0 <= x < d["n_layers"] for x in local):
            raise CorruptFileError(f"{where}: model facts' local_layers must be layer indices")
        d["local_layers"] = tuple(local)
        enc = d.get("encoder_layers", 0)
        if not isinstance(enc, int) or not 0 <= enc <= 100_000:
            raise CorruptFileError(f"{where}: model facts' encoder_layers must be an integer")
        d_v = d.get("d_head_v")
        if d_v is not None and (not isinstance(d_v, int) or isinstance(d_v, bool) or not 0 < d_v <= 10**7):
            raise CorruptFileError(f"{where}: model facts' d_head_v must be a positive integer or null, got {d_v!r}")
        window = d.get("sliding_window")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise CorruptFileError(f"{where}: model facts' sliding_window must be a positive integer or null")
        return cls(**d)
