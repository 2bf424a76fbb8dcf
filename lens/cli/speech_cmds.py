"""`lens heads cross-attention`: speech models' cross-attention against input saliency, and alignment heads
(see :mod:`pipelines.speech`)."""

from __future__ import annotations

from pathlib import Path

import typer

from attnlens.formats.errors import PromptError
from lens.cli._common import MODEL_HELP, check_out, load_model, progress, writing
from lens.cli._options import FORCE_OPTION, JSON_OPTION
from lens.cli.heads_cmds import finish, heads_app


@heads_app.command("cross-attention")
def cross_attention(
    model: str = typer.Argument("whisper-tiny.en", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder."),
    audio: list[Path] = typer.Option(None, "--audio", "-a", help="A WAV or FLAC file; repeat for several.",
                                     exists=True, dir_okay=False, readable=True),
    audio_dir: Path = typer.Option(None, "--audio-dir", help="A folder of .wav / .flac files.", exists=True,
                                   file_okay=False),
    espeak: int = typer.Option(0, "--espeak", min=0, max=6, help="Also speak this many built-in sentences with "
                               "espeak-ng (word timings included: alignment heads)."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Cross-attention over encoder frames against gradient x input saliency, per decoder head, layer and
    aggregated (Pearson, Spearman, the share of saliency where attention is); with timed words (--espeak)
    also the alignment heads, compared with the model's config.

    Example: lens heads cross-attention whisper-tiny.en --audio speech.wav --espeak 3 --out results/xattn
    """
    import lens
    from attnlens.pipelines import speech
    from lens.audio import load_audio
    from lens.speech import encoder_of

    files = list(audio or [])
    if audio_dir is not None:
        files += sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in (".wav", ".flac"))
    if not files and not espeak:
        raise PromptError("no audio given: use --audio FILE, --audio-dir DIR or --espeak N")
    utterances = [speech.Utterance(load_audio(p), p.stem) for p in files]  # a bad file fails before the model loads
    check_out(out, force)
    lm = load_model(model)
    if lm.facts.modality is not lens.Modality.SPEECH:
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model: cross-attention needs a speech model")
    if espeak:
        utterances += speech.espeak_utterances(speech.SENTENCES[:espeak] if espeak <= 3 else
                                               (speech.SENTENCES * 2)[:espeak], max_seconds=encoder_of(lm).chunk_seconds)
    with writing(out, force) as tmp, progress() as bar:
        study = speech.run_cross_attention(lm, utterances, progress=bar, examples=min(3, len(utterances)))
        study.save(tmp)
    finish(study.results, out, model, json_out, f"{lm.facts.name}: cross-attention vs saliency")
