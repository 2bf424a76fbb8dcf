"""Circuit evaluation as the papers do it: what is ablated outside a circuit, with what, and where.

A setting (:class:`EvalSetting`) makes four choices, all recorded in a result's params:

- ``level``: ``NODE`` replaces the output of every component outside the circuit (Wang et
  al. 2022); ``EDGE`` replaces every *edge* outside the circuit (Hanna et al. 2024): each
  receiver (a query head's query input, a KV head's key or value input, an MLP's input, the
  logits) reads its own residual stream, in which the senders whose edge to it is not in the
  circuit contribute their reference output instead of their output in this run. In the
  residual stream ``x = embed + sum of every earlier head's and MLP's output``, so a receiver's
  input is

      x_r = x_ref + sum over kept senders s of (s_this_run - s_ref)

  (the same as ``x_this_run - sum over ablated senders of (s_this_run - s_ref)``), and its
  query, key or value is recomputed from ``norm(x_r)`` with its own rows of the projection,
  as path patching does. Node level is the special case where every edge out of a circuit
  node is kept.
- ``replacement``: ``CORRUPTED``, the sender's output on the paired corrupted prompt (Hanna
  et al.), or ``MEAN``, its per-position mean over the corrupted prompts (Wang et al.'s ABC
  mean).
- ``ablated``: ``HEADS`` (Wang et al.: MLPs and embeddings are never ablated, as if in every
  circuit) or ``HEADS_AND_MLPS`` (Hanna et al.: every node outside the circuit, embeddings too).
- ``mean_over``: for ``MEAN``, per template (position class) or per encoded batch.

The published settings are :data:`HANNA_2024` (edge circuits: EAP, EAP-IG) and
:data:`WANG_2022` (head circuits: per-head patching); :func:`published_setting` picks the
one that matches a circuit. Faithfulness is the circuit's metric over the full model's;
the normalized form is ``(circuit - empty) / (full - empty)``, "empty" being the setting's
circuit with nothing in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attnlens.analyses.circuits._hooks import CircuitModules
from attnlens.analyses.circuits.ablation import (
    Context,
    MeanOver,
    Method,
    all_heads,
    prepare,
    score_sets,
)
from attnlens.analyses.circuits.eap import graph_names
from attnlens.analyses.circuits.metrics import Metric, per_row
from attnlens.analyses.circuits.tasks import EncodedTask, TaskError
from attnlens.formats.circuit import Circuit, Input, Node, NodeKind
from attnlens.formats.vocab import Ablated, Level, Replacement
from lens.heads import MlpRef
from lens.hooks import Point, Where


@dataclass(frozen=True)
class EvalSetting:
    """What is ablated outside a circuit, with what, at which level (see the module docstring)."""

    level: Level = Level.EDGE
    replacement: Replacement = Replacement.CORRUPTED
    ablated: Ablated = Ablated.HEADS_AND_MLPS
    mean_over: MeanOver = MeanOver.TEMPLATE  # for Replacement.MEAN only
    name: str = "custom"

    def __post_init__(self) -> None:
        for attr, kind in (("level", Level), ("replacement", Replacement), ("ablated", Ablated),
                           ("mean_over", MeanOver)):
            value = getattr(self, attr)
            try:
                object.__setattr__(self, attr, kind(value))
            except ValueError:
                raise TaskError(f"{attr} must be one of {', '.join(k.value for k in kind)}, got {value!r}") from None

    @property
    def method(self) -> Method:
        return Method.PATCH if self.replacement is Replacement.CORRUPTED else Method.MEAN

    def params(self) -> dict:
        """The choices, for a result's params."""
        out = {"setting": self.name, "level": self.level.value, "replacement": self.replacement.value,
               "ablated": self.ablated.value}
        if self.replacement is Replacement.MEAN:
            out["mean_over"] = self.mean_over.value
        if self.name in PAPERS:
            out["paper"] = PAPERS[self.name]
        return out


HANNA_2024 = EvalSetting(Level.EDGE, Replacement.CORRUPTED, Ablated.HEADS_AND_MLPS, name="hanna2024")
WANG_2022 = EvalSetting(Level.NODE, Replacement.MEAN, Ablated.HEADS, MeanOver.TEMPLATE, name="wang2022")
PAPERS = {"hanna2024": "Hanna et al. 2024 (EAP-IG): every edge outside the circuit gets its corrupted activation",
          "wang2022": "Wang et al. 2022 (IOI): heads outside the circuit mean-ablated over ABC prompts per template; "
                      "MLPs kept"}


