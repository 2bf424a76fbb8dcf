"""whisper-tiny.en on espeak-ng speech: WER, a reference decode, cross-attention vs saliency, alignment heads.

One run, on CPU, of everything docs/speech.md reports:
  1. synthesise the sentences with espeak-ng (22,050 Hz, resampled to 16 kHz) with word timings;
  2. transcribe them greedily (our loop), with transformers' generate, and with the
     ctranslate2 wheel on the original model.bin (the reference decode), and compare tokens;
     word error rate against the text spoken; the encoders' outputs compared;
  3. cross-attention vs gradient x input saliency per decoder head (analyses.cross_attention);
  4. occlusion saliency on the first few utterances, against gradient x input;
  5. alignment heads from espeak-ng's word timings, vs the config's.
The HeadScores go to --results; a markdown summary to --out.

Example:
    python benchmarks/speech_bench.py --out benchmarks/results/speech_cpu.md --results benchmarks/results/speech
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SENTENCES = (
    "Attention heads can be found in every transformer layer.",
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Speech recognition models turn sound into written words.",
    "The weather today is cold and windy with a chance of rain.",
    "She sold her old bicycle to a student from the university.",
)


class Clock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        clock = self

        class _Span:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                clock.times[name] = clock.times.get(name, 0.0) + time.perf_counter() - self.t

        return _Span()


def reference_decode(folder: Path, feats: list[torch.Tensor], prompt: list[int], threads: int):
    """Greedy tokens and encoder outputs from the ctranslate2 runtime (None when it is not installed)."""
    try:
        import ctranslate2
    except ImportError:
        return None
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=threads)
    out = []
    for f in feats:
        sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(f.numpy()))
        r = model.generate(sv, [prompt], beam_size=1, suppress_blank=True, suppress_tokens=[-1], max_length=448)
        enc = np.array(model.encode(sv, to_cpu=True))
        out.append((list(r[0].sequences_ids[0]), enc))
    return out, ctranslate2.__version__


def fmt(x: float) -> str:
    return f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speech_cpu.md"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/speech"))
    parser.add_argument("--occlusion", type=int, default=3, help="utterances with an occlusion check")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import lens
    from attnlens.analyses.asr_metrics import corpus_wer, word_errors
    from attnlens.analyses.cross_attention import (
        alignment_head_scores,
        cross_attention_agreement,
        saliency_agreement,
    )
    from attnlens.analyses.result import Provenance
    from attnlens.analyses.speech_collect import (
        features,
        gradient_saliency,
        occlusion_saliency,
        pool_to_windows,
        prompt_ids,
        timed_tokens,
        transcribe,
        utterance_maps,
    )
    from lens.audio import load_audio
    from lens.espeak import synthesize
    from lens.zoo import whisper

    clock = Clock()
    with clock("convert model.bin to a transformers folder (first use)"), tempfile.TemporaryDirectory() as tmp:
        whisper.build_folder(Path(tmp))
    with clock("load (cache)"):
        lm = lens.load("whisper-tiny.en")
    enc = lm.extras["encoder"]
    with clock("synthesise + resample"):
        utts = [synthesize(s) for s in SENTENCES]
        audio = [load_audio(u.samples, sampling_rate=u.sampling_rate) for u in utts]
    with clock("transcribe (own greedy loop)"):
        transcripts = [transcribe(lm, a) for a in audio]
    feats = [features(lm, a).cpu() for a in audio]
    with clock("transcribe (transformers generate)"), torch.no_grad():
        hf = [lm.model.generate(f, max_new_tokens=120)[0].tolist() for f in feats]
    prompt = prompt_ids(lm)
    with clock("reference decode (ctranslate2)"):
        ref = reference_decode(whisper.model_folder(), feats, prompt, args.threads)
    rows, n_equal_hf, n_equal_ref, enc_diff = [], 0, 0, []
    for i, (s, t) in enumerate(zip(SENTENCES, transcripts)):
        ours = list(t.generated)
        hf_tokens = [x for x in hf[i] if x not in prompt and x != 50256]
        n_equal_hf += hf_tokens == ours
        ref_ok = None
        if ref is not None:
            ref_tokens, ref_enc = ref[0][i]
            ref_ok = ref_tokens == ours
            n_equal_ref += ref_ok
            with torch.no_grad():
                ours_enc = lm.model.get_encoder()(feats[i]).last_hidden_state.numpy()
            enc_diff.append(float(np.abs(ours_enc - ref_enc).max()))
        rows.append((s, t.text, word_errors(s, t.text).wer, hf_tokens == ours, ref_ok, utts[i].duration))
    wer = corpus_wer([(s, t.text) for s, t in zip(SENTENCES, transcripts)])

    prov = Provenance.for_model(lm.facts, prompts=f"{len(SENTENCES)} espeak-ng en-us sentences (benchmarks/speech_bench.py)")
    with clock("cross-attention + gradient x input"):
        maps = []
        for i, (a, t) in enumerate(zip(audio, transcripts)):
            print(f"saliency {i + 1}/{len(audio)}: {len(t.generated)} tokens", file=sys.stderr, flush=True)
            maps.append(utterance_maps(lm, a, t))
    agreement = cross_attention_agreement(maps, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, provenance=prov)
    occl = []
    with clock("occlusion check"):
        for i, (a, t, m) in enumerate(list(zip(audio, transcripts, maps))[: args.occlusion]):
            print(f"occlusion {i + 1}/{args.occlusion}", file=sys.stderr, flush=True)
            drops, spans = occlusion_saliency(lm, a, t.ids, t.n_prompt, window=5)
            occl.append(saliency_agreement(pool_to_windows(m.saliency, spans), drops))
    with clock("alignment (forced, espeak timings)"):
        timed = [timed_tokens(lm, a, u.words) for a, u in zip(audio, utts)]
    align = alignment_head_scores(timed, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, provenance=prov,
                                  config_heads=enc.alignment_heads, tolerance=1)
    args.results.mkdir(parents=True, exist_ok=True)
    for r in [*agreement, align]:
        r.save(args.results)
    # the per-token gradient cost, measured once more on the first utterance alone
    t0 = time.perf_counter()
    gradient_saliency(lm, audio[0], transcripts[0].ids, transcripts[0].n_prompt)
    per_token = (time.perf_counter() - t0) / len(transcripts[0].generated)

    by = {r.metric: r for r in agreement}
    lines = [
        "# whisper-tiny.en on espeak-ng speech (CPU)",
        "",
        f"Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores (shared with other jobs), "
        f"torch {torch.__version__}, {args.threads} threads. Command: `python benchmarks/speech_bench.py`.",
        "",
        "## Transcription",
        "",
        "| sentence spoken | transcript | WER | = transformers generate | = ctranslate2 reference | audio s |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {s} | {h} | {w:.3f} | {g} | {r} | {d:.2f} |" for s, h, w, g, r, d in rows],
        "",
        f"Corpus WER: **{wer:.3f}** over {sum(len(s.split()) for s in SENTENCES)} words. Greedy tokens equal to "
        f"transformers' generate on {n_equal_hf}/{len(rows)}, to the ctranslate2 reference on "
        + (f"{n_equal_ref}/{len(rows)} (ctranslate2 {ref[1]}); encoder outputs differ by at most "
           f"{max(enc_diff):.2e}." if ref is not None else "- (ctranslate2 not installed)."),
        "",
        "## Cross-attention vs gradient x input saliency",
        "",
        f"{by['pearson'].summary['n_tokens']} tokens in {len(maps)} utterances; audio frames only.",
        "",
        "| decoder layer (mean over heads) | Pearson | Spearman | saliency share | saliency in focus (50%) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for layer in range(lm.facts.n_layers):
        lines.append(f"| {layer} | " + " | ".join(fmt(by[m].summary["layer_mean"][layer]) for m in
                                                    ("pearson", "spearman", "saliency_share", "saliency_in_focus")) + " |")
    lines.append("| all layers and heads | " + " | ".join(fmt(by[m].summary["all_heads"]) for m in
                                                           ("pearson", "spearman", "saliency_share", "saliency_in_focus")) + " |")
    lines.append("| best single head | " + " | ".join(
        f"{fmt(by[m].summary['best_head'][2])} (L{by[m].summary['best_head'][0]}H{by[m].summary['best_head'][1]})"
        for m in ("pearson", "spearman", "saliency_share", "saliency_in_focus")) + " |")
    lines.append("| mean of single heads | " + " | ".join(fmt(by[m].summary["head_mean"]) for m in
                                                           ("pearson", "spearman", "saliency_share", "saliency_in_focus")) + " |")
    lines += [
        "",
        f"Chance: saliency share of uniform attention {fmt(by['saliency_share'].summary['chance'])}; "
        f"saliency in focus when the focus is spread evenly {fmt(by['saliency_in_focus'].summary['chance'])}; "
        f"mean focus size {fmt(float(np.mean(by['saliency_in_focus'].arrays['focus_size'])))} of the frames.",
        "",
        "Per head (Pearson), rows = decoder layers:",
        "",
        "| layer | " + " | ".join(f"h{h}" for h in range(lm.facts.n_heads)) + " |",
        "| --- |" + " --- |" * lm.facts.n_heads,
        *[f"| {layer} | " + " | ".join(fmt(v) for v in by["pearson"].scores[layer]) + " |"
          for layer in range(lm.facts.n_layers)],
        "",
        "Occlusion check (windows of 5 frames = 100 ms set to the padding level; drop of the token's "
        "log-probability vs gradient x input summed over the same windows):",
        "",
        *[f"- utterance {i}: Pearson {fmt(o['pearson'])}, Spearman {fmt(o['spearman'])} over {o['n_tokens']} tokens"
          for i, o in enumerate(occl)],
        "",
        "## Alignment heads (word timing from espeak-ng, peak within 1 frame of the word)",
        "",
        f"Top {align.summary['top_k']}: {align.summary['top_heads']}; config: {align.summary['config_heads']}; "
        f"overlap {align.summary['overlap']}/{len(align.summary['config_heads'])}; config heads' ranks "
        f"{align.summary['config_ranks']} of {align.scores.size}. Mean hit rate: top {fmt(align.summary['top_mean_hit_rate'])}, "
        f"config {fmt(align.summary['config_mean_hit_rate'])}, chance {fmt(align.summary['chance'])} "
        f"({align.summary['n_tokens']} word tokens).",
        "",
        "Word onsets from a DTW on the heads' mean attention (as Whisper times words), mean absolute error "
        "against espeak-ng's onsets: " + ", ".join(f"{k} heads {v * 1000:.0f} ms" for k, v in
                                                   align.summary["dtw_onset_error_s"].items()) + ".",
        "",
        "| layer | " + " | ".join(f"h{h}" for h in range(lm.facts.n_heads)) + " |",
        "| --- |" + " --- |" * lm.facts.n_heads,
        *[f"| {layer} | " + " | ".join(fmt(v) for v in align.scores[layer]) + " |" for layer in range(lm.facts.n_layers)],
        "",
        "## Timings (s, wall clock)",
        "",
        *[f"- {k}: {v:.2f}" for k, v in clock.times.items()],
        f"- gradient x input per token (utterance 0 alone): {per_token:.2f}",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    (args.results / "transcripts.json").write_text(json.dumps(
        [{"spoken": s, "transcript": h, "wer": w, "equal_generate": g, "equal_reference": r} for s, h, w, g, r, _ in rows],
        indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
