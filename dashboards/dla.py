"""Direct logit attribution: per head, how much its output at one position adds to the logit
of a chosen target token (what Meta's LLM Transparency Tool shows), over saved captures.

With the final norm's scale frozen at its value for that position, the logit of token ``t``
is linear in the residual stream, and the residual stream is a sum of components, so each
head's share is::

    dla[layer, head] = (z[layer, head, q] @ W_O[layer, head]) . u_t / sigma_q

``z`` is the head's attention output (site ``z``, ``[batch, head, q, d_head]``), ``W_O`` its
slice of the output projection (``[head, d_head, d_model]``), ``u_t`` the target's
unembedding row with the final norm's weight folded in (``[d_model]``) and ``sigma_q`` the
final norm's divisor at ``q`` (RMS of the last residual stream, plus epsilon).

A capture holds ``z`` (and ``resid_post`` for ``sigma``), but not the model's ``W_O`` and
unembedding: they come in a :class:`Readout` (``lens.show(capture, model=lm, view="dla")``
builds one from the model). A saved capture without them gets a message saying so.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import panel as pn
import param

from dashboards._bokeh import HeadGrid, cell_at, on_click
from dashboards.compute import head_label, token_label
from formats import AttnlensError, CaptureFile, SelectionError, Site


@dataclass(frozen=True)
class Readout:
    """What turns head outputs into logits, as numpy arrays.

    ``w_o[layer]``: ``[n_heads, d_head, d_model]``; ``directions[name]``: ``[d_model]`` (a
    target's unembedding row times the final norm weight); ``sigma``: ``[pos]`` the final
    norm's divisor per position of the capture's first prompt; ``logits[name]``: ``[pos]``
    the model's logit of that target, to check attributions against (optional).
    """

    w_o: dict[int, np.ndarray]
    directions: dict[str, np.ndarray]
    sigma: np.ndarray
    logits: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise SelectionError("a readout needs at least one target direction, got none")
        d = {v.shape[-1] for v in self.directions.values()} | {w.shape[-1] for w in self.w_o.values()}
        if len(d) != 1:
            raise SelectionError(f"readout arrays disagree on d_model: {sorted(d)}")


def head_outputs(z: np.ndarray, w_o: np.ndarray) -> np.ndarray:
    """``z [head, d_head]`` (one position) and ``w_o [head, d_head, d_model]`` -> ``[head, d_model]``."""
    return np.einsum("hd,hdm->hm", np.asarray(z, np.float64), np.asarray(w_o, np.float64))


def direct_logit_attribution(z: np.ndarray, w_o: np.ndarray, direction: np.ndarray, sigma: float) -> np.ndarray:
    """``[head]`` direct logit attribution of each head at one position (see the module docstring)."""
    return head_outputs(z, w_o) @ np.asarray(direction, np.float64) / float(sigma)


def dla_grid(cap: CaptureFile, readout: Readout, target: str, position: int) -> np.ndarray:
    """``[n_layers, n_heads]`` attribution of every captured head at ``position`` (NaN where not captured)."""
    f = cap.facts
    if target not in readout.directions:
        raise SelectionError(f"target {target!r} has no readout direction: one of {', '.join(readout.directions)}")
    if not 0 <= position < len(cap.tokens):
        raise SelectionError(f"position {position} is out of range: the capture has positions 0-{len(cap.tokens) - 1}")
    out = np.full((f.n_layers, f.n_heads), np.nan)
    for layer in cap.layers:
        if not cap.has(Site.Z, layer) or layer not in readout.w_o:
            continue
        z = cap.read(Site.Z, layer, 0, (0, slice(None), position)).astype(np.float64)  # [head, d_head]
        w_o = readout.w_o[layer][cap.heads]
        out[layer, cap.heads] = direct_logit_attribution(z, w_o, readout.directions[target], readout.sigma[position])
    return out


class ContributionView(pn.viewable.Viewer):
    """Per head, its direct logit attribution to ``target`` at ``position``; a click selects a head."""

    target = param.Selector(objects=[], doc="Target token")
    position = param.Integer(default=-1, doc="Position whose next-token logit is attributed (-1: the last)")
    selected = param.Tuple(default=(0, 0), length=2)
    clicks = param.Integer(default=0)

    def __init__(self, capture: CaptureFile | None, readout: Readout | None = None, **params):
        self.cap, self.readout = capture, readout
        targets = list(readout.directions) if readout else []
        target = params.pop("target", targets[0] if targets else None)
        super().__init__(**params)
        self.param.target.objects = targets
        with param.discard_events(self):
            self.target = target
        self._grid: HeadGrid | None = None
        self._pane = pn.pane.Bokeh(sizing_mode="fixed")
        self._info = pn.pane.HTML("", name="dla_info", sizing_mode="stretch_width")
        self._refresh()

    def missing(self) -> str | None:
        """Why this capture cannot be attributed (None when it can)."""
        if self.cap is None:
            return "No capture to attribute."
        if not any(self.cap.has(Site.Z, la) for la in self.cap.layers):
            return (f"Capture {html.escape(self.cap.name)} has no <code>z</code> (the heads' outputs): capture with "
                    "<code>--sites pattern,z,resid_post</code>.")
        if self.readout is None:
            return ("Direct logit attribution needs the model's output projection and unembedding, which a saved "
                    "capture does not hold. In a notebook: <code>lens.show(capture, model=lm, view=\"dla\", "
                    "targets=[...])</code>.")
        return None

    def grid(self) -> np.ndarray:
        pos = len(self.cap.tokens) - 1 if self.position < 0 else self.position
        return dla_grid(self.cap, self.readout, self.target, pos)

    @param.depends("target", "position", watch=True)
    def _refresh(self) -> None:
        why = self.missing()
        if why is not None:
            self._info.object = f"<p>{why}</p>"
            return
        try:
            g = self.grid()
        except AttnlensError as err:
            self._info.object = f"<p>{html.escape(str(err))}</p>"
            return
        pos = len(self.cap.tokens) - 1 if self.position < 0 else self.position
        title = f"direct logit attribution to {self.target!r} at position {pos} ({token_label(self.cap.tokens[pos])})"
        if self._grid is None or self._grid.shape != g.shape:
            self._grid = HeadGrid(g, title, name="dla_heatmap", value_name="logit", palette=_diverging())
            on_click(self._grid.figure, self._on_click)
            self._pane.object = self._grid.figure
        else:
            self._grid.update(g, title)
        m = float(np.nanmax(np.abs(g))) if np.isfinite(g).any() else 1.0
        self._grid.mapper.update(low=-m, high=m)  # symmetric: white is no contribution
        top = np.argsort(-np.nan_to_num(g, nan=0).ravel())[:5]
        n_heads = g.shape[1]
        tops = ", ".join(f"{head_label(int(i // n_heads), int(i % n_heads))} {g.flat[i]:+.3f}" for i in top)
        total = float(np.nansum(g))
        logit = self.readout.logits.get(self.target)
        check = f"; the model's logit there is {float(logit[pos]):.3f}" if logit is not None else ""
        self._info.object = (f"<p>top heads: {html.escape(tops)} · all captured heads together {total:+.3f}{check} "
                             "(the rest comes from embeddings, MLPs and the heads not captured)</p>")

    def _on_click(self, x: float, y: float) -> None:
        if self._grid is None:
            return
        cell = cell_at(x, y, *self._grid.shape[::-1])
        if cell is None:
            return
        self.clicks += 1
        self.selected = cell
        self._grid.mark_cell(*cell, self.clicks)

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.target, width=200),
                                pn.widgets.IntInput.from_param(self.param.position, width=100)),
                         self._pane, self._info, name="Contributions")


def _diverging() -> list[str]:
    from bokeh.palettes import RdBu11, interp_palette

    return list(interp_palette(RdBu11[::-1], 255))
