"""`lens models`, `lens analyses` and `lens generate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from formats.errors import PromptError
from lens.cli import app
from lens.cli._common import MODEL_HELP, console, load_model, print_json, status


@app.command("models")
def models(json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """List the zoo's models (they work offline).

    Any Hugging Face id (org/name) or local transformers folder also works wherever a MODEL is asked for.

    Example: lens models --json
    """
    from lens.zoo import list_models

    entries = list_models()
    if json_out:
        print_json([{"name": e.name, "modality": e.modality.value, "description": e.description} for e in entries])
        return
    table = Table(title="attnlens model zoo")
    for col in ("name", "modality", "description"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.name, e.modality.value, e.description)
    console.print(table)


@app.command("analyses")
def analyses_(json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """List the registered analyses: what they measure, the results they write, the models they apply to.

    Example: lens analyses
    """
    from analyses.registry import analyses

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
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt."),
    image: Path = typer.Option(None, "--image", "-i", help="An image file (vision-language models).",
                               exists=True, dir_okay=False, readable=True),
    max_new_tokens: int = typer.Option(32, min=1, max=4096, help="Tokens to generate (greedy)."),
    chat: bool = typer.Option(True, help="Format with the model's chat template when it has one."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Greedy answer of MODEL to a prompt.

    Example: lens generate smollm2-135m --prompt "What is the capital of France?"
    """
    lm = load_model(model)
    if image is not None and not hasattr(lm, "generate_with_image"):
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model: it does not take --image")
    with status("generating"):
        answer = lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat)
    if json_out:
        print_json({"model": model, "prompt": prompt, "answer": answer})
    else:
        typer.echo(answer)
