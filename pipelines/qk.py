"""QK attribution workflows: the decomposition on one prompt, and head loadings over a prompt set; each
returns a torch-free result (``lens heads qk`` and ``lens heads loadings`` call these, and so can a
notebook; nothing is written here)."""

from __future__ import annotations

from collections.abc import Sequence

from attnlens.formats.loadings import HeadLoadings
from attnlens.formats.provenance import Provenance
from attnlens.formats.qk import QKResult
from attnlens.pipelines.progress import SILENT, Progress
from lens.errors import PromptError, SelectionError


def answer_ids(lm, answers: Sequence[str]) -> list[int]:
    """One token id per answer string (as the tokenizer splits it, without special tokens)."""
    out = []
    for a in answers:
        if not isinstance(a, str) or not a:
            raise PromptError(f"an answer must be non-empty text, got {a!r}")
        ids = lm.tokenizer(a, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise PromptError(f"answer {a!r} is {len(ids)} tokens for this tokenizer, expected one "
                              "(try it with a leading space, e.g. ' Mary')")
        out.append(int(ids[0]))
    return out


def run_qk(lm, prompt: str, layer: int, head: int, *, query_pos: int = -1, key_pos: int | None = None,
           answers: Sequence[str] = ()) -> QKResult:
    """Head ``(layer, head)``'s scores from ``query_pos`` (-1: the last token) to every key, decomposed
    into query-side x key-side component terms (see :mod:`analyses.qk_attribution`); ``key_pos``
    (default: the head's argmax key) is the key the result is about; ``answers``: tokens the head's
    OV output is projected on."""
    from attnlens.analyses.qk_attribution import qk_attribution

    ids = lm.encode(prompt)
    a = qk_attribution(lm, ids, layer, head, query_pos=query_pos, key_pos=key_pos, answers=answer_ids(lm, answers))
    prov = Provenance.for_model(lm.facts, prompts="1 prompt", inputs=[prompt])
    return a.to_result(prov)


def run_loadings(lm, prompts: Sequence[str], layer: int, head: int, *, name: str | None = None,
                 progress: Progress = SILENT) -> HeadLoadings:
    """Head ``(layer, head)``'s loadings over ``prompts``: per earlier head, the mean query-side and key-side
    share of its score from the last token to its argmax key (:func:`analyses.qk_attribution.head_loadings`)."""
    from attnlens.analyses.qk_attribution import head_loadings

    if not prompts:
        raise PromptError("`prompts` is empty: head loadings need at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise PromptError(f"`prompts` entry {i} is empty: give the text of a prompt")
    f = lm.facts
    if not 0 <= layer < f.n_layers:
        raise SelectionError(f"layer {layer} is out of range: {f.name} has layers 0-{f.n_layers - 1}")
    if layer == 0:
        raise SelectionError(f"`layer` 0 has no earlier heads to load on: pick a layer 1-{f.n_layers - 1}")
    if not 0 <= head < f.n_heads:
        raise SelectionError(f"head {head} is out of range: {f.name} has heads 0-{f.n_heads - 1} in each layer")
    task = progress.task(f"head loadings of L{layer}H{head}", total=len(prompts))
    got = head_loadings(lm, [lm.encode(p) for p in prompts], layer, head, on_prompt=lambda i: task.advance())
    prov = Provenance.for_model(f, prompts=f"{len(prompts)} prompts", inputs=list(prompts))
    return HeadLoadings(name=name or f"L{layer}H{head}", layer=layer, head=head, n_prompts=len(prompts),
                        query=got["query"].float().numpy(), key=got["key"].float().numpy(), provenance=prov)
