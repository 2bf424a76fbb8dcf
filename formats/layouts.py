"""Where the positions of a sequence sit in the input: image patches (ViT, VLM), audio frames, the
source tokens of a text encoder-decoder (T5, BART).

A capture's metadata carries at most one layout, with a ``kind`` tag, so that views can map
attention back onto the image or the time axis without knowing the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnlens.formats.errors import CorruptFileError, PromptError


@dataclass(frozen=True)
class ImageLayout:
    """Where each image token of a sequence sits on the image.

    The image occupies positions ``start .. start + prefix + rows * cols - 1``: first
    ``prefix`` tokens (a ViT's CLS and register tokens), then the patches in row-major
    order, so token ``start + prefix + r * cols + c`` is patch ``(r, c)``. A ViT has
    ``start = 0``; a vision-language model has ``prefix = 0`` and ``start`` = the first image
    token after the text before it. ``image_file`` names the model-input image saved next
    to the capture (relative to its folder).
    """

    height: int  # pixels of the model input
    width: int
    patch_size: int
    prefix: int = 1  # tokens before the patches: CLS plus register tokens
    start: int = 0  # first token of the image in the sequence
    image_file: str | None = None
    pooled: int = 1  # patches merged per side into one token (1: one token per patch)

    def __post_init__(self) -> None:
        if self.height < self.patch_size or self.width < self.patch_size:
            raise PromptError(f"image of {self.height}x{self.width} pixels is smaller than one "
                              f"{self.patch_size}x{self.patch_size} patch")

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the token grid (edges that do not fill a patch are dropped)."""
        return self.height // (self.patch_size * self.pooled), self.width // (self.patch_size * self.pooled)

    @property
    def n_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def n_tokens(self) -> int:
        """Tokens of the image: prefix plus patches."""
        return self.prefix + self.n_patches

    @property
    def patch_span(self) -> tuple[int, int]:
        """Half-open positions ``[first patch, last patch + 1)`` in the sequence."""
        first = self.start + self.prefix
        return first, first + self.n_patches

    @property
    def span(self) -> tuple[int, int]:
        """Half-open positions of the whole image (prefix and patches)."""
        return self.start, self.start + self.n_tokens

    def tokens(self) -> list[str]:
        """``["CLS", ("reg0", ...), "patch(0,0)", "patch(0,1)", ...]``."""
        rows, cols = self.grid
        prefix = (["CLS"] + [f"reg{i}" for i in range(self.prefix - 1)]) if self.prefix else []
        return prefix + [f"patch({r},{c})" for r in range(rows) for c in range(cols)]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "image", "height": self.height, "width": self.width, "patch_size": self.patch_size,
                "prefix": self.prefix, "start": self.start, "image_file": self.image_file, "pooled": self.pooled,
                "grid": list(self.grid)}

    @classmethod
    def from_json(cls, d: Any, where: str = "layout") -> ImageLayout:
        if not isinstance(d, dict):
            raise CorruptFileError(f"{where}: an image layout must be an object")
        try:
            vals = {k: int(d[k]) for k in ("height", "width", "patch_size")}
            vals["prefix"], vals["start"] = int(d.get("prefix", 1)), int(d.get("start", 0))
            vals["pooled"] = int(d.get("pooled", 1))
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{where}: an image layout needs integer height, width and patch_size") from None
        if not (0 < vals["patch_size"] <= 4096 and 0 < vals["height"] <= 65536 and 0 < vals["width"] <= 65536
                and 0 <= vals["prefix"] <= 64 and 0 <= vals["start"] < 10**7 and 1 <= vals["pooled"] <= 64):
            raise CorruptFileError(f"{where}: image layout values out of range: {vals}")
        image_file = d.get("image_file")
        if image_file is not None and not isinstance(image_file, str):
            raise CorruptFileError(f"{where}: image_file must be a file name")
        try:
            return cls(**vals, image_file=image_file)
        except PromptError as err:
            raise CorruptFileError(f"{where}: {err}") from None


