"""Path patching (Wang et al. 2022): a sender head's corrupted output, delivered only to
receiver heads' query, key or value input.

The direct path is patched exactly: at each receiver's layer, the receiver's projection is
recomputed from ``norm(resid_pre + delta)``, where ``delta`` is the sender's corrupted minus
clean output (through its rows of the output projection); every other component sees the
clean residual stream. With GQA a key or value receiver is a KV head, shared by its group's
query heads, so patching it changes all of them. The effect is metric(patched) - metric(clean).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from attnlens.analyses.circuits._hooks import CircuitModules, capture
from attnlens.analyses.circuits.metrics import Metric, per_row
from attnlens.analyses.circuits.tasks import EncodedTask, TaskError
from lens.heads import HeadRef
from lens.hooks import Point, Where


@contextmanager
def _receiver_hooks(parts: CircuitModules, deltas: torch.Tensor, receivers: Sequence[HeadRef], which: str):
    """``deltas [G, N, pos, D]``: group g's receivers read resid_pre + deltas[g]."""
    G = deltas.shape[0]
    dh = parts.facts.d_head
    resid: dict[int, torch.Tensor] = {}
    by_layer: dict[int, set[int]] = {}
    for r in receivers:
        idx = r.head if which == "q" else parts.facts.kv_head_of(r.head)
        by_layer.setdefault(r.layer, set()).add(idx)
    where = {"q": Where.Q, "k": Where.K, "v": Where.V}[which]
    points = []
    for layer, idxs in by_layer.items():
        norm, proj = parts.attn_norm(layer), getattr(parts, f"{which}_projection")(layer)
        points.append((Point(Where.RESID_PRE, layer), lambda x, layer=layer: resid.__setitem__(layer, x)))

        def hook(out, layer=layer, idxs=idxs, norm=norm, proj=proj):
            x = resid[layer]
            n_rows, pos, d = x.shape
            moved = norm((x.view(G, n_rows // G, pos, d) + deltas.to(x.dtype)).view(n_rows, pos, d))
            new = F.linear(moved, proj.weight, proj.bias)
            out = out.clone()
            for i in idxs:
                out[..., i * dh:(i + 1) * dh] = new[..., i * dh:(i + 1) * dh]
            return out

        points.append((Point(where, layer), hook))
    with parts.hooked(points):
        yield


def path_patch(lm, enc: EncodedTask, senders: Sequence[HeadRef], receivers: Sequence[HeadRef], *,
               which: str = "q", metric: Metric | str = Metric.LOGIT_DIFF, max_rows: int = 64) -> np.ndarray:
    """Effect of each sender -> receivers path (``[len(senders)]``; NaN where the sender is not
    before every receiver)."""
    if which not in ("q", "k", "v"):
        raise TaskError(f"path patching input must be q, k or v, got {which!r}")
    if not receivers:
        raise TaskError("path patching needs at least one receiver head")
    metric = Metric(metric)
    parts = CircuitModules(lm)
    first = min(r.layer for r in receivers)
    valid = [s for s in senders if s.layer < first]
    total = torch.zeros(len(valid), dtype=torch.float64)
    for b in enc.batches:
        clean, corr = capture(parts, b.clean), capture(parts, b.corrupted)
        base = per_row(metric, clean.logits, b.answer, b.distractor).double().sum()
        n = b.size
        per_chunk = max(1, max_rows // n)
        for s0 in range(0, len(valid), per_chunk):
            chunk = valid[s0:s0 + per_chunk]
            deltas = torch.stack([torch.einsum("npe,de->npd", (corr.z[s.layer] - clean.z[s.layer])[:, :, s.head],
                                               parts.w_o(s.layer)[s.head]) for s in chunk])
            with torch.no_grad(), _receiver_hooks(parts, deltas, receivers, which):
                logits = lm.model(input_ids=b.clean.repeat(len(chunk), 1).to(lm.device), logits_to_keep=1).logits[:, -1]
            vals = per_row(metric, logits.float(), b.answer.repeat(len(chunk)), b.distractor.repeat(len(chunk)))
            total[s0:s0 + len(chunk)] += vals.view(len(chunk), n).double().sum(1) - base
    out = np.full(len(senders), np.nan)
    pos = {s: i for i, s in enumerate(valid)}
    for i, s in enumerate(senders):
        if s in pos:
            out[i] = total[pos[s]].item() / enc.n_examples
    return out