def published_setting(circuit: Circuit) -> EvalSetting:
    """Hanna et al.'s setting for an edge circuit, Wang et al.'s for a node-only (head) circuit."""
    return HANNA_2024 if circuit.edges else WANG_2022


# ---- which edges a circuit keeps ------------------------------------------------------------
@dataclass(frozen=True)
class Graph:
    """Index tables of the EAP graph of one model (:func:`analyses.circuits.eap.graph_names`)."""

    senders: list[Node]
    receivers: list
    valid: np.ndarray  # [sender, receiver] bool: the edge exists (sender before receiver)

    @classmethod
    def of(cls, facts) -> Graph:
        s, so, r, ro = graph_names(facts)
        return cls(s, r, so[:, None] < ro[None, :])

    def sender_index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.senders)}

    def receiver_index(self) -> dict:
        return {n: i for i, n in enumerate(self.receivers)}


def kept_edges(circuit: Circuit, graph: Graph, ablated: Ablated) -> np.ndarray:
    """``[sender, receiver]`` bool: the edges that keep this run's activation.

    An edge circuit keeps its edges; a node circuit keeps every edge out of its nodes and
    the embeddings. With ``Ablated.HEADS`` every edge out of an MLP or the embeddings is kept.
    """
    kept = np.zeros(graph.valid.shape, dtype=bool)
    s_idx = graph.sender_index()
    if circuit.edges:
        r_idx = graph.receiver_index()
        for e in circuit.edges:
            if e.sender not in s_idx or e.receiver not in r_idx:
                raise TaskError(f"edge {e} is not in this model's graph")
            kept[s_idx[e.sender], r_idx[e.receiver]] = True
    else:
        rows = [Node(NodeKind.EMBED)] + [Node.of(c) for c in (*circuit.head_refs, *circuit.mlp_refs)]
        for n in rows:
            if n not in s_idx:
                raise TaskError(f"node {n} is not in this model's graph")
            kept[s_idx[n]] = True
    if Ablated(ablated) is Ablated.HEADS:
        for i, n in enumerate(graph.senders):
            if n.kind in (NodeKind.EMBED, NodeKind.MLP):
                kept[i] = True
    return kept & graph.valid


