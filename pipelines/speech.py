"""Speech workflows: cross-attention against input saliency and alignment heads on utterances.

:func:`run_cross_attention` takes utterances (16 kHz samples, with word timings when known),
transcribes them, and scores every decoder head's cross-attention against gradient x input
saliency (:func:`analyses.cross_attention.cross_attention_agreement`) and, where words are
timed, how well its attention peaks follow the words (alignment heads). :func:`espeak_utterances`
makes test speech with espeak-ng's own word timings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from attnlens.formats.provenance import Provenance
from attnlens.pipelines.progress import SILENT, Progress

SENTENCES = (
    "Attention heads can be found in every transformer layer.",
    "The quick brown fox jumps over the lazy dog.",
    "Speech recognition models turn sound into written words.",
)


@dataclass
class Utterance:
    samples: np.ndarray  # 16 kHz mono float32
    name: str = ""
    words: Sequence = field(default_factory=tuple)  # lens.espeak.TimedWord, when the timing is known
    text: str = ""  # what was said, when known


def espeak_utterances(sentences: Sequence[str] = SENTENCES, *, max_seconds: float | None = None) -> list[Utterance]:
    """``sentences`` spoken by espeak-ng (en-us), resampled to 16 kHz, with its word timings; cut to
    ``max_seconds`` (a model's window) with the words that end after it dropped."""
    from lens.audio import SAMPLING_RATE, load_audio
    from lens.espeak import synthesize

    out = []
    for i, s in enumerate(sentences):
        u = synthesize(s)
        samples, words = load_audio(u.samples, sampling_rate=u.sampling_rate), tuple(u.words)
        if max_seconds is not None and len(samples) > max_seconds * SAMPLING_RATE:
            samples = samples[: int(max_seconds * SAMPLING_RATE)]
            words = tuple(w for w in words if w.end <= max_seconds)
        out.append(Utterance(samples, f"espeak-{i:02d}", words, s))
    return out


@dataclass
class SpeechStudy:
    results: list  # HeadScores: agreement per metric, alignment heads
    maps: list  # formats.TokenMaps: each utterance's saliency per token over the encoder frames
    examples: list = field(default_factory=list)  # (name, lens.Capture) of the utterances shown

    def save(self, folder) -> None:
        from pathlib import Path

        for r in [*self.results, *self.maps]:
            r.save(folder)
        for name, cap in self.examples:
            cap.write_into(Path(folder) / name)


def run_cross_attention(lm, utterances: Sequence[Utterance], *, progress: Progress = SILENT, batch: int = 4,
                        examples: int = 1) -> SpeechStudy:
    """Cross-attention vs saliency per head (and alignment heads where words are timed), each utterance's
    saliency maps, and captures (pattern, cross_pattern) of the first ``examples`` utterances over their
    transcripts, saved as ``captures/audio-NNN`` next to their maps."""
    import lens
    from attnlens.analyses.cross_attention import alignment_head_scores, cross_attention_agreement
    from attnlens.analyses.speech_collect import (
        encoder_of,
        timed_tokens,
        transcribe,
        utterance_maps,
    )
    from attnlens.formats.token_maps import TokenMaps
    from lens.audio import layout_for

    f = lm.facts
    task = progress.task("cross-attention vs gradient x input saliency", total=len(utterances))
    maps, transcripts, saved_maps, shown = [], [], [], []
    for i, u in enumerate(utterances):
        t = transcribe(lm, u.samples)
        transcripts.append(t)
        if len(t.generated) > 0:
            m = utterance_maps(lm, u.samples, t, batch=batch)
            maps.append(m)
            name = f"captures/audio-{i:03d}"
            layout = layout_for(u.samples, encoder_of(lm))
            saved_maps.append(TokenMaps("cross_attention", f"saliency_{i:03d}", list(m.tokens), layout.times(),
                                        {"gradient x input": m.saliency.numpy()}, provenance=None,  # set below
                                        x_label="seconds", params={"capture": name, "utterance": u.name,
                                                                   "said": u.text, "heard": t.text,
                                                                   "first_token_row": t.n_prompt - 1},
                                        description="gradient x input saliency of each transcript token over the "
                                                    "encoder frames (magnitudes summed over mel bins)"))
            if len(shown) < examples:
                cap = lens.run(lm, u.samples, sites=[lens.Site.PATTERN, lens.Site.CROSS_PATTERN],
                               decoder_ids=list(t.ids)).capture
                shown.append((name, cap))
        task.advance()
    prov = Provenance.for_model(f, prompts=f"{len(utterances)} utterances ({', '.join(u.name for u in utterances)})",
                                inputs=[u.samples.tobytes() for u in utterances])
    for m in saved_maps:
        m.provenance = prov
    results = []
    if maps:
        results += cross_attention_agreement(maps, n_layers=f.n_layers, n_heads=f.n_heads, provenance=prov)
        for r in results:
            r.summary["transcripts"] = [{"utterance": u.name, "said": u.text, "heard": t.text}
                                        for u, t in zip(utterances, transcripts)]
    timed = [u for u in utterances if u.words]
    if timed:
        task = progress.task("alignment heads (word timings)", total=1)
        tt = [timed_tokens(lm, u.samples, u.words) for u in timed]
        task.advance()
        results.append(alignment_head_scores(tt, n_layers=f.n_layers, n_heads=f.n_heads, provenance=prov,
                                             config_heads=encoder_of(lm).alignment_heads, tolerance=1))
    return SpeechStudy(results, saved_maps, shown)
