"""The walk of a prompt through lens.run: one input preparation for every modality (issue 26).

Every call between the project's files during ``lens.run`` / ``lens.run_stats`` is recorded
(``sys.setprofile``): the run body calls :func:`lens.inputs.prepare` once, only ``lens/inputs.py``
reaches the modality modules (vision, vlm, speech, audio), and nothing those modules call goes
back up into the recording.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import lens

ROOT = str(Path(lens.__file__).resolve().parents[1]) + "/"
MODALITY = {"lens/vision.py", "lens/vlm.py", "lens/speech.py", "lens/audio.py"}


def _calls(fn) -> list[tuple[str, str, str]]:
    """(caller file, callee file, callee function) of every call from one project file into another."""
    seen = []

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None:
            return
        callee, caller = frame.f_code.co_filename, frame.f_back.f_code.co_filename
        if callee.startswith(ROOT) and caller.startswith(ROOT) and callee != caller:
            seen.append((caller[len(ROOT):], callee[len(ROOT):], frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def _check_walk(calls, modalities: set[str]):
    prepares = [c for c in calls if c[1] == "lens/inputs.py" and c[2] == "prepare"]
    assert [c[0] for c in prepares] in (["lens/recording/__init__.py"], ["lens/recording/stats.py"]), prepares
    into_modality = {(a, b) for a, b, _ in calls if b in MODALITY}
    assert {b for _, b in into_modality} == modalities, into_modality
    assert all(a == "lens/inputs.py" or a in MODALITY for a, _ in into_modality), into_modality
    upward = [c for c in calls if (c[0] in MODALITY or c[0] == "lens/inputs.py")
              and (c[1].startswith("lens/recording/") or (c[1] == "lens/inputs.py" and c[0] in MODALITY
                                                            and c[2] == "prepare"))]
    assert not upward, upward


def test_text_walk():
    lm = lens.load("tiny-llama")
    calls = _calls(lambda: lens.run(lm, "The cat sat", sites=[lens.Site.PATTERN], layers=[0]))
    _check_walk(calls, {"lens/vision.py"})  # is_image: a text model refuses an image in one line
    _check_walk(_calls(lambda: lens.run_stats(lm, "The cat sat", layers=[0])), {"lens/vision.py"})


def test_image_walk():
    vit = lens.load("tiny-dinov2")
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    _check_walk(_calls(lambda: lens.run(vit, image, sites=[lens.Site.PATTERN], layers=[0])), {"lens/vision.py"})


def test_image_text_walk():
    vlm = lens.load("tiny-vlm")
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    calls = _calls(lambda: lens.run(vlm, "<image>\nWhat colour?", image=image, sites=[lens.Site.PATTERN], layers=[0]))
    _check_walk(calls, {"lens/vision.py", "lens/vlm.py"})


def test_audio_walk():
    whisper = lens.load("tiny-whisper")
    tone = np.sin(np.arange(16_000) / 10).astype(np.float32)
    calls = _calls(lambda: lens.run(whisper, tone, sites=[lens.Site.PATTERN], layers=[0], decoder_ids=[1, 2, 3]))
    _check_walk(calls, {"lens/speech.py", "lens/audio.py"})


@pytest.mark.parametrize("where", ["lens/speech.py", "lens/vlm.py", "lens/vision.py", "lens/audio.py"])
def test_modality_modules_do_not_import_the_recording(where):
    text = (Path(ROOT) / where).read_text(encoding="utf-8")
    assert "lens.recording" not in text and "from lens import recording" not in text