# ---- edge-level forward ---------------------------------------------------------------------
class _EdgeRun:
    """Hooks for one forward of ``G`` groups x ``N`` prompts, group ``g`` keeping ``masks[g]``.

    ``ref`` holds the reference activations (a batch axis of ``N`` for corrupted prompts, of 1
    for a mean). Each sender's delta (this run minus reference) is written into one table
    ``[G, sender, N, pos, d_model]`` as it is computed; a receiver layer's inputs are then one
    batched product of its mask columns with the table's rows so far, plus the reference
    residual.
    """

    def __init__(self, parts: CircuitModules, ref, masks: Tensor):
        f = parts.facts
        self.parts, self.ref, self.G = parts, ref, masks.shape[0]
        self.L, self.H, self.KV, self.dh = f.n_layers, f.n_heads, f.n_kv_heads, f.d_head
        self.masks = masks.float()  # [G, S, R]
        self.w_o = [parts.w_o(la).float() for la in range(self.L)]  # [H, D, dh]
        self.ref_heads = [torch.einsum("nphe,hde->hnpd", ref.z[la].float(), self.w_o[la]) for la in range(self.L)]
        self.deltas: Tensor | None = None  # [G, S, N, P, D]
        self.stash: dict[str, Tensor] = {}

    # sender and receiver positions in graph_names' order
    def _head_start(self, layer: int) -> int:
        return 1 + layer * (self.H + 1)

    def _recv(self, layer: int) -> int:
        return layer * (self.H + 2 * self.KV + 1)

    def _gather(self, base: Tensor, cols: Tensor, n_senders: int, last_only: bool = False) -> Tensor:
        """``base [n, P, D]`` plus the first ``n_senders`` senders' deltas weighted by ``cols
        [G, S, R]``: ``[G, R, N, P, D]`` (P = 1 with ``last_only``)."""
        d = self.deltas[:, :n_senders]
        if last_only:
            d = d[:, :, :, -1:]
            base = base[:, -1:]
        g, s, n, p, dm = d.shape
        mixed = torch.bmm(cols[:, :n_senders].transpose(1, 2), d.reshape(g, s, -1))  # [G, R, N*P*D]
        return mixed.view(g, -1, n, p, dm) + base.float()

    def _split(self, t: Tensor) -> Tensor:
        return t.view(self.G, -1, *t.shape[1:])

    @contextmanager
    def hooks(self):
        p = self.parts
        H, KV, dh = self.H, self.KV, self.dh
        n_senders = 1 + self.L * (H + 1)

        def embed_hook(out):
            e = self._split(out.float())  # [G, N, P, D]
            self.deltas = torch.zeros(self.G, n_senders, *e.shape[1:], dtype=torch.float32, device=e.device)
            self.deltas[:, 0] = e - self.ref.embed.float()
        points = [(Point(Where.EMBED), embed_hook)]
        for layer in range(self.L):
            def attn_norm_hook(out, layer=layer):
                r0 = self._recv(layer)
                x = self._gather(self.ref.resid_pre[layer], self.masks[:, :, r0:r0 + H + 2 * KV],
                                 self._head_start(layer))  # [G, R, N, P, D]
                nx = p.attn_norm(layer).forward(x)
                g, _, n, pos, _ = nx.shape

                def project(proj, idx: slice, k: int, name: str):
                    w = proj.weight.float().view(k, dh, -1)
                    y = torch.einsum("ghnpd,hed->gnphe", nx[:, idx], w).reshape(g * n, pos, k * dh)
                    self.stash[f"{name}{layer}"] = y if proj.bias is None else y + proj.bias.float()
                project(p.q_projection(layer), slice(0, H), H, "q_projection")
                project(p.k_projection(layer), slice(H, H + KV), KV, "k_projection")
                project(p.v_projection(layer), slice(H + KV, H + 2 * KV), KV, "v_projection")
            points.append((Point(Where.ATTN_NORMED, layer), attn_norm_hook))
            for where, name in ((Where.Q, "q_projection"), (Where.K, "k_projection"), (Where.V, "v_projection")):
                def proj_hook(out, key=f"{name}{layer}"):
                    return self.stash.pop(key).to(out.dtype)
                points.append((Point(where, layer), proj_hook))

            def z_hook(z, layer=layer):  # [G * N, P, head, d_head]
                z = self._split(z.float())
                start = self._head_start(layer)
                self.deltas[:, start:start + H] = (torch.einsum("gnphe,hde->ghnpd", z, self.w_o[layer])
                                                   - self.ref_heads[layer])
            points.append((Point(Where.Z, layer), z_hook))

            def mlp_norm_hook(out, layer=layer):
                col = self.masks[:, :, self._recv(layer) + H + 2 * KV].unsqueeze(-1)
                x = self._gather(self.ref.resid_mid[layer], col, self._head_start(layer) + H)[:, 0]
                return p.mlp_norm(layer).forward(x).reshape(out.shape).to(out.dtype)
            points.append((Point(Where.MLP_NORMED, layer), mlp_norm_hook))

            def mlp_hook(out, layer=layer):
                self.deltas[:, self._head_start(layer) + H] = self._split(out.float()) - self.ref.mlp[layer].float()
            points.append((Point(Where.MLP_OUT, layer), mlp_hook))

        def final_hook(x_in):
            x = self._gather(self.ref.final, self.masks[:, :, -1:], n_senders, last_only=True)[:, 0]  # [G, N, 1, D]
            out = x_in.clone()
            out[:, -1:] = x.reshape(-1, 1, x.shape[-1]).to(out.dtype)
            return out
        points.append((Point(Where.FINAL), final_hook))
        try:
            with p.hooked(points):
                yield
        finally:
            self.stash.clear()
            self.deltas = None


