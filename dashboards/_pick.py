"""Click-to-select a head: the one handler the head views share (private: the views are the API).

A view mixes in :class:`HeadPicker`, says which head a click at data ``(x, y)`` hits
(:meth:`HeadPicker.head_at`) and how the selected head is marked (:meth:`HeadPicker.mark_selected`),
and listens to its figure with :meth:`HeadPicker.listen`. Every click on a head is answered:
``clicks`` counts them, a click on another head sets ``selected`` (the view's watcher marks it
and the dashboard makes the other views follow), and a re-click of the selected head marks it
again (so the browser sees an update for every click).
"""

from __future__ import annotations

import param

from attnlens.dashboards._bokeh import on_click


class HeadPicker(param.Parameterized):
    """Mixin for a view whose figure selects a head by a click (put it before ``pn.viewable.Viewer``)."""

    selected = param.Tuple(default=(0, 0), length=2, doc="(layer, head) picked by a click")
    clicks = param.Integer(default=0, doc="Clicks on a head answered so far")

    def head_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The ``(layer, head)`` drawn at data ``(x, y)``, None when the click is on no head."""
        raise NotImplementedError(f"{type(self).__name__} must say which head a click hits (head_at)")

    def mark_selected(self) -> None:
        """Show ``selected`` on the figure (called again on a re-click of the selected head)."""
        raise NotImplementedError(f"{type(self).__name__} must say how the selected head is marked (mark_selected)")

    def listen(self, fig) -> None:
        """Answer clicks on Bokeh figure ``fig``."""
        on_click(fig, self.pick_at)

    def pick_at(self, x: float, y: float) -> None:
        """What a click at data ``(x, y)`` does (tests call it as a browser click would)."""
        hit = self.head_at(x, y)
        if hit is None:
            return
        self.clicks += 1
        if hit != self.selected:
            self.selected = hit  # the view's watcher marks it, the other views follow
        else:
            self.mark_selected()
