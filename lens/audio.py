"""Audio inputs for speech encoder-decoders: loading, resampling, log-mel features, time layout.

Audio comes in as a path to a WAV file (read with the stdlib :mod:`wave`, 8/16/24/32-bit
PCM; other WAV encodings and FLAC go through ``soundfile`` and its bundled libsndfile) or
as a numpy array of samples (1-D mono, or 2-D with a channel axis of 1 or 2, averaged to
mono). Whisper wants 16 kHz: any other rate is **resampled** with
``scipy.signal.resample_poly`` (a polyphase filter at the exact rational ratio), never
refused. Whisper reads 30 s windows: longer audio is refused here (one window per call).

An :class:`AudioLayout` maps encoder positions to time: whisper's encoder turns 3,000
log-mel frames (10 ms hop) into 1,500 positions, 20 ms each; position ``f`` covers
``[f * 0.02, (f + 1) * 0.02)`` seconds, and positions past the end of the audio see the
zero padding.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.formats.layouts import AudioLayout
from lens.errors import PromptError
from lens.loaded import Modality, ModelFacts

SAMPLING_RATE = 16_000


class AudioError(PromptError):
    """Audio that is empty, cannot be decoded, has the wrong shape or is too long."""


@dataclass(frozen=True)
class EncoderFacts:
    """Shape facts of a speech encoder, next to the decoder's :class:`~lens.ModelFacts`.

    ``n_frames`` encoder positions cover ``chunk_seconds`` of audio; ``alignment_heads``
    are the ``(decoder layer, head)`` pairs the model's config names for word timing.
    The encoder's self-attention is bidirectional (not causal).
    """

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    n_frames: int  # encoder positions per window (whisper: 1500)
    n_mels: int
    sampling_rate: int = SAMPLING_RATE
    chunk_seconds: float = 30.0
    alignment_heads: tuple[tuple[int, int], ...] = ()
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_head", "d_model", "n_frames", "n_mels", "sampling_rate"):
            if getattr(self, name) <= 0:
                raise AudioError(f"EncoderFacts.{name} must be positive, got {getattr(self, name)}")
        object.__setattr__(self, "alignment_heads", tuple((int(a), int(b)) for a, b in self.alignment_heads))

    @property
    def frame_seconds(self) -> float:
        return self.chunk_seconds / self.n_frames

    @classmethod
    def from_whisper_config(cls, config, *, hop_length: int = 160) -> EncoderFacts:
        """Whisper's encoder: two convolutions (the second with stride 2) over log-mel frames
        ``hop_length`` samples apart, so each position covers ``2 * hop_length`` samples."""
        frame_seconds = 2 * hop_length / SAMPLING_RATE
        return cls(
            n_layers=config.encoder_layers, n_heads=config.encoder_attention_heads,
            d_head=config.d_model // config.encoder_attention_heads, d_model=config.d_model,
            n_frames=config.max_source_positions, n_mels=config.num_mel_bins,
            chunk_seconds=config.max_source_positions * frame_seconds,
            alignment_heads=tuple(tuple(h) for h in (getattr(config, "alignment_heads", None) or ())),
        )

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["alignment_heads"] = [list(h) for h in self.alignment_heads]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EncoderFacts:
        d = dict(d)
        d["alignment_heads"] = tuple(tuple(h) for h in d.get("alignment_heads", ()))
        return cls(**d)


def layout_for(samples: np.ndarray, encoder: EncoderFacts) -> AudioLayout:
    """The layout of 16 kHz ``samples`` in one window of a model with ``encoder``."""
    return AudioLayout(int(len(samples)), encoder.sampling_rate, encoder.n_frames, encoder.chunk_seconds)


# ---- loading ---------------------------------------------------------------------------
def resample(samples: np.ndarray, rate: int, target: int = SAMPLING_RATE) -> np.ndarray:
    """``samples`` at ``rate`` Hz resampled to ``target`` Hz (polyphase, exact rational ratio)."""
    if rate <= 0:
        raise AudioError(f"sampling rate must be positive, got {rate}")
    if rate == target:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate)
    return resample_poly(samples.astype(np.float64), ratio.numerator, ratio.denominator).astype(np.float32)


def _mono(a: np.ndarray, what: str) -> np.ndarray:
    if a.size == 0:
        raise AudioError(f"{what} is an empty recording: it holds no samples")
    if a.ndim == 2 and min(a.shape) in (1, 2):
        a = a.mean(axis=int(np.argmin(a.shape)))
    if a.ndim != 1:
        raise AudioError(f"{what} must be 1-D samples (or 2-D with 1 or 2 channels), got shape {a.shape}")
    return a


def _as_float(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind in "iu":
        info = np.iinfo(a.dtype)
        mid = (int(info.max) + int(info.min) + 1) / 2  # 0 for signed, 128 for 8-bit unsigned
        return ((a.astype(np.float64) - mid) / (info.max - mid + 1)).astype(np.float32)
    if a.dtype.kind != "f":
        raise AudioError(f"{what} must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise AudioError(f"{what} has NaN or infinite samples")
    return a


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        width, channels, rate, n = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if width == 3:  # 24-bit: widen to int32 by hand (numpy has no int24)
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8
        data = ints.astype(np.int32)
    else:
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
        if dtype is None:
            raise AudioError(f"{path.name}: {8 * width}-bit WAV samples are not supported")
        data = np.frombuffer(raw, dtype)
    return data.reshape(-1, channels), rate


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError:
        raise AudioError(f"{path.name}: reading {path.suffix or 'this'} files needs the soundfile package: "
                         "pip install soundfile") from None
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise AudioError(f"cannot decode {path.name}: {str(err).splitlines()[0]}") from None
    return data, rate


def read_file(path: str | Path) -> tuple[np.ndarray, int]:
    """``(samples [n, channels] as stored, rate)`` of a WAV or FLAC file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AudioError(f"audio file {str(path)!r} does not exist")
    if path.suffix.lower() == ".wav":
        try:
            return _read_wav(path)
        except (wave.Error, EOFError) as err:
            if "unknown format" not in str(err):  # not PCM (float WAV, say): soundfile reads those
                raise AudioError(f"cannot decode {path.name} as WAV: {err}") from None
    return _read_soundfile(path)


