"""The one edit system: replace, zero or scale a head's output, an MLP's output or the
residual stream, for every forward pass inside a block.

An :class:`Edit` names its target (:class:`~lens.heads.HeadRef`: the head's slice of ``z``,
the input of the output projection; :class:`~lens.heads.MlpRef`: the MLP's output;
:class:`~lens.heads.ResidRef`: the residual stream leaving the block), what is done
(:class:`Zero`, :class:`Replace`, :class:`Scale`) and where (every position, or one).
A replacement states what it was averaged over in its type (:class:`Over`), so "mean
ablation" always says which mean: over the reference prompts per position
(``Over.BATCH``, Wang et al.'s ABC mean, what circuits use), or over prompts and positions
(``Over.BATCH_AND_POSITION``, a single vector).

The same edits run in every backend: :func:`apply_edits` edits a tensor (the torch hooks of
:func:`editing`, TransformerLens' hook points and nnsight's proxies all call it), and
circuits run many edit groups in one batch (``groups[g]`` applies to rows ``g*N:(g+1)*N``).
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lens.errors import InterventionError, SelectionError
from lens.heads import Component, HeadRef, MlpRef, ResidRef


class Over(enum.Enum):
    """What a replacement value is one of (its shape says the same)."""

    ROW = "row"  #: one per row and position, [batch, pos, d] (patching, resampling)
    BATCH = "batch"  #: mean over reference rows, per position, [pos, d]
    BATCH_AND_POSITION = "batch+position"  #: mean over rows and positions, [d]

    @property
    def ndim(self) -> int:
        return {Over.ROW: 3, Over.BATCH: 2, Over.BATCH_AND_POSITION: 1}[self]


@dataclass(frozen=True)
class Zero:
    """Set the target to zero."""


@dataclass(frozen=True)
class Replace:
    """Set the target to ``value`` (``[batch, pos, d]``, ``[pos, d]`` or ``[d]`` as ``over`` says)."""

    value: Tensor
    over: Over

    def __post_init__(self) -> None:
        if not isinstance(self.value, Tensor):
            raise InterventionError(f"a replacement value must be a tensor, got {type(self.value).__name__}")
        if not isinstance(self.over, Over):
            raise InterventionError(f"over must be a lens.Over (ROW, BATCH or BATCH_AND_POSITION), got {self.over!r}")
        if not self.value.is_floating_point():
            raise InterventionError(f"a replacement value must be a floating-point tensor, got {self.value.dtype}")
        if self.value.ndim != self.over.ndim:
            raise InterventionError(f"a replacement over {self.over.value} must have {self.over.ndim} dims, got shape "
                                    f"{tuple(self.value.shape)}")
        if not bool(torch.isfinite(self.value).all()):
            raise InterventionError("a replacement value holds NaN or inf")


@dataclass(frozen=True)
class Scale:
    """Multiply the target by ``factor`` (VHR-style head reinforcement)."""

    factor: float

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, numbers.Real) \
                or not math.isfinite(self.factor):
            raise InterventionError(f"a scale factor must be a finite number, got {self.factor!r}"[:200])
        object.__setattr__(self, "factor", float(self.factor))  # numpy scalars too, stored as a plain float


Action = Zero | Replace | Scale


@dataclass(frozen=True)
class Edit:
    """Do ``action`` to ``target`` at ``position`` (None: every position)."""

    target: Component
    action: Action = Zero()
    position: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, (HeadRef, MlpRef, ResidRef)):
            raise InterventionError(f"an edit targets a HeadRef, MlpRef or ResidRef, got {self.target!r}"[:200])
        if not isinstance(self.action, (Zero, Replace, Scale)):
            got = f"the class {self.action.__name__} (write {self.action.__name__}(...))" \
                if isinstance(self.action, type) else f"{type(self.action).__name__} {self.action!r}"[:120]
            raise InterventionError(f"an edit's action is a Zero(), Replace(...) or Scale(...), got {got}")
        if self.target.layer < 0 or (isinstance(self.target, HeadRef) and self.target.head < 0):
            raise InterventionError(f"layer and head must be >= 0, got {self.target}")
        if self.position is not None and (isinstance(self.position, bool) or not isinstance(self.position, int)):
            raise InterventionError(f"position must be an integer or None, got {self.position!r}")

    @property
    def layer(self) -> int:
        return self.target.layer

    def __str__(self) -> str:
        what = type(self.action).__name__.lower()
        if isinstance(self.action, Replace):
            what += f" ({self.action.over.value})"
        elif isinstance(self.action, Scale):
            what += f" x{self.action.factor:g}"
        return f"{what} {self.target}" + ("" if self.position is None else f" at position {self.position}")


EditGroups = Sequence[Sequence[Edit]]


# ---- applying edits to tensors ------------------------------------------------------------
def _value_for(action: Replace, rows: int, pos: int, position: int | None, like: Tensor) -> Tensor:
    v = action.value.to(device=like.device, dtype=like.dtype)
    if action.over is Over.ROW:
        if v.shape[0] not in (1, rows) or v.shape[1] != pos:
            raise InterventionError(f"replacement of shape {tuple(v.shape)} does not fit [batch={rows}, pos={pos}, ...]")
        return v[:, position] if position is not None else v
    if action.over is Over.BATCH:
        if v.shape[0] != pos:
            raise InterventionError(f"replacement of shape {tuple(v.shape)} has {v.shape[0]} positions, the input {pos}")
        return v[position] if position is not None else v
    return v


def apply_edits(t: Tensor, edits: Sequence[Edit], *, n_heads: int | None = None, n_groups: int = 1,
                group_of: Sequence[int] | None = None) -> Tensor:
    """``t`` with ``edits`` applied (a new tensor; ``t`` is left as it was).

    ``t`` is ``z [batch, pos, head, d_head]`` for head edits (``n_heads`` given) or
    ``[batch, pos, d]`` for MLP and residual edits. With ``n_groups > 1`` the rows are split
    into that many equal groups and edit ``i`` applies to group ``group_of[i]`` only.
    """
    if not edits:
        return t
    t = t.clone()
    rows, pos = t.shape[0], t.shape[1]
    if rows % n_groups:
        raise InterventionError(f"{rows} rows do not split into {n_groups} edit groups")
    per = rows // n_groups
    view = t.view(n_groups, per, *t.shape[1:])
    for i, e in enumerate(edits):
        g = group_of[i] if group_of is not None else 0
        p = slice(None) if e.position is None else e.position
        if e.position is not None and not -pos <= e.position < pos:
            raise InterventionError(f"edit {e}: position {e.position} is out of range for {pos} positions")
        if isinstance(e.target, HeadRef):
            if n_heads is None or e.target.head >= n_heads:
                raise InterventionError(f"head {e.target.head} is out of range: layer {e.layer} has heads "
                                        f"0-{(n_heads or 0) - 1}")
            idx = (g, slice(None), p, e.target.head)
        else:
            idx = (g, slice(None), p)
        target = view[idx]
        if isinstance(e.action, Zero):
            view[idx] = 0
        elif isinstance(e.action, Scale):
            view[idx] = target * e.action.factor
        else:
            value = _value_for(e.action, per, pos, e.position, t)
            if value.shape[-1] != target.shape[-1]:
                raise InterventionError(f"edit {e}: replacement has width {value.shape[-1]}, the target "
                                        f"{target.shape[-1]}")
            try:
                view[idx] = value
            except RuntimeError as err:
                raise InterventionError(f"edit {e}: replacement of shape {tuple(value.shape)} does not fit "
                                        f"{tuple(target.shape)}: {err}") from None
    return t


def by_layer(groups: EditGroups) -> dict[tuple[int, type], tuple[list[Edit], list[int]]]:
    """``(layer, target type) -> (edits, their groups)``."""
    out: dict[tuple[int, type], tuple[list[Edit], list[int]]] = {}
    for g, edits in enumerate(groups):
        for e in edits:
            edits_, gs = out.setdefault((e.layer, type(e.target)), ([], []))
            edits_.append(e)
            gs.append(g)
    return out


def check_edits(facts, edits: Iterable[Edit]) -> None:
    """Every edit's layer and head against the model's facts (one-line errors naming the edit)."""
    for e in edits:
        if not isinstance(e, Edit):
            raise InterventionError(f"edits must be lens.Edit, got {type(e).__name__}")
        if e.layer >= facts.n_layers:
            raise InterventionError(f"edit {e}: layer {e.layer} is out of range: {facts.name} has layers "
                                    f"0-{facts.n_layers - 1}")
        if isinstance(e.target, HeadRef) and e.target.head >= facts.n_heads:
            raise InterventionError(f"edit {e}: head {e.target.head} is out of range: {facts.name} has heads "
                                    f"0-{facts.n_heads - 1}")


@contextmanager
def editing(lm, edits: Sequence[Edit] | EditGroups = (), *, groups: bool = False, adapter=None) -> Iterator[None]:
    """Apply ``edits`` to every forward pass of ``lm.model`` inside the block (torch hooks).

    With ``groups=True``, ``edits`` is a sequence of edit groups for stacked batches (see
    :func:`apply_edits`). Hooks are removed on exit, also on error.
    """
    from lens import _checks
    from lens.hooks import Point, Where, hooked

    _checks.model(lm)
    if groups:
        if isinstance(edits, (str, bytes)) or not isinstance(edits, Iterable):
            raise InterventionError(f"edit groups must be a list of lists of lens.Edit, got {type(edits).__name__}")
        edit_groups: EditGroups = [_checks.edits(g) for g in edits]
    else:
        edit_groups = [list(_checks.edits(edits))]
    check_edits(lm.facts, (e for g in edit_groups for e in g))
    n_groups, n_heads = len(edit_groups), lm.facts.n_heads
    where = {HeadRef: Where.Z, MlpRef: Where.MLP_OUT, ResidRef: Where.BLOCK_OUT}
    points = []
    for (layer, kind), (es, gs) in by_layer(edit_groups).items():
        # z comes as [batch, pos, head, d_head]; MLP and residual edits see [batch, pos, d]
        heads = n_heads if kind is HeadRef else None
        points.append((Point(where[kind], layer),
                       lambda t, es=es, gs=gs, heads=heads: apply_edits(t, es, n_heads=heads, n_groups=n_groups,
                                                                        group_of=gs)))
    with hooked(lm, points, adapter=adapter):
        yield


# ---- building edits -------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """Activations recorded on reference prompts, for mean ablation, resampling and patching.

    ``z[layer]`` is ``[batch, pos, head, d_head]`` (every head); ``mlp[layer]`` and
    ``resid[layer]`` are ``[batch, pos, d_model]``. Build one from a capture with
    :meth:`from_capture` (sites z, mlp_out, resid_post).
    """

    z: Mapping[int, Tensor]
    mlp: Mapping[int, Tensor] = None  # type: ignore[assignment]
    resid: Mapping[int, Tensor] = None  # type: ignore[assignment]

    @classmethod
    def from_capture(cls, capture, step: int = 0) -> Reference:
        from lens.recording.record import Capture
        from lens.sites import Site

        if not isinstance(capture, Capture):
            raise InterventionError(f"capture must be a lens.Capture (lens.run(...).capture), got "
                                    f"{type(capture).__name__}")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(capture.steps):
            raise InterventionError(f"step must be one of the capture's steps 0-{len(capture.steps) - 1}, got "
                                    f"{step!r}"[:200])
        if capture.meta.heads != list(range(capture.meta.facts.n_heads)):
            raise InterventionError("a reference capture must keep every head (heads=None)")
        z, mlp, resid = {}, {}, {}
        for key, t in capture.steps[step].items():
            if key.site is Site.Z:
                z[key.layer] = t.transpose(1, 2)
            elif key.site is Site.MLP_OUT:
                mlp[key.layer] = t
            elif key.site is Site.RESID_POST:
                resid[key.layer] = t
        return cls(z, mlp, resid)

    def of(self, c: Component) -> Float[Tensor, "batch pos d"]:
        """The recorded activation of one component, ``[batch, pos, d]``."""
        if isinstance(c, HeadRef):
            table, what = self.z, "z"
        elif isinstance(c, MlpRef):
            table, what = self.mlp or {}, "mlp_out"
        else:
            table, what = self.resid or {}, "resid_post"
        if c.layer not in table:
            raise InterventionError(f"no reference {what} for layer {c.layer}: have layers {sorted(table)}")
        t = table[c.layer]
        return t[:, :, c.head] if isinstance(c, HeadRef) else t


def _reference(reference) -> Reference:
    if not isinstance(reference, Reference):
        raise InterventionError(f"reference must be a lens.Reference (Reference.from_capture(...)), got "
                                f"{type(reference).__name__}")
    return reference


def _refs(components: Iterable) -> list[Component]:
    if isinstance(components, (HeadRef, MlpRef, ResidRef, str, bytes)) or not isinstance(components, Iterable):
        raise InterventionError(f"components must be a list of HeadRef, MlpRef, ResidRef or (layer, head) pairs, "
                                f"got {type(components).__name__} {components!r}"[:200])
    out = []
    for c in components:
        if isinstance(c, (HeadRef, MlpRef, ResidRef)):
            out.append(c)
        elif isinstance(c, tuple) and len(c) == 2:
            try:
                out.append(HeadRef(*c))
            except SelectionError as err:
                raise InterventionError(f"component {c!r}: {err}"[:300]) from None
        else:
            raise InterventionError(f"components are HeadRef, MlpRef, ResidRef or (layer, head) pairs, got {c!r}")
    return out


def zero_ablation(components: Iterable) -> list[Edit]:
    """Zero each component (heads as ``(layer, head)`` pairs or :class:`~lens.heads.HeadRef`)."""
    return [Edit(c, Zero()) for c in _refs(components)]


def mean_ablation(reference: Reference, components: Iterable, *, over: Over = Over.BATCH_AND_POSITION,
                  position: int | None = None) -> list[Edit]:
    """Replace each component by its mean over the reference: per position (``Over.BATCH``) or
    over prompts and positions (``Over.BATCH_AND_POSITION``, the default)."""
    _reference(reference)
    if over is Over.ROW:
        raise InterventionError("a mean is over BATCH or BATCH_AND_POSITION, not ROW")
    dims = (0,) if over is Over.BATCH else (0, 1)
    return [Edit(c, Replace(reference.of(c).mean(dim=dims), over), position) for c in _refs(components)]


def patch(reference: Reference, components: Iterable, *, position: int | None = None) -> list[Edit]:
    """Replace each component by its activation in the reference run (same rows and positions)."""
    _reference(reference)
    return [Edit(c, Replace(reference.of(c), Over.ROW), position) for c in _refs(components)]


def resample_ablation(reference: Reference, components: Iterable, *, batch: int, seed: int = 0,
                      rows: Tensor | None = None, position: int | None = None) -> list[Edit]:
    """Replace each component by its activation on a randomly drawn reference row.

    Each of the ``batch`` target rows gets one source row drawn with ``seed`` (or the given ``rows``);
    the same draw serves every component.
    """
    _reference(reference)
    comps = _refs(components)
    for value, what in ((batch, "batch"), (seed, "seed")):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if what == "batch" else 0):
            raise InterventionError(f"{what} must be an integer >= {1 if what == 'batch' else 0}, got {value!r}"[:200])
    n_ref = reference.of(comps[0]).shape[0] if comps else 1
    if rows is None:
        rows = torch.randint(0, n_ref, (batch,), generator=torch.Generator().manual_seed(seed))
    elif not isinstance(rows, Tensor) or rows.is_floating_point() or rows.dtype is torch.bool or rows.ndim != 1 \
            or (comps and rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < n_ref):
        raise InterventionError(f"rows must be an integer tensor [batch] of reference rows 0-{n_ref - 1}, got "
                                f"{rows!r}"[:200])
    return [Edit(c, Replace(reference.of(c)[rows], Over.ROW), position) for c in comps]


def scale_heads(factors: Mapping) -> list[Edit]:
    """Multiply each head's output by its factor (``{HeadRef or (layer, head): factor}``)."""
    if not isinstance(factors, Mapping):
        raise InterventionError(f"factors must be a mapping {{HeadRef or (layer, head): factor}}, got "
                                f"{type(factors).__name__}")
    return [Edit(c, Scale(_number(f))) for c, f in zip(_refs(factors), factors.values())]


def _number(f):
    """``f`` as a float when it is a real number (numpy scalars, 0-d tensors); else as it is, for Scale to refuse."""
    if isinstance(f, (bool, str, bytes)):
        return f
    try:
        return float(f)
    except (TypeError, ValueError, RuntimeError):
        return f
