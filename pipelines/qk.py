"""QK attribution workflow: run the decomposition on one prompt and return the torch-free result
(``lens heads qk`` calls this, and so can a notebook; nothing is written here)."""

from __future__ import annotations

from collections.abc import Sequence

from attnlens.formats.provenance import Provenance
from attnlens.formats.qk import QKResult
from lens.errors import PromptError


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
