"""Layout of circuit graphs (pure: no plotting library), shared by the dashboard and the report.

A layered layout: x is the layer (the embeddings left of layer 0, the logits right of the
last layer), y is the head index, so a node's place says which head it is; the MLPs of all
layers share one lane below the heads, and the embeddings and logits sit mid-height.

Edges are de-duplicated: a sender's edges into one head's query, key and value inputs are
one drawn edge carrying the letters (``"qv"``) and each part's score. An edge into a KV
head's key or value input (GQA: the query heads of a KV head share it) is drawn to the
group's query heads that are in the circuit (the first of the group when none is), not to
every head of the group. Node scores are the summed score of the edges a node sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnlens.formats import Circuit, Curves, Input, Node, NodeKind

MAX_EDGES_DRAWN = 400
KIND_COLORS = {NodeKind.EMBED: "#9ecae1", NodeKind.HEAD: "#fdae6b", NodeKind.MLP: "#a1d99b", NodeKind.LOGITS: "#bcbddc"}
KIND_NAMES = {NodeKind.EMBED: "embeddings", NodeKind.HEAD: "attention head", NodeKind.MLP: "MLP",
              NodeKind.LOGITS: "logits"}
POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # edge colours: helps / works against the metric
MLP_LANE = -1.5  # y of the MLP lane, below head 0


@dataclass
class DrawnEdge:
    """One sender-to-node edge as drawn: ``score`` is the part with the largest ``|score|``,
    ``parts`` every receiver input it merges (``{"q": 0.3, "k": -0.1}``; ``{}`` for an MLP's or
    the logits' input)."""

    sender: Node
    target: Node
    score: float
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def letters(self) -> str:
        return "".join(k for k in "qkv" if k in self.parts)

    def describe(self) -> str:
        inputs = ", ".join(f"{k} {v:+.3g}" for k, v in self.parts.items())
        return f"{self.sender} → {self.target}" + (f" ({inputs})" if inputs else f": {self.score:+.3g}")


def drawn_edges(circuit: Circuit) -> list[DrawnEdge]:
    """The circuit's edges as drawn (see the module docstring), strongest ``|score|`` first."""
    in_circuit = {Node(NodeKind.HEAD, la, h) for la, h in circuit.heads}
    merged: dict[tuple[Node, Node], DrawnEdge] = {}
    for e in circuit.edges:
        targets = e.receiver.nodes(max(1, circuit.group_size))
        if e.receiver.input in (Input.K, Input.V):
            targets = [t for t in targets if t in in_circuit] or targets[:1]
        letter = e.receiver.input.value if e.receiver.input in (Input.Q, Input.K, Input.V) else ""
        for t in targets:
            d = merged.setdefault((e.sender, t), DrawnEdge(e.sender, t, 0.0))
            if letter:
                d.parts[letter] = d.parts.get(letter, 0.0) + e.score
                d.score = max(d.parts.values(), key=abs)
            else:
                d.score += e.score
    return sorted(merged.values(), key=lambda d: -abs(d.score))


def node_scores(edges: list[DrawnEdge]) -> dict[Node, float]:
    """Each sender's summed (signed) edge score; receivers that send nothing get 0."""
    out: dict[Node, float] = {}
    for d in edges:
        out[d.sender] = out.get(d.sender, 0.0) + d.score
        out.setdefault(d.target, 0.0)
    return out


def n_layers_of(circuit: Circuit) -> int:
    return circuit.n_layers or 1 + max([n.layer for n in circuit.nodes] + [e.receiver.layer for e in circuit.edges]
                                       + [0])


def circuit_layout(circuit: Circuit, edges: list[DrawnEdge] | None = None) -> tuple[dict[Node, tuple[float, float]],
                                                                                     list[DrawnEdge]]:
    """``(positions, edges)``: each node's ``(x, y)`` (x the layer, y the head index, see the
    module docstring) and the drawn edges (:func:`drawn_edges` unless given)."""
    edges = drawn_edges(circuit) if edges is None else edges
    n_layers = n_layers_of(circuit)
    nodes = set(circuit.nodes)
    for d in edges:
        nodes.update((d.sender, d.target))
    top = max([n.head for n in nodes if n.kind is NodeKind.HEAD] + [circuit.n_heads - 1, 0])
    mid = top / 2
    pos = {}
    for n in nodes:
        if n.kind is NodeKind.EMBED:
            pos[n] = (-1.0, mid)
        elif n.kind is NodeKind.LOGITS:
            pos[n] = (float(n_layers), mid)
        elif n.kind is NodeKind.MLP:
            pos[n] = (n.layer + 0.3, MLP_LANE)
        else:
            pos[n] = (float(n.layer), float(n.head))
    return pos, edges


def head_table(circuit: Circuit, edges: list[DrawnEdge] | None = None) -> list[tuple[Node, float, int, int]]:
    """The circuit's heads and MLPs as ``(node, score, edges in, edges out)``, sorted by ``|score|``."""
    edges = drawn_edges(circuit) if edges is None else edges
    scores = node_scores(edges)
    n_in: dict[Node, int] = {}
    n_out: dict[Node, int] = {}
    for d in edges:
        n_out[d.sender] = n_out.get(d.sender, 0) + 1
        n_in[d.target] = n_in.get(d.target, 0) + 1
    members = {n for n in circuit.nodes if n.kind in (NodeKind.HEAD, NodeKind.MLP)}
    members |= {n for n in scores if n.kind in (NodeKind.HEAD, NodeKind.MLP)}
    rows = [(n, scores.get(n, 0.0), n_in.get(n, 0), n_out.get(n, 0)) for n in members]
    return sorted(rows, key=lambda r: (-abs(r[1]), r[0]))


def curves_of(circuit_label: str, curves: dict[str, Curves]) -> list[Curves]:
    """The faithfulness curves written next to a circuit (same folder, ``circuit.*faithfulness*``)."""
    folder = circuit_label.rsplit("/", 1)[0] if "/" in circuit_label else ""
    return [c for label, c in curves.items() if (label.rsplit("/", 1)[0] if "/" in label else "") == folder
            and c.analysis == "circuit"]


def node_label(n: Node) -> str:
    return str(n)
