"""Ablation and activation patching of heads and MLPs, many component sets per forward.

Methods (what replaces a component's output on the clean prompts):

- ``zero``: zeros.
- ``mean``: its mean over the reference set, per position: the task's corrupted prompts of
  the same template and length (Wang et al.'s ABC mean, ``MeanOver.TEMPLATE``, pooled over
  every batch of that class), of every prompt of the same token length whatever its template
  (``MeanOver.LENGTH``: templates of one length averaged position by position out of
  alignment, for comparison), or of the same encoded batch (``MeanOver.BATCH``).
- ``resample``: its output on a randomly drawn corrupted prompt (seeded).
- ``patch``: its output on the paired corrupted prompt (activation patching, noising
  direction: the effect is metric(patched) - metric(clean)).

:func:`prepare` runs the clean and reference passes once; :func:`score_sets` then scores
any number of component sets, batching ``max_rows // batch`` sets into one forward.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from attnlens.analyses.circuits._hooks import Acts, CircuitModules, capture, last_logits
from attnlens.analyses.circuits.metrics import Metric, per_row
from attnlens.analyses.circuits.tasks import EncodedTask, TaskError
from attnlens.formats.vocab import MeanOver, Method
from lens.edits import Edit, Over, Zero, mean_ablation, patch, resample_ablation
from lens.heads import HeadRef, MlpRef

HeadOrMlp = HeadRef | MlpRef  # what ablation and patching replace (lens.heads.Component adds the residual)


@dataclass
class Context:
    """A task ready for ablation: reference activations per batch and the clean baseline."""

    parts: CircuitModules
    enc: EncodedTask
    method: Method
    metric: Metric
    seed: int
    refs: list[Acts | None]
    clean_rows: list[torch.Tensor]  # the metric per clean row, per batch
    perms: list[torch.Tensor] = field(default_factory=list)  # resample: source row per row
    mean_over: MeanOver = MeanOver.TEMPLATE
    corrupted_rows: list[torch.Tensor] = field(default_factory=list)  # the metric per corrupted row, per batch

    @property
    def baseline(self) -> float:
        return float(torch.cat(self.clean_rows).mean())

    @property
    def n_examples(self) -> int:
        return self.enc.n_examples

    @property
    def corrupted_baseline(self) -> float:
        """The metric of the whole model on the corrupted prompts (with the clean answers)."""
        return float(torch.cat(self.corrupted_rows).mean())


def prepare(lm, enc: EncodedTask, method: Method | str, metric: Metric | str, *, seed: int = 0,
            mean_over: MeanOver | str = MeanOver.TEMPLATE, residuals: bool = False) -> Context:
    """Clean metric per row and, except for zero ablation, the reference activations.

    For ``mean``, each batch's reference is the per-position mean over its ``mean_over``
    class (``refs[i]`` then has a batch axis of 1). ``residuals`` also records the reference
    residual streams (edge-level evaluation needs them).
    """
    method, metric, mean_over = Method(method), Metric(metric), MeanOver(mean_over)
    parts = CircuitModules(lm)
    refs, clean_rows, perms, corr_rows = [], [], [], []
    g = torch.Generator().manual_seed(seed)
    for b in enc.batches:
        logits = last_logits(parts, b.clean)[0]
        clean_rows.append(per_row(metric, logits, b.answer, b.distractor))
        ref = None if method is Method.ZERO else capture(parts, b.corrupted, residuals=residuals)
        refs.append(ref)
        if ref is not None:
            corr_rows.append(per_row(metric, ref.logits, b.answer, b.distractor))
        perms.append(torch.randint(0, b.size, (b.size,), generator=g))
    if method is Method.MEAN:
        refs = _class_means(enc, refs, mean_over)
    return Context(parts, enc, method, metric, seed, refs, clean_rows, perms, mean_over, corr_rows)


def _class_means(enc: EncodedTask, refs: list[Acts], mean_over: MeanOver) -> list[Acts]:
    """Each batch's reference replaced by the per-position mean over its class."""
    if mean_over is MeanOver.BATCH:
        return [r.mean() for r in refs]
    classes: dict = {}
    for i, b in enumerate(enc.batches):
        key = b.position_class if mean_over is MeanOver.TEMPLATE else b.clean.shape[1]
        classes.setdefault(key, []).append(i)
    out: list = [None] * len(refs)
    for members in classes.values():
        m = Acts.cat([refs[i] for i in members]).mean()
        for i in members:
            out[i] = m
    return out


def edits_for(ctx: Context, batch: int, components: Sequence[HeadOrMlp], pos: int | None = None) -> list[Edit]:
    """The edits that apply ``ctx.method`` to ``components`` on task batch ``batch``."""
    if ctx.method is Method.ZERO:
        return [Edit(c, Zero(), pos) for c in components]
    ref = ctx.refs[batch].reference
    if ctx.method is Method.MEAN:  # the reference is already the class mean (one row)
        return mean_ablation(ref, components, over=Over.BATCH, position=pos)
    if ctx.method is Method.RESAMPLE:
        return resample_ablation(ref, components, batch=ctx.enc.batches[batch].size, rows=ctx.perms[batch],
                                 position=pos)
    return patch(ref, components, position=pos)


def score_sets(ctx: Context, sets: Sequence[Sequence[HeadOrMlp]], *, pos: int | None = None,
               max_rows: int = 64) -> np.ndarray:
    """The task metric (mean over all examples) with each set of components ablated: ``[len(sets)]``."""
    total = torch.zeros(len(sets), dtype=torch.float64)
    for i, b in enumerate(ctx.enc.batches):
        groups = [edits_for(ctx, i, s, pos) for s in sets]
        logits = last_logits(ctx.parts, b.clean, groups, max_rows=max_rows)  # [G, N, vocab]
        for g in range(len(sets)):
            total[g] += per_row(ctx.metric, logits[g], b.answer, b.distractor).double().sum()
    return (total / ctx.n_examples).numpy()


def all_heads(facts) -> list[HeadRef]:
    return [HeadRef(layer, h) for layer in range(facts.n_layers) for h in range(facts.n_heads)]


def random_sets(pool: Sequence[HeadOrMlp], size: int, k: int, seed: int) -> list[list[HeadOrMlp]]:
    """``k`` random sets of ``size`` components from ``pool`` (seeded, without replacement within a set)."""
    if not 0 < size <= len(pool):
        raise TaskError(f"cannot draw random sets of {size} components from {len(pool)}")
    rng = random.Random(seed)
    return [sorted(rng.sample(list(pool), size), key=str) for _ in range(k)]


def per_position_effects(ctx: Context, components: Sequence[HeadOrMlp], *, max_rows: int = 64) -> np.ndarray:
    """``[component, pos]``: metric change when one component is replaced at one position.

    Needs prompts of one token length (one template); uses the task's first batch length.
    """
    lengths = {b.clean.shape[1] for b in ctx.enc.batches}
    if len(lengths) != 1:
        raise TaskError(f"per-position patching needs prompts of one token length, the task has lengths "
                        f"{sorted(lengths)}: use one template")
    n_pos = lengths.pop()
    sets = [[c] for c in components]
    out = np.zeros((len(components), n_pos))
    for p in range(n_pos):
        out[:, p] = score_sets(ctx, sets, pos=p, max_rows=max_rows) - ctx.baseline
    return out
