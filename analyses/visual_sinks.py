"""Visual attention sinks and image-centric heads (VAR: Kang et al. 2025, "See What You Are Told").

- **Sink dimensions** (:func:`sink_dimensions`): found from the *base language model's*
  massive activations on text (Sun et al. 2024), not hard-coded: a hidden dimension is a
  sink dimension when, in at least ``min_prompt_share`` of the prompts, some token's
  |h| on it exceeds both ``ratio`` x the median |h| of that layer and ``abs_min``.
- **Visual sinks** (:func:`visual_sink_mask`): image tokens whose RMS-normalised hidden
  state ``h / rms(h)`` exceeds ``tau`` (20) in absolute value on a sink dimension, per
  layer (the layer's input hidden state).
- **Image-centric heads** (:func:`image_centric`): a head is image-centric for a query
  when its attention to the image is >= 0.2 and the share of that going to visual sinks
  is <= 0.5. The analysis scores each head by the share of text queries for which it is.
- **Redistribution** (:func:`redistribute`, :func:`var_modifier`): for image-centric
  (head, query) pairs, sink attention x 0.6, the freed mass to the non-sink image tokens
  in proportion to their attention; rows keep their sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError

TAU = 20.0
MIN_IMAGE_ATTENTION = 0.2
MAX_SINK_SHARE = 0.5
SINK_FACTOR = 0.6


class VisualSinkError(AnalysisError):
    """Hidden states, attention or spans that do not fit together, or settings out of range."""


def rms_normalise(h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """``h / sqrt(mean(h^2))`` over the last axis (RMSNorm without its learned scale)."""
    h = h.double()
    return h / h.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


@dataclass(frozen=True)
class SinkDimensions:
    """The sink dimensions and the evidence: per dimension, the share of prompts with a massive
    activation on it and the largest |h| seen; ``hits`` lists (prompt, layer, position, dim, value)."""

    dims: tuple[int, ...]
    prompt_share: dict[int, float]
    max_abs: dict[int, float]
    hits: tuple[tuple[int, int, int, int, float], ...] = field(default=(), repr=False)

    def to_json(self) -> dict:
        return {"dims": list(self.dims), "prompt_share": {str(k): round(v, 3) for k, v in self.prompt_share.items()},
                "max_abs": {str(k): round(v, 1) for k, v in self.max_abs.items()}}


def sink_dimensions(hidden: Sequence[Mapping[int, Float[Tensor, "pos d_model"]]], *, ratio: float = 100.0,
                    abs_min: float = 100.0, min_prompt_share: float = 0.5) -> SinkDimensions:
    """Sink dimensions from the base LM's residual stream on text prompts (``hidden[prompt][layer]``)."""
    if not hidden:
        raise VisualSinkError("no prompts given: sink dimensions need the hidden states of at least one prompt")
    if not 0 < min_prompt_share <= 1:
        raise VisualSinkError(f"min_prompt_share must be in (0, 1], got {min_prompt_share}")
    seen: dict[int, set[int]] = {}
    max_abs: dict[int, float] = {}
    hits = []
    for p, layers in enumerate(hidden):
        for layer, h in layers.items():
            a = h.double().abs()
            big = (a > ratio * float(a.median())) & (a > abs_min)
            for pos, dim in big.nonzero().tolist():
                seen.setdefault(dim, set()).add(p)
                max_abs[dim] = max(max_abs.get(dim, 0.0), float(a[pos, dim]))
                hits.append((p, layer, pos, dim, round(float(h[pos, dim]), 1)))
    share = {d: len(ps) / len(hidden) for d, ps in seen.items()}
    dims = tuple(sorted((d for d, s in share.items() if s >= min_prompt_share), key=lambda d: (-share[d], -max_abs[d])))
    return SinkDimensions(dims=dims, prompt_share=dict(sorted(share.items(), key=lambda kv: -kv[1])),
                          max_abs=max_abs, hits=tuple(hits))


def sink_token_mask(hidden: Float[Tensor, "pos d_model"], dims: Sequence[int], *, tau: float = TAU) -> Bool[Tensor, " pos"]:
    """Tokens whose RMS-normalised hidden state exceeds ``tau`` in |value| on any of ``dims``."""
    if not dims:
        return torch.zeros(hidden.shape[0], dtype=torch.bool)
    return (rms_normalise(hidden)[:, list(dims)].abs() > tau).any(-1)


