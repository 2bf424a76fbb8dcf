"""Where things are inside a model: the site table, the one place that knows module names.

An adapter maps a loaded transformers module onto the parts capture, edits and circuits
hook (through :mod:`lens.hooks`, the one hook engine). Per layer: the block, its attention
module (the one that calls the attention function), the query/key/value projections, the
output projection (whose input is the per-head output ``z``), the MLP, the norm before
attention and the norm before the MLP; per model: the token (and learned position)
embeddings, the final norm and the unembedding; which blocks have attention at all
(hybrids); and, per attention part (:class:`~formats.sites.Part`), the attention modules of
every layer.

Generic rules come first: the names transformers uses (:data:`NAMES`). A family that differs
gets a small explicit entry in :data:`FAMILY_NAMES` (its own names for a part, tried before
the generic ones) or :data:`PARALLEL` (one norm feeds attention and MLP). A part a model does
not have raises a one-line :class:`BackendError` naming the family and the part.
:func:`adapter_for` picks the adapter: decoders and ViTs (:class:`DecoderAdapter`), BERT-style
encoders (:class:`BertAdapter`) and speech encoder-decoders (:class:`EncoderDecoderAdapter`).
New architectures slot in by implementing :class:`ModelAdapter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from attnlens.formats.sites import Part
from lens.errors import BackendError, SelectionError

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_OUT_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "Wo")  # Wo: ModernBERT
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")  # GraniteMoE keeps its experts in block_sparse_moe

#: part -> the child names transformers uses for it, tried in order (q/k/v inside the attention
#: module, the norms inside the block, the final norm next to the block list)
NAMES: dict[str, tuple[str, ...]] = {
    "query projection": ("q_proj", "query", "q", "query_proj"),  # query_proj: DeBERTa
    "key projection": ("k_proj", "key", "k", "key_proj"),
    "value projection": ("v_proj", "value", "v", "value_proj"),
    # Gemma 2/3 norm the attention's output with post_attention_layernorm: their MLP's norm comes first
    "attention norm": ("input_layernorm", "ln_1", "attention_norm", "ln1", "self_attn_layer_norm", "ln_attn"),
    "MLP norm": ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "ffn_norm", "ln2",
                 "final_layer_norm", "ln_mlp"),
    "final norm": ("norm", "ln_f", "final_layernorm", "final_norm", "final_layer_norm", "norm_f",
                   "layer_norm"),
}
#: model_type -> {part: names}: a family's own names, tried before the generic ones
FAMILY_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "jamba": {"attention norm": ("input_layernorm",), "MLP norm": ("pre_ff_layernorm",)},
    "mpt": {"attention norm": ("norm_1",), "MLP norm": ("norm_2",)},
    "apertus": {"attention norm": ("attention_layernorm",), "MLP norm": ("feedforward_layernorm",)},
    "falcon_h1": {"MLP norm": ("pre_ff_layernorm",)},
    "lfm2": {"attention norm": ("operator_norm",), "final norm": ("embedding_norm",)},  # LFM2's last norm
}
def _qkv_layout(cfg) -> tuple[str, str] | None:
    """(module name, layout) of a family's fused q/k/v projection: ``stacked`` ``[q heads | k heads | v heads]``,
    ``per_head`` ``[q_0 k_0 v_0 | q_1 k_1 v_1 | ...]``, ``grouped`` ``[q of group 0's heads, k_0, v_0 | ...]``,
    ``mp4`` CodeGen's four model-parallel shards, each ``[q | v | k]`` of a quarter of the heads."""
    mt = getattr(cfg, "model_type", "")
    if mt in ("gpt2", "phi3", "mpt", "dbrx"):
        return {"gpt2": "c_attn", "phi3": "qkv_proj", "mpt": "Wqkv", "dbrx": "Wqkv"}[mt], "stacked"
    if mt == "gpt_bigcode":
        return "c_attn", "stacked" if getattr(cfg, "multi_query", True) else "per_head"
    if mt == "codegen":
        return "qkv_proj", "mp4"
    if mt in ("gpt_neox", "bloom", "persimmon"):
        return "query_key_value", "per_head"
    if mt == "falcon":
        if getattr(cfg, "new_decoder_architecture", False):
            return "query_key_value", "grouped"
        return "query_key_value", "stacked" if getattr(cfg, "multi_query", True) else "per_head"
    return None


def linear_weight(module: nn.Module) -> torch.Tensor:
    """A linear layer's weight as ``[d_out, d_in]`` (nn.Linear's layout; GPT-2's Conv1D stores it transposed)."""
    w = module.weight
    return w.T if type(module).__name__ == "Conv1D" else w


@dataclass(frozen=True)
class Projection:
    """Where one of q, k, v comes out for every head: output features ``index`` of ``module``
    (head-major: head ``h`` is ``index[h * d_head:(h + 1) * d_head]``); ``fused``: the module
    computes the other two as well."""

    module: nn.Module
    index: torch.Tensor  # [heads * d_head] long
    fused: bool

    def weight(self) -> torch.Tensor:
        """``[heads * d_head, d_in]``."""
        w = linear_weight(self.module)
        return w.index_select(0, self.index.to(w.device))

    def bias(self) -> torch.Tensor | None:
        b = getattr(self.module, "bias", None)
        return None if b is None else b.index_select(0, self.index.to(b.device))

#: families that add a per-key bias (ALiBi) to their scores, given to the attention module as a keyword argument:
#: model_type -> (the keyword, whether the family scales it with the scores); see :func:`lens.projected.key_bias`
KEY_BIAS = {"bloom": ("alibi", False), "falcon": ("alibi", True), "mpt": ("position_bias", False)}
#: families whose blocks run attention and MLP side by side on one norm's output
PARALLEL = frozenset({"gptj", "phi", "cohere", "cohere2", "codegen"})
#: MLP classes that add the residual stream (their second argument) to their own output
MLP_ADDS_RESIDUAL = frozenset({"BloomMLP", "MptMLP"})


class ModelAdapter(Protocol):
    """What capture and edits need to find inside a model."""

    n_layers: int

    def block(self, layer: int) -> nn.Module: ...

    def attention(self, layer: int) -> nn.Module: ...

    def out_proj(self, layer: int) -> nn.Linear: ...

    def mlp(self, layer: int) -> nn.Module: ...

    def attention_modules(self) -> dict[tuple[Part, int], nn.Module]: ...

    def attention_layers(self) -> list[int]: ...

    def q(self, layer: int) -> nn.Linear: ...

    def k(self, layer: int) -> nn.Linear: ...

    def v(self, layer: int) -> nn.Linear: ...

    def attn_norm(self, layer: int) -> nn.Module: ...

    def mlp_norm(self, layer: int) -> nn.Module: ...

    def final_norm(self) -> nn.Module: ...

    def embed(self) -> nn.Module: ...

    def position_embed(self) -> nn.Embedding | None: ...

    def unembed(self) -> nn.Module: ...


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def _family(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return f"{type(model).__name__} ({getattr(cfg, 'model_type', '?')})"


def _named(model: nn.Module, module: nn.Module, part: str, where: str) -> nn.Module:
    """``module``'s child for ``part`` by the family's names, then the generic ones, or a one-line refusal."""
    own = FAMILY_NAMES.get(getattr(getattr(model, "config", None), "model_type", ""), {}).get(part, ())
    names = own + tuple(n for n in NAMES[part] if n not in own)
    child = _child(module, names)
    if child is None:
        raise BackendError(f"{_family(model)} has no {part} ({', '.join(names)}) in {where}: "
                           f"this needs an entry in lens/adapters.py's site table")
    return child


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

    def _linear_layers(self) -> set[int]:
        """Blocks whose ``self_attn`` is linear attention (MiniMax's lightning attention: no softmax, no pattern)."""
        types = getattr(self.model.config, "layer_types", None) or ()
        return {i for i, t in enumerate(types) if t == "linear_attention"}

    def attention(self, layer: int) -> nn.Module:
        attn = _child(self._list[layer], _ATTENTION_NAMES)
        if attn is None or layer in self._linear_layers():
            raise SelectionError(f"block {layer} of {type(self.model).__name__} has no attention (a hybrid's other "
                                 f"block): attention sites and head edits need one of layers {self.attention_layers()}")
        return attn

    def attention_layers(self) -> list[int]:
        """The blocks that have attention (all of them, except in hybrids)."""
        linear = self._linear_layers()
        return [i for i, b in enumerate(self._list) if _child(b, _ATTENTION_NAMES) is not None and i not in linear]

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

    def attention_output(self, layer: int) -> nn.Module:
        """The module whose output is the attention's write, before the residual add (ATTN_OUT)."""
        return self.attention(layer)

    def mlp_input(self, layer: int) -> nn.Module:
        """The module whose input is the MLP's input (MLP_IN)."""
        return self.mlp(layer)

    # ---- the rest of the site table ------------------------------------------------------
    def _part(self, module: nn.Module, part: str, where: str) -> nn.Module:
        return _named(self.model, module, part, where)

    def q(self, layer: int) -> nn.Linear:
        """The query projection: its output is ``[batch, pos, head * d_head]`` before rotary."""
        return self._part(self.attention(layer), "query projection", f"layer {layer}'s attention")

    def k(self, layer: int) -> nn.Linear:
        return self._part(self.attention(layer), "key projection", f"layer {layer}'s attention")

    def v(self, layer: int) -> nn.Linear:
        return self._part(self.attention(layer), "value projection", f"layer {layer}'s attention")

    def fused_qkv(self, layer: int) -> nn.Module:
        """The one projection computing q, k and v of every head in families that have it (GPT-2's
        ``c_attn``, GPT-NeoX's ``query_key_value``, ...; :meth:`projections` says which output is which)."""
        layout = _qkv_layout(self.model.config)
        module = getattr(self.attention(layer), layout[0], None) if layout else None
        if not isinstance(module, nn.Module):
            raise BackendError(f"{_family(self.model)} has no fused q/k/v projection in layer {layer}'s attention")
        return module

    def projections(self, layer: int, n_heads: int, n_kv_heads: int, d_head: int) -> dict[str, Projection]:
        """Where q, k and v of every head come out in ``layer``: ``{"q": ..., "k": ..., "v": ...}``, from
        q/k/v projections of their own or a fused one (GPT-2, GPT-NeoX, BLOOM, Falcon, MPT, Phi-3)."""
        attn = self.attention(layer)
        layout = _qkv_layout(self.model.config)
        if layout is None or not isinstance(getattr(attn, layout[0], None), nn.Module):
            q, k, v = self.q(layer), self.k(layer), self.v(layer)  # refuses in one line where they are missing
            return {"q": Projection(q, torch.arange(n_heads * d_head), False),
                    "k": Projection(k, torch.arange(n_kv_heads * d_head), False),
                    "v": Projection(v, torch.arange(n_kv_heads * d_head), False)}
        name, kind = layout
        module = getattr(attn, name)
        H, KV, d = n_heads, n_kv_heads, d_head
        per = torch.arange(d)
        if kind == "stacked":
            q = torch.arange(H * d)
            k = H * d + torch.arange(KV * d)
            v = (H + KV) * d + torch.arange(KV * d)
        elif kind == "per_head":  # one KV head per query head
            q = torch.cat([h * 3 * d + per for h in range(H)])
            k = torch.cat([h * 3 * d + d + per for h in range(H)])
            v = torch.cat([h * 3 * d + 2 * d + per for h in range(H)])
        elif kind == "mp4":  # shard m holds heads m * H/4 .. (m + 1) * H/4 - 1 as [q | v | k]
            local, r = H * d // 4, H // 4
            q, v, k = (torch.cat([(h // r) * 3 * local + i * local + (h % r) * d + per for h in range(H)])
                       for i in range(3))
        else:  # grouped: per KV group, its query heads then its k and v
            r = H // KV
            q = torch.cat([(g * (r + 2) + j) * d + per for g in range(KV) for j in range(r)])
            k = torch.cat([(g * (r + 2) + r) * d + per for g in range(KV)])
            v = torch.cat([(g * (r + 2) + r + 1) * d + per for g in range(KV)])
        width = int(torch.cat([q, k, v]).max()) + 1
        out_features = getattr(module, "out_features", None) or module.weight.shape[-1]
        if width != out_features:
            raise BackendError(f"{_family(self.model)}'s fused {name} in layer {layer} has {out_features} outputs, "
                               f"its {kind} q/k/v layout for {H} heads, {KV} KV heads of {d} needs {width}")
        return {"q": Projection(module, q, True), "k": Projection(module, k, True), "v": Projection(module, v, True)}

    def attn_norm(self, layer: int) -> nn.Module:
        """The norm whose input is the residual stream entering the block's attention."""
        return self._part(self._list[layer], "attention norm", f"block {layer}")

    @property
    def parallel(self) -> bool:
        """Whether attention and MLP read the block's input side by side (GPT-J, Phi, Cohere on one norm;
        GPT-NeoX and Falcon with their parallel-residual settings)."""
        cfg = self.model.config
        return (getattr(cfg, "model_type", "") in PARALLEL or bool(getattr(cfg, "use_parallel_residual", False))
                or bool(getattr(cfg, "parallel_attn", False)) or bool(getattr(cfg, "new_decoder_architecture", False)))

    def mlp_norm(self, layer: int) -> nn.Module:
        """The norm whose output the MLP reads (the attention norm in parallel blocks with one norm)."""
        if getattr(self.model.config, "model_type", "") in PARALLEL:
            return self.attn_norm(layer)
        try:
            norm = self._part(self._list[layer], "MLP norm", f"block {layer}")
        except BackendError:
            if self.parallel:  # Falcon with parallel_attn: one input_layernorm for both
                return self.attn_norm(layer)
            raise
        post = self.post_norms(layer)
        if post is not None and norm is post[0]:  # OLMo2: post_attention_layernorm normalises the attention's output
            raise BackendError(f"{_family(self.model)} normalises block outputs only: block {layer} has no MLP norm "
                               "whose input is the residual stream (the MLP reads it as it is)")
        return norm

    def output_norm(self, layer: int) -> str | None:
        """The name of a norm applied to the attention's or MLP's output before it joins the residual
        stream (Gemma 2/3, OLMo2), or None where the block adds its outputs as they are."""
        block = self._list[layer]
        for name in ("post_feedforward_layernorm", "post_attention_norm", "post_ffw_norm", "post_self_attn_layernorm"):
            if isinstance(getattr(block, name, None), nn.Module):
                return name
        return None

    def post_norms(self, layer: int) -> tuple[nn.Module, nn.Module] | None:
        """The norms on the attention's and the MLP's outputs before they join the residual stream
        ``(after attention, after the MLP)`` (Gemma 2 and 3, OLMo2), or None for a pre-norm block. (In
        Llama ``post_attention_layernorm`` is the MLP's input norm: ``post_feedforward_layernorm`` is
        what marks post-norms.)"""
        block = self._list[layer]
        after_mlp = getattr(block, "post_feedforward_layernorm", None)
        if isinstance(after_mlp, nn.Module):
            return block.post_attention_layernorm, after_mlp
        if isinstance(getattr(block, "post_mlp_layernorm", None), nn.Module):  # GLM4's names for them
            return block.post_self_attn_layernorm, block.post_mlp_layernorm
        return None

    def other_mixer(self, layer: int) -> str | None:
        """The name of a second mixer beside attention in block ``layer`` (Falcon-H1's ``mamba``), writing to the
        residual stream without heads, or None (also for a hybrid's block without attention)."""
        if layer not in self.attention_layers():
            return None
        for name in ("mamba", "ssm", "linear_attn"):
            if isinstance(getattr(self._list[layer], name, None), nn.Module):
                return name
        return None

    def embed_norm(self) -> nn.Module | None:
        """A norm applied to the embeddings before the first block (BLOOM's ``word_embeddings_layernorm``), or None."""
        parent = next((m for m in self.model.modules() if any(c is self._list for c in m.children())), self.model)
        for name in ("word_embeddings_layernorm", "embed_layer_norm", "emb_ln"):
            if isinstance(getattr(parent, name, None), nn.Module):
                return getattr(parent, name)
        return None

    def final_norm(self) -> nn.Module:
        """The norm between the last block and the unembedding: a sibling of the block list."""
        parent = next((m for m in self.model.modules() if any(c is self._list for c in m.children())), self.model)
        return self._part(parent, "final norm", type(parent).__name__)

    def embed(self) -> nn.Module:
        """The token embeddings (output ``[batch, pos, d_model]``)."""
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        if emb is None:
            raise BackendError(f"{_family(self.model)} has no input embeddings")
        return emb

    def position_embed(self) -> nn.Embedding | None:
        """Learned absolute position embeddings added to the tokens' (GPT-2's ``wpe``), or None."""
        parent = next((m for m in self.model.modules() if any(c is self._list for c in m.children())), self.model)
        wpe = getattr(parent, "wpe", None)
        return wpe if isinstance(wpe, nn.Embedding) else None

    def unembed(self) -> nn.Module:
        """The unembedding (``lm_head``): its weight is ``[vocab, d_model]``."""
        out = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if out is None:
            raise BackendError(f"{_family(self.model)} has no unembedding (output embeddings)")
        return out


@dataclass
class BertAdapter(DecoderAdapter):
    """BERT-style encoders (post-norm blocks): ``layer.attention.self`` calls the attention function and
    ``layer.attention.output.dense`` is the output projection. Each sublayer's output module adds the
    residual and normalises after its ``dense``: the attention's and the MLP's writes (ATTN_OUT, MLP_OUT)
    are those ``dense`` outputs, before the add and the norm (as TransformerLens's BERT defines them);
    the MLP's input is ``layer.intermediate``'s."""

    def __post_init__(self) -> None:
        self._list = _blocks(self.model, self.n_layers,
                             lambda b: isinstance(getattr(getattr(b, "attention", None), "self", None), nn.Module))

    def attention(self, layer: int) -> nn.Module:
        return self._list[layer].attention.self

    def out_proj(self, layer: int) -> nn.Linear:
        return self._list[layer].attention.output.dense

    def attn_norm(self, layer: int) -> nn.Module:
        raise BackendError(f"{_family(self.model)} is post-norm (its norms follow attention and MLP): it has no "
                           "attention norm whose input is the residual stream (use resid_pre / resid_post)")

    def mlp_norm(self, layer: int) -> nn.Module:
        raise BackendError(f"{_family(self.model)} is post-norm (its norms follow attention and MLP): it has no "
                           "MLP norm whose input is the residual stream (use resid_pre / resid_post)")

    def final_norm(self) -> nn.Module:
        raise BackendError(f"{_family(self.model)} is post-norm: it has no final norm before an unembedding")

    def attention_output(self, layer: int) -> nn.Module:
        return self.out_proj(layer)

    def mlp(self, layer: int) -> nn.Module:
        return self._list[layer].output.dense

    def mlp_input(self, layer: int) -> nn.Module:
        return self._list[layer].intermediate


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


@dataclass
class ImageCrossAdapter(DecoderAdapter):
    """Cross-attention image-text models (Mllama): some language-model blocks hold ``cross_attn`` (the text
    reading the image's states) instead of ``self_attn``; those are the ``Part.CROSS`` attention of their
    layer, with their own output projection (head edits and VHD's head outputs reach them too)."""

    def __post_init__(self) -> None:
        self._list = _blocks(self.model, self.n_layers,
                             lambda b: _child(b, _ATTENTION_NAMES + ("cross_attn",)) is not None)

    def cross_layers(self) -> list[int]:
        return [i for i, b in enumerate(self._list) if _child(b, ("cross_attn",)) is not None]

    def out_proj(self, layer: int) -> nn.Linear:
        cross = _child(self._list[layer], ("cross_attn",))
        return cross.o_proj if cross is not None else super().out_proj(layer)

    def attention_modules(self) -> dict[tuple[Part, int], nn.Module]:
        out = super().attention_modules()
        out.update({(Part.CROSS, layer): self._list[layer].cross_attn for layer in self.cross_layers()})
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
        if getattr(cfg.get_text_config(), "cross_attention_layers", None):
            return ImageCrossAdapter(model.get_decoder(), n_layers)
        return DecoderAdapter(model.get_decoder(), n_layers)
    if getattr(cfg, "model_type", "") == "dbrx":
        return DbrxAdapter(model, n_layers)
    if getattr(cfg, "model_type", "") == "gpt_neo":
        return GPTNeoAdapter(model, n_layers)
    if getattr(cfg, "model_type", "") == "distilbert":
        return DistilBertAdapter(model, n_layers)
    if getattr(cfg, "model_type", "") in ("bert", "roberta", "electra", "xlm-roberta", "deberta-v2"):
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

    def attn_norm(self, layer: int) -> nn.Module:
        return self._list[layer].norm_attn_norm.norm_1

    def mlp_norm(self, layer: int) -> nn.Module:
        return self._list[layer].norm_attn_norm.norm_2
