"""Speech with word timings, made by espeak-ng (Debian package ``espeak-ng``), for tests and demos.

The library ``libespeak-ng.so.1`` is driven through :mod:`ctypes` in synchronous mode: it
hands back the samples (22,050 Hz, 16-bit) and, with them, one *word event* per word with
its character position in the text and its start in the audio. A word's end is the next
word's start (the last one ends at the end-of-message event), so pauses belong to the
word before them. These timings are espeak-ng's own, not estimated from the audio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

import numpy as np

from lens.errors import AttnlensError

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}
_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8, _RATE = 2, 1, 1, 1
_EVENT_END_LIST, _EVENT_WORD, _EVENT_MSG_END = 0, 1, 5


class SynthesisError(AttnlensError, RuntimeError):
    """espeak-ng is missing or failed to speak the text."""


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float  # seconds from the start of the utterance
    end: float


@dataclass(frozen=True)
class Utterance:
    """Synthesised speech: mono float32 ``samples`` at ``sampling_rate`` and its timed words."""

    text: str
    samples: np.ndarray
    sampling_rate: int
    words: tuple[TimedWord, ...]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sampling_rate


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def _library():
    if "lib" not in _STATE:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise SynthesisError("speech synthesis needs espeak-ng: apt-get install espeak-ng") from None
        rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, 0)
        if rate <= 0:
            raise SynthesisError(f"espeak-ng failed to initialise (code {rate})")
        chunks: list[bytes] = []
        events: list[tuple[int, int, int, int]] = []

        def on_audio(wav, n, event):
            if n > 0:
                chunks.append(ctypes.string_at(wav, n * 2))
            i = 0
            while event[i].type != _EVENT_END_LIST:
                e = event[i]
                events.append((e.type, e.text_position, e.length, e.sample))
                i += 1
            return 0

        callback = _CALLBACK(on_audio)  # kept in _STATE: ctypes must not free it
        lib.espeak_SetSynthCallback(callback)
        _STATE.update(lib=lib, rate=rate, chunks=chunks, events=events, callback=callback)
    return _STATE["lib"]


def synthesize(text: str, *, voice: str = "en-us", words_per_minute: int = 160) -> Utterance:
    """Speak ``text`` with espeak-ng; the samples at espeak's rate (22,050 Hz) and word timings."""
    if not text or not text.strip():
        raise SynthesisError("text to synthesise is empty")
    if not 80 <= words_per_minute <= 450:
        raise SynthesisError(f"words_per_minute must be in 80-450, got {words_per_minute}")
    with _LOCK:
        lib = _library()
        chunks, events = _STATE["chunks"], _STATE["events"]
        chunks.clear(), events.clear()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SynthesisError(f"espeak-ng has no voice {voice!r}")
        lib.espeak_SetParameter(_RATE, int(words_per_minute), 0)
        raw = text.encode("utf-8")
        buf = ctypes.create_string_buffer(raw)
        code = lib.espeak_Synth(buf, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if code != 0:
            raise SynthesisError(f"espeak-ng failed to speak the text (code {code})")
        rate = int(_STATE["rate"])
        samples = np.frombuffer(b"".join(chunks), dtype=np.int16).astype(np.float32) / 32768.0
        found = list(events)
    n = len(samples)
    end = next((s for t, _, _, s in found if t == _EVENT_MSG_END), n) or n
    starts = [(pos, length, sample) for t, pos, length, sample in found if t == _EVENT_WORD]
    words = []
    for i, (pos, length, sample) in enumerate(starts):
        stop = starts[i + 1][2] if i + 1 < len(starts) else end
        # text_position counts characters from 1 (of the UTF-8 text as characters)
        word = text[pos - 1:pos - 1 + length]
        words.append(TimedWord(word, sample / rate, min(stop, n) / rate))
    if not words or n == 0:
        raise SynthesisError(f"espeak-ng produced no speech for {text[:40]!r}")
    return Utterance(text=text, samples=samples, sampling_rate=rate, words=tuple(words))


__all__ = ["SynthesisError", "TimedWord", "Utterance", "synthesize"]