def edge_level_logits(ctx: Context, batch: int, masks: np.ndarray | Tensor, *, max_rows: int = 32
                      ) -> torch.Tensor:
    """Last-position logits ``[G, N, vocab]`` of task batch ``batch`` with each group's kept
    edges ``masks [G, sender, receiver]`` (references from ``ctx``, prepared with residuals)."""
    ref = ctx.refs[batch]
    if ref is None or ref.resid_pre is None:
        raise TaskError("edge-level evaluation needs reference residuals: prepare(..., residuals=True) with "
                        "method patch or mean")
    if ctx.parts.adapter.parallel:
        raise TaskError(f"edge-level evaluation cannot run on {ctx.parts.facts.architecture}: its blocks run attention "
                        "and MLP side by side, and edge patching has each MLP read its layer's heads (evaluate "
                        "the circuit's nodes instead)")
    masks = torch.as_tensor(np.asarray(masks), dtype=torch.bool)
    b = ctx.enc.batches[batch]
    n = b.size
    per_chunk = max(1, max_rows // n)
    dev = ctx.parts.lm.device
    out = []
    with torch.no_grad():
        for s in range(0, masks.shape[0], per_chunk):
            chunk = masks[s:s + per_chunk].to(dev)
            run = _EdgeRun(ctx.parts, _on(ref, dev), chunk)
            with run.hooks():
                logits = ctx.parts.lm.model(input_ids=b.clean.repeat(chunk.shape[0], 1).to(dev),
                                            logits_to_keep=1).logits[:, -1]
            out.append(logits.float().view(chunk.shape[0], n, -1).cpu())
    return torch.cat(out)


def _on(ref, device):
    if device is None or str(device) == "cpu":
        return ref
    from attnlens.analyses.circuits._hooks import Acts

    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    mvl = lambda ts: None if ts is None else [t.to(device) for t in ts]  # noqa: E731
    return Acts(mvl(ref.z), mvl(ref.mlp), mv(ref.embed), ref.logits, mvl(ref.resid_pre), mvl(ref.resid_mid),
                mv(ref.final))


# ---- faithfulness ---------------------------------------------------------------------------
def prepare_setting(lm, enc: EncodedTask, metric: Metric | str, setting: EvalSetting) -> Context:
    """The reference runs a setting needs."""
    return prepare(lm, enc, setting.method, metric, mean_over=setting.mean_over,
                   residuals=setting.level is Level.EDGE)


def circuit_metrics(ctx: Context, circuits: Sequence[Circuit], setting: EvalSetting, *,
                    max_rows: int = 32) -> np.ndarray:
    """The task metric (mean over examples) of each circuit under ``setting``, ``[len(circuits)]``."""
    facts = ctx.parts.facts
    if setting.level is Level.NODE:
        sets = [_outside_nodes(c, facts, setting.ablated) for c in circuits]
        return score_sets(ctx, sets, max_rows=max_rows)
    graph = Graph.of(facts)
    masks = np.stack([kept_edges(c, graph, setting.ablated) for c in circuits])
    total = torch.zeros(len(circuits), dtype=torch.float64)
    for i, b in enumerate(ctx.enc.batches):
        logits = edge_level_logits(ctx, i, masks, max_rows=max_rows)
        for g in range(len(circuits)):
            total[g] += per_row(ctx.metric, logits[g], b.answer, b.distractor).double().sum()
    return (total / ctx.n_examples).numpy()


def _outside_nodes(circuit: Circuit, facts, ablated: Ablated) -> list:
    inside = set(circuit.head_refs)
    out: list = [h for h in all_heads(facts) if h not in inside]
    if ablated is Ablated.HEADS_AND_MLPS:
        out += [MlpRef(la) for la in range(facts.n_layers) if la not in circuit.mlps]
    return out


def empty_circuit(facts) -> Circuit:
    """A circuit with no heads, MLPs or edges (what the setting ablates, all ablated)."""
    return Circuit([], [], n_layers=facts.n_layers, n_heads=facts.n_heads, group_size=facts.group_size)


def faithfulness_of(ctx: Context, circuits: Sequence[Circuit], setting: EvalSetting, *,
                    max_rows: int = 32) -> list[dict]:
    """Full, circuit and empty metrics of each circuit and their ratios, with the setting's choices."""
    facts = ctx.parts.facts
    values = circuit_metrics(ctx, [*circuits, empty_circuit(facts)], setting, max_rows=max_rows)
    full, empty = ctx.baseline, float(values[-1])
    out = []
    for c, v in zip(circuits, values[:-1]):
        v = float(v)
        out.append({"full": full, "circuit": v, "empty": empty, "corrupted": ctx.corrupted_baseline,
                    "faithfulness": v / full if full else float("nan"),
                    "normalized_faithfulness": (v - empty) / (full - empty) if full != empty else float("nan"),
                    "n_heads": len(c.heads), "n_mlps": len(c.mlps), "n_edges": len(c.edges),
                    "n_examples": ctx.n_examples, **setting.params()})
    return out


def edge_receiver_count(facts) -> dict:
    """How the EAP graph of ``facts`` adds up (for docs and checks)."""
    g = Graph.of(facts)
    kinds: dict[str, int] = {}
    for r in g.receivers:
        kinds[r.input.value] = kinds.get(r.input.value, 0) + 1
    return {"senders": len(g.senders), "receivers": len(g.receivers), "edges": int(g.valid.sum()),
            "receivers_by_input": kinds, "logits_inputs": int(g.valid[:, [Input.LOGITS == r.input
                                                                           for r in g.receivers]].sum())}
