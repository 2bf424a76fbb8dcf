"""QK attribution: why a head attends where it does.

For one head ``(layer, head)``, a query position ``q`` and a key position ``k``, the residual
stream entering the layer is a sum of components (the embeddings, position embeddings where
the family has them, every earlier head's output through its slice of the output projection,
the earlier output-projection biases, every earlier MLP output). The head's pre-softmax score

    score[q, k] = scale * rot_q(W_Q norm(x_q) + b_Q) . rot_k(W_K norm(x_k) + b_K)

becomes a sum of bilinear terms ``terms[k, i, j]`` (query-side component ``i`` times key-side
component ``j``) under **the standard linearisation**: each norm's scale (the RMS, or the
standard deviation for LayerNorm) is frozen at its value on this input, so the norm is a
linear map per position (LayerNorm's mean-centering is linear too and is folded in). The
norm's and the projection's biases form one more component, ``bias``. Rotary is a linear map
per position, so it distributes over the sum. Families with post-norms (Gemma 2: each head's
and MLP's output is normalised before it is added) get the same treatment: the post-norm's
scale is frozen too, so each head's share passes through it linearly. The terms add up
exactly to the score before any soft-capping; a soft-capping family (Gemma 2) applies
``cap * tanh(score / cap)`` after, which the result's linearisation note says.

Every step checks itself against the model's own forward: the components must sum to the
residual stream, the frozen norm must reproduce the norm's output, and the per-component
queries and keys must sum to the queries and keys the attention function received; a family
where one of these fails is refused in one line naming it.

**OV**: what the head writes at ``q``, split by the key position it reads, projected on the
unembedding of answer tokens (the final norm's scale frozen the same way): summed over keys
it is the head's direct logit attribution. **Head loadings**: over a prompt set, how much each
earlier head's output contributes to the score through the query side and through the key
side (:func:`head_loadings`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from attnlens.analyses.circuits._hooks import CircuitModules
from attnlens.formats.provenance import Provenance
from attnlens.formats.qk import Contributor, Kind, QKResult
from lens.adapters import adapter_for
from lens.attention import AttentionObserver, attention_mode, score_scale
from lens.errors import BackendError, SelectionError
from lens.hooks import Point, Where

LINEARISATION = ("norm scales frozen at their values on this input (standard linearisation); "
                 "LayerNorm centering folded in; rotary applied per position")
_REFUSED: dict[str, str] = {}  # model_type -> why (checks on the modules themselves come first)
#: families whose rotary turns adjacent pairs of dims (0, 1), (2, 3), ... rather than the two halves, with the
#: angles laid out by halves (repeated per pair here) or already per pair (Cohere's)
_INTERLEAVED_ROTARY = {"glm": "halves", "glm4": "halves", "helium": "halves", "ernie4_5": "halves",
                       "ernie4_5_moe": "halves", "cohere": "pairs", "cohere2": "pairs"}
#: families whose full-attention layers skip rotary (it turns only their sliding-window layers' queries and keys)
_ROTARY_ON_SLIDING_ONLY = frozenset({"cohere2"})
#: per-head query/key norms, by the names families give them
_QK_NORMS = (("q_norm", "k_norm"), ("q_layernorm", "k_layernorm"), ("query_layernorm", "key_layernorm"))
_CHECK_RTOL = 2e-3


@dataclass
class QKAttribution:
    """The decomposition of one head's scores from one query position to every key ``0..q``.

    ``terms``: ``[k, comp_q, comp_k]``, query-side component x key-side component; summed
    over the last two axes it is ``scores`` ``[k]`` (pre-softmax, scale included);
    ``pattern``: ``[k]`` the head's attention probabilities from ``q``; ``ov``: ``[answer, k]``
    (empty without answers) what the head writes at ``q`` through key ``k`` on each answer's
    unembedding direction.
    """

    model: str
    layer: int
    head: int
    kv_head: int
    query_pos: int
    key_pos: int  # the key this result is about (default: the head's argmax key)
    tokens: list[str]
    components: list[Contributor]
    terms: Float[Tensor, "k comp_q comp_k"]
    scores: Float[Tensor, " k"]
    pattern: Float[Tensor, " k"]
    scale: float
    answers: list[str]
    ov: Float[Tensor, "answer k"]
    linearisation: str = LINEARISATION

    def names(self, pos: int) -> list[str]:
        """Contributor labels at ``pos`` (``embed[tok]`` and ``pos[p]`` name that position)."""
        return [c.label(self.tokens[pos], pos) for c in self.components]

    def top(self, n: int = 10, key_pos: int | None = None) -> list[tuple[str, float]]:
        """The ``n`` largest terms by magnitude at ``key_pos`` as ``("L17H3 x embed[Mary]", value)``."""
        k = self.key_pos if key_pos is None else key_pos
        t = self.terms[k]
        order = torch.argsort(t.abs().flatten(), descending=True)[:n]
        qn, kn = self.names(self.query_pos), self.names(k)
        nk = t.shape[1]
        return [(f"{qn[int(i) // nk]} x {kn[int(i) % nk]}", float(t.flatten()[i])) for i in order]

    def to_result(self, provenance: Provenance | None = None, name: str | None = None) -> QKResult:
        """The torch-free result :mod:`formats.qk` writes and the views read."""
        provenance = provenance or Provenance(model=self.model)
        return QKResult(name=name or f"L{self.layer}H{self.head}.q{self.query_pos}", layer=self.layer, head=self.head,
                        kv_head=self.kv_head, query_pos=self.query_pos, key_pos=self.key_pos, tokens=self.tokens,
                        components=self.components, terms=self.terms.cpu().numpy(), scores=self.scores.cpu().numpy(),
                        pattern=self.pattern.cpu().numpy(), provenance=provenance, scale=self.scale,
                        answers=self.answers, ov=self.ov.cpu().numpy(), linearisation=self.linearisation)


# ---- collection ----------------------------------------------------------------------------
class _Grab(AttentionObserver):
    needs_weights = True

    def __init__(self, layer: int):
        self.layers = frozenset({layer})
        self.got: dict[str, Tensor] = {}

    def on_outputs(self, module, layer, query, key, value, out, weights) -> None:
        self.got.update(query=query.detach()[0].double(), key=key.detach()[0].double(),
                        value=value.detach()[0].double(), weights=weights.detach()[0].double())


def _qk_weights(parts: CircuitModules, layer: int, head: int, kv_head: int, d_head: int):
    f = parts.facts
    proj = parts.adapter.projections(layer, f.n_heads, f.n_kv_heads, d_head)  # separate or fused, by the table

    def rows(which: str, h: int):
        p = proj[which]
        if type(p.module).__name__ not in ("Linear", "Conv1D"):
            raise BackendError(f"QK attribution cannot read projection {type(p.module).__name__}: expected Linear "
                               "or Conv1D")
        w, b = p.weight()[h * d_head:(h + 1) * d_head], p.bias()
        b = None if b is None else b[h * d_head:(h + 1) * d_head]
        return w.detach().double(), None if b is None else b.detach().double()

    return rows("q", head), rows("k", kv_head)


def _out_rows(proj: nn.Module, head: int, d_head: int) -> Tensor:
    """``[d_head, d_model]``: a head's ``z`` times this is its share of the output projection."""
    if isinstance(proj, nn.Linear):
        return proj.weight[:, head * d_head:(head + 1) * d_head].detach().double().T
    if type(proj).__name__ == "Conv1D":
        return proj.weight[head * d_head:(head + 1) * d_head].detach().double()
    raise BackendError(f"QK attribution cannot read output projection {type(proj).__name__}")


