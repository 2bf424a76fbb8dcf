"""Scoring a vision-language model's answers to scene questions, and the hallucination probe.

Pure functions over :class:`AnswerRecord` lists (which :func:`analyses.vlm_collect.ask`
produces): accuracy per question kind, two ways, and the probe's yes-rates.

- ``exact``: the greedy answer, lower-cased and stripped of punctuation, equals the truth;
- ``choice``: the answer whose first token the model ranks highest among the kind's
  possible answers (a forced choice, so a text-only run gets its language prior's accuracy).

The hallucination probe (the CHAIR idea on synthetic scenes) asks "Is there a {colour}
shape?" / "Is there a {shape}?" for every colour and shape of the vocabulary; the
false-yes rate is the share of questions about *absent* colours or shapes answered yes.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from attnlens.analyses.scenes import QuestionKind, chance


@dataclass(frozen=True)
class AnswerRecord:
    """One question put to a model and what came back."""

    scene: int  # scene seed
    kind: QuestionKind
    question: str
    truth: str
    given: str  # greedy decoded answer
    choice: str  # highest-ranked possible answer by first-token logit
    with_image: bool
    about: str | None = None  # HAS_* questions: the colour or shape asked about

    @property
    def exact(self) -> bool:
        return normalise(self.given) == self.truth

    @property
    def chose_right(self) -> bool:
        return self.choice == self.truth


def normalise(text: str) -> str:
    """Lower case, first word only, punctuation stripped: "Red." -> "red"."""
    words = text.strip().lower().split()
    return words[0].strip(string.punctuation) if words else ""


@dataclass(frozen=True)
class KindScore:
    kind: QuestionKind
    n: int
    exact: float
    choice: float
    chance: float

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "n": self.n, "exact": round(self.exact, 4), "choice": round(self.choice, 4),
                "chance": round(self.chance, 4)}


def accuracy_by_kind(records: Sequence[AnswerRecord]) -> dict[QuestionKind, KindScore]:
    """Exact-match and forced-choice accuracy per question kind (kinds absent from ``records`` are left out)."""
    out = {}
    for kind in QuestionKind:
        rows = [r for r in records if r.kind is kind]
        if rows:
            out[kind] = KindScore(kind, len(rows), sum(r.exact for r in rows) / len(rows),
                                  sum(r.chose_right for r in rows) / len(rows), chance(kind))
    return out


@dataclass(frozen=True)
class ProbeScore:
    """Yes-rates of the hallucination probe: ``false_yes`` on absent objects (lower is better),
    ``true_yes`` on present ones (higher is better), by exact answer and by forced choice."""

    n_absent: int
    n_present: int
    false_yes: float
    true_yes: float
    false_yes_choice: float
    true_yes_choice: float
    false_yes_by_kind: dict[str, float]

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def probe_score(records: Sequence[AnswerRecord]) -> ProbeScore:
    """The probe's yes-rates over the HAS_COLOUR / HAS_SHAPE records of ``records``."""
    rows = [r for r in records if r.kind in (QuestionKind.HAS_COLOUR, QuestionKind.HAS_SHAPE)]
    absent = [r for r in rows if r.truth == "no"]
    present = [r for r in rows if r.truth == "yes"]
    if not absent or not present:
        raise ValueError(f"the probe needs questions about absent and present objects, got {len(absent)} "
                         f"absent and {len(present)} present")

    def rate(rs, choice=False):
        return sum((r.choice if choice else normalise(r.given)) == "yes" for r in rs) / len(rs)

    by_kind = {k.value: rate([r for r in absent if r.kind is k]) for k in (QuestionKind.HAS_COLOUR,
                                                                         QuestionKind.HAS_SHAPE)
               if any(r.kind is k for r in absent)}
    return ProbeScore(len(absent), len(present), rate(absent), rate(present), rate(absent, True),
                      rate(present, True), by_kind)
