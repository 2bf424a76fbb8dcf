"""Model-side data collection for the head analyses (the analyses themselves are pure functions).

Each function runs ``lm`` and returns exactly the input one analysis takes, from captured
patterns (``source="pattern"``) or from the statistics kernel (``source="kernel"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from attnlens.analyses.sinks import SinkInput, key_stats_from_kernel, key_stats_from_pattern
from attnlens.analyses.streaming import masses_from_pattern

Source = Literal["pattern", "kernel"]


def _ids(lm, prompt: str | Tensor, chat: bool) -> Tensor:
    return prompt.reshape(1, -1) if isinstance(prompt, Tensor) else lm.encode(prompt, chat=chat)


@torch.no_grad()
def sink_inputs(lm, prompts: Sequence[str | Tensor], *, source: Source = "pattern", chat: bool = False,
                hidden: bool = True, on_prompt: Callable[[], None] | None = None) -> list[SinkInput]:
    """One :class:`SinkInput` per prompt (all layers; residual stream per layer when ``hidden``)."""
    import lens

    out = []
    n_layers = lm.facts.n_layers
    for prompt in prompts:
        ids = _ids(lm, prompt, chat)
        sites = ([lens.Site.PATTERN] if source == "pattern" else []) + ([lens.Site.RESID_POST] if hidden else [])
        if source == "pattern":
            cap = lens.run(lm, ids, sites=sites).capture
            layers = {layer: key_stats_from_pattern(cap.pattern(layer), lm.facts.causal) for layer in range(n_layers)}
        else:
            from attnlens.kernels import StatsSpec
            from lens.recording.stats import stats_mode

            with stats_mode(lm.model, StatsSpec(sink_tokens=1, window=0, key_stats=True)) as rec:
                if hidden:
                    cap = lens.run(lm, ids, sites=sites).capture
                else:
                    lm.model(ids.to(lm.device))
            layers = {layer: key_stats_from_kernel(rec.stats[layer][0], lm.facts.causal) for layer in range(n_layers)}
        res = {layer: cap.get(lens.Site.RESID_POST, layer)[0] for layer in range(n_layers)} if hidden else {}
        out.append(SinkInput(layers=layers, tokens=lm.tokens(ids[0]), hidden=res))
        if on_prompt:
            on_prompt()
    return out


def repeated_tokens(lm, *, repeat_len: int, batch: int, seed: int = 0) -> tuple[Tensor, int]:
    """``[batch, offset + 2 * repeat_len]`` ids: the tokenizer's BOS (if it adds one) then r + r,
    r drawn uniformly from ordinary (non-special) token ids with ``seed``. Returns (ids, offset)."""
    tok = lm.tokenizer
    prefix = list(tok("", add_special_tokens=True).input_ids)
    special = set(getattr(tok, "all_special_ids", []) or [])
    vocab = min(lm.facts.vocab_size, len(tok))
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, vocab, (batch, repeat_len * 4), generator=g)
    rows = []
    for row in r.tolist():
        row = [t for t in row if t not in special][:repeat_len]
        rows.append(prefix + row + row)
    return torch.tensor(rows, dtype=torch.long), len(prefix)


@torch.no_grad()
def taxonomy_patterns(lm, *, repeat_len: int = 50, batch: int = 4, seed: int = 0) -> tuple[dict[int, Tensor], int]:
    """Every layer's pattern on repeated random sequences, and the prefix length (offset)."""
    import lens

    ids, offset = repeated_tokens(lm, repeat_len=repeat_len, batch=batch, seed=seed)
    cap = lens.run(lm, ids, sites=[lens.Site.PATTERN]).capture
    return {layer: cap.pattern(layer) for layer in range(lm.facts.n_layers)}, offset


@torch.no_grad()
def streaming_masses(lm, prompts: Sequence[Tensor], *, sink: int, recent: int, source: Source = "pattern",
                     on_prompt: Callable[[], None] | None = None) -> list[dict[int, tuple[Tensor, Tensor]]]:
    """Per prompt, layer -> (sink mass, recent-window mass) ``[1, head, q]`` over the full prefill."""
    import lens

    runs = []
    for ids in prompts:
        ids = ids.reshape(1, -1)
        if source == "pattern":
            cap = lens.run(lm, ids, sites=[lens.Site.PATTERN]).capture
            runs.append({layer: masses_from_pattern(cap.pattern(layer), sink=sink, recent=recent)
                         for layer in range(lm.facts.n_layers)})
        else:
            from attnlens.kernels import StatsSpec
            from lens.recording.stats import stats_mode

            with stats_mode(lm.model, StatsSpec(sink_tokens=sink, window=recent, key_stats=False)) as rec:
                lm.model(ids.to(lm.device))
            runs.append({layer: (rec.stats[layer][0].sink_mass, rec.stats[layer][0].window_mass)
                         for layer in range(lm.facts.n_layers)})
        if on_prompt:
            on_prompt()
    return runs


def needle_accuracy(lm, trials, *, heads: Sequence[tuple[int, int]] = (), max_new_tokens: int = 40,
                    on_trial: Callable[[], None] | None = None) -> float:
    """Share of trials answered with ROUGE-1 recall > 0.5 while ``heads`` are zero-ablated."""
    import lens
    from attnlens.analyses.decode import decode_trials
    from attnlens.analyses.retrieval import RECALL_THRESHOLD

    traces = decode_trials(lm, trials, max_new_tokens=max_new_tokens, source="none",
                           edits=lens.zero_ablation(heads), on_trial=on_trial)
    return sum(t.recall > RECALL_THRESHOLD for t in traces) / len(traces)
