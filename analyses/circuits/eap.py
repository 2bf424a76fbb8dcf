"""Edge attribution patching (EAP, Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

The graph: senders are the embeddings, every attention head's output and every MLP's
output; receivers are every query head's query input, every KV head's key and value
inputs (GQA: a KV head's K/V input is shared by its query heads, so those edges are per
KV head), every MLP's input and the logits. An edge ``u -> r`` exists when ``u`` comes
before ``r``; its score is the first-order estimate of patching ``u``'s corrupted output
into the clean run along that edge only:

    score(u -> r) = sum over positions of (u_corrupted - u_clean) . d metric / d input_r

averaged over examples, where ``input_r`` is the residual stream before ``r``'s norm, seen
by ``r`` alone (the gradient through ``r``'s projection rows, pulled back through the norm).
EAP takes the gradient on the clean run; EAP-IG averages it over ``steps`` runs whose input
embeddings go from corrupted to clean (alpha = k / steps, k = 1..steps). Node scores
(``head_scores``, ``mlp_scores``) are the same estimate for patching a whole component
and equal the sum of its outgoing edges. Negative: the corrupted activation lowers the metric.

Where a sender's write passes a norm before joining the residual stream (Gemma 2/3, OLMo2,
GLM4 normalise block outputs; BLOOM its embeddings), the write is taken through that norm
linearised at the clean run, which keeps EAP first-order and the edges adding up to the node
scores. Multi-head latent attention (DeepSeek-V2/V3) builds keys and values from one shared
latent: its receivers' gradients are each head's slice of the gradient at the attention
function's inputs, pulled back through the attention's own graph.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from attnlens.analyses.circuits._hooks import CircuitModules, capture
from attnlens.analyses.circuits.metrics import Metric, per_row
from attnlens.analyses.circuits.tasks import EncodedTask, TaskError
from attnlens.formats.circuit import Edge, Input, Node, NodeKind, Receiver
from attnlens.formats.sites import HeadRef, MlpRef
from lens.attention import AttentionObserver, attention_mode
from lens.errors import BackendError
from lens.hooks import Point, Where


@dataclass
class EdgeScores:
    method: str  # "eap" or "eap-ig"
    metric: str
    senders: list[Node]
    receivers: list[Receiver]
    scores: np.ndarray  # [sender, receiver], NaN where there is no edge
    head_scores: np.ndarray  # [layer, head]
    mlp_scores: np.ndarray  # [layer]
    n_examples: int
    seconds: float
    params: dict = field(default_factory=dict)

    def edges(self) -> list[Edge]:
        """Every edge of the graph with its score."""
        i, j = np.nonzero(~np.isnan(self.scores))
        return [Edge(self.senders[a], self.receivers[b], float(self.scores[a, b])) for a, b in zip(i, j)]

    @property
    def n_edges(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.scores)))


def graph_names(facts, *, parallel: bool = False) -> tuple[list[Node], np.ndarray, list[Receiver], np.ndarray]:
    """Senders and their order, receivers and their order (an edge iff sender order < receiver order).
    ``parallel``: blocks whose MLP reads the block's input beside attention (GPT-J, Phi, GPT-NeoX), so a
    layer's heads do not reach its MLP."""
    senders, s_order = [Node(NodeKind.EMBED)], [0]
    receivers, r_order = [], []
    for layer in range(facts.n_layers):
        senders += [Node.of(HeadRef(layer, h)) for h in range(facts.n_heads)] + [Node.of(MlpRef(layer))]
        s_order += [2 * layer + 1] * facts.n_heads + [2 * layer + 2]
        receivers += [Receiver(Input.Q, layer, h) for h in range(facts.n_heads)]
        receivers += [Receiver(Input.K, layer, j) for j in range(facts.n_kv_heads)]
        receivers += [Receiver(Input.V, layer, j) for j in range(facts.n_kv_heads)]
        receivers.append(Receiver(Input.MLP, layer))
        r_order += [2 * layer + 1] * (facts.n_heads + 2 * facts.n_kv_heads) + [2 * layer + 1 + (not parallel)]
    receivers.append(Receiver(Input.LOGITS))
    r_order.append(2 * facts.n_layers + 1)
    return senders, np.array(s_order), receivers, np.array(r_order)