@dataclass(frozen=True)
class AudioLayout:
    """Where each encoder position sits in time, for one utterance in one window."""

    n_samples: int  # of the audio at ``sampling_rate`` (before padding to the window)
    sampling_rate: int = 16_000
    n_frames: int = 1500  # encoder positions in the window
    chunk_seconds: float = 30.0
    audio_file: str | None = None  # the input audio saved next to the capture (relative to its folder)

    def __post_init__(self) -> None:
        if self.n_samples <= 0:
            raise PromptError(f"audio is empty: n_samples must be positive, got {self.n_samples}")
        if self.duration > self.chunk_seconds + 1e-9:
            raise PromptError(f"audio is {self.duration:.2f} s: longer than one {self.chunk_seconds:g} s window; "
                             "split it into windows first")

    @property
    def duration(self) -> float:
        return self.n_samples / self.sampling_rate

    @property
    def frame_seconds(self) -> float:
        return self.chunk_seconds / self.n_frames

    @property
    def n_valid_frames(self) -> int:
        """Encoder positions that overlap the audio (the rest see only padding)."""
        return min(self.n_frames, math.ceil(self.duration / self.frame_seconds - 1e-9))

    def frame_start(self, frame: int) -> float:
        return frame * self.frame_seconds

    def frame_of(self, seconds: float) -> int:
        """The encoder position covering time ``seconds`` (clipped to the window)."""
        return int(min(self.n_frames - 1, max(0, math.floor(seconds / self.frame_seconds + 1e-9))))

    def span_frames(self, start: float, end: float) -> tuple[int, int]:
        """Encoder positions ``[first, stop)`` overlapping the time range ``[start, end)`` seconds."""
        first = self.frame_of(start)
        stop = max(first + 1, min(self.n_frames, math.ceil(end / self.frame_seconds - 1e-9)))
        return first, stop

    def times(self) -> np.ndarray:
        """Start time (s) of every encoder position ``[n_frames]``."""
        return np.arange(self.n_frames) * self.frame_seconds

    def to_json(self) -> dict[str, Any]:
        return {"kind": "audio", "n_samples": self.n_samples, "sampling_rate": self.sampling_rate,
                "n_frames": self.n_frames, "chunk_seconds": self.chunk_seconds, "duration": self.duration,
                "n_valid_frames": self.n_valid_frames, "audio_file": self.audio_file}

    @classmethod
    def from_json(cls, d: Any, where: str = "layout") -> AudioLayout:
        if not isinstance(d, dict):
            raise CorruptFileError(f"{where}: an audio layout must be an object")
        try:
            n, rate, frames = int(d["n_samples"]), int(d.get("sampling_rate", 16_000)), int(d.get("n_frames", 1500))
            chunk = float(d.get("chunk_seconds", 30.0))
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{where}: an audio layout needs integer n_samples, sampling_rate, n_frames") from None
        if not (0 < rate <= 1_000_000 and 0 < frames <= 1_000_000 and 0 < chunk <= 3600 and 0 < n <= rate * chunk + 1):
            raise CorruptFileError(f"{where}: audio layout values out of range")
        audio_file = d.get("audio_file")
        if audio_file is not None and not isinstance(audio_file, str):
            raise CorruptFileError(f"{where}: audio_file must be a file name")
        return cls(n, rate, frames, chunk, audio_file)



@dataclass(frozen=True)
class SourceLayout:
    """The encoder positions of a text encoder-decoder (T5, BART): one per source token.

    The capture's own tokens are the decoder's (the target); ``enc_pattern`` is
    ``[batch, head, source, source]`` and ``cross_pattern`` ``[batch, head, target, source]``,
    their source axis labelled by ``tokens``.
    """

    tokens: tuple[str, ...]  # readable source tokens, one per encoder position
    token_ids: tuple[int, ...]
    text: str = ""  # the source text (empty when given as ids)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
        object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
        if not self.tokens:
            raise PromptError("the source is empty: an encoder-decoder needs at least one source token")
        if len(self.tokens) != len(self.token_ids):
            raise PromptError(f"a source layout needs one token per id: got {len(self.tokens)} tokens and "
                              f"{len(self.token_ids)} ids")

    @property
    def n_frames(self) -> int:
        """Encoder positions (named as an audio layout's, so shape checks read both alike)."""
        return len(self.tokens)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "source", "tokens": list(self.tokens), "token_ids": list(self.token_ids), "text": self.text}

    @classmethod
    def from_json(cls, d: Any, where: str = "layout") -> SourceLayout:
        if not isinstance(d, dict):
            raise CorruptFileError(f"{where}: a source layout must be an object")
        tokens, ids, text = d.get("tokens"), d.get("token_ids"), d.get("text", "")
        if (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or not isinstance(ids, list)
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or not isinstance(text, str)):
            raise CorruptFileError(f"{where}: a source layout needs a list of token strings, a list of integer "
                                   "token_ids and a text")
        try:
            return cls(tuple(tokens), tuple(ids), text)
        except PromptError as err:
            raise CorruptFileError(f"{where}: {err}") from None


Layout = ImageLayout | AudioLayout | SourceLayout


def layout_from_json(d: Any, where: str = "layout") -> Layout | None:
    """The layout recorded in a capture (None when it has none)."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise CorruptFileError(f"{where}: a layout must be an object")
    kind = d.get("kind", "image")
    if kind == "image":
        return ImageLayout.from_json(d, where)
    if kind == "audio":
        return AudioLayout.from_json(d, where)
    if kind == "source":
        return SourceLayout.from_json(d, where)
    raise CorruptFileError(f"{where}: unknown layout kind {kind!r}")
