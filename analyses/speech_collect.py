"""Model-side data collection for the speech analyses (the analyses in
:mod:`analyses.cross_attention` are pure functions of what these return).

Everything takes a :class:`~lens.LoadedModel` of a Whisper-style encoder-decoder (its
``processor`` the feature extractor, ``extras["encoder"]`` its
:class:`~lens.audio.EncoderFacts`) and 16 kHz samples (:func:`lens.audio.load_audio`).

- :func:`transcribe`: greedy decoding with the model's suppressed tokens (every step) and
  begin-suppressed tokens (first step), from the prompt ``<|startoftranscript|>
  <|notimestamps|>``; the reference every other step explains.
- :func:`cross_attentions`: teacher-forced cross-attention ``[head, token, frame]`` per
  decoder layer, for the rows that predict each explained token.
- :func:`gradient_saliency`: gradient x input of each explained token's log-probability
  with respect to the log-mel features ``[mel, 3000]``; magnitudes summed over mel bins,
  then over each pair of mel frames (10 ms hop) that one encoder position (20 ms) covers.
- :func:`occlusion_saliency`: the drop in each token's log-probability when a window of
  encoder frames is replaced by the clip's padding level, to check the gradient maps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attnlens.analyses.cross_attention import TimedTokens, UtteranceMaps
from attnlens.formats.errors import AnalysisError
from lens.audio import AudioLayout, layout_for

_WORD = re.compile(r"\w")


from lens.speech import Transcript, encoder_of, features, prompt_ids, text_ids, transcribe  # noqa: E402,F401


@torch.no_grad()
def cross_attentions(lm, samples: np.ndarray, ids: Sequence[int], n_prompt: int
                     ) -> dict[int, Float[Tensor, "head token frame"]]:
    """Teacher-forced cross-attention for the tokens ``ids[n_prompt:]``: per decoder layer
    ``[head, token, frame]``, row ``t`` from the position that predicts token ``t`` (captured with
    the ``cross_pattern`` site, so any attention implementation works)."""
    import lens

    if len(ids) <= n_prompt:
        raise AnalysisError(f"ids has {len(ids)} tokens: nothing after the {n_prompt} prompt tokens to explain")
    cap = lens.run(lm, samples, sites=[lens.Site.CROSS_PATTERN], decoder_ids=list(ids)).capture
    rows = slice(n_prompt - 1, len(ids) - 1)
    return {layer: cap.get(lens.Site.CROSS_PATTERN, layer)[0, :, rows].float().cpu() for layer in cap.meta.layers}


def pool_to_encoder(per_mel_frame: Float[Tensor, "token mel_frame"], n_frames: int) -> Float[Tensor, "token frame"]:
    """Sum consecutive mel frames onto the ``n_frames`` encoder positions (2 mel frames each for Whisper)."""
    n_mel = per_mel_frame.shape[-1]
    if n_mel % n_frames:
        raise AnalysisError(f"{n_mel} mel frames do not pool evenly onto {n_frames} encoder frames")
    return per_mel_frame.reshape(*per_mel_frame.shape[:-1], n_frames, n_mel // n_frames).sum(-1)


def gradient_saliency(lm, samples: np.ndarray, ids: Sequence[int], n_prompt: int, *, batch: int = 4
                      ) -> Float[Tensor, "token frame"]:
    """Gradient x input saliency of each token ``ids[n_prompt:]`` over encoder frames (see the module docstring).

    Each token's log-probability at the position that predicts it is differentiated with
    respect to the log-mel features, ``batch`` tokens per backward pass (one copy of the
    features per token, so every copy's gradient belongs to one token).
    """
    enc = encoder_of(lm)
    feats = features(lm, samples)
    ids_t = torch.tensor([list(ids)], device=lm.device)
    targets = list(range(n_prompt, len(ids)))
    rows = []
    was_training = lm.model.training
    lm.model.eval()
    try:
        for start in range(0, len(targets), batch):
            chunk = targets[start:start + batch]
            x = feats.expand(len(chunk), -1, -1).clone().requires_grad_(True)
            out = lm.model(input_features=x, decoder_input_ids=ids_t.expand(len(chunk), -1), use_cache=False)
            lp = torch.log_softmax(out.logits.float(), -1)
            pos = torch.tensor([t - 1 for t in chunk], device=lm.device)
            tok = ids_t[0, chunk]
            picked = lp[torch.arange(len(chunk), device=lm.device), pos, tok]
            (grad,) = torch.autograd.grad(picked.sum(), x)
            rows.append((grad * x.detach()).abs().sum(1).cpu())  # token mel_frame
    finally:
        lm.model.train(was_training)
    return pool_to_encoder(torch.cat(rows), enc.n_frames)


@torch.no_grad()
def occlusion_saliency(lm, samples: np.ndarray, ids: Sequence[int], n_prompt: int, *, window: int = 5,
                       batch: int = 8) -> tuple[Float[Tensor, "token window"], list[tuple[int, int]]]:
    """Drop of each token's log-probability when encoder frames ``[w, w + window)`` (over the
    audio) are replaced by the clip's padding level in the log-mel features.

    Returns ``[token, n_windows]`` (positive = the window mattered) and the windows' frame spans.
    """
    enc = encoder_of(lm)
    layout = layout_for(samples, enc)
    feats = features(lm, samples)
    mel_per_frame = feats.shape[-1] // enc.n_frames
    floor = feats.amin()  # the padding past the audio sits at the clip's floor after Whisper's normalisation
    ids_t = torch.tensor([list(ids)], device=lm.device)
    targets = torch.tensor(list(ids[n_prompt:]), device=lm.device)
    pos = torch.arange(n_prompt - 1, len(ids) - 1, device=lm.device)

    def token_log_probs(x: Tensor) -> Tensor:
        lp = torch.log_softmax(lm.model(input_features=x, decoder_input_ids=ids_t.expand(len(x), -1),
                                        use_cache=False).logits.float(), -1)
        return lp[:, pos, targets]  # batch token

    clean = token_log_probs(feats)[0]
    spans = [(w, min(w + window, layout.n_valid_frames)) for w in range(0, layout.n_valid_frames, window)]
    drops = []
    for start in range(0, len(spans), batch):
        chunk = spans[start:start + batch]
        x = feats.repeat(len(chunk), 1, 1)
        for i, (a, b) in enumerate(chunk):
            x[i, :, a * mel_per_frame:b * mel_per_frame] = floor
        drops.append(clean[None] - token_log_probs(x))
    return torch.cat(drops).T.cpu(), spans


def pool_to_windows(maps: Float[Tensor, "token frame"], spans: Sequence[tuple[int, int]]) -> Float[Tensor, "token window"]:
    """Sum a per-frame map over the occlusion windows."""
    return torch.stack([maps[:, a:b].sum(-1) for a, b in spans], -1)


def utterance_maps(lm, samples: np.ndarray, transcript: Transcript, *, batch: int = 4) -> UtteranceMaps:
    """Cross-attention and gradient saliency for the transcript's generated tokens."""
    layout = layout_for(samples, encoder_of(lm))
    ids, n = transcript.ids, transcript.n_prompt
    return UtteranceMaps(
        tokens=tuple(lm.tokens(torch.tensor(ids[n:]))), cross_attention=cross_attentions(lm, samples, ids, n),
        saliency=gradient_saliency(lm, samples, ids, n, batch=batch), n_valid=layout.n_valid_frames)


