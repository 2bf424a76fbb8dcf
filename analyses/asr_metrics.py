"""Word error rate for transcripts (pure; no model).

Texts are normalised before comparison: lower case, every character that is not a letter,
digit, apostrophe or space removed (so "layer." equals "layer"), hyphens split words,
runs of spaces collapsed. WER = (substitutions + deletions + insertions) / reference
words, from the word-level Levenshtein alignment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_DROP = re.compile(r"[^\w' ]+")


def normalise(text: str) -> list[str]:
    """The words of ``text`` after the normalisation in the module docstring."""
    return _DROP.sub(" ", text.lower().replace("-", " ").replace("_", " ")).split()


@dataclass(frozen=True)
class WordErrors:
    substitutions: int
    deletions: int
    insertions: int
    n_reference: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word (can exceed 1 with many insertions); 0 for two empty texts."""
        if self.n_reference == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.n_reference


def word_errors(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> WordErrors:
    """Counts of a minimal word alignment of ``hypothesis`` to ``reference`` (texts or word lists)."""
    ref = normalise(reference) if isinstance(reference, str) else list(reference)
    hyp = normalise(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    # cost[j] = (errors, subs, dels, ins) of aligning ref[:i] to hyp[:j]; ties prefer fewer errors only
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            e, s, d, n = prev[j - 1]
            if ref[i - 1] == hyp[j - 1]:
                best = (e, s, d, n)
            else:
                best = (e + 1, s + 1, d, n)
            e, s, d, n = prev[j]
            best = min(best, (e + 1, s, d + 1, n))
            e, s, d, n = cur[j - 1]
            best = min(best, (e + 1, s, d, n + 1))
            cur.append(best)
        prev = cur
    _, s, d, n = prev[-1]
    return WordErrors(substitutions=s, deletions=d, insertions=n, n_reference=len(ref))


def corpus_wer(pairs: Sequence[tuple[str, str]]) -> float:
    """Total errors over total reference words of ``(reference, hypothesis)`` pairs."""
    counts = [word_errors(r, h) for r, h in pairs]
    n = sum(c.n_reference for c in counts)
    return sum(c.errors for c in counts) / n if n else 0.0
