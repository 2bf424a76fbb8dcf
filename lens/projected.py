"""q/k/v of families whose attention the attention stack cannot reach, from their projections.

Falcon, BLOOM, MPT, XGLM, MVP and DeBERTa-v2 compute attention in their own code, outside
transformers' attention interface (GPT-J, CodeGen and GPT-Neo are reached through their ``_attn``,
:data:`lens.attention.OWN_ATTN`). Their queries, keys and values come from their projections
instead, through the hook engine: split per head by the site table (separate or fused
projections, :meth:`lens.adapters.DecoderAdapter.projections`), MPT's ``clip_qkv`` applied, and
rotated with the family's own ``apply_rotary_pos_emb`` when its attention module is given rotary
tables (Falcon without ALiBi; ALiBi, learned, sinusoidal and relative positions act on the scores
or the embeddings, not on q and k). Without a KV cache they are what the family scores
(``tests/conformance/test_projected_qkv.py`` checks it against each family's definition); with
one (generation), k and v are the step's new positions only.

:func:`key_bias` gives the per-key bias such a family adds to its scores (ALiBi), for statistics
computed beside its own attention (:mod:`lens.recording.stats`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor

from lens.adapters import KEY_BIAS, ModelAdapter
from lens.hooks import Point, Where
from lens.loaded import LoadedModel

#: ``fn(query [batch, head, pos, d_head], key, value [batch, kv_head, pos, d], arguments)`` per attention call,
#: ``arguments`` the attention module's call arguments by name
QKVFn = Callable[[Tensor, Tensor, Tensor, dict], None]


def projected_qkv_points(lm: LoadedModel, adapter: ModelAdapter, layer: int, fn: QKVFn) -> list:
    """The hook points that call ``fn`` with ``layer``'s q, k and v on every call of its attention."""
    f = lm.facts
    attention = adapter.attention(layer)
    proj = adapter.projections(layer, f.n_heads, f.n_kv_heads, f.d_head)
    clip = getattr(attention, "clip_qkv", None)
    rotate = None
    if not getattr(lm.model.config, "alibi", False):
        rotate = getattr(inspect.getmodule(type(attention)), "apply_rotary_pos_emb", None)
    widths = {"q": f.d_head, "k": f.d_head, "v": f.d_value}
    call: dict = {}  # the arguments of the attention call under way

    def heads(t: Tensor, which: str) -> Tensor:
        x = t.index_select(-1, proj[which].index.to(t.device))
        return x.view(*x.shape[:-1], -1, widths[which]).transpose(1, 2)  # [batch, head, pos, d]

    def done(q: Tensor, k: Tensor, v: Tensor) -> None:
        tables = call.get("position_embeddings")
        if rotate is not None and tables is not None:
            q, k = rotate(q, k, *tables)
        fn(q, k, v, call)

    def fused(t: Tensor) -> None:
        if clip:
            t = t.clamp(min=-clip, max=clip)
        done(heads(t, "q"), heads(t, "k"), heads(t, "v"))

    def start(arguments: dict) -> None:
        call.clear()
        call.update(arguments)

    points = [(Point(Where.ATTN_CALL, layer), start)]
    if proj["q"].fused:
        return points + [(Point(Where.QKV, layer), fused)]
    pending: dict[str, Tensor] = {}

    def separate(which: str):
        def take(t: Tensor) -> None:
            pending[which] = heads(t, which)
            if len(pending) == 3:
                done(pending.pop("q"), pending.pop("k"), pending.pop("v"))
        return take
    return points + [(Point(w, layer), separate(n)) for w, n in ((Where.Q, "q"), (Where.K, "k"), (Where.V, "v"))]


def key_bias(lm: LoadedModel, arguments: dict, scale: float, batch: int, heads: int, k_len: int) -> Tensor | None:
    """``[batch or 1, head, k_len]``: the bias the family adds to every score of key ``j`` in this call (its ALiBi,
    passed to the attention module as the keyword :data:`lens.adapters.KEY_BIAS` names; scaled with the scores where
    the family scales it), or None."""
    entry = KEY_BIAS.get(getattr(lm.model.config, "model_type", ""))
    bias = arguments.get(entry[0]) if entry else None
    if not isinstance(bias, Tensor):
        return None
    bias = bias.reshape(-1, heads, bias.shape[-1])[..., -k_len:].float()  # BLOOM/Falcon [b*h, 1, k]; MPT [h, 1, max]
    return (bias * scale if entry[1] else bias).expand(bias.shape[0] if bias.shape[0] in (1, batch) else batch,
                                                       heads, k_len)


def reads_cache(model_kwargs: dict) -> bool:
    """True when a forward call of the model (its keyword arguments, as :data:`lens.hooks.Where.CALL` gives them)
    reads a KV cache that already holds positions: projected k and v are then the new positions only."""
    cache = model_kwargs.get("past_key_values")
    length = getattr(cache, "get_seq_length", None)
    if length is not None:
        return int(length()) > 0
    return isinstance(cache, tuple) and len(cache) > 0