def word_token_spans(lm, words: Sequence, layout: AudioLayout) -> tuple[list[int], list[tuple[int, int] | None]]:
    """Tokens of the timed ``words`` (objects with ``text``, ``start``, ``end`` seconds) as the decoder
    would emit them, and per token the encoder-frame span of its word (None for tokens with no
    letter or digit, e.g. punctuation). Tokenising word by word gives the same ids as the whole
    text (the byte-level pre-tokenizer splits at spaces), which is checked."""
    ids, spans = [], []
    for w in words:
        span = layout.span_frames(w.start, w.end)
        for t in lm.tokenizer(" " + w.text, add_special_tokens=False).input_ids:
            ids.append(int(t))
            spans.append(span if _WORD.search(lm.tokenizer.decode([t])) else None)
    whole = lm.tokenizer(" " + " ".join(w.text for w in words), add_special_tokens=False).input_ids
    if list(whole) != ids:
        raise AnalysisError("word-by-word tokens differ from the whole text's tokens; cannot time them")
    return ids, spans


def timed_tokens(lm, samples: np.ndarray, words: Sequence) -> TimedTokens:
    """Force-decode the timed ``words`` and return their cross-attention with each token's word span."""
    enc = encoder_of(lm)
    layout = layout_for(samples, enc)
    tokens, spans = word_token_spans(lm, words, layout)
    prompt = prompt_ids(lm)
    ids = prompt + tokens
    return TimedTokens(tokens=tuple(lm.tokens(torch.tensor(tokens))), spans=tuple(spans),
                       cross_attention=cross_attentions(lm, samples, ids, len(prompt)),
                       n_valid=layout.n_valid_frames, frame_seconds=enc.frame_seconds)


__all__ = ["Transcript", "cross_attentions", "encoder_of", "features", "gradient_saliency", "occlusion_saliency",
           "pool_to_encoder", "pool_to_windows", "prompt_ids", "text_ids", "timed_tokens", "transcribe",
           "utterance_maps", "word_token_spans"]