def _sender_deltas(parts: CircuitModules, clean, corr) -> Tensor:
    """``[batch, pos, sender, d_model]``: corrupted minus clean write of every sender to the residual stream.

    Blocks that normalise the attention's and the MLP's outputs before adding them (Gemma 2/3, OLMo2, GLM4), and
    BLOOM's norm on its embeddings, have each sender's write taken through that norm linearised at the clean run
    (its Jacobian-vector product): to first order, which is EAP's own approximation, the writes still add up to
    the residual stream's change, and a node's outgoing edges add up to its node score."""
    embed = (corr.embed - clean.embed).float().unsqueeze(2)
    embed_norm = parts.adapter.embed_norm()  # BLOOM: the embeddings' write is their norm's output, linearised too
    cols = [embed if embed_norm is None else _norm_jvp(embed_norm, clean.embed.float(), embed)]
    for layer in range(parts.facts.n_layers):
        w_o = parts.w_o(layer).float()
        dz = (corr.z[layer] - clean.z[layer]).float()  # [N, pos, H, d_head]
        heads = torch.einsum("nphe,hde->nphd", dz, w_o)
        mlp = (corr.mlp[layer] - clean.mlp[layer]).float().unsqueeze(2)
        post = parts.adapter.post_norms(layer)
        if post is not None:
            bias = getattr(parts.adapter.out_proj(layer), "bias", None)
            attn_out = torch.einsum("nphe,hde->npd", clean.z[layer].float(), w_o)  # before the norm, clean
            attn_out = attn_out if bias is None else attn_out + bias.float()
            heads = _norm_jvp(post[0], attn_out, heads)
            mlp = _norm_jvp(post[1], clean.mlp[layer].float(), mlp)
        cols += [heads, mlp]
    return torch.cat(cols, dim=2)


def _norm_jvp(norm, x: Tensor, t: Tensor) -> Tensor:
    """``t [N, pos, S, D]`` (changes at the norm's input, one per sender) pushed forward through the norm
    linearised at its input ``x [N, pos, D]``."""
    from torch.func import jvp

    dtype = next((p.dtype for p in norm.parameters()), t.dtype)
    xs = x.detach().to(dtype).unsqueeze(2).expand_as(t).contiguous()
    return jvp(norm, (xs,), (t.to(dtype),))[1].float()


def _norm_vjp(norm, x: Tensor, g: Tensor) -> Tensor:
    """``g [N, pos, R, D]`` (gradients at the norm's output, one per receiver) pulled back to its input ``x``."""
    xr = x.detach().unsqueeze(2).expand_as(g).clone().requires_grad_(True)
    with torch.enable_grad():
        (out,) = torch.autograd.grad(norm(xr), xr, g)
    return out


def _latent(parts: CircuitModules) -> bool:
    """Multi-head latent attention (DeepSeek-V2/V3): keys and values come from one normalised latent shared by the
    heads, so a receiver's gradient is pulled back through the attention's own graph, head by head
    (:class:`_AttentionInputs`), not through projection rows."""
    return bool(getattr(parts.lm.model.config, "kv_lora_rank", None))


class _AttentionInputs(AttentionObserver):
    """Keeps every layer's query ``[N, head, pos, d]``, key and value ``[N, kv_head, pos, d]`` as the attention
    function receives them (after rotary), in the autograd graph."""

    def __init__(self):
        self.q, self.k, self.v = {}, {}, {}

    def on_inputs(self, module, layer, query, key, value) -> None:
        self.q[layer], self.k[layer], self.v[layer] = query, key, value


