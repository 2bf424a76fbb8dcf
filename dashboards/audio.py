"""Speech captures for the views and the report (pure: numpy, the stdlib's wave and matplotlib).

A capture with an :class:`formats.AudioLayout` holds the decoder's tokens, the cross-attention
``[batch, head, token, frames]`` and the input audio (16-bit PCM WAV beside it). This module
reads the audio, computes its log spectrogram, pairs a capture with the saliency maps of the
same utterance (:class:`formats.TokenMaps` whose ``params["capture"]`` names it), and draws
one decoder token's cross-attention and saliency over time under the spectrogram.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np

from attnlens.formats import (
    AttnlensError,
    AudioLayout,
    CaptureFile,
    CorruptFileError,
    ResultsFolder,
    Site,
    TokenMaps,
)


def is_audio(cap: CaptureFile) -> bool:
    return isinstance(cap.layout, AudioLayout) and Site.CROSS_PATTERN in cap.sites


def read_wav(cap: CaptureFile) -> np.ndarray:
    """The capture's audio as float samples in [-1, 1]."""
    path = cap.audio_path()
    if path is None or not path.is_file():
        raise CorruptFileError(f"{cap.path.name} has no audio file")
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise CorruptFileError(f"{path.name}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
            frames = w.readframes(min(w.getnframes(), 60 * w.getframerate()))
            channels = w.getnchannels()
    except (wave.Error, EOFError, OSError) as err:
        raise CorruptFileError(f"{path.name} cannot be read: {err}") from None
    a = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return a.reshape(-1, channels).mean(axis=1) if channels > 1 else a


def spectrogram(samples: np.ndarray, rate: int, n_fft: int = 400, hop: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """``(log power [freq, time], times [time])`` with a Hann window (Whisper's 25 ms / 10 ms framing)."""
    if samples.size < n_fft:
        samples = np.pad(samples, (0, n_fft - samples.size))
    n = 1 + (samples.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    frames = samples[idx] * np.hanning(n_fft)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log10(power.T + 1e-10), (np.arange(n) * hop + n_fft / 2) / rate


def maps_for(folder: ResultsFolder, cap_label: str) -> TokenMaps | None:
    """The token maps saved for the capture ``cap_label`` (``params["capture"]`` relative to the maps' folder)."""
    for label, m in folder.token_maps.items():
        base = label.rsplit("/", 1)[0] + "/" if "/" in label else ""
        if f"{base}{m.params.get('capture', '')}" == cap_label:
            return m
    return None


@dataclass
class TokenView:
    token: str
    times: np.ndarray  # [frames] seconds
    attention: np.ndarray  # [frames] one head's (or the heads' mean) cross-attention of the token
    saliency: np.ndarray | None  # [frames], normalised to sum to 1 over the audio
    n_valid: int


def token_view(cap: CaptureFile, maps: TokenMaps | None, layer: int, head: int | None, token: int) -> TokenView:
    """Cross-attention of transcript token ``token`` (the row that predicts it) and its saliency."""
    lay: AudioLayout = cap.layout
    first = int(maps.params.get("first_token_row", 1)) if maps else 1
    row = first + token
    if not 0 <= row < len(cap.tokens):
        raise AttnlensError(f"token {token} is out of range: the capture has {len(cap.tokens) - first} transcript tokens")
    if head is None:
        att = cap.read(Site.CROSS_PATTERN, layer, 0, (0, slice(None), row)).mean(axis=0)
    else:
        att = cap.read(Site.CROSS_PATTERN, layer, 0, (0, cap.head_index(head), row))
    sal = None
    if maps is not None and token < len(maps.tokens) and maps.maps:
        s = np.asarray(next(iter(maps.maps.values()))[token], dtype=np.float64)[: lay.n_valid_frames]
        sal = s / s.sum() if s.sum() > 0 else s
    label = maps.tokens[token] if maps is not None and token < len(maps.tokens) else cap.tokens[row + 1] \
        if row + 1 < len(cap.tokens) else "?"
    return TokenView(label, lay.times(), np.asarray(att, dtype=np.float64), sal, lay.n_valid_frames)


def speech_png(cap: CaptureFile, view: TokenView, title: str) -> bytes:
    """The spectrogram with the token's cross-attention (and saliency) over time beneath it."""
    from matplotlib.figure import Figure

    lay: AudioLayout = cap.layout
    fig = Figure(figsize=(8, 4.2), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, 1]})
    try:
        spec, times = spectrogram(read_wav(cap), lay.sampling_rate)
        top.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                   extent=(0, times[-1] if times.size else lay.duration, 0, lay.sampling_rate / 2000))
        top.set_ylabel("kHz")
    except AttnlensError as err:
        top.text(0.5, 0.5, str(err)[:80], ha="center", va="center", transform=top.transAxes)
    top.set_title(title[:100], fontsize=9)
    v = view.n_valid
    att = view.attention[:v]
    bottom.plot(view.times[:v], att / att.sum() if att.sum() > 0 else att, label="cross-attention", color="#1f77b4")
    if view.saliency is not None:
        bottom.plot(view.times[:v], view.saliency, label="gradient x input saliency", color="#d62728", alpha=0.8)
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("share over the audio")
    bottom.legend(fontsize=8, loc="upper right")
    bottom.set_xlim(0, lay.duration)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def agreement_rows(folder: ResultsFolder, model: str) -> list[tuple[str, str, str, str]]:
    """``(metric, heads averaged, best head, mean of heads)`` rows from a model's cross_attention results."""
    rows = []
    for r in folder.results.values():
        if r.analysis != "cross_attention" or r.provenance.model != model:
            continue
        s = r.summary
        best = s.get("best_head") or [None, None, float("nan")]

        def fmt(x):
            return f"{x:.3f}" if isinstance(x, (int, float)) else "-"

        rows.append((r.metric, fmt(s.get("all_heads")), f"L{best[0]}H{best[1]} {fmt(best[2])}" if best[0] is not None
                     else "-", fmt(s.get("head_mean"))))
    return rows
