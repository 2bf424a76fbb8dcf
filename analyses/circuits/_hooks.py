"""Forward passes with per-group edits and activation capture, through :class:`lens.adapters.DecoderAdapter`.

Circuit methods run many variants of the same prompts at once: ``G`` groups of the same
``N`` prompts stacked into one batch of ``G * N`` rows, each group with its own edits
(:mod:`lens.edits`, the project's one edit system). Only the last position's logits are
computed (``logits_to_keep=1``): every task reads its answer there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lens.adapters import adapter_for
from lens.edits import EditGroups, Reference, editing
from lens.errors import BackendError
from lens.heads import MlpRef  # noqa: F401  (re-exported: circuits name MLPs with it)

_Q, _K, _V = ("q_proj", "query", "q"), ("k_proj", "key", "k"), ("v_proj", "value", "v")
_ATTN_NORM = ("input_layernorm", "ln_1", "attention_norm", "ln1")
_MLP_NORM = ("post_attention_layernorm", "ln_2", "ffn_norm", "ln2")
_FINAL_NORM = ("norm", "ln_f", "final_layernorm", "final_norm")


@dataclass
class Acts:
    """What one plain forward recorded: per layer z ``[batch, pos, head, d_head]`` and MLP
    output ``[batch, pos, d_model]``, the embeddings and the last position's logits; with
    ``residuals``, also the residual stream entering each layer's attention norm
    (``resid_pre``) and MLP norm (``resid_mid``) and the final norm (``final``), each
    ``[batch, pos, d_model]`` (edge-level evaluation reads receivers' reference inputs there)."""

    z: list[Tensor]
    mlp: list[Tensor]
    embed: Tensor
    logits: Float[Tensor, "batch vocab"]
    resid_pre: list[Tensor] | None = None
    resid_mid: list[Tensor] | None = None
    final: Tensor | None = None

    def mean(self) -> Acts:
        """Per-position means over the batch (every tensor keeps a batch axis of 1)."""
        m = lambda t: None if t is None else t.mean(0, keepdim=True)  # noqa: E731
        ml = lambda ts: None if ts is None else [m(t) for t in ts]  # noqa: E731
        return Acts(ml(self.z), ml(self.mlp), m(self.embed), m(self.logits), ml(self.resid_pre),
                    ml(self.resid_mid), m(self.final))

    @staticmethod
    def cat(parts: list[Acts]) -> Acts:
        """Several captures of prompts of one length, stacked along the batch."""
        if len(parts) == 1:
            return parts[0]
        c = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        cl = lambda k: None if getattr(parts[0], k) is None else [  # noqa: E731
            torch.cat(ts) for ts in zip(*(getattr(p, k) for p in parts))]
        return Acts(cl("z"), cl("mlp"), c([p.embed for p in parts]), c([p.logits for p in parts]), cl("resid_pre"),
                    cl("resid_mid"), c([p.final for p in parts]))

    @property
    def reference(self) -> Reference:
        """These activations as a :class:`lens.edits.Reference` (for building edits)."""
        return Reference(z=dict(enumerate(self.z)), mlp=dict(enumerate(self.mlp)))


def _child(module: nn.Module, names: tuple[str, ...], what: str, layer: int) -> nn.Module:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    raise BackendError(f"no {what} ({', '.join(names)}) in layer {layer}: circuits need a Llama-style block")


class CircuitModules:
    """The modules circuit methods hook, found by the adapter plus a few usual names."""

    def __init__(self, lm):
        self.lm = lm
        self.facts = lm.facts
        self.adapter = adapter_for(lm.model, lm.facts.n_layers)

    def q_proj(self, layer): return _child(self.adapter.attention(layer), _Q, "query projection", layer)
    def k_proj(self, layer): return _child(self.adapter.attention(layer), _K, "key projection", layer)
    def v_proj(self, layer): return _child(self.adapter.attention(layer), _V, "value projection", layer)
    def attn_norm(self, layer): return _child(self.adapter.block(layer), _ATTN_NORM, "attention input norm", layer)
    def mlp_norm(self, layer): return _child(self.adapter.block(layer), _MLP_NORM, "MLP input norm", layer)

    def final_norm(self) -> nn.Module:
        """The norm between the last block and the unembedding."""
        base = getattr(self.lm.model, "model", None) or getattr(self.lm.model, "transformer", None) or self.lm.model
        return _child(base, _FINAL_NORM, "final norm", self.facts.n_layers)

    def w_o(self, layer: int) -> Float[Tensor, "head d_model d_head"]:
        w = self.adapter.out_proj(layer).weight  # [d_model, head * d_head]
        return w.detach().view(w.shape[0], self.facts.n_heads, self.facts.d_head).permute(1, 0, 2)


def last_logits(parts: CircuitModules, ids: Tensor, groups: EditGroups = ((),), *,
                max_rows: int = 64) -> Float[Tensor, "group batch vocab"]:
    """Last-position logits of ``ids [N, pos]`` under each group of edits (chunked by ``max_rows``)."""
    n = ids.shape[0]
    per_chunk = max(1, max_rows // n)
    out = []
    dev = parts.lm.device
    with torch.no_grad():
        for s in range(0, len(groups), per_chunk):
            chunk = groups[s:s + per_chunk]
            with editing(parts.lm, chunk, groups=True, adapter=parts.adapter):
                logits = parts.lm.model(input_ids=ids.repeat(len(chunk), 1).to(dev), logits_to_keep=1).logits[:, -1]
            out.append(logits.float().view(len(chunk), n, -1).cpu())
    return torch.cat(out)


def capture(parts: CircuitModules, ids: Tensor, *, residuals: bool = False) -> Acts:
    """One plain forward over ``ids [N, pos]`` recording z, MLP outputs and embeddings (and,
    with ``residuals``, the residual stream at every norm's input)."""
    L = parts.facts.n_layers
    z: list = [None] * L
    mlp: list = [None] * L
    pre: list = [None] * L
    mid: list = [None] * L
    store: dict = {}
    handles = [parts.lm.model.get_input_embeddings().register_forward_hook(
        lambda m, a, out: store.__setitem__("embed", out.detach().clone()))]
    H = parts.facts.n_heads
    for layer in range(L):
        def zh(m, args, layer=layer):
            x = args[0]
            z[layer] = x.detach().view(*x.shape[:2], H, -1).clone()
        def mh(m, a, out, layer=layer):
            mlp[layer] = out.detach().clone()
        handles.append(parts.adapter.out_proj(layer).register_forward_pre_hook(zh))
        handles.append(parts.adapter.mlp(layer).register_forward_hook(mh))
        if residuals:
            handles.append(parts.attn_norm(layer).register_forward_pre_hook(
                lambda m, args, layer=layer: pre.__setitem__(layer, args[0].detach().clone())))
            handles.append(parts.mlp_norm(layer).register_forward_pre_hook(
                lambda m, args, layer=layer: mid.__setitem__(layer, args[0].detach().clone())))
    if residuals:
        handles.append(parts.final_norm().register_forward_pre_hook(
            lambda m, args: store.__setitem__("final", args[0].detach().clone())))
    try:
        with torch.no_grad():
            logits = parts.lm.model(input_ids=ids.to(parts.lm.device), logits_to_keep=1).logits[:, -1].float()
    finally:
        for h in handles:
            h.remove()
    if not residuals:
        return Acts(z=z, mlp=mlp, embed=store["embed"], logits=logits)
    return Acts(z=z, mlp=mlp, embed=store["embed"], logits=logits, resid_pre=pre, resid_mid=mid, final=store["final"])
