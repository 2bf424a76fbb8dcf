"""ACT calibration on a task: the model-driving half of :mod:`analyses.calibration`.

:func:`head_search` calibrates one head at a time on a calibration split (ACT's head choice);
:func:`run_calibration` measures the task with and without calibration of the chosen heads,
and with the random-column control (the same heads, as many random non-sink columns, per
seed). The result is a :class:`formats.Curves` over the three conditions (accuracy and the
task metric), with the per-head search as :class:`formats.HeadScores` when it ran.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from attnlens.formats.curves import Curves
from attnlens.formats.head_scores import HeadScores
from attnlens.formats.provenance import Provenance
from attnlens.pipelines.progress import SILENT, Progress


def _logits(lm, ids: torch.Tensor, entry=None) -> torch.Tensor:
    from lens.attention import attention_mode

    with torch.no_grad():
        if entry is None:
            return lm.model(input_ids=ids.to(lm.device), logits_to_keep=1).logits[:, -1].float().cpu()
        with attention_mode(lm, entry):
            return lm.model(input_ids=ids.to(lm.device), logits_to_keep=1).logits[:, -1].float().cpu()


def task_rows(lm, enc, entry_factory=None) -> dict[str, torch.Tensor]:
    """Accuracy and logit difference per example (``entry_factory()`` gives the attention entry,
    a fresh one per batch, or None for the plain model)."""
    from attnlens.analyses.circuits.metrics import Metric, per_row

    acc, ld = [], []
    for b in enc.batches:
        logits = _logits(lm, b.clean, entry_factory() if entry_factory else None)
        acc.append(per_row(Metric.ACC, logits, b.answer, b.distractor))
        ld.append(per_row(Metric.LOGIT_DIFF, logits, b.answer, b.distractor) if enc.has_distractors
                  else torch.full_like(acc[-1], float("nan")))
    return {"accuracy": torch.cat(acc), "logit_diff": torch.cat(ld)}


def head_search(lm, enc, *, beta: float, threshold: float, first_layer: int = 2, max_rows: int = 64,
                progress: Progress = SILENT) -> tuple[np.ndarray, float]:
    """Per head: the change of the mean logit difference when only that head is calibrated
    (``[layer, head]``, NaN below ``first_layer``), and the plain model's value."""
    from attnlens.analyses.calibration import ActCalibration
    from attnlens.analyses.circuits.metrics import Metric, per_row

    f = lm.facts
    heads = [(la, h) for la in range(first_layer, f.n_layers) for h in range(f.n_heads)]
    base = float(task_rows(lm, enc)["logit_diff"].mean())
    total = np.zeros(len(heads))
    per = max(1, max_rows // max(b.size for b in enc.batches))
    task = progress.task(f"ACT head search: {len(heads)} heads one at a time", total=len(heads) * len(enc.batches))
    for b in enc.batches:
        for s in range(0, len(heads), per):
            chunk = heads[s:s + per]
            entry = ActCalibration(groups=[{la: [h]} for la, h in chunk], beta=beta, threshold=threshold)
            logits = _logits(lm, b.clean.repeat(len(chunk), 1), entry).view(len(chunk), b.size, -1)
            for g in range(len(chunk)):
                total[s + g] += float(per_row(Metric.LOGIT_DIFF, logits[g], b.answer, b.distractor).sum())
            task.advance(len(chunk))
    effects = np.full((f.n_layers, f.n_heads), np.nan)
    for (la, h), v in zip(heads, total / enc.n_examples):
        effects[la, h] = v - base
    return effects, base


def run_calibration(lm, enc, *, task_name: str, heads: Mapping[int, Sequence[int]] | None = None,
                    search_enc=None, top_k: int | None = None, beta: float = 0.4, threshold: float = 0.1,
                    first_layer: int = 2, seeds: Sequence[int] = (0, 1, 2), max_rows: int = 64,
                    progress: Progress = SILENT) -> tuple[Curves, HeadScores | None]:
    """Accuracy and logit difference on ``enc`` without calibration, with ACT on ``heads`` and
    with the random-column control (one run per seed).

    ``heads``: the heads to calibrate; None: chosen by :func:`head_search` on ``search_enc``
    (the heads whose calibration alone raised the logit difference, at most ``top_k``), or,
    without ``search_enc``, every head of the layers from ``first_layer`` on.
    """
    from attnlens.analyses.calibration import ActCalibration, select_heads
    from attnlens.formats.errors import SelectionError

    t0 = time.perf_counter()
    f = lm.facts
    search = None
    if heads is None and search_enc is not None:
        effects, base = head_search(lm, search_enc, beta=beta, threshold=threshold, first_layer=first_layer,
                                    max_rows=max_rows, progress=progress)
        heads = select_heads(effects, top_k=top_k, first_layer=first_layer)
        choice = f"ACT head search on {search_enc.n_examples} other prompts: heads whose calibration alone raised " \
                 f"the logit difference" + (f" (top {top_k})" if top_k else "")
        search = HeadScores("calibration", f"{task_name}_head_search", effects,
                            Provenance.for_model(f, prompts=f"{search_enc.n_examples} {task_name} prompts",
                                                 inputs=[b.clean.tolist() for b in search_enc.batches]),
                            description="change of the mean logit difference when only this head is ACT-calibrated",
                            params={"beta": beta, "threshold": threshold, "first_layer": first_layer}, scale="signed",
                            summary={"baseline_logit_diff": base, "heads_helping": int(np.nansum(effects > 0)),
                                     "selected": {str(k): v for k, v in heads.items()}})
    elif heads is None:
        heads = {la: list(range(f.n_heads)) for la in range(first_layer, f.n_layers)}
        choice = f"every head of layers {first_layer}-{f.n_layers - 1} (no head search)"
    else:
        choice = "given"
    heads = {int(k): [int(h) for h in v] for k, v in heads.items() if v}
    if not heads:
        raise SelectionError("no head to calibrate: the head search found none whose calibration helps")
    n_heads = sum(len(v) for v in heads.values())
    task = progress.task(f"ACT on {n_heads} heads: without, with, random control x {len(seeds)}",
                         total=2 + len(seeds))
    plain = task_rows(lm, enc)
    task.advance()
    counts = {}

    def act_entry():
        e = ActCalibration(heads, beta=beta, threshold=threshold)
        entries.append(e)
        return e

    entries: list = []
    act = task_rows(lm, enc, act_entry)
    counts["act_columns_scaled"] = sum(sum(e.counts.values()) for e in entries)
    task.advance()
    randoms = []
    for s in seeds:
        entries = []
        gen_seed = iter(range(s * 1000, s * 1000 + 10_000))
        randoms.append(task_rows(lm, enc, lambda: _random_entry(heads, beta, threshold, next(gen_seed), entries)))
        counts[f"random_columns_scaled_seed{s}"] = sum(sum(e.counts.values()) for e in entries)
        task.advance()
    acc = np.array([[float(plain["accuracy"].mean()), float(act["accuracy"].mean()), float(r["accuracy"].mean())]
                    for r in randoms])
    ld = np.array([[float(plain["logit_diff"].mean()), float(act["logit_diff"].mean()), float(r["logit_diff"].mean())]
                   for r in randoms])
    prov = Provenance.for_model(f, seeds=tuple(seeds), prompts=f"{enc.n_examples} {task_name} prompts",
                                inputs=[b.clean.tolist() for b in enc.batches])
    changed = int((plain["accuracy"] != act["accuracy"]).sum())
    summary = {"accuracy_without": acc[0, 0], "accuracy_act": acc[0, 1], "accuracy_random_mean": float(acc[:, 2].mean()),
               "accuracy_random_per_seed": acc[:, 2].tolist(), "logit_diff_without": ld[0, 0], "logit_diff_act": ld[0, 1],
               "logit_diff_random_mean": float(ld[:, 2].mean()), "examples_whose_answer_changed": changed,
               "n_examples": enc.n_examples, "n_heads_calibrated": n_heads, **counts,
               "seconds": time.perf_counter() - t0}
    curves = Curves("calibration", f"{task_name}_act", x=np.arange(3), x_ticks=["without", "ACT (sink columns)",
                                                                                 "random columns (control)"],
                    series={"accuracy": acc, "logit diff": ld}, provenance=prov, x_label="condition",
                    y_label="accuracy / logit diff",
                    description=f"ACT calibration on {task_name}: sink columns x {beta}, freed mass to the other keys; "
                                "the control scales as many random non-sink columns (one run per seed)",
                    params={"beta": beta, "threshold": threshold, "first_layer": first_layer, "head_choice": choice,
                            "heads": {str(k): v for k, v in heads.items()}, "seeds": list(seeds),
                            "keep_first_sink": True, "paper": "Yu et al. 2024 (ACT)"},
                    summary=summary)
    return curves, search


def _random_entry(heads, beta, threshold, seed, entries):
    from attnlens.analyses.calibration import ActCalibration, Columns

    e = ActCalibration(heads, beta=beta, threshold=threshold, columns=Columns.RANDOM, seed=seed)
    entries.append(e)
    return e
