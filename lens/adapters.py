"""Where things are inside a model: the one place that knows module names.

An adapter maps a loaded transformers module onto the parts capture and interventions
hook: the list of blocks, each block's attention module (the one that calls the attention
function), its output projection (whose input is the per-head output ``z``) and its MLP
output, and, per attention part (:class:`~formats.sites.Part`), the attention modules of
every layer. :func:`adapter_for` picks the adapter for a model: decoders and ViTs
(:class:`DecoderAdapter`), BERT-style encoders (:class:`BertAdapter`) and speech
encoder-decoders (:class:`EncoderDecoderAdapter`). New architectures slot in by
implementing :class:`ModelAdapter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from formats.sites import Part
from lens.errors import BackendError, SelectionError

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_OUT_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")  # GraniteMoE keeps its experts in block_sparse_moe


class ModelAdapter(Protocol):
    """What capture and edits need to find inside a model."""

    n_layers: int

    def block(self, layer: int) -> nn.Module: ...

    def attention(self, layer: int) -> nn.Module: ...

    def out_proj(self, layer: int) -> nn.Linear: ...

    def mlp(self, layer: int) -> nn.Module: ...

    def attention_modules(self) -> dict[tuple[Part, int], nn.Module]: ...


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def _blocks(model: nn.Module, n_layers: int, has_attention=lambda b: _child(b, _ATTENTION_NAMES) is not None
            ) -> nn.ModuleList:
    # hybrids (Jamba, Bamba) have attention in some blocks only: any block with attention marks the list
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and any(has_attention(b) for b in module):
            return module
    raise BackendError(f"cannot find {n_layers} transformer blocks with an attention module in "
                       f"{type(model).__name__}; write a ModelAdapter for this architecture")


@dataclass
class DecoderAdapter:
    """Adapter for transformers models built as a ModuleList of blocks.

    Finds the block list as the ModuleList whose length is the number of layers, and
    inside each block the attention, output projection and MLP by their usual names.
    Covers the Llama family (Llama, Mistral, Qwen2/3, Gemma 1-3, SmolLM), GPT-NeoX,
    Phi, DINOv2 and most decoders that use transformers' attention interface.
    """

    model: nn.Module
    n_layers: int
    _list: nn.ModuleList = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._list = _blocks(self.model, self.n_layers)

    def block(self, layer: int) -> nn.Module:
        return self._list[layer]

    def attention(self, layer: int) -> nn.Module:
        attn = _child(self._list[layer], _ATTENTION_NAMES)
        if attn is None:
            raise SelectionError(f"block {layer} of {type(self.model).__name__} has no attention (a hybrid's other "
                                 f"block): attention sites and head edits need one of layers {self.attention_layers()}")
        return attn

    def attention_layers(self) -> list[int]:
        """The blocks that have attention (all of them, except in hybrids)."""
        return [i for i, b in enumerate(self._list) if _child(b, _ATTENTION_NAMES) is not None]

    def out_proj(self, layer: int) -> nn.Linear:
        proj = _child(self.attention(layer), _OUT_PROJ_NAMES)
        if proj is None:
            raise BackendError(f"no output projection ({', '.join(_OUT_PROJ_NAMES)}) in layer {layer}'s attention of "
                               f"{type(self.model).__name__}")
        return proj

    def mlp(self, layer: int) -> nn.Module:
        # OPT-style blocks keep fc1/fc2 in the block itself: fc2's output is the MLP's output
        mlp = _child(self._list[layer], _MLP_NAMES) or _child(self._list[layer], ("fc2",))
        if mlp is None:
            raise BackendError(f"no MLP ({', '.join(_MLP_NAMES)} or fc2) in block {layer} of "
                               f"{type(self.model).__name__}")
        return mlp

    def attention_modules(self) -> dict[tuple[Part, int], nn.Module]:
        return {(Part.SELF, layer): self.attention(layer) for layer in self.attention_layers()}


@dataclass
class BertAdapter(DecoderAdapter):
    """BERT-style encoders (post-norm blocks): ``layer.attention.self`` calls the attention function and
    ``layer.attention.output.dense`` is the output projection. The MLP's output is added to the residual
    and normalised inside the same module, so the MLP_OUT site and MLP edits are not offered."""

    def __post_init__(self) -> None:
        self._list = _blocks(self.model, self.n_layers,
                             lambda b: isinstance(getattr(getattr(b, "attention", None), "self", None), nn.Module))

    def attention(self, layer: int) -> nn.Module:
        return self._list[layer].attention.self

    def out_proj(self, layer: int) -> nn.Linear:
        return self._list[layer].attention.output.dense

    def mlp(self, layer: int) -> nn.Module:
        raise BackendError("BERT-style blocks add and normalise inside their MLP output module: "
                           "mlp_out and MLP edits are not available for this model (use resid_post)")


@dataclass
class EncoderDecoderAdapter(DecoderAdapter):
    """Speech encoder-decoders (Whisper): the decoder's blocks are the layers selections refer to; the
    encoder's self-attention and the decoder's cross-attention are further attention parts."""

    def __post_init__(self) -> None:
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model.decoder
        self._list = decoder.layers
        encoder = self.model.get_encoder() if hasattr(self.model, "get_encoder") else self.model.model.encoder
        self._encoder = encoder.layers
        if len(self._list) != self.n_layers:
            raise BackendError(f"{type(self.model).__name__} has {len(self._list)} decoder layers, facts say {self.n_layers}")

    def mlp(self, layer: int) -> nn.Module:
        block = self._list[layer]
        mlp = _child(block, _MLP_NAMES) or _child(block, ("fc2",))
        if mlp is None:
            raise BackendError(f"no MLP output (mlp or fc2) in decoder block {layer}")
        return mlp

    def attention_modules(self) -> dict[tuple[Part, int], nn.Module]:
        out = {(Part.SELF, layer): b.self_attn for layer, b in enumerate(self._list)}
        out.update({(Part.CROSS, layer): b.encoder_attn for layer, b in enumerate(self._list)})
        out.update({(Part.ENCODER, layer): b.self_attn for layer, b in enumerate(self._encoder)})
        return out


def adapter_for(model: nn.Module, n_layers: int | None = None) -> ModelAdapter:
    """The adapter of a transformers model (``n_layers``: its decoder or encoder layers; read from the
    config when not given)."""
    cfg = model.config
    if n_layers is None:
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        n_layers = (getattr(text, "decoder_layers", None) or getattr(text, "num_decoder_layers", None)
                    if getattr(cfg, "is_encoder_decoder", False) else None)
        n_layers = n_layers or text.num_hidden_layers
    if getattr(cfg, "is_encoder_decoder", False):
        if getattr(cfg, "model_type", "") in _T5_TYPES:
            return T5Adapter(model, n_layers)
        return EncoderDecoderAdapter(model, n_layers)
    if hasattr(cfg, "vision_config") and hasattr(cfg, "text_config") and hasattr(model, "get_decoder"):
        # LLaVA-style: the language model's blocks, never the vision tower's (it may have as many layers)
        return DecoderAdapter(model.get_decoder(), n_layers)
    if getattr(cfg, "model_type", "") == "dbrx":
        return DbrxAdapter(model, n_layers)
    if getattr(cfg, "model_type", "") == "gpt_neo":
        return GPTNeoAdapter(model, n_layers)
    if getattr(cfg, "model_type", "") == "distilbert":
        return DistilBertAdapter(model, n_layers)
    if getattr(cfg, "model_type", "") in ("bert", "roberta", "electra", "xlm-roberta"):
        return BertAdapter(model, n_layers)
    return DecoderAdapter(model, n_layers)


# ---- T5-style text encoder-decoders (kept at the end: an explicit entry for one family) ----------
_T5_TYPES = ("t5", "mt5", "umt5")


@dataclass
class T5Adapter(DecoderAdapter):
    """T5, mT5, UMT5: each block is ``block[i].layer`` = [self-attention, cross-attention (decoder only),
    feed-forward]; ``SelfAttention`` / ``EncDecAttention`` call the attention function, ``o`` is the
    output projection and ``DenseReluDense`` the MLP (its output before the residual add)."""

    def __post_init__(self) -> None:
        self._list = self.model.get_decoder().block
        self._encoder = self.model.get_encoder().block
        if len(self._list) != self.n_layers:
            raise BackendError(f"{type(self.model).__name__} has {len(self._list)} decoder layers, facts say {self.n_layers}")

    def attention(self, layer: int) -> nn.Module:
        return self._list[layer].layer[0].SelfAttention

    def attention_layers(self) -> list[int]:
        return list(range(len(self._list)))

    def out_proj(self, layer: int) -> nn.Linear:
        return self.attention(layer).o

    def mlp(self, layer: int) -> nn.Module:
        return self._list[layer].layer[-1].DenseReluDense

    def attention_modules(self) -> dict[tuple[Part, int], nn.Module]:
        out = {(Part.SELF, layer): b.layer[0].SelfAttention for layer, b in enumerate(self._list)}
        out.update({(Part.CROSS, layer): b.layer[1].EncDecAttention for layer, b in enumerate(self._list)})
        out.update({(Part.ENCODER, layer): b.layer[0].SelfAttention for layer, b in enumerate(self._encoder)})
        return out


@dataclass
class DistilBertAdapter(DecoderAdapter):
    """DistilBERT: ``transformer.layer[i].attention`` calls the attention function, its ``out_lin`` is the
    output projection, ``ffn`` the MLP (its output before the residual add and norm)."""

    def out_proj(self, layer: int) -> nn.Linear:
        return self.attention(layer).out_lin


@dataclass
class GPTNeoAdapter(DecoderAdapter):
    """GPT-Neo: ``attn`` wraps the module that computes attention (``attn.attention``, with ``out_proj``)."""

    def attention(self, layer: int) -> nn.Module:
        return self._list[layer].attn.attention


@dataclass
class DbrxAdapter(DecoderAdapter):
    """DBRX: each block's ``norm_attn_norm`` holds the attention (``attn``, with ``out_proj``) between its
    two norms; ``ffn`` is the experts' MLP."""

    def __post_init__(self) -> None:
        self._list = _blocks(self.model, self.n_layers, lambda b: hasattr(b, "norm_attn_norm"))

    def attention(self, layer: int) -> nn.Module:
        return self._list[layer].norm_attn_norm.attn

    def attention_layers(self) -> list[int]:
        return list(range(len(self._list)))
