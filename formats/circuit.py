"""Circuits on disk: ``NAME.circuit.json``, the nodes and scored edges a circuit search kept,
with its faithfulness and settings (written by ``lens circuit``, read by the dashboards and
reports).

Nodes and receivers are small typed ids, never strings parsed back: a :class:`Node` is the
embeddings, one attention head, one MLP or the logits; a :class:`Receiver` is what reads
the residual stream: a query head's query input, a KV head's key or value input (GQA: the
query heads of a KV head share it), an MLP's input, or the logits.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlens.formats import _json
from attnlens.formats.errors import CorruptFileError, ResultError
from attnlens.formats.provenance import Provenance
from attnlens.formats.sites import HeadRef, MlpRef

KIND = "circuit"
FORMAT_VERSION = 2
SUFFIX = ".circuit.json"
MAX_EDGES = 200_000
FAITHFUL = 0.8  # below this faithfulness a circuit gets a warning (the curves' default threshold too)


class NodeKind(str, enum.Enum):
    EMBED = "embed"
    HEAD = "head"
    MLP = "mlp"
    LOGITS = "logits"


@dataclass(frozen=True, order=True)
class Node:
    """A component whose output feeds the residual stream (or the logits, which read it)."""

    kind: NodeKind
    layer: int = -1
    head: int = -1

    def __str__(self) -> str:
        if self.kind is NodeKind.HEAD:
            return f"L{self.layer}H{self.head}"
        if self.kind is NodeKind.MLP:
            return f"L{self.layer}.mlp"
        return self.kind.value

    @classmethod
    def of(cls, component: HeadRef | MlpRef) -> Node:
        """The node of a head or an MLP."""
        if isinstance(component, HeadRef):
            return cls(NodeKind.HEAD, component.layer, component.head)
        if isinstance(component, MlpRef):
            return cls(NodeKind.MLP, component.layer)
        raise ResultError(f"a node is made of a HeadRef or an MlpRef, got {component!r}"[:200])

    @property
    def component(self) -> HeadRef | MlpRef | None:
        """The head (:class:`HeadRef`) or MLP (:class:`MlpRef`) this node is; None for embeddings and logits."""
        if self.kind is NodeKind.HEAD:
            return HeadRef(self.layer, self.head)
        if self.kind is NodeKind.MLP:
            return MlpRef(self.layer)
        return None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "layer": self.layer, "head": self.head}

    @classmethod
    def from_json(cls, d: Any, where: str) -> Node:
        try:
            return cls(NodeKind(d["kind"]), int(d.get("layer", -1)), int(d.get("head", -1)))
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{where}: a node must be {{kind, layer, head}}, got {d!r}"[:200]) from None


class Input(str, enum.Enum):
    Q = "q"
    K = "k"
    V = "v"
    MLP = "mlp"
    LOGITS = "logits"


@dataclass(frozen=True, order=True)
class Receiver:
    """What reads the residual stream: ``index`` is the query head (Q) or the KV head (K, V)."""

    input: Input
    layer: int = -1
    index: int = -1

    def __str__(self) -> str:
        if self.input is Input.Q:
            return f"L{self.layer}H{self.index}.q"
        if self.input in (Input.K, Input.V):
            return f"L{self.layer}KV{self.index}.{self.input.value}"
        if self.input is Input.MLP:
            return f"L{self.layer}.mlp"
        return "logits"

    def nodes(self, group_size: int) -> list[Node]:
        """The nodes whose input this is (a KV head's: every query head of its group)."""
        if self.input is Input.Q:
            return [Node.of(HeadRef(self.layer, self.index))]
        if self.input in (Input.K, Input.V):
            return [Node.of(HeadRef(self.layer, h)) for h in range(self.index * group_size,
                                                                   (self.index + 1) * group_size)]
        if self.input is Input.MLP:
            return [Node.of(MlpRef(self.layer))]
        return [Node(NodeKind.LOGITS)]

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input.value, "layer": self.layer, "index": self.index}

    @classmethod
    def from_json(cls, d: Any, where: str) -> Receiver:
        try:
            return cls(Input(d["input"]), int(d.get("layer", -1)), int(d.get("index", -1)))
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{where}: a receiver must be {{input, layer, index}}, got {d!r}"[:200]) from None


@dataclass(frozen=True)
class Edge:
    sender: Node
    receiver: Receiver
    score: float

    def __str__(self) -> str:
        return f"{self.sender} -> {self.receiver}: {self.score:.4g}"