def load_audio(source: str | Path | np.ndarray, *, sampling_rate: int | None = None,
               target_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Mono float32 samples at ``target_rate`` from a WAV/FLAC path or an array.

    An array is taken at ``sampling_rate`` (16 kHz when not given); a file at its own rate
    (``sampling_rate`` must then be None or match). Integer samples are scaled to [-1, 1).
    Raises :class:`AudioError` for a missing or undecodable file, the wrong shape, NaNs
    or an empty recording.
    """
    if isinstance(source, (str, Path)):
        data, rate = read_file(source)
        if sampling_rate is not None and sampling_rate != rate:
            raise AudioError(f"sampling_rate={sampling_rate} was given but {Path(source).name} is at {rate} Hz")
        what = Path(source).name
    elif isinstance(source, np.ndarray):
        data, rate, what = source, sampling_rate or target_rate, "the audio array"
    elif isinstance(source, Tensor):
        data, rate, what = source.detach().cpu().numpy(), sampling_rate or target_rate, "the audio tensor"
    else:
        raise AudioError(f"audio must be a WAV/FLAC path or a numpy array of samples, got {type(source).__name__}")
    samples = _mono(_as_float(np.asarray(data), what), what)  # scale integers before averaging channels
    if samples.size == 0:
        raise AudioError(f"{what} is empty: it has no samples")
    return resample(samples, int(rate), target_rate)


def save_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLING_RATE) -> Path:
    """Write mono float samples in [-1, 1] as a 16-bit PCM WAV file."""
    path = Path(path)
    ints = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(ints.tobytes())
    return path


# ---- model side ------------------------------------------------------------------------
def require_speech(facts: ModelFacts) -> None:
    """Raise :class:`AudioError` when audio is given to a model that does not take it."""
    if facts.modality is not Modality.SPEECH:
        raise AudioError(f"audio was given, but {facts.name} is a {facts.modality.value} model: "
                         "use a speech model such as whisper-tiny.en")


def log_mel(feature_extractor, samples: np.ndarray) -> Float[Tensor, "batch mel frame"]:
    """Whisper's log-mel features ``[1, n_mels, 3000]`` of 16 kHz ``samples`` (padded to 30 s)."""
    if samples.ndim != 1 or samples.size == 0:
        raise AudioError(f"log_mel takes 1-D non-empty samples, got shape {samples.shape}")
    rate = getattr(feature_extractor, "sampling_rate", SAMPLING_RATE)
    out = feature_extractor(samples, sampling_rate=rate, return_tensors="pt")
    return out.input_features.to(torch.float32)


__all__ = ["AudioError", "AudioLayout", "EncoderFacts", "SAMPLING_RATE", "layout_for", "load_audio", "log_mel",
           "read_file", "require_speech", "resample", "save_wav"]
