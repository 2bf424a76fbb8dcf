"""`lens capture`, `lens info` and `lens stats`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from attnlens.formats.errors import PromptError, SelectionError
from attnlens.formats.vocab import Backend, DType, KernelBackend
from lens.cli import app
from lens.cli._common import (
    MODEL_HELP,
    check_out,
    check_prompt,
    console,
    int_list,
    load_model,
    positive_float,
    print_json,
    progress,
    prompt_lines,
    read_text,
    say,
    writing,
)
from lens.cli._options import (
    FORCE_OPTION,
    JSON_OPTION,
    REMOTE_OPTION,
    PlacementGroup,
    placement_options,
)
from lens.cli._terminal import printable


def _prompts(prompt: list[str] | None, file: Path | None) -> list[str]:
    prompts = [check_prompt(p) for p in prompt or []]
    if file is not None:
        prompts += prompt_lines(file, "file")
    return prompts




@app.command("capture")
@placement_options
def capture(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the captures to (OUT/000, OUT/001, ...)."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A prompt; repeat for several."),
    file: Path = typer.Option(None, "--file", "-f", help="A UTF-8 text file with one prompt per line.",
                              exists=True, dir_okay=False, readable=True),
    image: list[Path] = typer.Option(None, "--image", "-i", help="An image file (vision models); repeat for several.",
                                     exists=True, dir_okay=False, readable=True),
    audio: list[Path] = typer.Option(None, "--audio", "-a", help="A WAV or FLAC file (speech models; resampled to "
                                     "16 kHz); repeat for several.", exists=True, dir_okay=False, readable=True),
    target: str = typer.Option(None, "--target", "-t", help="Text encoder-decoders (T5, BART): the text the decoder "
                               "reads after its start token (default: its greedy output for each prompt)."),
    sites: str = typer.Option("pattern", help="Comma-separated sites: pattern,q,k,v,z,resid_pre,resid_post,attn_out,mlp_out."),
    layers: str = typer.Option(None, help="Layers, e.g. '3', '0,2,5' or '4-7' (default: all)."),
    heads: str = typer.Option(None, help="Query heads to keep, same syntax (default: all)."),
    backend: Backend = typer.Option(Backend.TORCH, help="Capture backend."),
    dtype: DType = typer.Option(None, help="Storage dtype (default: the model's)."),
    budget_gb: float = typer.Option(None, help="Memory budget for the capture in GB (default: 8, or half of RAM)."),
    chat: bool = typer.Option(False, help="Format prompts with the model's chat template."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
    remote: bool = REMOTE_OPTION,
    place: PlacementGroup = None,
) -> None:
    """Run MODEL on prompts (or images, or audio) and save the attention and activations at the chosen sites.

    Each prompt becomes one capture folder under OUT (OUT/000, OUT/001, ...), saved as
    safetensors plus JSON metadata; an image capture also saves the model-input image, an
    audio capture the audio (the decoder runs over its greedy transcript; sites enc_pattern
    and cross_pattern record the encoder's and the cross-attention). For a text encoder-decoder
    (T5, BART) each prompt is the source and --target the decoder's text; enc_pattern and
    cross_pattern have the source tokens on their key axis.

    Example: lens capture smollm2-135m --prompt "The capital of France is" --sites pattern,z --layers 3-5 --out caps/fr
    """
    import lens
    from lens.recording import check_budget

    prompts = _prompts(prompt, file)
    images, audios = list(image or []), list(audio or [])
    if not prompts and not images and not audios:
        raise PromptError("no prompt given: use --prompt TEXT, --file FILE, --image FILE or --audio FILE")
    image_text = bool(prompts and images and not audios)  # a vision-language capture: one image, one prompt
    if sum(map(bool, (prompts, images, audios))) > 1 and not image_text:
        raise PromptError("give prompts, images or audio, not several kinds (a vision-language capture takes one "
                          "--image and a --prompt)")
    if image_text and (len(images) != 1 or len(prompts) != 1):
        raise PromptError(f"a vision-language capture takes one --image and one --prompt, got {len(images)} "
                          f"image(s) and {len(prompts)} prompt(s)")
    if chat and not prompts:
        raise SelectionError("--chat does nothing here: it formats prompts with the chat template, and an "
                             f"{'--image' if images else '--audio'} capture has none")
    site_list = [lens.Site.parse(s) for s in sites.split(",") if s.strip()]
    layer_list, head_list = int_list(layers, "layers"), int_list(heads, "heads")
    if head_list is not None and site_list and not any(s.per_head for s in site_list):
        raise SelectionError(f"--heads does nothing here: it keeps heads of the per-head sites (pattern, q, k, v, z), "
                             f"and --sites {sites!r} has none")
    budget = positive_float(budget_gb, "budget-gb", hi=1e6)
    load_kw = place.load_kwargs()
    if load_kw and backend is Backend.TRANSFORMER_LENS:
        raise SelectionError("backend transformer_lens builds its own copy of the model on one device: use backend "
                             "torch or nnsight with --device-map")
    if remote and backend is not Backend.NNSIGHT:
        raise SelectionError(f"--remote runs through nnsight: add --backend nnsight (got {backend.value})")
    check_out(out, force)
    decoder_ids = None
    lm = load_model(model, **load_kw)
    spec = lens.CaptureSpec.resolve(lm.facts, sites=site_list, layers=layer_list, heads=head_list,
                                    dtype=dtype.torch() if dtype else None,
                                    budget_bytes=None if budget is None else int(budget * 1e9))
    if image_text:
        from lens import vision

        inputs = [lens.prepare(lm, prompts[0], image=vision.load_image(images[0]), chat=chat)]
    elif images:
        from lens import vision

        inputs = [lens.prepare(lm, image=vision.load_image(p)) for p in images]
    elif audios:
        from lens.audio import load_audio

        inputs = [lens.prepare(lm, audio=load_audio(p)) for p in audios]
    else:
        if lm.facts.encoder_layers and target is not None:  # T5, BART: the decoder reads the given target
            from lens import seq2seq

            decoder_ids = seq2seq.target_ids(lm, check_prompt(target))
        inputs = [lens.prepare(lm, p, chat=chat, **({"decoder_ids": decoder_ids} if decoder_ids else {}))
                  for p in prompts]
    for x in inputs:  # validated before anything is written
        check_budget(lm, spec, x)
    if target is not None and not (lm.facts.encoder_layers and lm.facts.modality is lens.Modality.TEXT):
        raise SelectionError(f"--target is for text encoder-decoders (T5, BART), not {lm.facts.name} "
                             f"({lm.facts.architecture})")
    if backend is not Backend.TORCH and not images and not audios:
        from lens.backends import check_backend_sites

        check_backend_sites(backend.value, spec.sites)
    if remote:
        from lens.backends.nnsight_backend import check_remote

        check_remote(lm)  # key, hub id and network, before anything is written
    written = []
    with writing(out, force) as tmp, progress() as bar:
        task = bar.task("capturing", total=len(inputs))
        for i, x in enumerate(inputs):
            result = lens.run(lm, x, sites=spec.sites, layers=spec.layers, heads=spec.heads, dtype=spec.dtype,
                              budget_bytes=spec.budget_bytes, backend=backend.value, remote=remote)
            result.capture.write_into(tmp / f"{i:03d}")
            n_tok = len(result.capture.meta.tokens[0])
            written.append({"folder": str(out / f"{i:03d}"), "tokens": n_tok, "bytes": result.capture.n_bytes})
            task.advance()
    if json_out:
        print_json({"model": model, "out": str(out), "captures": written})
    else:
        say(f"saved {len(written)} capture(s) to {out}")


@app.command("info")
def info(
    capture_dir: Path = typer.Argument(..., help="A folder written by `lens capture` (one capture)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Describe a saved capture: model, tokens, sites, layers, heads and tensor shapes (reads no tensor data).

    Example: lens info caps/fr/000
    """
    from attnlens.formats.capture import CaptureFile
    from lens.recording.spec import format_bytes

    cap = CaptureFile.load(capture_dir, verify=True)
    m = cap.meta
    tensors = [{"step": e.step, "site": e.site.value, "layer": e.layer, "shape": list(e.shape), "dtype": e.dtype}
               for e in sorted(cap.entries.values(), key=lambda e: (e.step, e.layer, e.site.value))]
    n_bytes = sum(i.end - i.start for i in cap._tensors.tensors.values())
    if json_out:
        print_json({"meta": m.to_json(), "tensors": tensors, "bytes": n_bytes})
        return
    say(f"{capture_dir}: {m.facts.name} ({m.facts.architecture}), backend {m.backend}, {cap.n_steps} step(s), "
        f"{format_bytes(n_bytes)}")
    say(f"text: {m.text[0][:200]!r}")
    say(f"sites {', '.join(s.value for s in m.sites)}; layers {m.layers}; heads {m.heads}")
    from attnlens.formats.layouts import AudioLayout, SourceLayout

    if isinstance(m.layout, SourceLayout):
        say(f"source ({m.layout.n_frames} encoder positions): {m.layout.text[:200]!r}")
    elif isinstance(m.layout, AudioLayout):
        say(f"audio layout: {m.layout.duration:.2f} s, {m.layout.n_frames} encoder positions")
    elif m.layout is not None:
        say(f"image layout: {m.layout.grid[0]}x{m.layout.grid[1]} patches of {m.layout.patch_size} px, "
            f"{m.layout.prefix} prefix token(s)")
    table = Table()
    for col in ("step", "site", "layer", "shape", "dtype"):
        table.add_column(col)
    for t in tensors[:40]:
        table.add_row(str(t["step"]), t["site"], str(t["layer"]), str(t["shape"]), t["dtype"])
    console.print(table)
    if len(tensors) > 40:
        say(f"... and {len(tensors) - 40} more tensors (use --json for all)")


def _span(text: str, n_keys: int | None = None) -> tuple[int, int]:
    start_s, sep, end_s = text.partition(":")
    try:
        if not sep or not start_s.strip().lstrip("-").isdigit() or not end_s.strip().lstrip("-").isdigit():
            raise ValueError
        start, end = int(start_s), int(end_s)
    except ValueError:
        raise SelectionError(f"--span {text!r} is not START:END with integers, e.g. 120:135") from None
    if not 0 <= start < end or (n_keys is not None and end > n_keys):
        limit = f"0-{n_keys - 1}" if n_keys is not None else "0 and up"
        raise SelectionError(f"--span {start}:{end} is out of range: the prompt has keys {limit} (half-open START:END)")
    return start, end


@app.command("stats")
@placement_options
def stats(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the statistics to."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="The prompt."),
    file: Path = typer.Option(None, "--file", "-f", help="A UTF-8 text file whose whole content is the prompt.",
                              exists=True, dir_okay=False, readable=True),
    layers: str = typer.Option(None, help="Layers, e.g. '3', '0,2,5' or '4-7' (default: all)."),
    sink_tokens: int = typer.Option(1, min=0, max=1_000_000, help="Sink mass counts attention on the first this-many keys."),
    window: int = typer.Option(64, min=0, max=1_000_000, help="Window mass counts attention on this many most recent keys."),
    span: list[str] = typer.Option(None, "--span", help="Key span START:END (half-open) to measure mass on; repeatable."),
    topk: int = typer.Option(0, min=0, max=8, help="Record the top-k keys per query (0-8)."),
    image: Path = typer.Option(None, "--image", help="Vision-text models: the image of the prompt's <image> "
                               "placeholder; its token span is added to the spans.", exists=True, dir_okay=False),
    chat: bool = typer.Option(False, "--chat", help="Format the prompt with the model's chat template."),
    backend: KernelBackend = typer.Option(KernelBackend.AUTO, help="auto (Triton on a GPU, else PyTorch), triton or torch."),
    force: bool = FORCE_OPTION,
    json_out: bool = JSON_OPTION,
    place: PlacementGroup = None,
) -> None:
    """Per-head attention statistics from the fused kernel, without building attention patterns.

    Records, per layer, head and query: log-sum-exp, entropy, max weight and its key, sink,
    window and span mass, top-k keys; per key: the mass it receives. O(N) memory, so long
    prompts are fine; a progress bar counts the layers. On a CPU, prompts long enough that a
    layer scores at least 2^22 query-key pairs (SmolLM2: about 1,000 tokens) run a C++ kernel,
    close to plain SDPA's speed and about 1.5x as fast as the PyTorch path; it is built the first
    time, once per machine (about 30 s), then loaded from ~/.cache/torch_extensions.
    ATTNLENS_COMPILE=0 keeps the PyTorch path, =1 uses the kernel at any length.

    Example: lens stats smollm2-135m --file long.txt --span 120:135 --topk 4 --out stats/long

    Example: lens stats tiny-vlm --image photo.png --prompt '<image>\\nWhat colour is the shape?' --chat --out stats/vlm
    """
    import lens
    from attnlens.kernels import StatsSpec
    from attnlens.kernels._validate import resolve_backend

    if (prompt is None) == (file is None):
        raise PromptError("give exactly one of --prompt TEXT or --file FILE")
    text = check_prompt(prompt) if prompt is not None else read_text(file, "file")
    if not text.strip():
        raise PromptError(f"--file {file} is empty: give a file whose content is the prompt")
    spans = [_span(s) for s in span or []]
    spec = StatsSpec(sink_tokens=sink_tokens, window=window, spans=tuple(spans), topk=topk)
    layer_list = int_list(layers, "layers")
    load_kw = place.load_kwargs()
    check_out(out, force)
    lm = load_model(model, **load_kw)
    if image is not None:
        from lens import vlm

        x = lens.prepare(lm, text, image=vlm.read_image(image), chat=chat)  # one-line errors: text models, placeholders
    else:
        x = lens.prepare(lm, text, chat=chat)
    n_tokens = x.n_positions
    for s in span or []:
        _span(s, n_tokens)
    selection = lens.CaptureSpec.resolve(lm.facts, layers=layer_list)
    import torch

    resolve_backend(backend.value, torch.empty(1, 1, 1, lm.facts.d_head, device=lm.device))  # a one-line error for triton without a GPU
    with writing(out, force) as tmp, progress() as bar:
        task = bar.task(f"stats over {n_tokens} tokens, layer by layer", total=len(selection.layers))
        result = lens.run_stats(lm, x, spec=spec,
                                layers=list(selection.layers), backend=backend.value,
                                on_layer=lambda layer: task.advance())
        result.write_into(tmp)
    spans_run = [(int(a), int(b)) for a, b in result.spec.spans]
    # a span's mass is averaged over the queries that can see it (from its first key on), as the dashboard does
    rows = [{"layer": layer, "entropy": float(s.entropy.mean()), "sink_mass": float(s.sink_mass.mean()),
             "window_mass": float(s.window_mass.mean()), "max_weight": float(s.max_weight.mean()),
             "spans": {f"{a}:{b}": float(s.span_mass[:, :, a:, i].mean()) for i, (a, b) in enumerate(spans_run)}}
            for layer, s in sorted(result.stats.items())]
    if json_out:
        print_json({"model": model, "out": str(out), "tokens": n_tokens, "layers": rows})
        return
    table = Table(title=Text(printable(f"{lm.facts.name}: mean statistics over heads and queries "
                                            f"({n_tokens} tokens)")))
    for col in ("layer", "entropy", "sink mass", "window mass", "max weight", *(f"span {a}:{b}" for a, b in spans_run)):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["layer"]), f"{r['entropy']:.3f}", f"{r['sink_mass']:.3f}", f"{r['window_mass']:.3f}",
                      f"{r['max_weight']:.3f}", *(f"{v:.3f}" for v in r["spans"].values()))
    console.print(table)
    say(f"saved to {out}")
