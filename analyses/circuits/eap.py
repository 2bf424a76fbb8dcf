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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from attnlens.analyses.circuits._hooks import CircuitModules, capture
from attnlens.analyses.circuits.metrics import Metric, per_row
from attnlens.analyses.circuits.tasks import EncodedTask, TaskError
from attnlens.formats.circuit import Edge, Input, Node, NodeKind, Receiver
from attnlens.formats.sites import HeadRef, MlpRef
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
    """``[batch, pos, sender, d_model]``: corrupted minus clean output of every sender."""
    cols = [(corr.embed - clean.embed).float().unsqueeze(2)]
    for layer in range(parts.facts.n_layers):
        dz = (corr.z[layer] - clean.z[layer]).float()  # [N, pos, H, d_head]
        cols.append(torch.einsum("nphe,hde->nphd", dz, parts.w_o(layer).float()))
        cols.append((corr.mlp[layer] - clean.mlp[layer]).float().unsqueeze(2))
    return torch.cat(cols, dim=2)


def _norm_vjp(norm, x: Tensor, g: Tensor) -> Tensor:
    """``g [N, pos, R, D]`` (gradients at the norm's output, one per receiver) pulled back to its input ``x``."""
    xr = x.detach().unsqueeze(2).expand_as(g).clone().requires_grad_(True)
    with torch.enable_grad():
        (out,) = torch.autograd.grad(norm(xr), xr, g)
    return out


def _check_graph(parts: CircuitModules) -> None:
    """EAP's linear graph holds here, or a one-line refusal naming the family and what breaks it."""
    family = f"{type(parts.lm.model).__name__} ({getattr(parts.lm.model.config, 'model_type', '?')})"
    lacking = sorted(set(range(parts.facts.n_layers)) - set(parts.adapter.attention_layers()))
    if lacking:
        raise BackendError(f"EAP cannot score {family}: blocks {lacking} have no attention (another mixer, such as "
                           "a state-space layer), and the edge graph has no nodes for them")
    if getattr(parts.facts, "d_value", parts.facts.d_head) != parts.facts.d_head \
            or getattr(parts.lm.model.config, "kv_lora_rank", None):
        raise BackendError(f"EAP cannot score {family}: multi-head latent attention computes keys and values from a "
                           "normalised shared latent, so its key and value inputs are not linear in the residual stream")
    f = parts.facts
    for layer in range(f.n_layers):
        mixer = parts.adapter.other_mixer(layer)
        if mixer is not None:
            raise BackendError(f"EAP cannot score {family}: block {layer} runs another mixer ({mixer}) beside "
                               "attention, which writes to the residual stream without heads, and the edge graph "
                               "has no nodes for it")
        parts.adapter.out_proj(layer)  # mixtures of attention heads (JetMoe) have none: a one-line refusal
        norm = parts.adapter.output_norm(layer)
        if norm is not None:
            raise BackendError(f"EAP cannot score {family}: it normalises block outputs ({norm}) before adding them "
                               "to the residual stream, so a sender's write is not linear in its output")
        for which, p in parts.adapter.projections(layer, f.n_heads, f.n_kv_heads, f.d_head).items():
            if not isinstance(p.module, torch.nn.Linear) and type(p.module).__name__ != "Conv1D":
                raise BackendError(f"EAP cannot score {family}: layer {layer}'s {which} projection is a "
                                   f"{type(p.module).__name__}, not a linear layer")
        parts.attn_norm(layer), parts.mlp_norm(layer)  # noqa: B018  (refuse in one line where a norm is missing)
    embed_norm = parts.adapter.embed_norm()
    if embed_norm is not None:
        raise BackendError(f"EAP cannot score {family}: it normalises its embeddings ({embed_norm}) before the first "
                           "block, so the embeddings' write is not linear in them")


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

    proj = [parts.adapter.projections(layer, H, KV, dh) for layer in range(L)]
    points = [(Point(Where.BLOCK_OUT, L - 1), keep(final, 0))]
    for layer in range(L):
        # the MLP's input: its norm's output, or the MLP's own input where one norm feeds attention and MLP
        one_norm = parts.mlp_norm(layer) is parts.attn_norm(layer)
        points += [(Point(Where.Z, layer), keep(t["z"], layer)), (Point(Where.RESID_PRE, layer), keep(t["pre"], layer)),
                   (Point(Where.RESID_MID, layer), keep(t["mid"], layer)),
                   (Point(Where.MLP_IN if one_norm else Where.MLP_NORMED, layer), keep(t["mlp_in"], layer)),
                   (Point(Where.MLP_OUT, layer), keep(t["mlp_out"], layer))]
        if proj[layer]["q"].fused:
            points.append((Point(Where.QKV, layer), keep(t["q"], layer)))
        else:
            points += [(Point(w, layer), keep(t[k], layer)) for k, w in (("q", Where.Q), ("k", Where.K), ("v", Where.V))]
    with parts.hooked(points), torch.enable_grad():
        emb = emb.detach().requires_grad_(True)
        logits = parts.lm.model(inputs_embeds=emb, logits_to_keep=1).logits[:, -1]
        m = per_row(metric, logits, batch.answer, batch.distractor).sum()
        keys = ("z", "q", "k", "v", "mlp_in", "mlp_out")
        flat = [x for k in keys for x in t[k] if x is not None] + [final[0]]
        grads = iter(torch.autograd.grad(m, flat))
    g = {k: [None if x is None else next(grads) for x in t[k]] for k in keys}
    g_final = next(grads)
    receivers = []
    for layer in range(L):
        n, p = emb.shape[:2]
        per = []
        for which, heads in (("q", H), ("k", KV), ("v", KV)):
            pr = proj[layer][which]
            out = g["q" if pr.fused else which][layer]  # [N, pos, features]: a fused projection's whole output
            gh = out.index_select(-1, pr.index.to(out.device)).view(n, p, heads, dh)
            w = pr.weight().detach().to(gh.dtype).view(heads, dh, -1)
            per.append(torch.einsum("nphe,hed->nphd", gh, w))
        receivers.append(_norm_vjp(parts.attn_norm(layer), t["pre"][layer], torch.cat(per, dim=2)))
        receivers.append(_norm_vjp(parts.mlp_norm(layer), t["mid"][layer], g["mlp_in"][layer].unsqueeze(2)))
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
