"""Driving the model for NIAH: greedy decoding that records each step's top-1 key per head.

This is the model-side half of the retrieval analysis (the scorer in
:mod:`analyses.retrieval` is pure). The prompt minus its last token is prefilled with
the model's own attention (nothing recorded, so any length fits); the decode steps run
one query each, recorded either from captured patterns (``source="pattern"``, rows of
``[head, k]``) or from the statistics kernel's ``argmax`` (``source="kernel"``), so
neither path ever builds an N x N matrix. ``edits`` (head ablations) apply to the
prefill and every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from attnlens.analyses.niah import NiahTrial, rouge1_recall
from attnlens.analyses.retrieval import DecodeTrace

Source = Literal["pattern", "kernel", "none"]


def stop_ids(lm) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the generation config's EOS ids."""
    ids = {lm.tokenizer.eos_token_id}
    gen = getattr(lm.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {int(i) for i in ids if i is not None}


@torch.no_grad()
def greedy_decode(lm, input_ids: Int[Tensor, " pos"], *, max_new_tokens: int = 40, source: Source = "pattern",
                  edits: Sequence = ()) -> tuple[Int[Tensor, " step"], Int[Tensor, "step layer head"] | None]:
    """Greedy tokens and (unless ``source="none"``) the top-1 key of every head at every step."""
    import lens

    ids = input_ids.reshape(1, -1).to(lm.device)
    if ids.shape[1] < 2:
        raise lens.PromptError("prompt must be at least 2 tokens for recorded decoding")
    lm.check_length(ids, extra=max_new_tokens)
    model, stops = lm.model, stop_ids(lm)
    with ExitStack() as stack:
        if edits:
            stack.enter_context(lens.capture(lm, sites=[lens.Site.RESID_POST], layers=[0], edits=edits))
        out = model(ids[:, :-1], use_cache=True)
    cache = out.past_key_values
    generated: list[int] = []
    tops: list[Tensor] = []
    cur = ids[:, -1:]
    with ExitStack() as stack:
        cap = rec = None
        if source == "pattern":
            cap = stack.enter_context(lens.capture(lm, sites=[lens.Site.PATTERN], edits=edits))
        elif edits:
            stack.enter_context(lens.capture(lm, sites=[lens.Site.RESID_POST], layers=[0], edits=edits))
        if source == "kernel":
            from attnlens.kernels import StatsSpec
            from lens.recording.stats import stats_mode

            rec = stack.enter_context(stats_mode(model, StatsSpec(sink_tokens=0, window=0, key_stats=False)))
        for step in range(max_new_tokens):
            out = model(cur, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            if cap is not None:
                tops.append(torch.stack([cap.steps[step][lens.SiteKey(lens.Site.PATTERN, layer)][0, :, -1].argmax(-1)
                                         for layer in range(lm.facts.n_layers)]))
                cap.steps[step] = {}  # the row is consumed; keep memory flat
            if rec is not None:
                tops.append(torch.stack([rec.stats[layer][step].argmax[0, :, -1]
                                         for layer in range(lm.facts.n_layers)]))
            generated.append(token)
            if token in stops:
                break
            cur = torch.tensor([[token]], device=ids.device)
    gen = torch.tensor(generated, dtype=torch.long)
    return gen, (torch.stack(tops).cpu() if tops else None)


def decode_trials(lm, trials: Sequence[NiahTrial], *, max_new_tokens: int = 40, source: Source = "pattern",
                  edits: Sequence = (), on_trial: Callable[[], None] | None = None) -> list[DecodeTrace]:
    """Decode every trial; each trace carries the answer's ROUGE-1 recall of the needle."""
    traces = []
    for trial in trials:
        gen, top1 = greedy_decode(lm, trial.input_ids, max_new_tokens=max_new_tokens, source=source, edits=edits)
        answer = lm.tokenizer.decode(gen, skip_special_tokens=True).strip()
        if top1 is None:
            top1 = torch.zeros((len(gen), lm.facts.n_layers, lm.facts.n_heads), dtype=torch.long) - 1
        traces.append(DecodeTrace(prompt_ids=trial.input_ids, generated=gen, top1=top1,
                                  needle_span=trial.needle_span, recall=rouge1_recall(trial.reference, answer),
                                  answer=answer, length=trial.length, depth=trial.depth))
        if on_trial:
            on_trial()
    return traces