@dataclass
class _Norm:
    """A norm with its scale frozen: ``y = (center(x) / sigma) * w + b`` per position."""

    sigma: Tensor  # [pos]
    w: Tensor  # [d_model]
    b: Tensor | None
    center: bool

    def linear(self, c: Tensor) -> Tensor:
        """The linear part on components ``[..., pos, d_model]``."""
        if self.center:
            c = c - c.mean(-1, keepdim=True)
        return c / self.sigma[:, None] * self.w


def _freeze(norm: nn.Module, x: Tensor, where: str) -> _Norm:
    name = type(norm).__name__
    if isinstance(norm, nn.LayerNorm):
        sigma = torch.sqrt(x.var(-1, unbiased=False) + norm.eps)
        b = None if norm.bias is None else norm.bias.detach().double()
        w = norm.weight.detach().double()
        if name.endswith("LayerNorm1P"):  # Nemotron's LayerNorm scales by (1 + weight)
            w = 1.0 + w
        return _Norm(sigma, w, b, True)
    if name.endswith("LayerNorm") and hasattr(norm, "variance_epsilon"):  # Cohere's: mean-centred, no bias
        return _Norm(torch.sqrt(x.var(-1, unbiased=False) + norm.variance_epsilon), norm.weight.detach().double(),
                     None, True)
    if name == "OlmoLayerNorm":  # no weight, no bias, eps 1e-5
        return _Norm(torch.sqrt(x.var(-1, unbiased=False) + 1e-5), torch.ones(x.shape[-1], dtype=x.dtype), None, True)
    if name.endswith("RMSNorm"):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        w = norm.weight.detach().double()
        if name.startswith("Gemma"):  # Gemma's RMSNorm scales by (1 + weight)
            w = 1.0 + w
        return _Norm(torch.sqrt(x.pow(2).mean(-1) + eps), w, None, False)
    raise BackendError(f"QK attribution cannot linearise the {where} {name}: expected LayerNorm or an RMSNorm")


