"""`lens models`, `lens analyses` and `lens generate`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from attnlens.formats.errors import PromptError
from lens.cli import app
from lens.cli._common import MODEL_HELP, check_prompt, console, load_model, print_json, status
from lens.cli._options import JSON_OPTION
from lens.cli._terminal import printable


@app.command("models")
def models(json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """List the zoo's models (they work offline).

    Any Hugging Face id (org/name) or local transformers folder also works wherever a MODEL is asked for.

    Example: lens models --json
    """
    from lens.backends import SUPPORT
    from lens.zoo import list_models

    kind = {"text": "decoder LM", "vision": "vision (ViT)", "speech": "speech (encoder-decoder)"}
    entries = list_models()

    def backends(e) -> str:
        k = "encoder (BERT)" if e.name.startswith("minilm") else kind.get(e.modality.value, "decoder LM")
        return SUPPORT.get(k, "torch")

    if json_out:
        print_json([{"name": e.name, "modality": e.modality.value, "description": e.description,
                     "backends": backends(e)} for e in entries])
        return
    table = Table(title="attnlens model zoo")
    for col in ("name", "modality", "backends", "description"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.name, e.modality.value, backends(e), e.description)
    console.print(table)


@app.command("analyses")
def analyses_(json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """List the registered analyses: what they measure, the results they write, the models they apply to.

    Example: lens analyses
    """
    from attnlens.analyses.registry import analyses

    entries = analyses().values()
    if json_out:
        print_json([{"name": e.name, "description": e.description, "results": e.result_names(),
                     "modalities": [m.value for m in e.modalities], "in_scan": e.in_scan, "paper": e.paper}
                    for e in entries])
        return
    table = Table(title="attnlens analyses (lens scan runs those marked)")
    for col in ("name", "scan", "modalities", "results", "what it measures"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.name, "yes" if e.in_scan else "", ", ".join(m.value for m in e.modalities),
                      ", ".join(e.metrics), e.description)
    console.print(table)


@app.command("generate")
def generate(
    model: str = typer.Argument("smollm2-135m", help=MODEL_HELP),
    prompt: str = typer.Option(None, "--prompt", "-p", help="The prompt (text and vision-language models)."),
    image: list[Path] = typer.Option(None, "--image", "-i", help="An image file (vision-language models; repeat "
                                     "for several, one per <image> in the prompt).", dir_okay=False),
    audio: Path = typer.Option(None, "--audio", "-a", help="A WAV or FLAC file (speech models: the transcript).",
                               exists=True, dir_okay=False, readable=True),
    max_new_tokens: int = typer.Option(32, min=1, max=4096, help="Tokens to generate (greedy)."),
    chat: bool = typer.Option(True, help="Format with the model's chat template when it has one."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Greedy answer of MODEL to a prompt (or the transcript of an audio file, for a speech model).

    Example: lens generate smollm2-135m --prompt "What is the capital of France?"

    Example: lens generate whisper-tiny.en --audio speech.wav

    Example: lens generate tiny-vlm --image scene.png --prompt "<image>\\nWhat colour is the shape?"
    """
    import lens

    if audio is None and prompt is None:
        raise PromptError("give --prompt TEXT (or --audio FILE for a speech model)")
    if audio is not None and prompt is not None:
        raise PromptError("give --prompt TEXT or --audio FILE, not both: a speech model transcribes the audio and "
                          "takes no prompt")
    if audio is not None and image:
        raise PromptError("--image goes with --prompt for a vision-language model, not with --audio")
    if prompt is not None:
        check_prompt(prompt)
    samples = None
    if audio is not None:
        from lens.audio import load_audio

        samples = load_audio(audio)  # a bad file fails before the model loads
    lm = load_model(model)
    speech_model = lm.facts.modality is lens.Modality.SPEECH
    if audio is not None and not speech_model:
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model: --audio needs a speech model")
    if speech_model and audio is None:
        raise PromptError(f"{lm.facts.name} is a speech model: give it --audio FILE")
    if image and lm.facts.modality is not lens.Modality.VISION_TEXT:
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model: it does not take --image")
    with status("generating"):
        if speech_model:
            from lens.speech import transcribe

            answer = transcribe(lm, samples, max_new_tokens=max_new_tokens).text
        elif lm.facts.modality is lens.Modality.VISION_TEXT:
            from lens import vlm

            answer = vlm.generate(lm, prompt, list(image or []), max_new_tokens=max_new_tokens, chat=chat)
        else:
            answer = lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat)
    if json_out:
        print_json({"model": model, "prompt": prompt, "images": [str(i) for i in image or []], "answer": answer})
    else:
        # a crafted tokenizer can decode to escape sequences: escaped on a terminal, kept as they are in a pipe
        typer.echo(printable(answer, keep="\n\t") if sys.stdout.isatty() else answer)
