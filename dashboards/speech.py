"""The speech view: one decoder token's cross-attention over the audio (a head, or the heads'
mean, of a layer) against its input saliency, under the spectrogram; and the agreement table."""

from __future__ import annotations

import html

import panel as pn
import param

from attnlens.dashboards.audio import agreement_rows, is_audio, maps_for, speech_png, token_view
from attnlens.formats import AttnlensError, ResultsFolder


class SpeechView(pn.viewable.Viewer):
    capture = param.Selector(objects=[])
    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Selector(default="mean", objects=["mean"], doc="One head, or the mean over the layer's heads")
    token = param.Integer(default=0, bounds=(0, None), doc="Transcript token (0 = the first after the prompt)")

    def __init__(self, folder: ResultsFolder, **params):
        self.folder = folder
        self.captures = {k: c for k, c in folder.captures.items() if is_audio(c)}
        names = list(self.captures)
        cap = params.pop("capture", names[0] if names else None)
        super().__init__(**params)
        self.param.capture.objects = names
        with param.discard_events(self):
            self.capture = cap
            if cap:
                self.param.head.objects = ["mean", *self.captures[cap].heads]

    def figure_png(self) -> bytes | str:
        cap = self.captures.get(self.capture) if self.capture else None
        if cap is None:
            return ("No speech captures in this folder (a capture with an audio layout and cross_pattern: "
                    "`lens heads cross-attention MODEL --audio FILE` or `lens scan whisper-tiny.en` write them).")
        if self.layer not in cap.layers:
            return f"Capture {self.capture} has layers {cap.layers}."
        head = None if self.head == "mean" else int(self.head)
        try:
            view = token_view(cap, maps_for(self.folder, self.capture), self.layer, head, self.token)
        except AttnlensError as err:
            return str(err)
        who = "heads' mean" if head is None else f"H{head}"
        return speech_png(cap, view, f"{cap.model} L{self.layer} {who}: token {self.token} {view.token!r}")

    @param.depends("capture", "layer", "head", "token")
    def plot(self):
        out = self.figure_png()
        if isinstance(out, str):
            return pn.pane.Markdown(html.escape(out))
        return pn.pane.PNG(out, name="speech_plot", width=800)

    def table_html(self) -> str:
        model = self.captures[self.capture].model if self.capture in self.captures else None
        rows = agreement_rows(self.folder, model) if model else []
        if not rows:
            return ""
        body = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td>"
                       f"<td>{html.escape(d)}</td></tr>" for a, b, c, d in rows)
        return ("<b>Cross-attention vs saliency</b> (audio frames only)<table><tr><th>metric</th><th>heads averaged</th>"
                f"<th>best head</th><th>mean of heads</th></tr>{body}</table>")

    def __panel__(self):
        return pn.Column(pn.Row(pn.widgets.Select.from_param(self.param.capture, width=220),
                                pn.widgets.IntInput.from_param(self.param.layer, width=90),
                                pn.widgets.Select.from_param(self.param.head, width=90),
                                pn.widgets.IntInput.from_param(self.param.token, width=90)),
                         pn.param.ParamMethod(self.plot, lazy=True),
                         pn.pane.HTML(self.table_html(), sizing_mode="stretch_width"), name="Speech")