def _close(got: Tensor, want: Tensor) -> float:
    """Largest error relative to the reference's largest magnitude."""
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: str | None = None) -> Tensor:
    """Rotary on the first ``cos.shape[-1]`` dims of ``x`` (all of them, or a partial rotary's share); by halves,
    or on adjacent pairs (``interleaved``: ``"halves"``, the first half of ``cos``/``sin`` repeated per pair, or
    ``"pairs"``, already one angle per pair)."""
    rot = cos.shape[-1]
    x, rest = x[..., :rot], x[..., rot:]
    half = rot // 2
    if interleaved:
        if interleaved == "halves":
            cos, sin = cos[..., :half].repeat_interleave(2, -1), sin[..., :half].repeat_interleave(2, -1)
        turned = torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
    else:
        turned = torch.cat((-x[..., half:], x[..., :half]), -1)
    return torch.cat((x * cos + turned * sin, rest), -1)


def qk_attribution(lm, input_ids: Tensor, layer: int, head: int, *, query_pos: int = -1,
                   key_pos: int | None = None, answers: Sequence[int] = ()) -> QKAttribution:
    """Decompose head ``(layer, head)``'s scores from ``query_pos`` to every key ``0..query_pos``.

    ``input_ids``: ``[1, pos]``; ``query_pos``: -1 for the last token; ``key_pos``: the key the
    result is about (default: the head's argmax key); ``answers``: token ids whose unembedding
    the OV side is projected on. Raises :class:`SelectionError` for a layer, head or position out of
    range and :class:`BackendError` for a family that cannot be decomposed.
    """
    f = lm.facts
    mt = getattr(lm.model.config, "model_type", "")
    if mt in _REFUSED:
        raise BackendError(f"QK attribution cannot decompose {f.architecture or mt}: {_REFUSED[mt]}")
    if getattr(lm.model.config, "kv_lora_rank", None):
        raise BackendError(f"QK attribution cannot decompose {f.architecture or mt}: it computes keys and values "
                           "through a low-rank latent (multi-head latent attention)")
    if not 0 <= layer < f.n_layers:
        raise SelectionError(f"layer {layer} is out of range: {f.name} has layers 0-{f.n_layers - 1}")
    if not 0 <= head < f.n_heads:
        raise SelectionError(f"head {head} is out of range: {f.name} has heads 0-{f.n_heads - 1} in each layer")
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise SelectionError(f"input_ids must be one prompt [1, pos], got shape {list(input_ids.shape)}")
    n = input_ids.shape[1]
    q = n + query_pos if query_pos < 0 else query_pos
    if not 0 <= q < n:
        raise SelectionError(f"query position {query_pos} is out of range: the prompt has positions 0-{n - 1}")
    if key_pos is not None and not 0 <= key_pos <= q:
        raise SelectionError(f"key position {key_pos} is out of range: query {q} attends to keys 0-{q}")
    vocab = f.vocab_size
    bad = [int(a) for a in answers if not 0 <= int(a) < vocab]
    if bad:
        raise SelectionError(f"answer token ids {bad} are out of range: the vocabulary has ids 0-{vocab - 1}")
    try:
        return _decompose(lm, input_ids, layer, head, q, key_pos, answers)
    except (BackendError, SelectionError) as err:  # a part this module cannot find or model: name the family
        if isinstance(err, BackendError) and (f.architecture or mt) in str(err):
            raise
        why = str(err).removeprefix("QK attribution ")
        raise BackendError(f"QK attribution cannot decompose {f.architecture or mt}: {why}") from None