def visual_sink_mask(hidden: Float[Tensor, "pos d_model"], image_mask: Bool[Tensor, " pos"], dims: Sequence[int],
                     *, tau: float = TAU) -> Bool[Tensor, " pos"]:
    """Sink tokens inside the image (``image_mask``)."""
    if image_mask.shape[0] != hidden.shape[0]:
        raise VisualSinkError(f"image_mask has {image_mask.shape[0]} positions, hidden states {hidden.shape[0]}")
    return sink_token_mask(hidden, dims, tau=tau) & image_mask


def image_centric(weights: Float[Tensor, "... q k"], image_mask: Bool[Tensor, "... k"], sink_mask: Bool[Tensor, "... k"],
                  *, min_image: float = MIN_IMAGE_ATTENTION, max_sink_share: float = MAX_SINK_SHARE
                  ) -> tuple[Bool[Tensor, "... q"], Float[Tensor, "... q"], Float[Tensor, "... q"]]:
    """(image-centric?, image attention, sink share of it) per query; masks broadcast over ``q``."""
    w = weights.double()
    img = (w * image_mask.unsqueeze(-2)).sum(-1)
    sink = (w * (sink_mask & image_mask).unsqueeze(-2)).sum(-1)
    share = torch.where(img > 0, sink / img.clamp_min(1e-30), torch.zeros_like(img))
    return (img >= min_image) & (share <= max_sink_share), img, share


def redistribute(weights: Float[Tensor, "batch head q k"], image_mask: Bool[Tensor, "batch k"],
                 sink_mask: Bool[Tensor, "batch k"], *, factor: float = SINK_FACTOR,
                 centric: Bool[Tensor, "batch head q"] | None = None, min_image: float = MIN_IMAGE_ATTENTION,
                 max_sink_share: float = MAX_SINK_SHARE) -> Float[Tensor, "batch head q k"]:
    """VAR's redistribution: where a (head, query) is image-centric, visual-sink keys keep
    ``factor`` of their weight and the freed mass goes to non-sink image keys in proportion to
    their weight. Other rows, and rows without non-sink image attention, are unchanged.

    ``centric`` overrides which (head, query) pairs are edited (default: :func:`image_centric`
    of ``weights``); the random-head control passes a permuted one.
    """
    if not 0 <= factor <= 1:
        raise VisualSinkError(f"factor must be in [0, 1], got {factor}")
    im = image_mask[:, None, None, :]
    sk = (sink_mask & image_mask)[:, None, None, :]
    rest = im & ~sk
    w = weights
    if centric is None:
        centric, _, _ = image_centric(w, image_mask[:, None, :], sink_mask[:, None, :], min_image=min_image,
                                      max_sink_share=max_sink_share)
    sink_mass = (w * sk).sum(-1, keepdim=True)
    rest_mass = (w * rest).sum(-1, keepdim=True)
    apply = centric.unsqueeze(-1) & (rest_mass > 0)
    freed = (1 - factor) * sink_mass
    boosted = w + freed * (w * rest) / rest_mass.clamp_min(torch.finfo(w.dtype).tiny)
    new = torch.where(sk, w * factor, torch.where(rest, boosted, w))
    return torch.where(apply, new, w)


def var_modifier(image_mask: Bool[Tensor, "batch k"], sinks: Mapping[int, Bool[Tensor, "batch k"]], *,
                 query_mask: Bool[Tensor, "batch k"] | None = None, layers: Sequence[int] | None = None,
                 factor: float = SINK_FACTOR, head_permutation: Mapping[int, Tensor] | None = None):
    """``(layer, weights) -> weights`` applying :func:`redistribute` with layer ``l``'s visual
    sinks ``sinks[l]``, for the queries in ``query_mask`` (default: every query that is not an
    image token). Positions past the masks' length (generated tokens) are text queries.
    Layers not in ``layers`` (default: all in ``sinks``) pass through. ``head_permutation[l]``
    moves the image-centric pattern of layer ``l`` onto other heads (the random-head control:
    as many edited (head, query) pairs, on the wrong heads)."""
    chosen = set(sinks if layers is None else layers)
    queries = ~image_mask if query_mask is None else query_mask

    def modifier(layer: int, weights: Tensor) -> Tensor:
        if layer not in chosen or layer not in sinks:
            return weights
        n_q, k = weights.shape[-2], weights.shape[-1]
        dev = weights.device
        im, sk = _fit(image_mask, k, False).to(dev), _fit(sinks[layer], k, False).to(dev)
        q_ok = _fit(queries, k, True)[:, k - n_q:].to(dev)  # the queries are the last n_q positions
        centric, _, _ = image_centric(weights, im[:, None, :], sk[:, None, :])
        centric = centric & q_ok[:, None, :]
        if head_permutation is not None and layer in head_permutation:
            centric = centric[:, head_permutation[layer].to(dev)]
        return redistribute(weights, im, sk, factor=factor, centric=centric)

    return modifier


