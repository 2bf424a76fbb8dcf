"""espeak-ng synthesis with its own word timings (needs the Debian package espeak-ng)."""

import ctypes
import ctypes.util

import numpy as np
import pytest

from lens.espeak import SynthesisError, synthesize


def _have_espeak() -> bool:
    try:
        ctypes.CDLL(ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1")
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_espeak(), reason="espeak-ng is not installed (apt-get install espeak-ng)")


def test_words_are_timed_in_order():
    u = synthesize("Attention heads can be found in every transformer layer.")
    assert u.sampling_rate == 22_050 and u.samples.dtype == np.float32
    assert 1.5 < u.duration < 6.0
    assert [w.text for w in u.words] == ["Attention", "heads", "can", "be", "found", "in", "every", "transformer",
                                         "layer"]
    starts = [w.start for w in u.words]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert all(w.end > w.start for w in u.words) and u.words[-1].end <= u.duration + 1e-9
    assert all(a.end == pytest.approx(b.start) for a, b in zip(u.words, u.words[1:]))
    # the speech is where the words are: louder inside "transformer" than in the trailing silence
    word = u.words[-2]
    inside = u.samples[int(word.start * u.sampling_rate):int(word.end * u.sampling_rate)]
    assert np.sqrt(np.mean(inside**2)) > 0.01


def test_slower_speech_is_longer_and_bad_input_fails():
    fast, slow = synthesize("one two three", words_per_minute=220), synthesize("one two three", words_per_minute=110)
    assert slow.duration > 1.5 * fast.duration
    with pytest.raises(SynthesisError, match="empty"):
        synthesize("  ")
    with pytest.raises(SynthesisError, match="words_per_minute"):
        synthesize("hi", words_per_minute=10)
    with pytest.raises(SynthesisError, match="no voice"):
        synthesize("hi", voice="no-such-voice")