def _per_head_inputs(normed: Tensor, inputs: tuple[Tensor, Tensor, Tensor], grads: tuple[Tensor, Tensor, Tensor]
                     ) -> Tensor:
    """``[N, pos, H + 2 KV, D]``: the metric's gradient at the attention's input ``normed`` through each query
    head's query, then each KV head's key, then value alone (the head's slice of the gradient pulled back through
    the graph from ``normed``); the slices partition the gradient, so they sum to the whole."""
    out = []
    for x, g in zip(inputs, grads):  # [N, head, pos, d]
        for h in range(x.shape[1]):
            one = torch.zeros_like(g)
            one[:, h] = g[:, h]
            (gx,) = torch.autograd.grad(x, normed, one, retain_graph=True)
            out.append(gx)
    return torch.stack(out, dim=2)


def _pre_norm(parts: CircuitModules, which: str, layer: int):
    """The norm before the block's attention (``which="attn"``) or MLP, or None in blocks that normalise only
    their outputs (OLMo2, OLMo3, EXAONE 4: attention and MLP read the residual stream as it is)."""
    find = parts.attn_norm if which == "attn" else parts.mlp_norm
    if parts.adapter.post_norms(layer) is None:
        return find(layer)  # a pre-norm block: refuses in one line where the norm is missing
    try:
        return find(layer)
    except BackendError:
        return None


def _check_graph(parts: CircuitModules) -> None:
    """EAP's linear graph holds here, or a one-line refusal naming the family and what breaks it."""
    family = f"{type(parts.lm.model).__name__} ({getattr(parts.lm.model.config, 'model_type', '?')})"
    lacking = sorted(set(range(parts.facts.n_layers)) - set(parts.adapter.attention_layers()))
    if lacking:
        raise BackendError(f"EAP cannot score {family}: blocks {lacking} have no attention (another mixer, such as "
                           "a state-space layer), and the edge graph has no nodes for them")
    if getattr(parts.facts, "d_value", parts.facts.d_head) != parts.facts.d_head and not _latent(parts):
        raise BackendError(f"EAP cannot score {family}: its values are {parts.facts.d_value} wide and its queries and "
                           f"keys {parts.facts.d_head}, outside multi-head latent attention")
    f = parts.facts
    for layer in range(f.n_layers):
        mixer = parts.adapter.other_mixer(layer)
        if mixer is not None:
            raise BackendError(f"EAP cannot score {family}: block {layer} runs another mixer ({mixer}) beside "
                               "attention, which writes to the residual stream without heads, and the edge graph "
                               "has no nodes for it")
        parts.adapter.out_proj(layer)  # mixtures of attention heads (JetMoe) have none: a one-line refusal
        norm = parts.adapter.output_norm(layer)
        if norm is not None and parts.adapter.post_norms(layer) is None:
            raise BackendError(f"EAP cannot score {family}: it normalises block outputs ({norm}) before adding them "
                               "to the residual stream, so a sender's write is not linear in its output")
        for which, p in ({} if _latent(parts) else
                         parts.adapter.projections(layer, f.n_heads, f.n_kv_heads, f.d_head)).items():
            if not isinstance(p.module, torch.nn.Linear) and type(p.module).__name__ != "Conv1D":
                raise BackendError(f"EAP cannot score {family}: layer {layer}'s {which} projection is a "
                                   f"{type(p.module).__name__}, not a linear layer")
        _pre_norm(parts, "attn", layer), _pre_norm(parts, "mlp", layer)  # refuse in one line where one is missing


