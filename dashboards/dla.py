"""Direct logit attribution view: each head's direct share of a target token's logit, from
``lens heads dla`` results (:class:`formats.dla.DLAResult`; the arithmetic is in
:mod:`analyses.dla`, this module only reads results).

A layer x head heatmap per target and position on a diverging scale centred on zero (white: no
contribution, red: raises the logit, blue: lowers it); a click on a cell gives that head's
number next to the logit. Below: what the MLPs, the embeddings and the biases add, and the
largest parts overall. ``dashboards.show(result)`` shows one result inline; ``dla_of_capture(lm, capture,
view="dla", model=lm)`` attributes a capture's prompt first.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param

from attnlens.dashboards._bokeh import HeadGrid, cell_at, on_click
from attnlens.dashboards.compute import head_label, token_label
from attnlens.formats.dla import REST, REST_LABELS, DLAResult


def head_grid(res: DLAResult, position: int, target: str | int) -> np.ndarray:
    """``[n_layers, n_heads]`` attributions of every head to ``target`` (its string or index) at token
    ``position`` (float64)."""
    i, j = res.index(position, target)
    return res.heads[i, j].astype(np.float64)


def target_names(res: DLAResult) -> dict[str, int]:
    """Selector labels (``'M' (45)``: token and id, since several ids may print alike) -> target index."""
    return {f"{t!r} ({i})" + ("" if j < res.n_given else " top"): j
            for j, (t, i) in enumerate(zip(res.targets, res.target_ids))}


def summary_html(res: DLAResult, position: int, target: str | int) -> str:
    """The logit, what heads, MLPs, embeddings and biases add (they sum to it) and the top parts."""
    i, j = res.index(position, target)
    target = res.targets[j]
    heads, mlps = float(res.heads[i, j].astype(np.float64).sum()), float(res.mlps[i, j].astype(np.float64).sum())
    rest = ", ".join(f"{REST_LABELS[k]} {float(getattr(res, k)[i, j]):+.4f}" for k in REST
                     if k != "pos_embed" or float(res.pos_embed[i, j]) != 0.0)
    tops = ", ".join(f"{html.escape(k)} {v:+.4f}" for k, v in res.top(6, position, j))
    kind = "asked for" if j < res.n_given else "a top prediction"
    mlp_row = " ".join(f"MLP{la} {v:+.3f}" for la, v in enumerate(res.mlps[i, j]))
    return (f"<p><b>{html.escape(repr(target))}</b> ({kind}) at position {position} "
            f"<code>{html.escape(token_label(res.tokens[position]))}</code>: the model's logit "
            f"<b>{float(res.logits[i, j]):+.4f}</b> = heads {heads:+.4f} + MLPs {mlps:+.4f} + {html.escape(rest)} "
            f"(parts sum to {float(res.totals()[i, j]):+.4f}).<br>largest parts: {tops}<br>"
            f"<small>per MLP: {html.escape(mlp_row)}</small><br>"
            f"<small>{html.escape(res.linearisation)}; final norm {html.escape(res.final_norm)}, "
            f"{'tied' if res.tied else 'untied'} unembedding</small></p>")


class ContributionView(pn.viewable.Viewer):
    """One DLA result at a time: pick a target and a position; a click on a head gives its number."""

    result = param.Selector(objects=[], doc="Direct logit attribution result")
    target = param.Selector(objects=[], doc="Target token (its index in the result's targets)")
    position = param.Selector(objects=[], doc="Position whose next-token logit is attributed")
    selected = param.Tuple(default=(0, 0), length=2)
    clicks = param.Integer(default=0)

    def __init__(self, results: dict[str, DLAResult], **params):
        self.results = dict(results)
        first = params.pop("result", next(iter(self.results), None))
        target, position = params.pop("target", None), params.pop("position", None)
        super().__init__(**params)
        self.param.result.objects = list(self.results)
        self._grid: HeadGrid | None = None
        self._pane = pn.pane.Bokeh(sizing_mode="fixed")
        self._info = pn.pane.HTML("", name="dla_info", sizing_mode="stretch_width")
        self._cell = pn.pane.HTML("", name="dla_cell", sizing_mode="stretch_width")
        with param.discard_events(self):
            self.result = first
        self._choices(target, position)
        self._refresh()

    @property
    def current(self) -> DLAResult | None:
        return self.results.get(self.result) if self.result is not None else None

    def _choices(self, target=None, position=None) -> None:
        res = self.current
        names = target_names(res) if res else {}
        positions = list(res.positions) if res else []
        self.param.target.objects, self.param.position.objects = names, positions
        if isinstance(target, str) and res and target in res.targets:
            target = res.targets.index(target)
        with param.discard_events(self):
            self.target = target if target in names.values() else (0 if names else None)
            self.position = position if position in positions else (positions[0] if positions else None)

    @param.depends("result", watch=True)
    def _new_result(self) -> None:
        self._choices()
        self._refresh()

    def grid(self) -> np.ndarray:
        return head_grid(self.current, self.position, self.target)

    @param.depends("target", "position", watch=True)
    def _refresh(self) -> None:
        res = self.current
        if res is None:
            self._info.object = ("<p>No direct logit attributions in this folder. Make one with <code>lens heads dla "
                                 "MODEL --prompt TEXT --target TOKEN --out DIR</code>, or in a notebook "
                                 "<code>show(pipelines.dla.dla_of_capture(lm, capture, targets))</code>.</p>")
            return
        g = self.grid()
        title = (f"direct logit attribution to {res.targets[self.target]!r} at position {self.position} "
                 f"({token_label(res.tokens[self.position])})")
        if self._grid is None or self._grid.shape != g.shape:
            self._grid = HeadGrid(g, title, name="dla_heatmap", value_name="logit", scale="signed")
            on_click(self._grid.figure, self._on_click)
            self._pane.object = self._grid.figure
        else:
            self._grid.update(g, title, scale="signed")
        self._info.object = summary_html(res, self.position, self.target)
        self._show_cell()

    def _show_cell(self) -> None:
        res = self.current
        layer, head = self.selected
        if res is None or not (0 <= layer < res.shape[0] and 0 <= head < res.shape[1]):
            self._cell.object = ""
            return
        i, j = res.index(self.position, self.target)
        v = float(res.heads[i, j, layer, head])
        self._cell.object = (f"<p class='attnlens-dla-cell'><b>{head_label(layer, head)}</b> adds <b>{v:+.4f}</b> to "
                             f"the logit of {html.escape(repr(res.targets[j]))} ({float(res.logits[i, j]):+.4f}) at "
                             f"position {self.position}</p>")

    def _on_click(self, x: float, y: float) -> None:
        if self._grid is None:
            return
        cell = cell_at(x, y, *self._grid.shape[::-1])
        if cell is None:
            return
        self.clicks += 1
        self.selected = cell
        self._grid.mark_cell(*cell, self.clicks)
        self._show_cell()

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.result, width=220),
                                pn.widgets.Select.from_param(self.param.target, width=200),
                                pn.widgets.Select.from_param(self.param.position, width=100)),
                         self._pane, self._cell, self._info, name="Contributions")
