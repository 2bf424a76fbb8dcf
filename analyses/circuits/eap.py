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

from analyses.circuits._hooks import CircuitModules, capture
from analyses.circuits.metrics import Metric, per_row
from analyses.circuits.tasks import EncodedTask, TaskError
from formats.circuit import Edge, Input, Node, NodeKind, Receiver


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


def graph_names(facts) -> tuple[list[Node], np.ndarray, list[Receiver], np.ndarray]:
    """Senders and their order, receivers and their order (an edge iff sender order < receiver order)."""
    senders, s_order = [Node(NodeKind.EMBED)], [0]
    receivers, r_order = [], []
    for layer in range(facts.n_layers):
        senders += [Node(NodeKind.HEAD, layer, h) for h in range(facts.n_heads)] + [Node(NodeKind.MLP, layer)]
        s_order += [2 * layer + 1] * facts.n_heads + [2 * layer + 2]
        receivers += [Receiver(Input.Q, layer, h) for h in range(facts.n_heads)]
        receivers += [Receiver(Input.K, layer, j) for j in range(facts.n_kv_heads)]
        receivers += [Receiver(Input.V, layer, j) for j in range(facts.n_kv_heads)]
        receivers.append(Receiver(Input.MLP, layer))
        r_order += [2 * layer + 1] * (facts.n_heads + 2 * facts.n_kv_heads) + [2 * layer + 2]
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


def _grad_pass(parts: CircuitModules, emb: Tensor, batch, metric: Metric):
    """Gradients of the summed metric at every receiver (``[N, pos, receiver, D]``) and at z / MLP outputs."""
    L, H, KV, dh = parts.facts.n_layers, parts.facts.n_heads, parts.facts.n_kv_heads, parts.facts.d_head
    t: dict[str, list] = {k: [None] * L for k in ("z", "q_proj", "k_proj", "v_proj", "pre", "mid", "mlp_in", "mlp_out")}
    final: list = [None]
    handles = []

    def keep(key, layer, from_output):
        if from_output:
            return lambda m, a, out: t[key].__setitem__(layer, out)
        return lambda m, args: t[key].__setitem__(layer, args[0])

    for layer in range(L):
        handles += [parts.adapter.out_proj(layer).register_forward_pre_hook(keep("z", layer, False)),
                    parts.q_proj(layer).register_forward_hook(keep("q_proj", layer, True)),
                    parts.k_proj(layer).register_forward_hook(keep("k_proj", layer, True)),
                    parts.v_proj(layer).register_forward_hook(keep("v_proj", layer, True)),
                    parts.attn_norm(layer).register_forward_pre_hook(keep("pre", layer, False)),
                    parts.mlp_norm(layer).register_forward_pre_hook(keep("mid", layer, False)),
                    parts.adapter.mlp(layer).register_forward_pre_hook(keep("mlp_in", layer, False)),
                    parts.adapter.mlp(layer).register_forward_hook(keep("mlp_out", layer, True))]
    handles.append(parts.adapter.block(L - 1).register_forward_hook(
        lambda m, a, out: final.__setitem__(0, out[0] if isinstance(out, tuple) else out)))
    try:
        with torch.enable_grad():
            emb = emb.detach().requires_grad_(True)
            logits = parts.lm.model(inputs_embeds=emb, logits_to_keep=1).logits[:, -1]
            m = per_row(metric, logits, batch.answer, batch.distractor).sum()
            keys = ("z", "q_proj", "k_proj", "v_proj", "mlp_in", "mlp_out")
            flat = [x for k in keys for x in t[k]] + [final[0]]
            grads = torch.autograd.grad(m, flat)
    finally:
        for h in handles:
            h.remove()
    g = {k: grads[i * L:(i + 1) * L] for i, k in enumerate(keys)}
    receivers = []
    for layer in range(L):
        n, p = emb.shape[:2]
        wq = parts.q_proj(layer).weight.detach().view(H, dh, -1)
        wk = parts.k_proj(layer).weight.detach().view(KV, dh, -1)
        wv = parts.v_proj(layer).weight.detach().view(KV, dh, -1)
        attn_g = torch.cat([torch.einsum("nphe,hed->nphd", g["q_proj"][layer].view(n, p, H, dh), wq),
                            torch.einsum("nphe,hed->nphd", g["k_proj"][layer].view(n, p, KV, dh), wk),
                            torch.einsum("nphe,hed->nphd", g["v_proj"][layer].view(n, p, KV, dh), wv)], dim=2)
        receivers.append(_norm_vjp(parts.attn_norm(layer), t["pre"][layer], attn_g))
        receivers.append(_norm_vjp(parts.mlp_norm(layer), t["mid"][layer], g["mlp_in"][layer].unsqueeze(2)))
    receivers.append(grads[-1].unsqueeze(2))
    gz = [x.view(*x.shape[:2], H, dh) for x in g["z"]]
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
    facts = parts.facts
    senders, s_order, receivers, r_order = graph_names(facts)
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
