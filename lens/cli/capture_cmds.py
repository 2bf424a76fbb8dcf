"""`lens capture` and `lens info`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lens.cli import app
from lens.cli._common import (
    console,
    parse_dtype,
    parse_int_list,
    parse_sites,
    prepare_out_dir,
    print_json,
    progress,
    status,
)
from lens.errors import PromptError


@app.command("capture")
def capture(
    model: str = typer.Argument(..., help="Zoo name, local folder or Hugging Face id."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the capture to."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A prompt; repeat for several."),
    file: Path = typer.Option(None, "--file", "-f", help="A text file with one prompt per line.",
                              exists=True, dir_okay=False, readable=True),
    sites: str = typer.Option("pattern", help="Comma-separated sites: pattern,q,k,v,z,resid_pre,resid_post,attn_out,mlp_out."),
    layers: str = typer.Option(None, help="Layers, e.g. '3', '0,2,5' or '4-7' (default: all)."),
    heads: str = typer.Option(None, help="Query heads to keep, same syntax (default: all)."),
    backend: str = typer.Option("torch", help="torch, transformer_lens or nnsight."),
    dtype: str = typer.Option(None, help="Storage dtype: float32, float16 or bfloat16 (default: the model's)."),
    budget_gb: float = typer.Option(None, help="Memory budget for the capture in GB (default: 8, or half of RAM)."),
    chat: bool = typer.Option(False, help="Format prompts with the model's chat template."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Run MODEL on prompts and save the attention and activations at the chosen sites.

    Each prompt becomes one capture folder under OUT (OUT/000, OUT/001, ...), saved as
    safetensors plus JSON metadata.

    Example: lens capture smollm2-135m --prompt "The capital of France is" --sites pattern,z --layers 3-5 --out caps/fr
    """
    import lens
    from lens.backends import Backend
    from lens.recording import check_budget

    prompts = list(prompt or [])
    if file is not None:
        prompts += [line.rstrip("\n") for line in file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise PromptError("no prompt given: use --prompt TEXT or --file FILE")
    site_list = parse_sites(sites)
    layer_list, head_list = parse_int_list(layers, "layers"), parse_int_list(heads, "heads")
    torch_dtype = parse_dtype(dtype)
    backend_value = Backend(backend) if backend in {b.value for b in Backend} else None
    if backend_value is None:
        raise lens.SelectionError(f"--backend {backend!r} is not one of torch, transformer_lens, nnsight")
    if budget_gb is not None and budget_gb <= 0:
        raise lens.SelectionError(f"--budget-gb must be positive, got {budget_gb}")
    budget = None if budget_gb is None else int(budget_gb * 1e9)
    with status(f"loading {model}"):
        lm = lens.load(model)
    # Validate everything before touching the output folder.
    encoded = [lm.encode(p, chat=chat) for p in prompts]
    spec = lens.CaptureSpec.resolve(lm.facts, sites=site_list, layers=layer_list, heads=head_list,
                                    dtype=torch_dtype, budget_bytes=budget)
    for ids in encoded:
        check_budget(lm, spec, ids)
    out = prepare_out_dir(out, force)
    written = []
    with progress() as bar:
        task = bar.add_task("capturing", total=len(encoded))
        for i, ids in enumerate(encoded):
            result = lens.run(lm, ids, sites=site_list, layers=layer_list, heads=head_list, dtype=torch_dtype,
                              budget_bytes=budget, backend=backend_value)
            folder = result.capture.save(out / f"{i:03d}")
            written.append({"folder": str(folder), "tokens": ids.shape[-1], "bytes": result.capture.n_bytes})
            bar.advance(task)
    if json_out:
        print_json({"model": model, "out": str(out), "captures": written})
    else:
        console.print(f"saved {len(written)} capture(s) to [bold]{out}[/]")


@app.command("info")
def info(
    capture_dir: Path = typer.Argument(..., help="A folder written by `lens capture` (one capture)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Describe a saved capture: model, tokens, sites, layers, heads and tensor shapes.

    Example: lens info caps/fr/000
    """
    from lens.recording.record import Capture
    from lens.recording.spec import format_bytes

    cap = Capture.load(capture_dir)
    m = cap.meta
    tensors = [{"step": s, "site": k.site.value, "layer": k.layer, "shape": list(t.shape), "dtype": str(t.dtype)}
               for s, step in enumerate(cap.steps) for k, t in sorted(step.items(), key=lambda kv: kv[0].sort_key)]
    if json_out:
        print_json({"meta": m.to_json(), "tensors": tensors, "bytes": cap.n_bytes})
        return
    console.print(f"[bold]{capture_dir}[/]: {m.facts.name} ({m.facts.architecture}), backend {m.backend}, "
                  f"{len(cap.steps)} step(s), {format_bytes(cap.n_bytes)}")
    console.print(f"text: {m.text[0][:200]!r}")
    console.print(f"sites {', '.join(s.value for s in m.sites)}; layers {m.layers}; heads {m.heads}")
    table = Table()
    for col in ("step", "site", "layer", "shape", "dtype"):
        table.add_column(col)
    for t in tensors[:40]:
        table.add_row(str(t["step"]), t["site"], str(t["layer"]), str(t["shape"]), t["dtype"])
    console.print(table)
    if len(tensors) > 40:
        console.print(f"... and {len(tensors) - 40} more tensors (use --json for all)")


@app.command("stats")
def stats(
    model: str = typer.Argument(..., help="Zoo name, local folder or Hugging Face id."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the statistics to."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="The prompt."),
    file: Path = typer.Option(None, "--file", "-f", help="A text file whose whole content is the prompt.",
                              exists=True, dir_okay=False, readable=True),
    layers: str = typer.Option(None, help="Layers, e.g. '3', '0,2,5' or '4-7' (default: all)."),
    sink_tokens: int = typer.Option(1, help="Sink mass counts attention on the first this-many keys."),
    window: int = typer.Option(64, help="Window mass counts attention on this many most recent keys."),
    span: list[str] = typer.Option(None, "--span", help="Key span START:END (half-open) to measure mass on; repeatable."),
    topk: int = typer.Option(0, help="Record the top-k keys per query (0-8)."),
    backend: str = typer.Option("auto", help="auto (Triton on a GPU, else PyTorch), triton or torch."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out folder."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Per-head attention statistics from the fused kernel, without building attention patterns.

    Records, per layer, head and query: log-sum-exp, entropy, max weight and its key, sink,
    window and span mass, top-k keys; per key: the mass it receives. O(N) memory, so long
    prompts are fine.

    Example: lens stats smollm2-135m --file long.txt --span 120:135 --topk 4 --out stats/long
    """
    import lens
    from kernels import KernelInputError, StatsSpec
    from lens.recording.stats import run_stats

    if (prompt is None) == (file is None):
        raise PromptError("give exactly one of --prompt TEXT or --file FILE")
    text = prompt if prompt is not None else file.read_text()
    if backend not in ("auto", "triton", "torch"):
        raise lens.SelectionError(f"--backend {backend!r} is not one of auto, triton, torch")
    spans = []
    for s in span or []:
        try:
            start, end = (int(x) for x in s.split(":"))
        except ValueError:
            raise lens.SelectionError(f"--span {s!r} is not START:END, e.g. 120:135") from None
        spans.append((start, end))
    try:
        spec = StatsSpec(sink_tokens=sink_tokens, window=window, spans=tuple(spans), topk=topk)
    except KernelInputError as err:
        raise lens.SelectionError(str(err)) from None
    with status(f"loading {model}"):
        lm = lens.load(model)
    ids = lm.encode(text)
    for start, end in spans:
        if not 0 <= start < end <= ids.shape[1]:
            raise lens.SelectionError(f"--span {start}:{end} is out of range: the prompt has keys 0-{ids.shape[1] - 1}")
    layer_list = parse_int_list(layers, "layers")
    lens.CaptureSpec.resolve(lm.facts, layers=layer_list)
    out = prepare_out_dir(out, force)
    with status(f"running {model} with the statistics kernel over {ids.shape[1]} tokens"):
        result = run_stats(lm, ids, spec=spec, layers=layer_list, backend=backend)
    result.save(out, force=True)
    rows = [{"layer": layer, "entropy": float(s.entropy.mean()), "sink_mass": float(s.sink_mass.mean()),
             "window_mass": float(s.window_mass.mean()), "max_weight": float(s.max_weight.mean())}
            for layer, s in sorted(result.stats.items())]
    if json_out:
        print_json({"model": model, "out": str(out), "tokens": ids.shape[1], "layers": rows})
        return
    table = Table(title=f"{model}: mean statistics over heads and queries ({ids.shape[1]} tokens)")
    for col in ("layer", "entropy", "sink mass", "window mass", "max weight"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["layer"]), f"{r['entropy']:.3f}", f"{r['sink_mass']:.3f}", f"{r['window_mass']:.3f}",
                      f"{r['max_weight']:.3f}")
    console.print(table)
    console.print(f"saved to [bold]{out}[/]")