def _decompose(lm, input_ids: Tensor, layer: int, head: int, q: int, key_pos: int | None,
               answers: Sequence[int]) -> QKAttribution:
    f = lm.facts
    n = input_ids.shape[1]
    adapter = adapter_for(lm.model, f.n_layers)
    attn = adapter.attention(layer)
    for qn, kn in _QK_NORMS:
        if isinstance(getattr(attn, qn, None), nn.Module) or isinstance(getattr(attn, kn, None), nn.Module):
            raise BackendError(f"QK attribution cannot decompose {f.architecture}: it normalises each head's queries "
                               f"and keys ({qn}, {kn}) before the scores")
    for la in range(layer):
        mixer = adapter.other_mixer(la)
        if mixer is not None:
            raise BackendError(f"QK attribution cannot decompose {f.architecture}: block {la} runs another mixer "
                               f"({mixer}) beside attention, which writes to the residual stream without heads")
    clip = getattr(getattr(lm.model.config, "attn_config", None), "clip_qkv", None)
    if clip:
        raise BackendError(f"QK attribution cannot decompose {f.architecture}: it clips queries, keys and values to "
                           f"+-{clip:g} (clip_qkv), which is not linear in the residual stream")
    parts = CircuitModules(lm)
    d_head = f.d_head
    kv_head = head // (f.n_heads // f.n_kv_heads)
    got = _collect(lm, parts, input_ids, layer)

    # the residual stream entering the layer as a sum of components [comp, pos, d_model]
    comps: list[Contributor] = [Contributor(Kind.EMBED)]
    vecs = [got["resid0"] - got.get("wpe", 0)]
    if "wpe" in got:
        comps.append(Contributor(Kind.POS))
        vecs.append(got["wpe"])
    out_bias = None
    for la in range(layer):
        proj = parts.adapter.out_proj(la)
        z = got[f"z{la}"].view(n, f.n_heads, d_head)
        post = parts.adapter.post_norms(la)
        # a post-norm with its scale frozen at the attention output's is linear per position
        through = (_freeze(post[0], got[f"post{la}"], f"post-attention norm of layer {la}").linear
                   if post is not None else (lambda c: c))
        for h in range(f.n_heads):
            comps.append(Contributor(Kind.HEAD, la, h))
            vecs.append(through(z[:, h] @ _out_rows(proj, h, d_head)))
        if getattr(proj, "bias", None) is not None:
            b = through(proj.bias.detach().double().expand(n, -1))
            out_bias = b if out_bias is None else out_bias + b
        comps.append(Contributor(Kind.MLP, la))
        vecs.append(got[f"mlp{la}"])  # after the MLP's post-norm where there is one
    if out_bias is not None:
        comps.append(Contributor(Kind.OUT_BIAS))
        vecs.append(out_bias)
    C = torch.stack(vecs)  # [comp, pos, d_model]
    resid = got["resid"]
    err = _close(C.sum(0), resid)
    if err > _CHECK_RTOL:
        raise BackendError(f"QK attribution cannot decompose {f.architecture}: the residual stream entering layer "
                           f"{layer} is not the sum of embeddings, head and MLP outputs (relative error {err:.2g})")
    norm = _freeze(parts.attn_norm(layer), resid, f"attention norm of layer {layer}")
    lin = norm.linear(C)  # [comp, pos, d_model]
    const = (norm.b if norm.b is not None else torch.zeros_like(norm.w)).expand(n, -1)
    err = _close(lin.sum(0) + const, got["normed"])
    if err > _CHECK_RTOL:
        raise BackendError(f"QK attribution cannot linearise {type(parts.attn_norm(layer)).__name__} in {f.architecture}"
                           f" (relative error {err:.2g})")
    (wq, bq), (wk, bk) = _qk_weights(parts, layer, head, kv_head, d_head)
    qc = torch.cat([lin[:, q] @ wq.T, (const[q] @ wq.T + (0 if bq is None else bq))[None]])  # [comp+1, d_head]
    kc = torch.cat([lin[:, :q + 1] @ wk.T, (const[:q + 1] @ wk.T + (0 if bk is None else bk))[None]])  # [comp+1, k, d]
    nope = (getattr(lm.model.config, "model_type", "") in _ROTARY_ON_SLIDING_ONLY
            and getattr(parts.adapter.attention(layer), "sliding_window", None) is None)
    if "cos" in got and not nope:
        cos, sin = got["cos"], got["sin"]
        if cos.shape[-1] > d_head:
            raise BackendError(f"QK attribution cannot decompose {f.architecture}: rotary over {cos.shape[-1]} "
                               f"dims of {d_head}")
        inter = _INTERLEAVED_ROTARY.get(getattr(lm.model.config, "model_type", ""))
        qc = _rotate(qc, cos[q], sin[q], inter)  # partial rotary (Phi, StableLM): the first dims turn, the rest pass
        kc = _rotate(kc, cos[:q + 1], sin[:q + 1], inter)
    query, key = got["query"][head, q], got["key"][kv_head, :q + 1]
    err = max(_close(qc.sum(0), query), _close(kc.sum(0), key))
    if err > _CHECK_RTOL:
        raise BackendError(f"QK attribution cannot decompose {f.architecture}: its queries and keys are not the "
                           f"linear image of the residual stream this module models (relative error {err:.2g})")
    comps.append(Contributor(Kind.BIAS))
    scale = score_scale(parts.adapter.attention(layer), d_head)
    terms = scale * torch.einsum("id,jkd->kij", qc, kc)  # [k, comp_q, comp_k]
    pattern = got["weights"][head, q, :q + 1]
    scores = scale * key @ query
    k_sel = int(torch.argmax(pattern)) if key_pos is None else key_pos
    ov = _ov(lm, parts, got, layer, head, kv_head, q, pattern, answers)
    cap = getattr(lm.model.config, "attn_logit_softcapping", None)
    note = LINEARISATION + (f"; scores before soft-capping (the model applies {cap:g} * tanh(score / {cap:g}))"
                            if cap else "")
    return QKAttribution(model=f.name, layer=layer, head=head, kv_head=kv_head, query_pos=q, key_pos=k_sel,
                         tokens=lm.tokens(input_ids[0]), components=comps, terms=terms.float(), scores=scores.float(),
                         pattern=pattern.float(), scale=scale, answers=[lm.tokens(torch.tensor([a]))[0] for a in answers],
                         ov=ov.float(), linearisation=note)


