"""Forward passes with per-group edits and activation capture, through the hook engine (:mod:`lens.hooks`).

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

from lens.adapters import adapter_for, linear_weight
from lens.edits import EditGroups, Reference, editing
from lens.heads import MlpRef  # noqa: F401  (re-exported: circuits name MLPs with it)
from lens.hooks import Point, Where, hooked


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


class CircuitModules:
    """The model circuit methods run on, and its site table (:mod:`lens.adapters`)."""

    def __init__(self, lm):
        self.lm = lm
        self.facts = lm.facts
        self.adapter = adapter_for(lm.model, lm.facts.n_layers)

    def q_projection(self, layer): return self.adapter.q(layer)
    def k_projection(self, layer): return self.adapter.k(layer)
    def v_projection(self, layer): return self.adapter.v(layer)
    def attn_norm(self, layer): return self.adapter.attn_norm(layer)
    def mlp_norm(self, layer): return self.adapter.mlp_norm(layer)

    def final_norm(self) -> nn.Module:
        """The norm between the last block and the unembedding."""
        return self.adapter.final_norm()

    def hooked(self, points):
        """:func:`lens.hooks.hooked` on this model with this site table."""
        return hooked(self.lm, points, adapter=self.adapter)

    def w_o(self, layer: int) -> Float[Tensor, "head d_model d_head"]:
        w = linear_weight(self.adapter.out_proj(layer))  # [d_model, head * d_head]
        return w.detach().reshape(w.shape[0], self.facts.n_heads, -1).permute(1, 0, 2)


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

    def keep(table, index):
        def fn(t):
            table[index] = t.detach().clone()
        return fn

    points = [(Point(Where.EMBED), keep(store, "embed"))]
    for layer in range(L):
        points += [(Point(Where.Z, layer), keep(z, layer)), (Point(Where.MLP_OUT, layer), keep(mlp, layer))]
        if residuals:
            points += [(Point(Where.RESID_PRE, layer), keep(pre, layer)),
                       (Point(Where.RESID_MID, layer), keep(mid, layer))]
    if residuals:
        points.append((Point(Where.FINAL), keep(store, "final")))
    with torch.no_grad(), parts.hooked(points):
        logits = parts.lm.model(input_ids=ids.to(parts.lm.device), logits_to_keep=1).logits[:, -1].float()
    if not residuals:
        return Acts(z=z, mlp=mlp, embed=store["embed"], logits=logits)
    return Acts(z=z, mlp=mlp, embed=store["embed"], logits=logits, resid_pre=pre, resid_mid=mid, final=store["final"])
