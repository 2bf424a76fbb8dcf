"""Running speech encoder-decoders (Whisper): greedy transcription, and a captured forward pass
over an utterance and its transcript.

:func:`run_audio` is what ``lens.run(lm, audio)`` does for a speech model: transcribe the
audio (or take the given decoder tokens), then run the decoder once over the prompt and the
transcript with the capture on, so ``pattern`` rows are the decoder's tokens,
``cross_pattern`` is ``[batch, head, token, frames]`` and ``enc_pattern`` the encoder's
``[batch, head, frames, frames]``. The capture's layout is an :class:`~formats.AudioLayout`
(encoder positions to seconds) and the input audio is saved with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from formats.capture import AUDIO_FILE, CaptureMeta
from lens.audio import EncoderFacts, layout_for, load_audio, log_mel, require_speech, save_wav
from lens.errors import MemoryBudgetError, PromptError


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


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = save_wav(Path(tmp) / AUDIO_FILE, samples, rate)
        return path.read_bytes()


def run_audio(lm, audio, *, sites, layers=None, heads=None, dtype=None, device="cpu", budget_bytes=None, edits=(),
              backend=None, decoder_ids: Sequence[int] | None = None, max_new_tokens: int = 120):
    """``lens.run`` for a speech model: ``audio`` is a WAV/FLAC path or 16 kHz samples (see
    :func:`lens.audio.load_audio`); the decoder runs over the prompt and ``decoder_ids`` (default:
    the greedy transcript)."""
    from lens.backends import Backend
    from lens.errors import BackendError
    from lens.recording import RunResult, native
    from lens.recording.record import Capture
    from lens.recording.spec import CaptureSpec, format_bytes

    if backend is not None and Backend(backend) is not Backend.TORCH:
        raise BackendError(f"backend {Backend(backend).value!r} does not take audio: use backend 'torch' for {lm.facts.name}")
    if isinstance(audio, str) and not audio.lower().endswith((".wav", ".flac", ".wave")):
        raise PromptError(f"{lm.facts.name} is a speech model: give it audio (a .wav or .flac file or 16 kHz samples), "
                          "not text")
    samples = load_audio(audio)
    enc = encoder_of(lm)
    layout = layout_for(samples, enc)
    spec = CaptureSpec.resolve(lm.facts, sites=sites, layers=layers, heads=heads, dtype=dtype, device=device,
                               budget_bytes=budget_bytes)
    ids = list(decoder_ids) if decoder_ids is not None else list(transcribe(lm, samples, max_new_tokens=max_new_tokens).ids)
    if any(not 0 <= int(i) < lm.facts.vocab_size for i in ids):
        raise PromptError(f"decoder ids must be in 0-{lm.facts.vocab_size - 1}")
    input_ids = torch.tensor([ids], dtype=torch.long)
    lm.check_length(input_ids)
    model_dtype = next(lm.model.parameters()).dtype
    estimate = spec.estimate_bytes(lm.facts, batch=1, q_len=len(ids), model_dtype=model_dtype, frames=enc.n_frames)
    if estimate > spec.budget_bytes:
        raise MemoryBudgetError(f"capture would need about {format_bytes(estimate)}, over the budget of "
                                f"{format_bytes(spec.budget_bytes)}: select fewer layers, heads or sites")
    with torch.no_grad(), native.capture(lm, spec, edits=edits) as session:
        out = lm.model(input_features=features(lm, samples).to(model_dtype), decoder_input_ids=input_ids.to(lm.device),
                       use_cache=False)
    steps = [{k: v for s in session.steps for k, v in s.items()}]  # the encoder's and decoder's passes: one step
    from dataclasses import replace

    layout = replace(layout, audio_file=AUDIO_FILE)
    meta = CaptureMeta(facts=lm.facts, token_ids=[ids], tokens=[lm.tokens(input_ids[0])],
                       text=[lm.tokenizer.decode(ids[len(prompt_ids(lm)):], skip_special_tokens=True).strip()],
                       sites=list(spec.sites), layers=list(spec.layers), heads=list(spec.heads),
                       kv_heads=list(spec.kv_heads), backend="torch", layout=layout)
    cap = Capture(meta=meta, steps=steps, audio_wav=_wav_bytes(samples, enc.sampling_rate))
    return RunResult(logits=out.logits.detach(), capture=cap)

