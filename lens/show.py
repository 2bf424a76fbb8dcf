"""``lens.show``: one-line views of captures and results in Jupyter, rendered offline.

>>> result = lens.run(lm, "When Mary and John went to the store, John gave a drink to", sites=[lens.Site.PATTERN])
>>> lens.show(result.capture, layer=5, head=1)   # one head: pattern and token view
>>> lens.show(result.capture)                    # every head of the prompt
>>> lens.show("results/demo")                    # the dashboard, inline
>>> lens.show(result.capture, view="dla", model=lm)   # direct logit attribution per head

The views live in :mod:`dashboards` (imported here on first call: ``import lens`` stays
cheap); an in-memory capture is written once to a temporary folder through :mod:`formats`
and read back, so notebooks see exactly what a saved capture shows. For ``view="dla"`` the
model gives the readout (output projections, unembedding, final norm), see
:func:`readout_for`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from formats.errors import SelectionError

_TEMP: list[str] = []


def _cleanup() -> None:
    for d in _TEMP:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def as_capture_file(obj: Any):
    """A :class:`formats.CaptureFile` for an in-memory ``lens.Capture`` / ``RunResult`` (written to
    a temporary folder kept until the interpreter exits); anything else is returned as is."""
    from formats import CaptureFile
    from lens.recording import Capture, RunResult

    if isinstance(obj, RunResult):
        obj = obj.capture
    if hasattr(obj, "to_result") and hasattr(obj, "terms"):  # an in-memory QK attribution
        return obj.to_result()
    if not isinstance(obj, Capture):
        return obj
    tmp = tempfile.mkdtemp(prefix="attnlens-show-")
    _TEMP.append(tmp)
    folder = Path(tmp) / "capture"
    obj.write_into(folder)
    return CaptureFile.load(folder)


def readout_for(lm, capture, targets: Sequence[str | int] = (), *, top: int = 5):
    """The :class:`dashboards.dla.Readout` of ``lm`` for ``capture``'s first prompt.

    Targets: the given tokens (strings, each one token, or ids) plus the model's ``top``
    predictions at the last position. Supports Llama-style models (per-layer
    ``self_attn.o_proj``, a final RMS norm ``model.norm``, ``lm_head``).
    """
    import numpy as np
    import torch

    import lens
    from dashboards.dla import Readout

    m = lm.model
    try:
        layers, norm, unembed = m.model.layers, m.model.norm, m.get_output_embeddings().weight
    except AttributeError:
        raise SelectionError(f"direct logit attribution supports Llama-style models (model.layers[i].self_attn."
                             f"o_proj, model.norm, lm_head); {lm.facts.architecture} is not one") from None
    f = lm.facts
    ids = torch.tensor([capture.meta.token_ids[0]])
    res = lens.run(lm, ids, sites=[lens.Site.RESID_POST], layers=[f.n_layers - 1])
    resid = res.capture.get(lens.Site.RESID_POST, f.n_layers - 1)[0].double()  # [pos, d_model]
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    sigma = torch.sqrt(resid.pow(2).mean(-1) + eps)  # [pos]
    g = norm.weight.detach().double()
    ids_wanted = []
    for t in targets:
        if isinstance(t, int):
            ids_wanted.append(t)
            continue
        enc = lm.tokenizer(t, add_special_tokens=False).input_ids
        if len(enc) != 1:
            raise SelectionError(f"target {t!r} is {len(enc)} tokens for {f.name}: give one token (or its id)")
        ids_wanted.append(enc[0])
    logits = res.logits[0].double()  # [pos, vocab]
    ids_wanted += [i for i in torch.topk(logits[-1], top).indices.tolist() if i not in ids_wanted]
    names = {}
    for i in ids_wanted:
        name = lm.tokenizer.decode([i]) if lm.tokenizer is not None else str(i)
        names[f"{name!r} ({i})"] = i
    w_u = unembed.detach().double()
    directions = {n: (w_u[i] * g).numpy() for n, i in names.items()}
    n_heads, d_head = f.n_heads, f.d_head
    w_o = {}
    for layer in capture.layers:
        w = layers[layer].self_attn.o_proj.weight.detach().double()  # [d_model, n_heads * d_head]
        w_o[layer] = w.T.reshape(n_heads, d_head, f.d_model).numpy()
    return Readout(w_o=w_o, directions=directions, sigma=sigma.numpy(),
                   logits={n: logits[:, i].numpy().astype(np.float64) for n, i in names.items()})


def show(obj: Any, *, layer: int | None = None, head: int | None = None, view: str = "auto", model=None,
         targets: Sequence[str | int] = (), **params):
    """Display ``obj`` inline in Jupyter, offline: a capture (``lens.Capture``, ``RunResult``,
    saved capture or its path), a results folder (or its path), head scores or a QK attribution
    (``analyses.qk_attribution.qk_attribution``'s result or a saved ``*.qk.json``).

    ``layer`` and ``head`` pick one head of a capture (without them: all heads).
    ``view="dla"`` with ``model`` shows each head's direct logit attribution to ``targets``
    (and the model's top predictions). Returns the view.
    """
    from dashboards.inline import show as show_inline

    cap = as_capture_file(obj)
    readout = None
    if view == "dla":
        if model is None:
            raise SelectionError("view='dla' needs model=: the readout (output projections, unembedding) comes "
                                 "from the model")
        readout = readout_for(model, cap, targets)
    return show_inline(cap, layer=layer, head=head, view=view, readout=readout, **params)
