"""`lens models` and `lens generate`."""

from __future__ import annotations

import typer
from rich.table import Table

from lens.cli import app
from lens.cli._common import console, print_json, status


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


@app.command("generate")
def generate(
    model: str = typer.Argument("smollm2-135m", help="Zoo name, local folder or Hugging Face id."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt."),
    max_new_tokens: int = typer.Option(32, min=1, max=4096, help="Tokens to generate (greedy)."),
    chat: bool = typer.Option(True, help="Format with the model's chat template when it has one."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Greedy answer of MODEL to a prompt.

    Example: lens generate smollm2-135m --prompt "What is the capital of France?"
    """
    from lens.zoo import load

    with status(f"loading {model}"):
        lm = load(model)
    with status("generating"):
        answer = lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat)
    if json_out:
        print_json({"model": model, "prompt": prompt, "answer": answer})
    else:
        typer.echo(answer)