def _grad_pass(parts: CircuitModules, emb: Tensor, batch, metric: Metric):
    """Gradients of the summed metric at every receiver (``[N, pos, receiver, D]``) and at z / MLP outputs."""
    L, H, KV, dh = parts.facts.n_layers, parts.facts.n_heads, parts.facts.n_kv_heads, parts.facts.d_head
    t: dict[str, list] = {k: [None] * L for k in ("z", "q", "k", "v", "pre", "mid", "mlp_in", "mlp_out")}
    final: list = [None]

    def keep(table, index):
        def fn(x):
            # a view of its own, handed back as the replacement: its gradient is this reader's alone, even where
            # the same tensor feeds another module too (one norm's output read by attention and MLP)
            y = x.view_as(x)
            table[index] = y
            return y
        return fn

    latent = _latent(parts)
    proj = [None if latent else parts.adapter.projections(layer, H, KV, dh) for layer in range(L)]
    norms = [(_pre_norm(parts, "attn", layer), _pre_norm(parts, "mlp", layer)) for layer in range(L)]
    t["normed"] = [None] * L
    inputs = _AttentionInputs()
    points = [(Point(Where.BLOCK_OUT, L - 1), keep(final, 0))]
    for layer in range(L):
        attn_norm, mlp_norm = norms[layer]
        # the MLP's input: its norm's output, or the MLP's own input where one norm feeds attention and MLP, or
        # where there is none (OLMo2: the receivers then read the residual stream directly)
        own_input = mlp_norm is None or mlp_norm is attn_norm
        points += [(Point(Where.Z, layer), keep(t["z"], layer)),
                   (Point(Where.MLP_IN if own_input else Where.MLP_NORMED, layer), keep(t["mlp_in"], layer)),
                   (Point(Where.MLP_OUT, layer), keep(t["mlp_out"], layer))]
        if attn_norm is not None:
            points.append((Point(Where.RESID_PRE, layer), keep(t["pre"], layer)))
        if mlp_norm is not None:
            points.append((Point(Where.RESID_MID, layer), keep(t["mid"], layer)))
        if latent:
            points.append((Point(Where.ATTN_NORMED, layer), keep(t["normed"], layer)))
        elif proj[layer]["q"].fused:
            points.append((Point(Where.QKV, layer), keep(t["q"], layer)))
        else:
            points += [(Point(w, layer), keep(t[k], layer)) for k, w in (("q", Where.Q), ("k", Where.K), ("v", Where.V))]
    with torch.enable_grad():
        with ExitStack() as stack:  # the hooks for the forward pass only: the norms below run unhooked
            stack.enter_context(parts.hooked(points))
            if latent:
                stack.enter_context(attention_mode(parts.lm, inputs))
            emb = emb.detach().requires_grad_(True)
            logits = parts.lm.model(inputs_embeds=emb, logits_to_keep=1).logits[:, -1]
        m = per_row(metric, logits, batch.answer, batch.distractor).sum()
        keys = ("z", "q", "k", "v", "mlp_in", "mlp_out")
        flat = [x for k in keys for x in t[k] if x is not None] + [final[0]]
        seen = (inputs.q, inputs.k, inputs.v)
        if latent:
            flat += [x[layer] for x in seen for layer in range(L)]
        grads = iter(torch.autograd.grad(m, flat, retain_graph=latent))
        g = {k: [None if x is None else next(grads) for x in t[k]] for k in keys}
        g_final = next(grads)
        g_seen = [[next(grads) for _ in range(L)] for _ in seen] if latent else []
        receivers = []
        for layer in range(L):
            n, p = emb.shape[:2]
            if latent:  # through the attention's own graph, head by head
                per = _per_head_inputs(t["normed"][layer], tuple(x[layer] for x in seen),
                                       tuple(gs[layer] for gs in g_seen))
            else:
                per = []
                for which, heads in (("q", H), ("k", KV), ("v", KV)):
                    pr = proj[layer][which]
                    out = g["q" if pr.fused else which][layer]  # [N, pos, features]: a fused projection's output
                    gh = out.index_select(-1, pr.index.to(out.device)).view(n, p, heads, dh)
                    w = pr.weight().detach().to(gh.dtype).view(heads, dh, -1)
                    per.append(torch.einsum("nphe,hed->nphd", gh, w))
                per = torch.cat(per, dim=2).detach()
            attn_norm, mlp_norm = norms[layer]
            gm = g["mlp_in"][layer].unsqueeze(2)
            receivers += [per if attn_norm is None else _norm_vjp(attn_norm, t["pre"][layer], per),
                          gm if mlp_norm is None else _norm_vjp(mlp_norm, t["mid"][layer], gm)]
    receivers.append(g_final.unsqueeze(2))
    gz = list(g["z"])  # [N, pos, head, d_head]
    return torch.cat(receivers, dim=2), gz, list(g["mlp_out"])