def _fit(mask: Tensor, k: int, fill: bool) -> Tensor:
    if mask.shape[-1] >= k:
        return mask[..., :k]
    pad = torch.full((*mask.shape[:-1], k - mask.shape[-1]), fill, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask, pad], dim=-1)


@dataclass(frozen=True)
class VarInput:
    """One image + text prompt: per layer the input hidden state ``[pos, d_model]`` and the
    attention ``[head, q, k]`` of the queries ``queries`` (positions) over all keys, and which
    positions are image tokens."""

    hidden: Mapping[int, Float[Tensor, "pos d_model"]]
    attention: Mapping[int, Float[Tensor, "head q k"]]
    image_mask: Bool[Tensor, " pos"]
    queries: Sequence[int]
    labels: Sequence[str] = ()  # per-position labels (``img0:patch(1,2)``, token text)


def visual_sink_scores(inputs: Sequence[VarInput], dims: SinkDimensions, *, n_layers: int, n_heads: int,
                       provenance: Provenance, tau: float = TAU, min_image: float = MIN_IMAGE_ATTENTION,
                       max_sink_share: float = MAX_SINK_SHARE) -> HeadScores:
    """Per ``[layer, head]`` the share of text queries for which the head is image-centric.

    Arrays: ``image_attention`` and ``sink_share`` ``[layer, head]`` (means over queries and
    prompts), ``visual_sinks_per_layer [layer]`` (mean count per prompt), ``sink_position_counts
    [layer, image token]`` (how often each image-token offset is a visual sink).
    """
    if not inputs:
        raise VisualSinkError("no prompts given: visual sinks need at least one image + text prompt")
    centric = np.zeros((n_layers, n_heads))
    img_att = np.zeros((n_layers, n_heads))
    share = np.zeros((n_layers, n_heads))
    counts = np.zeros(n_layers)
    n_image = int(inputs[0].image_mask.sum())
    positions = np.zeros((n_layers, n_image))
    seen = np.zeros(n_layers)
    examples: dict[str, int] = {}
    for x in inputs:
        image_pos = x.image_mask.nonzero().flatten()
        for layer, h in x.hidden.items():
            sinks = visual_sink_mask(h, x.image_mask, dims.dims, tau=tau)
            counts[layer] += float(sinks.sum())
            if image_pos.numel() == n_image:
                positions[layer] += sinks[image_pos].double().numpy()
            for pos in sinks.nonzero().flatten().tolist():
                label = x.labels[pos] if x.labels else str(pos)
                examples[label] = examples.get(label, 0) + 1
            a = x.attention.get(layer)
            if a is None:
                continue
            if a.shape[-1] != h.shape[0] or a.shape[-2] != len(x.queries):
                raise VisualSinkError(f"attention of layer {layer} is {tuple(a.shape)}, expected [head, "
                                      f"{len(x.queries)}, {h.shape[0]}]")
            c, im, sh = image_centric(a, x.image_mask, sinks, min_image=min_image, max_sink_share=max_sink_share)
            centric[layer] += c.double().mean(-1).numpy()
            img_att[layer] += im.mean(-1).numpy()
            share[layer] += sh.mean(-1).numpy()
            seen[layer] += 1
    with np.errstate(invalid="ignore"):
        centric, img_att, share = (np.where(seen[:, None] > 0, a / np.maximum(seen[:, None], 1), np.nan)
                                   for a in (centric, img_att, share))
    n = len(inputs)
    per_layer = counts / n
    top = sorted(examples.items(), key=lambda kv: -kv[1])[:12]
    return HeadScores(
        analysis="visual_sinks", metric="image_centric", scores=centric, provenance=provenance,
        description=f"share of text queries for which the head attends >= {min_image} to the image with "
                    f"<= {max_sink_share} of that on visual sinks (RMS-normalised |h| > {tau} on sink dims)",
        params={"tau": tau, "min_image": min_image, "max_sink_share": max_sink_share, "n_prompts": n,
                "sink_dims": list(dims.dims)},
        summary={"sink_dims": dims.to_json(), "visual_sinks_per_prompt": round(float(counts.sum() / n), 2),
                 "layers_with_visual_sinks": [int(i) for i in np.nonzero(per_layer > 0)[0]],
                 "most_frequent_sink_tokens": [[k, v] for k, v in top],
                 "image_centric_heads_over_half_queries": int(np.nansum(centric > 0.5)), "n_heads": int(centric.size)},
        arrays={"image_attention": img_att, "sink_share": share, "visual_sinks_per_layer": per_layer,
                "sink_position_counts": positions / n},
    )
