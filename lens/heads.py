"""Typed head selections: ``"L3H4,L5H*"`` -> ``[HeadRef(3, 4), HeadRef(5, 0), ...]``.

Grammar (case-insensitive, spaces ignored, comma-separated items)::

    item  := "L" range "H" range | "all" | "*"
    range := INT | INT "-" INT | "*"

``L5H*`` is every head of layer 5, ``L*H0`` head 0 of every layer, ``L2-4H0-1`` a block.
Every problem raises :class:`HeadSpecError` naming the item, the valid range and what came;
nothing else escapes (the parser is fuzzed).
"""

from __future__ import annotations

import re

from attnlens.formats.sites import Component, HeadRef, MlpRef, ResidRef  # noqa: F401  (the one head identity)
from lens.errors import SelectionError

_ITEM = re.compile(r"^l(\*|\d+(?:-\d+)?)h(\*|\d+(?:-\d+)?)$")
_MAX_DIGITS = 6  # anything longer is out of range for every model; keeps int() cheap


class HeadSpecError(SelectionError):
    """A head selection string that does not parse or names heads the model lacks."""


def parse_head_spec(text: str, facts) -> list[HeadRef]:
    """The heads ``text`` names, sorted and without duplicates, checked against ``facts``.

    ``facts`` needs ``n_layers``, ``n_heads`` and ``name`` (a :class:`lens.ModelFacts`).
    """
    if not isinstance(text, str) or not text.strip():
        raise HeadSpecError("`heads` is empty: give heads like 'L3H4,L5H*' (or 'all')")
    out: set[HeadRef] = set()
    for raw in text.split(","):
        item = "".join(raw.split()).lower()
        if not item:
            continue
        if item in ("all", "*"):
            item = "l*h*"
        m = _ITEM.match(item)
        if m is None:
            raise HeadSpecError(f"head item {raw.strip()!r} is not like L3H4, L5H*, L*H2 or L2-4H0-1")
        layers = _range(m.group(1), facts.n_layers, "layer", raw, facts.name)
        heads = _range(m.group(2), facts.n_heads, "head", raw, facts.name)
        out.update(HeadRef(layer, head) for layer in layers for head in heads)
    if not out:
        raise HeadSpecError(f"`heads` {text!r} names no heads: give heads like 'L3H4,L5H*'")
    return sorted(out)


def parse_layer_list(text: str, facts, what: str = "mlps") -> list[int]:
    """``"3,5-7"``, ``"*"`` or ``"all"`` -> layer indices checked against ``facts``."""
    if not isinstance(text, str) or not text.strip():
        raise HeadSpecError(f"`{what}` is empty: give layers like '3,5-7' (or 'all')")
    out: set[int] = set()
    for raw in text.split(","):
        item = "".join(raw.split()).lower()
        if not item:
            continue
        if item == "all":
            item = "*"
        if not re.fullmatch(r"\*|\d+(?:-\d+)?", item):
            raise HeadSpecError(f"`{what}` item {raw.strip()!r} is not a layer like 3, 5-7 or *")
        out.update(_range(item, facts.n_layers, "layer", raw, facts.name))
    if not out:
        raise HeadSpecError(f"`{what}` {text!r} names no layers")
    return sorted(out)


def _range(part: str, n: int, what: str, raw: str, model: str) -> range:
    if part == "*":
        return range(n)
    lo_s, _, hi_s = part.partition("-")
    hi_s = hi_s or lo_s
    if len(lo_s) > _MAX_DIGITS or len(hi_s) > _MAX_DIGITS:
        raise HeadSpecError(f"{what} in {raw.strip()!r} is out of range: {model} has {what}s 0-{n - 1}")
    lo, hi = int(lo_s), int(hi_s)
    if lo > hi:
        raise HeadSpecError(f"{what} range {lo}-{hi} in {raw.strip()!r} is empty: write it low-high")
    if hi >= n:
        raise HeadSpecError(f"{what} {hi} in {raw.strip()!r} is out of range: {model} has {what}s 0-{n - 1}")
    return range(lo, hi + 1)
