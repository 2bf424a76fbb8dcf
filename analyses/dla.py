"""Direct logit attribution (DLA): how much each component's output adds to a token's logit.

The residual stream entering the final norm at position ``p`` is a sum of components: the
token embedding, the position embedding where the family has one, every head's output
(its ``z`` through its slice of the output projection), the output projections' biases and
every MLP output. Under **the standard linearisation** the final norm's scale (the RMS, or
the standard deviation for LayerNorm) is frozen at its value on this input, so the norm is a
linear map at ``p`` (LayerNorm's mean-centering is linear too and is folded into the
directions), and the logit of token ``t`` splits exactly into::

    logit[p, t] = sum_c  c[p] . d_t / sigma[p]  +  bias[t]
    d_t  = center(W_U[t] * w_norm)          (w_norm: 1 + weight for Gemma's RMSNorm)
    bias = W_U[t] . b_norm + b_U[t]         (LayerNorm's bias, the unembedding's bias)

Families with post-norms (Gemma 2) normalise each head's and MLP's output before adding it:
those norms' scales are frozen too, so each head's share passes through its layer's post-norm
linearly. A family that soft-caps its logits (Gemma 2: ``cap * tanh(logit / cap)``) is
attributed before the cap, and the result's ``logits`` are the model's logits before the cap
(checked: capping them gives the model's own); its linearisation note says so.

Tied and untied unembeddings are the same here (the unembedding is read from the model's
output embeddings). GQA changes nothing: heads are split at ``z``, after the values are
shared. Every step checks itself against the model's own forward: the components must sum
to the residual stream entering the final norm, and the attribution must sum to the model's
logits; a family where either fails is refused in one line naming it.

:func:`readout_parts` is the one place that finds the final norm, the unembedding and the
output projections. :func:`direct_logit_attribution` returns the torch-free
:class:`formats.dla.DLAResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from attnlens.formats.dla import LINEARISATION, DLAResult
from attnlens.formats.provenance import Provenance
from lens.adapters import ModelAdapter, adapter_for
from lens.errors import BackendError, SelectionError
from lens.hooks import Point, Where, hooked

_CHECK_RTOL = 2e-3


@dataclass(frozen=True)
class ReadoutParts:
    """What turns the residual stream into logits: the final norm, the unembedding (``weight``
    ``[vocab, d_model]``, tied or not) and, through ``adapter``, each layer's output projection."""

    adapter: ModelAdapter
    final_norm: nn.Module
    unembed: nn.Module
    logit_scale: float = 1.0  # what the head multiplies its output by (Cohere's logit_scale, Granite's 1/logits_scaling)


def readout_parts(lm) -> ReadoutParts:
    """The final norm, the output embeddings and the site table of ``lm`` (:mod:`lens.adapters`);
    :class:`BackendError` naming the family when one is missing."""
    f = lm.facts
    adapter = adapter_for(lm.model, f.n_layers)
    for layer in range(f.n_layers):
        mixer = adapter.other_mixer(layer)
        if mixer is not None:
            raise BackendError(f"direct logit attribution cannot decompose {f.architecture}: block {layer} runs another "
                               f"mixer ({mixer}) beside attention, which writes to the residual stream without heads")
    unembed = adapter.unembed()
    if not isinstance(unembed, nn.Linear):
        raise BackendError(f"direct logit attribution needs a language-model head: {f.architecture} has no linear "
                           "output embedding")
    scale = float(getattr(lm.model, "logit_scale", None) or 1.0)
    if str(getattr(lm.model.config, "model_type", "")).startswith("granite"):
        scale /= float(getattr(lm.model.config, "logits_scaling", 1.0) or 1.0)
    return ReadoutParts(adapter, adapter.final_norm(), unembed, scale)


@dataclass
class _FrozenNorm:
    """The final norm at given positions with its scale frozen: ``y = center(x) / sigma * w + b``."""

    kind: str  # "LayerNorm" or "RMSNorm"
    sigma: Tensor  # [pos]
    w: Tensor  # [d_model]
    b: Tensor | None


def _freeze(norm: nn.Module, x: Float[Tensor, "pos d_model"], family: str) -> _FrozenNorm:
    name = type(norm).__name__
    w = getattr(norm, "weight", None)
    if isinstance(norm, nn.LayerNorm) or (name.endswith("LayerNorm") and hasattr(norm, "variance_epsilon")) \
            or name == "OlmoLayerNorm":
        # nn.LayerNorm, or one written out by the family (Cohere's: mean-centred, no bias; OLMo's: no weight,
        # no bias, eps 1e-5)
        eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-5)))
        sigma = torch.sqrt(x.var(-1, unbiased=False) + eps)
        wv = torch.ones(x.shape[-1], dtype=x.dtype) if w is None else w.detach().double()
        if name.endswith("LayerNorm1P"):  # Nemotron's LayerNorm scales by (1 + weight)
            wv = 1.0 + wv
        b = getattr(norm, "bias", None)
        return _FrozenNorm("LayerNorm", sigma, wv, None if b is None else b.detach().double())
    if name.endswith("RMSNorm"):
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        wv = w.detach().double()
        if name.startswith("Gemma"):  # Gemma's RMSNorm scales by (1 + weight)
            wv = 1.0 + wv
        return _FrozenNorm("RMSNorm", torch.sqrt(x.pow(2).mean(-1) + eps), wv, None)
    raise BackendError(f"direct logit attribution cannot linearise the final norm of {family} ({name}): expected "
                       "LayerNorm or an RMSNorm")