@dataclass
class Circuit:
    """The nodes and edges of a circuit, and how well it reproduces the task.

    ``heads`` and ``mlps`` are the components kept (for an edge circuit: those on a path of
    kept edges to the logits); ``edges`` the kept edges (empty for a node-only circuit);
    ``faithfulness`` the metric of the full model, of the circuit and of the empty circuit and
    their ratios; ``details`` further measured numbers (timings, comparisons, overlap).
    """

    heads: list[tuple[int, int]]
    mlps: list[int]
    edges: list[Edge] = field(default_factory=list)
    name: str = "circuit"
    task: str = ""
    method: str = ""
    metric: str = ""
    n_layers: int = 0
    n_heads: int = 0
    group_size: int = 1
    faithfulness: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance | None = None
    description: str = ""

    @property
    def head_refs(self) -> list[HeadRef]:
        """The kept heads as :class:`HeadRef` (``heads`` holds them as ``(layer, head)`` pairs, as on disk)."""
        return [HeadRef(la, h) for la, h in sorted(self.heads)]

    @property
    def mlp_refs(self) -> list[MlpRef]:
        return [MlpRef(la) for la in sorted(self.mlps)]

    @property
    def nodes(self) -> list[Node]:
        """Every node of the circuit: embeddings, kept heads and MLPs, logits."""
        return ([Node(NodeKind.EMBED)] + [Node.of(c) for c in (*self.head_refs, *self.mlp_refs)]
                + [Node(NodeKind.LOGITS)])

    def __repr__(self) -> str:
        f = self.faithfulness.get("faithfulness")
        return (f"Circuit({self.name}: {self.task} by {self.method}, {len(self.heads)} heads, {len(self.mlps)} MLPs, "
                f"{len(self.edges)} edges" + (f", faithfulness {f:.2f}" if isinstance(f, float) else "") + ")")

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "format_version": FORMAT_VERSION, "name": self.name, "task": self.task,
                "method": self.method, "metric": self.metric, "description": self.description,
                "n_layers": self.n_layers, "n_heads": self.n_heads, "group_size": self.group_size,
                "heads": [list(h) for h in sorted(self.heads)], "mlps": sorted(self.mlps),
                "edges": [{"sender": e.sender.to_json(), "receiver": e.receiver.to_json(), "score": e.score}
                          for e in self.edges],
                "faithfulness": self.faithfulness, "details": self.details, "params": self.params,
                "provenance": None if self.provenance is None else self.provenance.to_json()}

    def save(self, folder: str | Path) -> Path:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ResultError(f"circuit name must be a plain file name, got {self.name!r}")
        return _json.write_json(Path(folder) / f"{self.name}{SUFFIX}", self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        path = Path(path)
        try:
            doc = _json.read_doc(path, kind=KIND, versions=(FORMAT_VERSION,), what="circuit file")
            where = str(path)
            heads = _json.need(doc, "heads", list, path)
            if not all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) for x in h) for h in heads):
                raise CorruptFileError(f"{path}: heads must be [layer, head] pairs")
            mlps = _json.int_list(_json.need(doc, "mlps", list, path), path, "mlps")
            raw = _json.need(doc, "edges", list, path)
            if len(raw) > MAX_EDGES:
                raise CorruptFileError(f"{path}: {len(raw)} edges, at most {MAX_EDGES}")
            edges = []
            for e in raw:
                if not isinstance(e, dict) or not isinstance(e.get("score"), (int, float)):
                    raise CorruptFileError(f"{path}: an edge must be {{sender, receiver, score}}")
                edges.append(Edge(Node.from_json(e.get("sender"), where), Receiver.from_json(e.get("receiver"), where),
                                  float(e["score"])))
            dicts = {}
            for key in ("faithfulness", "details", "params"):
                v = doc.get(key) or {}
                if not isinstance(v, dict):
                    raise CorruptFileError(f"{path}: {key} must be an object")
                dicts[key] = v
            ints = {}
            for key in ("n_layers", "n_heads", "group_size"):
                v = doc.get(key, 0)
                if not isinstance(v, int) or not 0 <= v <= 100_000:
                    raise CorruptFileError(f"{path}: {key} must be an integer")
                ints[key] = v
            prov = doc.get("provenance")
            return cls(heads=[(int(a), int(b)) for a, b in heads], mlps=mlps, edges=edges,
                       name=str(doc.get("name") or path.name.removesuffix(SUFFIX)), task=str(doc.get("task", "")),
                       method=str(doc.get("method", "")), metric=str(doc.get("metric", "")),
                       description=str(doc.get("description") or ""), **ints, **dicts,
                       provenance=None if prov is None else Provenance.from_json(prov, where))
        except ResultError:
            raise
        except CorruptFileError as err:
            raise ResultError(str(err)) from None


def faithfulness_warning(circuit: Circuit, curves: Iterable[Any] = ()) -> str:
    """One line saying that ``circuit`` reproduces less than :data:`FAITHFUL` of the task's
    metric ("" when it reproduces enough or was not measured), with the smallest size that
    reaches it when faithfulness curves (:class:`formats.Curves` of ``lens circuit --curve``)
    of the same kind (edges for an edge circuit, heads otherwise) and method were run."""
    f = circuit.faithfulness.get("faithfulness")
    if not isinstance(f, (int, float)) or isinstance(f, bool) or f != f or f >= FAITHFUL:
        return ""
    unit = "edges" if circuit.edges else "heads"
    size = circuit.faithfulness.get(f"n_{unit}", len(circuit.edges) if circuit.edges else len(circuit.heads))
    line = (f"low faithfulness: this {size}-{unit[:-1]} circuit reproduces {f:.2f} of the full model's "
            f"{circuit.metric or 'metric'} (under {FAITHFUL})")
    for c in curves:
        reach = (getattr(c, "summary", None) or {}).get("smallest_reaching")
        if f"({unit})" not in getattr(c, "x_label", "") or not isinstance(reach, dict):
            continue
        mine = [v for k, v in reach.items() if str(k).lower() == circuit.method.lower()] or list(reach.values())[:1]
        if not mine:
            continue
        sizes = [int(x) for x in getattr(c, "x", [])]
        threshold = c.summary.get("threshold", FAITHFUL)
        if mine[0] is None:
            line += (f"; no size on the {circuit.method or 'method'} curve reaches {threshold} "
                     f"(largest tried: {max(sizes) if sizes else '?'} {unit})")
        else:
            line += f"; the smallest {circuit.method or ''} circuit reaching {threshold} has {int(mine[0])} {unit}"
        break
    return line
