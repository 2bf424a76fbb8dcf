"""Needle-in-a-haystack (NIAH) trials: a needle sentence hidden at a depth of filler text, then a question.

The prompt is assembled from token-id segments (template prefix, haystack sentences,
needle(s), question, template suffix), each tokenized on its own, so every trial knows
the exact token span ``[start, end)`` of each needle in ``input_ids`` without any
alignment guesswork. Everything is deterministic given ``seed``.

>>> trials = make_trials(lm.tokenizer, context_length=lm.facts.context_length,
...                      lengths=(512, 1024), depths=(0.0, 0.5, 1.0), seed=0, chat=True)
>>> t = trials[0]; t.input_ids[t.needle_span[0]:t.needle_span[1]]   # the needle's tokens
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from attnlens.analyses.data import HAYSTACK_SENTENCES
from attnlens.formats.errors import AnalysisError


class NiahError(AnalysisError):
    """A needle-in-a-haystack request that cannot be built (bad depth, too long a needle, no chat template)."""


# Needles follow Wu et al.'s shape ("The best thing to do in San Francisco is ..."): most of the
# sentence is the answer, so an answer that only repeats the question's words stays below
# ROUGE-1 recall 0.5 (8 of 22 words).
_TOWNS = ("Marlow", "Brindle", "Oakhaven", "Tessford", "Carrow", "Linden Bay", "Ashby", "Greywick", "Holloway", "Penrith")
_FOODS = ("a warm pretzel", "a bowl of cherries", "a slice of lemon cake", "a plate of dumplings", "a fresh peach",
          "a cheese sandwich", "a cup of cocoa", "a honey biscuit")
_SPOTS = ("by the fountain", "under the clock tower", "beside the canal", "on the harbour wall", "in the rose garden",
          "near the old windmill", "at the top of the hill", "behind the library")
_TIMES = ("on a sunny afternoon", "on a foggy morning", "on a windy evening", "on a rainy Sunday",
          "on a quiet Tuesday", "on a bright spring day")
_PLACEHOLDER = "\u2063ATTNLENS_CONTENT\u2063"


@dataclass(frozen=True)
class Needle:
    """One fact to hide: the sentence, the question that asks for it, and the key part of the answer."""

    text: str  # e.g. "The best thing to do in Marlow is to eat a fresh peach and sit by the fountain on a ..."
    question: str  # e.g. "What is the best thing to do in Marlow?"
    answer: str  # e.g. "eat a fresh peach and sit by the fountain on a sunny afternoon"


@dataclass(frozen=True)
class NiahTrial:
    """A built prompt and where its needles are.

    ``needle_spans[i]`` is the half-open token range of needle ``i`` in ``input_ids``;
    ``target`` is the needle the question asks for. ``reference`` is what ROUGE-1 recall
    is measured against (the needle sentence, as in Wu et al.'s code).
    """

    input_ids: Int[Tensor, " pos"]
    needles: tuple[Needle, ...]
    needle_spans: tuple[tuple[int, int], ...]
    target: int
    length: int  # requested prompt length in tokens (the prompt is at most this long)
    depth: float  # requested depth of the target needle in [0, 1]
    seed: int
    chat: bool

    @property
    def needle(self) -> Needle:
        return self.needles[self.target]

    @property
    def needle_span(self) -> tuple[int, int]:
        return self.needle_spans[self.target]

    @property
    def reference(self) -> str:
        return self.needle.text

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[-1])


def make_needle(rng: random.Random, used: set[str] | None = None) -> Needle:
    """A random "best thing to do in TOWN" needle; ``used`` keeps towns distinct within a trial."""
    used = used if used is not None else set()
    town = rng.choice([t for t in _TOWNS if t not in used])
    used.add(town)
    answer = f"eat {rng.choice(_FOODS)} and sit {rng.choice(_SPOTS)} {rng.choice(_TIMES)}"
    return Needle(text=f"The best thing to do in {town} is to {answer}.",
                  question=f"What is the best thing to do in {town}?", answer=answer)


def _template_parts(tokenizer, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids before and after the user content (chat template or the tokenizer's special tokens)."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise NiahError(f"chat=True was asked for, but the tokenizer of {name} has no chat template: "
                            "pass `chat=False`")
        from lens._chat import apply_chat_template

        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        text = apply_chat_template(tokenizer, [{"role": "user", "content": _PLACEHOLDER}], model=name,
                                   add_generation_prompt=True)
        if text.count(_PLACEHOLDER) != 1:
            raise NiahError(f"the chat template of {name} does not keep the user's message once: pass `chat=False`")
        before, after = text.split(_PLACEHOLDER)
        enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids if s else []  # noqa: E731
        return enc(before), enc(after)
    return list(tokenizer("", add_special_tokens=True).input_ids), []


def make_trial(tokenizer, *, length: int, depth: float, context_length: int, seed: int = 0,
               n_needles: int = 1, chat: bool = True, needles: Sequence[Needle] | None = None) -> NiahTrial:
    """One trial of about ``length`` tokens with the asked-for needle at ``depth`` of the haystack.

    With ``n_needles > 1`` the other needles (distractors about other towns)
    go to random depths drawn from ``seed``; the question asks for the first one.
    Raises :class:`NiahError` for a depth outside [0, 1], a length over ``context_length``,
    or needles and question that do not fit in ``length``.
    """
    if not 0.0 <= depth <= 1.0:
        raise NiahError(f"depth {depth} is outside [0, 1]: 0 puts the needle at the start of the haystack, 1 at the end")
    if not 1 <= n_needles <= len(_TOWNS):
        raise NiahError(f"n_needles must be in 1-{len(_TOWNS)}, got {n_needles}")
    if length > context_length:
        raise NiahError(f"length {length} is longer than the model's context of {context_length} tokens")
    rng = random.Random(f"niah/{seed}/{length}/{depth}/{n_needles}")
    if needles is None:
        used: set = set()
        needles = [make_needle(rng, used) for _ in range(n_needles)]
    needles = tuple(needles)
    enc = lambda s: list(tokenizer(s, add_special_tokens=False).input_ids)  # noqa: E731
    before, after = _template_parts(tokenizer, chat)
    question = enc(f"\n\nBased on the text above, answer the question.\nQuestion: {needles[0].question}"
                   + ("" if chat else "\nAnswer:"))
    needle_ids = [enc(" " + n.text) for n in needles]
    fixed = len(before) + len(after) + len(question) + sum(map(len, needle_ids))
    if fixed > length:
        raise NiahError(f"the needle(s) and question take {fixed} tokens, longer than the context length {length} "
                        "asked for: ask for a longer length or a shorter needle")
    # Haystack: seeded shuffled sentences, repeated as needed, whole sentences only.
    order = list(HAYSTACK_SENTENCES)
    random.Random(f"haystack/{seed}").shuffle(order)
    hay: list[list[int]] = []
    budget, i = length - fixed, 0
    while True:
        s = enc((" " if hay else "") + order[i % len(order)])
        if len(s) > budget:
            break
        hay.append(s)
        budget -= len(s)
        i += 1
    # Insertion points are sentence boundaries: the target at `depth`, distractors at random depths.
    depths = [depth] + [rng.random() for _ in needles[1:]]
    slots = [round(d * len(hay)) for d in depths]
    ids: list[int] = list(before)
    spans: list[tuple[int, int] | None] = [None] * len(needles)
    for k in range(len(hay) + 1):
        for n, slot in enumerate(slots):
            if slot == k:
                spans[n] = (len(ids), len(ids) + len(needle_ids[n]))
                ids.extend(needle_ids[n])
        if k < len(hay):
            ids.extend(hay[k])
    ids.extend(question)
    ids.extend(after)
    return NiahTrial(input_ids=torch.tensor(ids, dtype=torch.long), needles=needles,
                     needle_spans=tuple(spans), target=0, length=length, depth=depth,  # type: ignore[arg-type]
                     seed=seed, chat=chat)


def make_trials(tokenizer, *, context_length: int, lengths: Sequence[int], depths: Sequence[float],
                seeds: Sequence[int] = (0,), n_needles: int = 1, chat: bool = True) -> list[NiahTrial]:
    """The sweep: one trial per (length, depth, seed), every needle different."""
    return [make_trial(tokenizer, length=n, depth=d, context_length=context_length, seed=s,
                       n_needles=n_needles, chat=chat)
            for n in lengths for d in depths for s in seeds]


def rouge1_recall(reference: str, candidate: str) -> float:
    """ROUGE-1 recall: the share of the reference's unigrams (with multiplicity) found in the candidate.

    Lower-cased words of letters and digits, as the ``rouge_score`` package tokenizes
    (without stemming).
    """
    import re
    from collections import Counter

    ref = Counter(re.findall(r"[a-z0-9]+", reference.lower()))
    cand = Counter(re.findall(r"[a-z0-9]+", candidate.lower()))
    total = sum(ref.values())
    return 0.0 if total == 0 else sum(min(c, cand[w]) for w, c in ref.items()) / total