def _w_o(proj: nn.Module, n_heads: int, d_head: int) -> Float[Tensor, "head d_head d_model"]:
    if isinstance(proj, nn.Linear):
        return proj.weight.detach().double().view(-1, n_heads, d_head).permute(1, 2, 0)
    if type(proj).__name__ == "Conv1D":  # GPT-2: weight [in, out]
        return proj.weight.detach().double().view(n_heads, d_head, -1)
    raise BackendError(f"direct logit attribution cannot read output projection {type(proj).__name__}")


def _close(got: Tensor, want: Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))


def _collect(lm, parts: ReadoutParts, ids: Tensor) -> dict[str, Tensor]:
    """One forward recording the residual stream's components through :func:`lens.hooked` (float64,
    batch axis dropped)."""
    raw: dict[str, Tensor] = {}
    adapter = parts.adapter

    def keep(name):
        def fn(t):
            raw[name] = t.detach().clone()  # a copy: Falcon adds the attention output into its MLP's output in place
        return fn

    points = [(Point(Where.BLOCK_IN, 0), keep("resid0")), (Point(Where.FINAL), keep("final"))]
    if adapter.position_embed() is not None:
        points.append((Point(Where.POS_EMBED), lambda t: raw.__setitem__("wpe", (t if t.ndim == 3 else t[None]).detach().clone())))
    try:
        post = {la: adapter.post_norms(la) for la in range(lm.facts.n_layers)}
        for la in range(lm.facts.n_layers):
            points += [(Point(Where.Z, la), keep(f"z{la}")), (Point(Where.MLP_OUT, la), keep(f"mlp{la}"))]
            if post[la] is not None:  # the attention output: the post-attention norm's input
                points.append((Point(Where.ATTN_OUT, la), keep(f"post{la}")))
        with torch.no_grad(), hooked(lm, points, adapter=adapter):
            out = lm.model(input_ids=ids.to(lm.device))
            raw["normed"] = parts.final_norm(raw["final"])
            for la, norms in post.items():  # a post-norm block adds its MLP's output through the post-norm
                if norms is not None:
                    raw[f"mlp{la}"] = norms[1](raw[f"mlp{la}"])
    except SelectionError as err:  # a hybrid's block without attention
        raise BackendError(f"direct logit attribution cannot decompose {lm.facts.architecture}: {err}") from None
    got = {name: t[0].double().cpu() for name, t in raw.items()}
    got["logits"] = out.logits.detach()[0].double().cpu()
    return got


