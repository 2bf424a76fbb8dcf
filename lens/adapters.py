"""Where things are inside a model: the one place that knows module names.

An adapter maps a loaded transformers module onto the parts capture and interventions
hook: the list of blocks, each block's attention module, its output projection (whose
input is the per-head output ``z``) and its MLP. New architectures (vision towers,
speech encoders and decoders) slot in by implementing :class:`ModelAdapter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import nn

from lens.errors import BackendError

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_OUT_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


class ModelAdapter(Protocol):
    """What capture needs to find inside a model."""

    n_layers: int

    def block(self, layer: int) -> nn.Module: ...

    def attention(self, layer: int) -> nn.Module: ...

    def out_proj(self, layer: int) -> nn.Linear: ...

    def mlp(self, layer: int) -> nn.Module: ...


@dataclass
class DecoderAdapter:
    """Adapter for transformers models built as a ModuleList of blocks.

    Finds the block list as the ModuleList whose length is the number of layers, and
    inside each block the attention, output projection and MLP by their usual names.
    Covers the Llama family (Llama, Mistral, Qwen2/3, Gemma 1-3, SmolLM), GPT-NeoX,
    Phi and most decoders that use transformers' attention interface.
    """

    model: nn.Module
    n_layers: int

    def __post_init__(self) -> None:
        self._blocks = self._find_blocks()

    def _find_blocks(self) -> nn.ModuleList:
        for _, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == self.n_layers:
                if _child(module[0], _ATTENTION_NAMES) is not None:
                    return module
        raise BackendError(
            f"cannot find {self.n_layers} transformer blocks with an attention module in "
            f"{type(self.model).__name__}; write a ModelAdapter for this architecture"
        )

    def block(self, layer: int) -> nn.Module:
        return self._blocks[layer]

    def attention(self, layer: int) -> nn.Module:
        return _child(self._blocks[layer], _ATTENTION_NAMES)

    def out_proj(self, layer: int) -> nn.Linear:
        proj = _child(self.attention(layer), _OUT_PROJ_NAMES)
        if proj is None:
            raise BackendError(
                f"no output projection ({', '.join(_OUT_PROJ_NAMES)}) in layer {layer}'s attention"
            )
        return proj

    def mlp(self, layer: int) -> nn.Module:
        mlp = _child(self._blocks[layer], _MLP_NAMES)
        if mlp is None:
            raise BackendError(f"no MLP ({', '.join(_MLP_NAMES)}) in block {layer}")
        return mlp


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None