def edge_attribution(lm, enc: EncodedTask, metric: Metric | str = Metric.LOGIT_DIFF, *, ig_steps: int = 0) -> EdgeScores:
    """EAP (``ig_steps=0``) or EAP-IG (``ig_steps`` >= 1 interpolation steps) edge and node scores over ``enc``."""
    metric = Metric(metric)
    if metric is Metric.ACC:
        raise TaskError("EAP needs a differentiable metric: use logit-diff, prob or loss, not acc")
    if ig_steps < 0:
        raise TaskError(f"`ig_steps` must be >= 0, got {ig_steps}")
    t0 = time.perf_counter()
    parts = CircuitModules(lm)
    _check_graph(parts)
    facts = parts.facts
    senders, s_order, receivers, r_order = graph_names(facts, parallel=parts.adapter.parallel)
    scores = torch.zeros(len(senders), len(receivers), dtype=torch.float64)
    head = torch.zeros(facts.n_layers, facts.n_heads, dtype=torch.float64)
    mlp = torch.zeros(facts.n_layers, dtype=torch.float64)
    steps = max(1, ig_steps)
    # Frozen weights: otherwise the backward also computes every weight gradient (10x slower here).
    trainable = [p for p in lm.model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        _accumulate(parts, enc, metric, ig_steps, steps, scores, head, mlp)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    n = enc.n_examples
    s = (scores / n).numpy()
    s[s_order[:, None] >= r_order[None, :]] = np.nan
    return EdgeScores("eap-ig" if ig_steps else "eap", metric.value, senders, receivers, s, (head / n).numpy(),
                      (mlp / n).numpy(), n, time.perf_counter() - t0, {"ig_steps": ig_steps})


def _accumulate(parts: CircuitModules, enc: EncodedTask, metric: Metric, ig_steps: int, steps: int,
                scores: Tensor, head: Tensor, mlp: Tensor) -> None:
    facts = parts.facts
    for b in enc.batches:
        clean, corr = capture(parts, b.clean), capture(parts, b.corrupted)
        deltas = _sender_deltas(parts, clean, corr)  # [N, pos, S, D]
        g_sum = gz_sum = gmlp_sum = None
        for k in range(1, steps + 1):  # scores are linear in the gradient: average it, contract once
            alpha = k / steps if ig_steps else 1.0
            emb = corr.embed + alpha * (clean.embed - corr.embed)
            grads, gz, gmlp = _grad_pass(parts, emb, b, metric)
            if g_sum is None:
                g_sum, gz_sum, gmlp_sum = grads.float(), [x.float() for x in gz], [x.float() for x in gmlp]
            else:
                g_sum += grads
                gz_sum = [a + x for a, x in zip(gz_sum, gz)]
                gmlp_sum = [a + x for a, x in zip(gmlp_sum, gmlp)]
        scores += torch.einsum("npsd,nprd->sr", deltas, g_sum).double() / steps
        for layer in range(facts.n_layers):
            dz = (corr.z[layer] - clean.z[layer]).float()
            head[layer] += torch.einsum("nphe,nphe->h", dz, gz_sum[layer]).double() / steps
            mlp[layer] += ((corr.mlp[layer] - clean.mlp[layer]).float() * gmlp_sum[layer]).sum().double() / steps