def direct_logit_attribution(lm, input_ids: Tensor, targets: Sequence[int] = (), *,
                             positions: Sequence[int] = (-1,), top: int = 5, name: str = "dla",
                             provenance: Provenance | None = None) -> DLAResult:
    """Every head's, MLP's and embedding's direct contribution to the logits of ``targets`` (token
    ids) plus the model's ``top`` predictions at each of ``positions`` (-1: the last token).

    ``input_ids``: ``[1, pos]``. Returns a :class:`formats.dla.DLAResult` whose ``heads``
    ``[position, target, layer, head]``, ``mlps`` ``[position, target, layer]`` and
    ``embed``/``pos_embed``/``out_bias``/``bias`` ``[position, target]`` sum to ``logits``
    ``[position, target]`` (the model's own). :class:`SelectionError` for positions or targets out
    of range, :class:`BackendError` for a family that cannot be decomposed.
    """
    f = lm.facts
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise SelectionError(f"input_ids must be one prompt [1, pos], got shape {list(input_ids.shape)}")
    n = int(input_ids.shape[1])
    if not positions:
        raise SelectionError("positions must name at least one position, got none")
    pos = []
    for p in positions:
        q = n + int(p) if int(p) < 0 else int(p)
        if not 0 <= q < n:
            raise SelectionError(f"position {p} is out of range: the prompt has positions 0-{n - 1}")
        if q not in pos:
            pos.append(q)
    if not 0 <= top <= 100:
        raise SelectionError(f"top must be 0-100 predictions, got {top}")
    parts = readout_parts(lm)
    U = parts.unembed.weight.detach().double().cpu()  # [vocab, d_model]
    vocab = U.shape[0]
    bad = [int(t) for t in targets if not 0 <= int(t) < vocab]
    if bad:
        raise SelectionError(f"target token ids {bad} are out of range: the vocabulary has ids 0-{vocab - 1}")
    got = _collect(lm, parts, input_ids)
    P = torch.tensor(pos)

    # the residual stream entering the final norm, as components at the chosen positions
    embed = got["resid0"][P] - (got["wpe"][P] if "wpe" in got else 0)
    pos_embed = got["wpe"][P] if "wpe" in got else torch.zeros_like(embed)
    heads, mlps, out_bias = [], [], torch.zeros_like(embed)
    for la in range(f.n_layers):
        proj = parts.adapter.out_proj(la)
        d_value = getattr(f, "d_value", None) or f.d_head  # DeepSeek's MLA: values narrower than queries
        z = got[f"z{la}"][P].view(len(pos), f.n_heads, d_value)
        post = parts.adapter.post_norms(la)
        if post is not None:  # the post-norm with its scale frozen at the attention output's: linear
            pn = _freeze(post[0], got[f"post{la}"], f.architecture)
            if pn.kind != "RMSNorm":
                raise BackendError(f"direct logit attribution cannot decompose {f.architecture}: its post-norm "
                                   f"{type(post[0]).__name__} is not an RMSNorm")

            def through(c, pn=pn):
                return c / pn.sigma[P].view(-1, *([1] * (c.ndim - 1))) * pn.w
        else:
            def through(c):
                return c
        heads.append(through(torch.einsum("phd,hdm->phm", z, _w_o(proj, f.n_heads, d_value))))
        if getattr(proj, "bias", None) is not None:
            out_bias = out_bias + through(proj.bias.detach().double().cpu().expand(len(pos), -1))
        mlps.append(got[f"mlp{la}"][P])
    H = torch.stack(heads, 1)  # [pos, layer, head, d_model]
    M = torch.stack(mlps, 1)  # [pos, layer, d_model]
    final = got["final"][P]
    total = embed + pos_embed + out_bias + H.sum((1, 2)) + M.sum(1)
    err = _close(total, final)
    if err > _CHECK_RTOL:
        raise BackendError(f"direct logit attribution cannot decompose {f.architecture}: the residual stream entering "
                           f"the final norm is not the sum of embeddings, head and MLP outputs (relative error {err:.2g})")

    logits = got["logits"][P]  # [pos, vocab]
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    note = LINEARISATION
    if cap:  # attribute the logits before the cap: the final norm's output through the unembedding
        raw = got["normed"][P] @ U.T * parts.logit_scale
        if parts.unembed.bias is not None:
            raw = raw + parts.unembed.bias.detach().double().cpu() * parts.logit_scale
        err = _close(cap * torch.tanh(raw / cap), logits)
        if err > _CHECK_RTOL:
            raise BackendError(f"direct logit attribution cannot decompose {f.architecture}: capping its logits "
                               f"before the cap does not give its logits (relative error {err:.2g})")
        logits = raw
        note += f"; logits before soft-capping (the model applies {cap:g} * tanh(logit / {cap:g}))"
    ids = [int(t) for t in targets]
    n_given = len(ids)
    for row in logits:
        ids += [i for i in torch.topk(row, min(top, vocab)).indices.tolist() if i not in ids]
    norm = _freeze(parts.final_norm, got["final"], f.architecture)
    d = U[ids] * norm.w * parts.logit_scale  # [target, d_model]
    if norm.kind == "LayerNorm":
        d = d - d.mean(-1, keepdim=True)
    sigma = norm.sigma[P]  # [pos]
    const = torch.zeros(len(ids), dtype=torch.float64)
    if norm.b is not None:
        const = const + U[ids] @ norm.b
    if parts.unembed.bias is not None:
        const = const + parts.unembed.bias.detach().double().cpu()[ids]
    const = const * parts.logit_scale

    def on(x: Tensor) -> Tensor:  # [pos, ..., d_model] -> [pos, target, ...]
        y = torch.einsum("p...m,tm->pt...", x, d)
        return y / sigma.view(-1, *([1] * (y.ndim - 1)))

    res = DLAResult(
        name=name, tokens=lm.tokens(input_ids[0]), positions=pos, targets=lm.tokens(torch.tensor(ids)),
        target_ids=ids, n_given=n_given, heads=on(H).numpy(), mlps=on(M).numpy(), embed=on(embed).numpy(),
        pos_embed=on(pos_embed).numpy(), out_bias=on(out_bias).numpy(),
        bias=const.expand(len(pos), -1).numpy(), logits=logits[:, ids].numpy(), sigma=sigma.numpy(),
        final_norm=norm.kind, tied=parts.unembed.weight is lm.model.get_input_embeddings().weight,
        provenance=provenance or Provenance(model=f.name), linearisation=note)
    err = float(np.abs(res.totals() - res.logits).max() / max(1e-6, float(np.abs(res.logits).max())))
    if err > _CHECK_RTOL:
        raise BackendError(f"direct logit attribution cannot decompose {f.architecture}: its logits are not the final "
                           f"norm's linear image of the residual stream (relative error {err:.2g}; a soft-capped or "
                           "scaled head?)")
    return res
