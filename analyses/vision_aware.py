"""Vision-aware heads: VHD, T-VHD and the VHR scale factors (He et al. 2025, "Cracking the Code of
Hallucination in LVLMs with Vision-aware Head Divergence").

A head's output ``z`` is its slice of the input of the attention output projection
(``o_proj``), ``[d_head]`` per position. For the same text, run once with the image and
once without; at each compared position (the prompt's last position, then each
generated token fed back identically to both runs):

- **VHD** of a head: the Euclidean distance ``|| z_image - z_text ||``. A head's score is
  its mean VHD over positions and prompts; high = vision-aware. An image-blind head
  (one whose output does not depend on the image) has VHD 0.
- **T-VHD** of a position: the mean of the top-``k`` head VHDs there (how much the whole
  model looks at the image while producing that token).
- **VHR** (:func:`vhr_scales`): per layer, drop outlier heads (Tukey's fence: VHD above
  Q3 + 1.5 IQR of the layer), take the median of the others, and scale the heads above
  that median by ``alpha`` (2 in the paper); the outliers are left alone unless
  ``scale_outliers``. :func:`random_scales_like` draws the control: the same number of
  heads per layer, chosen at random.

Inputs come from :func:`analyses.vlm_collect.head_output_pairs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.analyses.result import HeadScores, Provenance
from attnlens.formats.errors import AnalysisError
from lens.edits import Edit, Scale
from lens.heads import HeadRef


class VisionAwareError(AnalysisError):
    """Head outputs that do not pair up, or VHR settings out of range."""


@dataclass(frozen=True)
class HeadOutputPair:
    """One prompt's head outputs with and without the image at the same text positions:
    ``z_image`` and ``z_text`` are ``[step, layer, head, d_head]``; step 0 is the prompt's last
    position, step t > 0 the t-th generated token fed back."""

    z_image: Float[Tensor, "step layer head d_head"]
    z_text: Float[Tensor, "step layer head d_head"]
    label: str = ""

    def __post_init__(self) -> None:
        if self.z_image.shape != self.z_text.shape or self.z_image.ndim != 4:
            raise VisionAwareError(f"z_image {tuple(self.z_image.shape)} and z_text {tuple(self.z_text.shape)} "
                                   "must both be [step, layer, head, d_head]")


def head_divergence(pair: HeadOutputPair) -> Float[Tensor, "step layer head"]:
    """VHD of every head at every step of one prompt."""
    return (pair.z_image.double() - pair.z_text.double()).norm(dim=-1)


def token_divergence(vhd: Float[Tensor, "step layer head"], k: int) -> Float[Tensor, " step"]:
    """T-VHD: per step, the mean of the ``k`` largest head VHDs."""
    n = vhd.shape[1] * vhd.shape[2]
    if not 1 <= k <= n:
        raise VisionAwareError(f"k must be in 1-{n} (the model's heads), got {k}")
    return vhd.reshape(vhd.shape[0], -1).topk(k, dim=-1).values.mean(-1)


def vision_aware_scores(pairs: Sequence[HeadOutputPair], *, provenance: Provenance, k: int = 20,
                        first_step_only: bool = False) -> HeadScores:
    """Mean VHD per ``[layer, head]`` over prompts and steps (only step 0 with ``first_step_only``).

    Arrays: ``t_vhd [prompt, step]`` (NaN past a prompt's last step), ``vhd_first_step
    [layer, head]`` and ``rank [layer, head]`` (0 = most vision-aware).
    """
    if not pairs:
        raise VisionAwareError("no head-output pairs given: VHD needs at least one prompt")
    shapes = {tuple(p.z_image.shape[1:3]) for p in pairs}
    if len(shapes) != 1:
        raise VisionAwareError(f"prompts disagree on [layer, head]: {sorted(shapes)}")
    n_layers, n_heads = shapes.pop()
    vhds = [head_divergence(p) for p in pairs]
    steps = [v[:1] if first_step_only else v for v in vhds]
    total = torch.cat(steps).mean(0).numpy()
    first = torch.stack([v[0] for v in vhds]).mean(0).numpy()
    longest = max(v.shape[0] for v in vhds)
    t_vhd = np.full((len(vhds), longest), np.nan)
    for i, v in enumerate(vhds):
        t_vhd[i, : v.shape[0]] = token_divergence(v, k).numpy()
    order = np.argsort(-total.ravel(), kind="stable")
    rank = np.empty(total.size, dtype=np.int64)
    rank[order] = np.arange(total.size)
    top = [[int(i // n_heads), int(i % n_heads), round(float(total.flat[i]), 4)] for i in order[:20]]
    per_layer = total.mean(1)
    return HeadScores(
        analysis="vision_aware", metric="vhd", scores=total, provenance=provenance,
        description="mean Euclidean distance between each head's output (the output projection's input) with and without the "
                    "image, same text; high = vision-aware",
        params={"k": k, "first_step_only": first_step_only, "n_prompts": len(pairs)},
        summary={"top_heads": top, "mean_vhd": float(total.mean()), "max_vhd": float(total.max()),
                 "t_vhd_mean_first_step": float(np.nanmean(t_vhd[:, 0])),
                 "top_layers": [int(i) for i in np.argsort(-per_layer)[:5]]},
        arrays={"t_vhd": t_vhd, "vhd_first_step": first, "rank": rank.reshape(n_layers, n_heads),
                "mean_per_layer": per_layer},
    )


def vhr_scales(vhd: Float[np.ndarray, "layer head"], *, alpha: float = 2.0, fence: float = 1.5,
               scale_outliers: bool = False) -> Float[np.ndarray, "layer head"]:
    """VHR's factor per head: ``alpha`` for heads above their layer's median VHD (outliers
    excluded from the median by Tukey's fence at ``fence`` IQR), 1 elsewhere."""
    vhd = np.asarray(vhd, dtype=np.float64)
    if vhd.ndim != 2:
        raise VisionAwareError(f"vhd must be [layer, head], got shape {vhd.shape}")
    if not alpha > 0:
        raise VisionAwareError(f"alpha must be > 0, got {alpha}")
    if not fence >= 0:
        raise VisionAwareError(f"fence must be >= 0 (IQRs above Q3), got {fence}")
    scales = np.ones_like(vhd)
    for layer, row in enumerate(vhd):
        q1, q3 = np.percentile(row, [25, 75])
        outlier = row > q3 + fence * (q3 - q1)
        median = np.median(row[~outlier])
        chosen = (row > median) & (scale_outliers | ~outlier)
        scales[layer, chosen] = alpha
    return scales


def random_scales_like(scales: Float[np.ndarray, "layer head"], *, seed: int) -> Float[np.ndarray, "layer head"]:
    """The random-head control of ``scales``: per layer, the same factors on randomly chosen heads."""
    rng = np.random.default_rng(seed)
    out = np.ones_like(scales)
    for layer, row in enumerate(np.asarray(scales)):
        chosen = row != 1.0
        heads = rng.choice(row.size, size=int(chosen.sum()), replace=False)
        out[layer, heads] = row[chosen]
    return out


def vhr_edits(scales: Float[np.ndarray, "layer head"], *, n_layers: int, n_heads: int) -> list[Edit]:
    """``scales [layer, head]`` as :class:`lens.edits.Edit` s: a :class:`~lens.edits.Scale` on each
    head whose factor is not 1 (run them with :func:`lens.edits.editing`)."""
    scales = np.asarray(scales, dtype=np.float64)
    if scales.shape != (n_layers, n_heads):
        raise VisionAwareError(f"scales must be [layer, head] = [{n_layers}, {n_heads}], got {list(scales.shape)}")
    return [Edit(HeadRef(int(layer), int(head)), Scale(float(scales[layer, head])))
            for layer, head in zip(*np.nonzero(scales != 1.0))]
