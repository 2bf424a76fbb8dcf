"""Layout of circuit graphs (pure: no plotting library), shared by the dashboard and the report.

The embeddings on the left, each layer a column (its heads in head order, its MLP just
right of them), the logits on the right; nodes of one column are spread evenly over the
height of the tallest column. An edge into a KV head's key or value input (GQA) is drawn
to every query head of that KV group.
"""

from __future__ import annotations

from formats import Circuit, Node, NodeKind

MAX_EDGES_DRAWN = 400
KIND_COLORS = {NodeKind.EMBED: "#9ecae1", NodeKind.HEAD: "#fdae6b", NodeKind.MLP: "#a1d99b", NodeKind.LOGITS: "#bcbddc"}


def circuit_layout(circuit: Circuit) -> tuple[dict[Node, tuple[float, float]], list[tuple[Node, Node, float, str]]]:
    """``(positions, edges)``: each node's ``(x, y)``, and every drawn edge as ``(sender, node,
    score, receiver label)`` (a KV receiver gives one edge per query head of its group)."""
    n_layers = circuit.n_layers or 1 + max([n.layer for n in circuit.nodes] + [e.receiver.layer for e in circuit.edges]
                                           + [0])
    drawn = []
    nodes = set(circuit.nodes)
    for e in circuit.edges:
        for target in e.receiver.nodes(max(1, circuit.group_size)):
            drawn.append((e.sender, target, e.score, str(e.receiver)))
            nodes.update((e.sender, target))

    def column(n: Node) -> float:
        if n.kind is NodeKind.EMBED:
            return -1.0
        if n.kind is NodeKind.LOGITS:
            return float(n_layers)
        return n.layer + (0.45 if n.kind is NodeKind.MLP else 0.0)

    cols: dict[float, list[Node]] = {}
    for n in sorted(nodes, key=lambda n: (column(n), n.head)):
        cols.setdefault(column(n), []).append(n)
    tallest = max((len(v) for k, v in cols.items() if k % 1 == 0), default=1)
    pos = {}
    for x, members in cols.items():
        k = len(members)
        if members[0].kind is NodeKind.MLP:  # below the heads, off the line the logits edges run along
            pos[members[0]] = (x, -(tallest - 1) / 2 - 1.0)
            continue
        for i, n in enumerate(members):
            pos[n] = (x, (i - (k - 1) / 2) * max(1.0, tallest / max(k, 1)) if k > 1 else 0.0)
    return pos, drawn


def node_label(n: Node) -> str:
    return str(n)
