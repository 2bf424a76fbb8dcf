"""Word error rate on cases counted by hand."""

import pytest

from attnlens.analyses.asr_metrics import corpus_wer, normalise, word_errors


def test_normalisation_ignores_case_and_punctuation():
    assert normalise("Attention heads, in every transformer-layer.") == ["attention", "heads", "in", "every",
                                                                          "transformer", "layer"]
    assert word_errors("The dog's bone.", "the dog's bone").wer == 0.0


@pytest.mark.parametrize("ref, hyp, counts", [
    ("a b c d", "a b c d", (0, 0, 0)),
    ("a b c d", "a x c d", (1, 0, 0)),  # one substitution
    ("a b c d", "a c d", (0, 1, 0)),  # one deletion
    ("a b c d", "a b b c d", (0, 0, 1)),  # one insertion
    ("a b c d", "", (0, 4, 0)),
    ("", "a b", (0, 0, 2)),
    ("kitten sat on the mat", "sitting sat the mat today", (1, 1, 1)),
])
def test_word_errors(ref, hyp, counts):
    e = word_errors(ref, hyp)
    assert (e.substitutions, e.deletions, e.insertions) == counts
    assert e.n_reference == len(ref.split())


def test_rates():
    assert word_errors("a b c d", "a x c").wer == pytest.approx(0.5)
    assert word_errors("", "").wer == 0.0 and word_errors("", "a").wer == float("inf")
    assert corpus_wer([("a b c d", "a b c d"), ("a b", "a c")]) == pytest.approx(1 / 6)
