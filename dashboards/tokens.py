"""The token view: a prompt's tokens, with hover in both directions (CircuitsVis' text view,
both ways at once).

Hovering a token shades, in blue, the earlier tokens it attends to (its row of the
pattern) and, in orange, the later tokens that attend to it (its column), each scaled to
its own largest weight; the hovered token is boxed. Without hover, the pinned ``query``
(set by a click on a pattern row, or on a token) is shown. Tokens are set as text (``textContent``),
never as HTML, so a token holding markup is shown, not run.

The pattern travels as base64 of uint16 (weight x 65535), at most :data:`MAX_TOKENS`
square: one head's view costs at most ~180 kB however long the capture.
"""

from __future__ import annotations

import base64

import numpy as np
import panel as pn
import param

MAX_TOKENS = 256


def encode_weights(pattern: np.ndarray) -> str:
    """``[n, n]`` weights in [0, 1] -> base64 of little-endian uint16 (row-major)."""
    q = np.clip(np.round(np.asarray(pattern, np.float64) * 65535), 0, 65535).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def decode_weights(text: str, n: int) -> np.ndarray:
    """The inverse of :func:`encode_weights` (for tests)."""
    return np.frombuffer(base64.b64decode(text), dtype="<u2").reshape(n, n).astype(np.float64) / 65535


class TokenView(pn.custom.JSComponent):
    """Tokens ``offset .. offset + n - 1`` of a prompt with their ``[n, n]`` pattern block."""

    tokens = param.List(default=[], item_type=str, doc="The tokens shown (text, never HTML)")
    offset = param.Integer(default=0, doc="Position of the first token shown")
    weights = param.String(default="", doc="base64 uint16 [n, n] pattern block (see encode_weights)")
    query = param.Integer(default=-1, doc="Pinned query position (-1: none; a click on a token sets it)")
    hovered = param.Integer(default=-1, doc="Token under the pointer (set by the browser)")
    note = param.String(default="", doc="One line shown above the tokens (text)")

    _esm = """
    function decode(b64, n) {
      const bin = atob(b64 || "");
      const out = new Float64Array(n * n);
      for (let i = 0; i < n * n && 2 * i + 1 < bin.length; i++) {
        out[i] = (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) / 65535;
      }
      return out;
    }
    export function render({ model, el }) {
      const root = document.createElement("div");
      root.className = "attnlens-tokens";
      const caption = document.createElement("div");
      caption.className = "caption";
      const body = document.createElement("div");
      body.className = "body";
      root.append(caption, body);
      let spans = [], w = new Float64Array(0), n = 0;
      function fmt(x) { return x.toFixed(3); }
      function paint(center, pinned) {
        for (let j = 0; j < n; j++) {
          const s = spans[j];
          s.style.background = ""; s.style.outline = ""; s.style.color = "";
          s.title = `${model.offset + j}`;
        }
        if (center < 0 || center >= n) {
          caption.textContent = model.note || "Hover a token: blue = what it attends to, orange = what attends to it.";
          return;
        }
        let rmax = 0, cmax = 0;
        for (let j = 0; j <= center; j++) rmax = Math.max(rmax, w[center * n + j]);
        for (let i = center + 1; i < n; i++) cmax = Math.max(cmax, w[i * n + center]);
        for (let j = 0; j < n; j++) {
          const s = spans[j];
          if (j <= center) {
            const v = w[center * n + j], a = rmax > 0 ? v / rmax : 0;
            s.style.background = `rgba(30, 100, 220, ${a.toFixed(3)})`;
            if (a > 0.6) s.style.color = "white";
            s.title = `${model.offset + j}: receives ${fmt(v)} from ${model.offset + center}`;
          } else {
            const v = w[j * n + center], a = cmax > 0 ? v / cmax : 0;
            s.style.background = `rgba(240, 120, 20, ${a.toFixed(3)})`;
            s.title = `${model.offset + j}: gives ${fmt(v)} to ${model.offset + center}`;
          }
        }
        spans[center].style.outline = pinned ? "2px solid #ff2d55" : "2px dashed #ff2d55";
        const tok = model.tokens[center] ?? "";
        caption.textContent = `token ${model.offset + center} ${JSON.stringify(tok)}` +
          (pinned ? " (pinned query)" : "") + `: attends to earlier tokens (blue, largest ${fmt(rmax)}), ` +
          `attended by later tokens (orange, largest ${fmt(cmax)})`;
      }
      function pinned() { return model.query - model.offset; }
      function build() {
        n = model.tokens.length;
        w = decode(model.weights, n);
        body.replaceChildren();
        spans = model.tokens.map((t, j) => {
          const s = document.createElement("span");
          s.className = "tok";
          s.dataset.pos = String(model.offset + j);
          s.textContent = t.replace(/\\n/g, "\\u21b5\\n");
          s.addEventListener("mouseenter", () => { paint(j, false); model.hovered = model.offset + j; });
          s.addEventListener("mouseleave", () => { paint(pinned(), true); model.hovered = -1; });
          s.addEventListener("click", () => { model.query = model.offset + j; paint(j, true); });
          body.append(s);
          return s;
        });
        paint(pinned(), true);
      }
      build();
      model.on(["tokens", "weights", "offset"], build);
      model.on(["query", "note"], () => paint(pinned(), true));
      return root;
    }
    """

    _stylesheets = ["""
    .attnlens-tokens .caption { font-size: 12px; color: #444; margin-bottom: 4px; min-height: 1.4em; }
    .attnlens-tokens .body { font-family: monospace; white-space: pre-wrap; line-height: 1.7; max-height: 200px;
                             overflow-y: auto; overflow-wrap: anywhere; border: 1px solid #ddd; padding: 4px; }
    .attnlens-tokens .tok { border-radius: 2px; cursor: pointer; }
    """]

    def show(self, tokens: list[str], pattern: np.ndarray, offset: int, query: int, note: str = "") -> None:
        """Show ``tokens`` (positions ``offset ..``) with their pattern block ``[n, n]`` (at most MAX_TOKENS)."""
        n = min(len(tokens), MAX_TOKENS)
        block = np.asarray(pattern, np.float64)[:n, :n]
        self.param.update(tokens=[str(t) for t in tokens[:n]], offset=int(offset), weights=encode_weights(block),
                          query=int(query), note=note)

    def clear(self, note: str = "") -> None:
        self.param.update(tokens=[], weights="", offset=0, query=-1, note=note)
