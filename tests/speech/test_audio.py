"""Audio loading, resampling, layouts and the one-line errors for bad audio."""

import wave

import numpy as np
import pytest

from lens.audio import (
    AudioError,
    AudioLayout,
    EncoderFacts,
    load_audio,
    log_mel,
    require_speech,
    resample,
    save_wav,
)
from lens.errors import PromptError


def _tone(freq=440.0, seconds=1.0, rate=16_000, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))]


def _one_line(err):
    assert "\n" not in str(err.value) and str(err.value)


def test_wav_round_trip_16_bit(tmp_path):
    x = _tone()
    y = load_audio(save_wav(tmp_path / "a.wav", x))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1 / 32767)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_wav_other_pcm_widths(tmp_path, width):
    x = _tone(seconds=0.25)
    if width == 1:
        raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(x * (2**23 - 1)).astype(np.int32)
        raw = np.stack([(ints >> s) & 0xFF for s in (0, 8, 16)], -1).astype(np.uint8).tobytes()
    else:
        raw = np.round(x * (2**31 - 1)).astype("<i4").tobytes()
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(width), w.setframerate(16_000), w.writeframes(raw)
    np.testing.assert_allclose(load_audio(tmp_path / "a.wav"), x, atol=2 / 255 if width == 1 else 1e-5)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = _tone(440), _tone(440, amp=0.1)
    both = np.round(np.stack([left, right], -1) * 32767).astype("<i2")
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(16_000), w.writeframes(both.tobytes())
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, atol=1e-4)
    np.testing.assert_allclose(load_audio(np.stack([left, right])), (left + right) / 2, atol=1e-6)


def test_flac_through_soundfile(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    x = _tone(seconds=0.5)
    soundfile.write(str(tmp_path / "a.flac"), x, 16_000, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac"), x, atol=1 / 32767)


def test_other_rates_are_resampled(tmp_path):
    x = _tone(1000.0, seconds=1.0, rate=22_050)
    y = load_audio(save_wav(tmp_path / "a.wav", x, rate=22_050))
    assert len(y) == 16_000  # exactly 1 s at 16 kHz
    assert abs(_peak_hz(y, 16_000) - 1000.0) < 2.0
    z = load_audio(_tone(1000.0, seconds=1.0, rate=44_100), sampling_rate=44_100)
    assert len(z) == 16_000 and abs(_peak_hz(z, 16_000) - 1000.0) < 2.0
    assert resample(x, 16_000, 16_000) is not None and len(resample(x, 22_050)) == 16_000


def test_integer_arrays_are_scaled():
    x = np.array([0, 16384, -32768], np.int16)
    np.testing.assert_allclose(load_audio(x), [0.0, 0.5, -1.0])


@pytest.mark.parametrize("bad, match", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((3, 4, 5), np.float32), "1-D samples"),
    (np.zeros((5, 7), np.float32), "1-D samples"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
    (np.array(["a", "b"]), "numbers"),
    ([0.1, 0.2], "WAV/FLAC path or a numpy array"),
])
def test_bad_arrays_are_one_line_prompt_errors(bad, match):
    with pytest.raises(AudioError, match=match) as err:
        load_audio(bad)
    assert isinstance(err.value, PromptError)
    _one_line(err)


def test_undecodable_missing_and_empty_files(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00this is not audio at all" * 4)
    with pytest.raises(AudioError, match="cannot decode junk.wav") as err:
        load_audio(tmp_path / "junk.wav")
    _one_line(err)
    (tmp_path / "junk.flac").write_bytes(b"fLaC but not really" * 8)
    pytest.importorskip("soundfile")
    with pytest.raises(AudioError, match="cannot decode junk.flac") as err:
        load_audio(tmp_path / "junk.flac")
    _one_line(err)
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    save_wav(tmp_path / "empty.wav", np.zeros(0))
    with pytest.raises(AudioError, match="empty") as err:
        load_audio(tmp_path / "empty.wav")
    _one_line(err)


def test_file_rate_mismatch_with_given_rate(tmp_path):
    path = save_wav(tmp_path / "a.wav", _tone(), rate=16_000)
    with pytest.raises(AudioError, match="sampling_rate=8000 was given but a.wav is at 16000 Hz"):
        load_audio(path, sampling_rate=8000)


def test_layout_maps_frames_to_time_and_round_trips():
    layout = AudioLayout(n_samples=int(3.01 * 16_000))
    assert layout.frame_seconds == pytest.approx(0.02)
    assert layout.n_valid_frames == 151  # 3.01 s / 20 ms, rounded up
    assert layout.frame_of(0.0) == 0 and layout.frame_of(0.0399) == 1 and layout.frame_of(99.0) == 1499
    assert layout.span_frames(0.5, 0.56) == (25, 28)
    assert layout.span_frames(1.0, 1.0) == (50, 51)  # never empty
    assert layout.times()[:3].tolist() == pytest.approx([0.0, 0.02, 0.04])
    assert AudioLayout.from_json(layout.to_json()) == layout
    assert layout.to_json()["duration"] == pytest.approx(3.01)


def test_layout_refuses_empty_and_too_long_audio():
    from lens.errors import PromptError

    with pytest.raises(PromptError, match="empty"):
        AudioLayout(n_samples=0)
    with pytest.raises(PromptError, match="longer than one 30 s window") as err:
        AudioLayout(n_samples=31 * 16_000)
    _one_line(err)


def test_encoder_facts_from_config_and_json(tiny_whisper):
    enc = tiny_whisper.extras["encoder"]
    assert (enc.n_layers, enc.n_heads, enc.n_frames, enc.n_mels) == (2, 4, 100, 80)
    assert enc.chunk_seconds == pytest.approx(2.0) and enc.frame_seconds == pytest.approx(0.02)
    assert enc.alignment_heads == ((1, 0), (1, 2)) and not enc.causal
    assert EncoderFacts.from_json(enc.to_json()) == enc
    with pytest.raises(ValueError, match="n_frames must be positive"):
        EncoderFacts(n_layers=1, n_heads=1, d_head=1, d_model=1, n_frames=0, n_mels=80)


def test_audio_given_to_a_text_model(tiny_lm, tiny_whisper):
    require_speech(tiny_whisper.facts)
    with pytest.raises(AudioError, match="audio was given, but tiny-llama is a text model") as err:
        require_speech(tiny_lm.facts)
    _one_line(err)


def test_log_mel_shape(tiny_whisper):
    feats = log_mel(tiny_whisper.processor, _tone(seconds=0.7))
    assert tuple(feats.shape) == (1, 80, 200)
    with pytest.raises(AudioError, match="1-D non-empty"):
        log_mel(tiny_whisper.processor, np.zeros((2, 3), np.float32))
