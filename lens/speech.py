"""Speech encoder-decoders (Whisper): features, greedy transcription and the decoder's prompt.

``lens.run(lm, audio)`` on a speech model (input prepared by :mod:`lens.inputs`) transcribes the
audio (or takes the given decoder tokens), then runs the decoder once over the prompt and the
transcript with the capture on, so ``pattern`` rows are the decoder's tokens,
``cross_pattern`` is ``[batch, head, token, frames]`` and ``enc_pattern`` the encoder's
``[batch, head, frames, frames]``. The capture's layout is an :class:`~formats.AudioLayout`
(encoder positions to seconds) and the input audio is saved with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.formats.capture import AUDIO_FILE
from lens.audio import EncoderFacts, log_mel, require_speech, save_wav


@dataclass(frozen=True)
class Transcript:
    """Greedy output: ``ids`` = prompt + generated tokens (no end-of-text), ``n_prompt`` prompt tokens."""

    ids: tuple[int, ...]
    n_prompt: int
    text: str
    log_probs: tuple[float, ...]  # of each generated token (and the end-of-text last), at decoding

    @property
    def generated(self) -> tuple[int, ...]:
        return self.ids[self.n_prompt:]


def encoder_of(lm) -> EncoderFacts:
    require_speech(lm.facts)
    enc = lm.extras.get("encoder")
    if enc is None:
        enc = EncoderFacts.from_whisper_config(lm.model.config)
    return enc


def prompt_ids(lm) -> list[int]:
    """``<|startoftranscript|> <|notimestamps|>`` (English-only models need no language or task token)."""
    gen = lm.model.generation_config
    start = gen.decoder_start_token_id
    no_ts = getattr(gen, "no_timestamps_token_id", None)
    return [int(start)] + ([int(no_ts)] if no_ts is not None else [])


def features(lm, samples: np.ndarray) -> Float[Tensor, "batch mel frame"]:
    require_speech(lm.facts)
    return log_mel(lm.processor, samples).to(lm.device)


@torch.no_grad()
def transcribe(lm, samples: np.ndarray, *, max_new_tokens: int = 120) -> Transcript:
    """Greedy transcription of 16 kHz ``samples`` (one 30 s window)."""
    cfg = lm.model.generation_config
    feats = features(lm, samples)
    enc = lm.model.get_encoder()(feats).last_hidden_state
    ids = prompt_ids(lm)
    n_prompt = len(ids)
    max_new = min(max_new_tokens, lm.facts.context_length - n_prompt)
    always = torch.tensor(list(cfg.suppress_tokens or []), dtype=torch.long, device=lm.device)
    first = torch.tensor(list(cfg.begin_suppress_tokens or []), dtype=torch.long, device=lm.device)
    eos = int(cfg.eos_token_id)
    log_probs = []
    past, step_ids = None, ids
    for step in range(max_new):
        # the decoder's KV cache (self- and cross-attention) makes each step one token's work
        out = lm.model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([step_ids], device=lm.device),
                       past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        logits[always] = -torch.inf
        if step == 0:
            logits[first] = -torch.inf
        lp = torch.log_softmax(logits, -1)
        token = int(lp.argmax())
        log_probs.append(float(lp[token]))
        if token == eos:
            break
        ids.append(token)
        step_ids = [token]
    text = lm.tokenizer.decode(ids[n_prompt:], skip_special_tokens=True).strip()
    return Transcript(ids=tuple(ids), n_prompt=n_prompt, text=text, log_probs=tuple(log_probs))


def text_ids(lm, text: str) -> list[int]:
    """Prompt + the tokens of ``text`` as the decoder would emit them (a leading space, no end-of-text)."""
    return prompt_ids(lm) + list(lm.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """``samples`` as the bytes of a WAV file (saved beside a capture)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = save_wav(Path(tmp) / AUDIO_FILE, samples, rate)
        return path.read_bytes()