def _collect(lm, parts: CircuitModules, ids: Tensor, layer: int) -> dict[str, Tensor]:
    """One forward recording what the decomposition needs (float64, batch axis dropped)."""
    got: dict[str, Tensor] = {}

    def keep(name, t):
        got[name] = t.detach()[0].double()

    points = [(Point(Where.RESID_PRE, 0), lambda t: keep("resid0", t)),
              (Point(Where.RESID_PRE, layer), lambda t: keep("resid", t)),
              (Point(Where.ATTN_NORMED, layer), lambda t: keep("normed", t)),
              (Point(Where.Z, layer), lambda t: keep(f"z{layer}", t)),
              (Point(Where.FINAL), lambda t: keep("final", t))]
    if parts.adapter.position_embed() is not None:
        points.append((Point(Where.POS_EMBED), lambda t: keep("wpe", t if t.ndim == 3 else t[None])))

    def rope(pe):
        keep("cos", pe[0])
        keep("sin", pe[1])

    points.append((Point(Where.ROTARY, layer), rope))
    for la in range(layer):
        points.append((Point(Where.Z, la), lambda t, la=la: keep(f"z{la}", t)))
        points.append((Point(Where.MLP_OUT, la), lambda t, la=la: keep(f"mlp{la}", t)))
        if parts.adapter.post_norms(la) is not None:  # the attention output: the post-attention norm's input
            points.append((Point(Where.ATTN_OUT, la), lambda t, la=la: keep(f"post{la}", t)))
    grab = _Grab(layer)
    with torch.no_grad(), parts.hooked(points), attention_mode(lm, grab):
        lm.model(input_ids=ids.to(lm.device))
        for la in range(layer):  # a post-norm block adds its MLP's output through the post-norm
            post = parts.adapter.post_norms(la)
            if post is not None:
                out = post[1](got[f"mlp{la}"][None].to(next(post[1].parameters()).dtype))
                got[f"mlp{la}"] = out[0].double()
    got.update(grab.got)
    return got


def _ov(lm, parts: CircuitModules, got: dict, layer: int, head: int, kv_head: int, q: int, pattern: Tensor,
        answers: Sequence[int]) -> Tensor:
    """``[answer, k]``: pattern[q, k] * (v_k W_O) . u_answer / sigma_final(q)."""
    if not answers:
        return torch.zeros(0, q + 1, dtype=torch.float64)
    U = parts.adapter.unembed().weight.detach().double()
    vocab = U.shape[0]
    bad = [a for a in answers if not 0 <= int(a) < vocab]
    if bad:
        raise SelectionError(f"answer token ids {bad} are out of range: the vocabulary has ids 0-{vocab - 1}")
    norm = _freeze(parts.final_norm(), got["final"], "final norm")
    u = U[list(answers)]  # [answer, d_model]
    dirs = u * norm.w
    if norm.center:
        dirs = dirs - dirs.mean(-1, keepdim=True)
    w_o = _out_rows(parts.adapter.out_proj(layer), head, lm.facts.d_head)
    writes = pattern[:, None] * (got["value"][kv_head, :q + 1] @ w_o)  # [k, d_model]
    return dirs @ writes.T / norm.sigma[q]


def head_loadings(lm, prompts: Sequence[Tensor], layer: int, head: int, *,
                  key_positions: Sequence[int | None] | None = None,
                  on_prompt: Callable[[int], None] | None = None) -> dict[str, Float[Tensor, "layer head"]]:
    """Which earlier heads' outputs head ``(layer, head)`` reads most, over ``prompts`` (each ``[1, pos]``).

    Per prompt, the query is the last token and the key ``key_positions[i]`` (default: the argmax key).
    Returns ``{"query": [n_layers, n_heads], "key": [n_layers, n_heads]}``: the mean over prompts of
    each earlier head's summed terms on the query side (row sums) and on the key side (column sums);
    NaN for heads at or after ``layer``. ``on_prompt(i)`` is called after prompt ``i`` (a progress bar).
    """
    if not prompts:
        raise SelectionError("head loadings need at least one prompt, got none")
    if key_positions is not None and len(key_positions) != len(prompts):
        raise SelectionError(f"key_positions has {len(key_positions)} entries, expected one per prompt ({len(prompts)})")
    f = lm.facts
    out = {s: torch.zeros(f.n_layers, f.n_heads, dtype=torch.float64) for s in ("query", "key")}
    for i, ids in enumerate(prompts):
        a = qk_attribution(lm, ids, layer, head, key_pos=None if key_positions is None else key_positions[i])
        t = a.terms[a.key_pos].double()
        for j, c in enumerate(a.components):
            if c.kind is Kind.HEAD:
                out["query"][c.layer, c.head] += t[j].sum() / len(prompts)
                out["key"][c.layer, c.head] += t[:, j].sum() / len(prompts)
        if on_prompt is not None:
            on_prompt(i)
    for g in out.values():
        g[layer:] = float("nan")
    return out
