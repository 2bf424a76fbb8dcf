"""Benchmark the stats attention against SDPA, eager attention and the chunked PyTorch stats path.

Attention grid (default): causal, batch 1, 32 heads, d_head 128, bf16, N = 2k, 8k, 32k, 128k; for each cell the
median of ``--reps`` timed runs (CUDA events) after ``--warmup`` runs, effective TFLOP/s (causal forward FLOPs
``2 * B * H * N^2 * D``, the same count for every method so the numbers compare), the ratio to SDPA and the peak
memory allocated during the call.  A cell that runs out of memory prints "OOM" and the grid goes on.

Methods:
  sdpa            torch SDPA restricted to the flash / cuDNN backends (no stats)
  eager           q @ k^T, softmax, @ v with the [N, N] weights materialised (what output_attentions=True costs)
  chunked_stats   kernels.reference.chunked_attention_stats (row + key stats, O(N x chunk) memory)
  kernel_row      kernels.attention_with_stats, triton, row stats only (key_stats=False)
  kernel_rowcol   same with the second, per-key pass (key_stats=True)

``--model`` adds a Llama-3-8B-shaped model with random bf16 weights: one forward of the whole model with plain SDPA
vs inside ``lens.stats_mode`` (stats of every layer) at N = 8k and 32k.

Targets on an H100: kernel_row <= 1.3x SDPA, kernel_rowcol <= 2.0x SDPA.

Examples:
  python benchmarks/kernel_bench.py --out results/kernel_bench            # full grid on a CUDA machine
  python benchmarks/kernel_bench.py --model --out results/kernel_bench    # grid + Llama-3-8B-shaped model
  python benchmarks/kernel_bench.py --smoke --model --out /tmp/kb         # tiny CPU run (torch paths), seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from attnlens.kernels import StatsSpec, attention_with_stats  # noqa: E402
from attnlens.kernels.reference import chunked_attention_stats  # noqa: E402

METHODS = ("sdpa", "eager", "chunked_stats", "kernel_row", "kernel_rowcol")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Cell:
    """One measurement; ``status`` is "ok", "OOM", "skipped" or "error: ..."."""

    method: str
    n: int
    status: str
    ms: float | None = None
    tflops: float | None = None
    ratio_to_sdpa: float | None = None
    peak_mib: float | None = None
    reps: int = 0


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, reps: int, budget_s: float) -> tuple[float, int]:
    """Median milliseconds of ``fn``; fewer reps when one run exceeds ``budget_s / reps`` (very slow cells)."""
    cuda = device.type == "cuda"
    times: list[float] = []
    for i in range(warmup + reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup or ms > budget_s * 1e3 / max(reps, 1):
            times.append(ms)
        if ms > budget_s * 1e3 / max(reps, 1):
            break  # too slow to repeat: report what we have
    return statistics.median(times), len(times)


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = q.shape[2]
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1)
    s.masked_fill_(causal, float("-inf"))
    return torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION] if q.is_cuda else [SDPBackend.MATH,
                                                                                          SDPBackend.FLASH_ATTENTION]
    with sdpa_kernel(backends):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def make_methods(spec: StatsSpec, device: torch.device) -> dict[str, Callable | None]:
    """Method name -> callable(q, k, v), or None when it cannot run here (triton without CUDA)."""
    row_spec = StatsSpec(**{**asdict(spec), "key_stats": False})
    col_spec = StatsSpec(**{**asdict(spec), "key_stats": True})
    triton_ok = device.type == "cuda"
    return {
        "sdpa": _sdpa,
        "eager": _eager,
        "chunked_stats": lambda q, k, v: chunked_attention_stats(q, k, v, causal=True, spec=col_spec),
        "kernel_row": (lambda q, k, v: attention_with_stats(q, k, v, spec=row_spec, backend="triton"))
        if triton_ok else None,
        "kernel_rowcol": (lambda q, k, v: attention_with_stats(q, k, v, spec=col_spec, backend="triton"))
        if triton_ok else None,
    }


def run_grid(args: argparse.Namespace, device: torch.device) -> list[Cell]:
    dtype = DTYPES[args.dtype]
    spec = StatsSpec(sink_tokens=4, window=64, topk=args.topk)
    methods = make_methods(spec, device)
    cells: list[Cell] = []
    for n in args.sizes:
        sdpa_ms = None
        flops = 2 * args.batch * args.heads * n * n * args.d_head  # causal: half of 4 * B * H * N^2 * D
        for name in args.methods:
            fn = methods[name]
            if fn is None:
                cell = Cell(name, n, "skipped")
            else:
                cell = _measure(name, fn, n, dtype, args, device)
                if cell.status == "ok":
                    cell.tflops = flops / (cell.ms * 1e-3) / 1e12
                    if name == "sdpa":
                        sdpa_ms = cell.ms
                    if sdpa_ms:
                        cell.ratio_to_sdpa = cell.ms / sdpa_ms
            cells.append(cell)
            print(_fmt_cell(cell), flush=True)
    return cells


def _measure(name: str, fn: Callable, n: int, dtype: torch.dtype, args: argparse.Namespace,
             device: torch.device) -> Cell:
    q = k = v = None
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        shape = (args.batch, args.heads, n, args.d_head)
        q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(3))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        ms, reps = time_fn(lambda: fn(q, k, v), device, args.warmup, args.reps, args.cell_budget_s)  # noqa: F821 (deleted in finally)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
        return Cell(name, n, "ok", ms=ms, peak_mib=peak, reps=reps)
    except Exception as exc:  # one failing cell must not end the grid
        if _is_oom(exc):
            return Cell(name, n, "OOM")
        return Cell(name, n, f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    finally:
        del q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _fmt_cell(c: Cell) -> str:
    if c.status != "ok":
        return f"N={c.n:>7} {c.method:<14} {c.status}"
    return (f"N={c.n:>7} {c.method:<14} {c.ms:10.3f} ms  {_fmt(c.tflops, '7.3g')} TFLOP/s  "
            f"x{_fmt(c.ratio_to_sdpa, '.2f')} sdpa  peak {_fmt(c.peak_mib, '.0f')} MiB  ({c.reps} reps)")


def llama3_8b_config(smoke: bool, layers: int):
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=128, max_position_embeddings=4096)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                       max_position_embeddings=131072)


def run_model(args: argparse.Namespace, device: torch.device) -> dict:
    """Whole-model forward: plain SDPA vs stats of every layer. Returns a JSON-able dict."""
    from transformers import LlamaForCausalLM

    from lens.recording.stats import stats_mode

    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    result: dict = {"layers_requested": args.model_layers, "rows": []}
    model = None
    layers = args.model_layers
    while model is None and layers >= 1:
        try:
            prev = torch.get_default_dtype()
            torch.set_default_dtype(dtype)  # build directly in the target dtype: no fp32 copy of 8B weights
            try:
                with torch.device(device):
                    model = LlamaForCausalLM(llama3_8b_config(args.smoke, layers)).eval()
            finally:
                torch.set_default_dtype(prev)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            model = None
            torch.cuda.empty_cache()
            print(f"model with {layers} layers does not fit; retrying with {layers // 2}", flush=True)
            layers //= 2
    if model is None:
        result["note"] = "model does not fit even with 1 layer"
        return result
    result["layers_built"] = model.config.num_hidden_layers
    if not args.smoke and layers != args.model_layers:
        result["note"] = f"the full {args.model_layers} layers do not fit; measured {layers} layers"
    model.set_attn_implementation("sdpa")
    spec = StatsSpec(sink_tokens=4, window=64, topk=args.topk)
    seqs = [32, 64] if args.smoke else args.model_seqs
    for n in seqs:
        ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
        row = {"n": n}
        for label, key_stats in (("sdpa", None), ("stats_row", False), ("stats_rowcol", True)):
            def fwd(key_stats=key_stats):
                with torch.no_grad():
                    if key_stats is None:
                        return model(ids, logits_to_keep=1, use_cache=False)
                    s = StatsSpec(**{**asdict(spec), "key_stats": key_stats})
                    with stats_mode(model, s):
                        return model(ids, logits_to_keep=1, use_cache=False)
            try:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                ms, reps = time_fn(fwd, device, 1, args.model_reps, args.cell_budget_s)
                peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
                row[label] = {"ms": ms, "reps": reps, "peak_mib": peak}
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                row[label] = "OOM"
                torch.cuda.empty_cache()
        for label in ("stats_row", "stats_rowcol"):
            if isinstance(row.get(label), dict) and isinstance(row.get("sdpa"), dict):
                row[label]["ratio_to_sdpa"] = row[label]["ms"] / row["sdpa"]["ms"]
        print(f"model N={n}: {json.dumps(row)}", flush=True)
        result["rows"].append(row)
    return result


def write_report(out: Path, args: argparse.Namespace, device: torch.device, cells: list[Cell],
                 model: dict | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "batch": args.batch, "heads": args.heads, "d_head": args.d_head, "dtype": args.dtype, "causal": True,
           "reps": args.reps, "warmup": args.warmup, "smoke": args.smoke}
    (out / "kernel_bench.json").write_text(json.dumps(
        {"env": env, "cells": [asdict(c) for c in cells], "model": model}, indent=2))
    lines = [f"# kernel_bench ({env['device']}, B={args.batch}, H={args.heads}, D={args.d_head}, {args.dtype}, "
             "causal)", "", "| N | method | ms | TFLOP/s | x SDPA | peak MiB |", "|---|---|---|---|---|---|"]
    for c in cells:
        if c.status == "ok":
            lines.append(f"| {c.n} | {c.method} | {c.ms:.3f} | {_fmt(c.tflops, '.3g')} | "
                         f"{_fmt(c.ratio_to_sdpa, '.2f')} | {_fmt(c.peak_mib, '.0f')} |")
        else:
            lines.append(f"| {c.n} | {c.method} | {c.status} | | | |")
    if model is not None:
        lines += ["", f"## Llama-3-8B-shaped model ({model.get('layers_built')} layers, random weights)", ""]
        if model.get("note"):
            lines += [f"Note: {model['note']}", ""]
        lines += ["| N | variant | ms | x SDPA | peak MiB |", "|---|---|---|---|---|"]
        for row in model["rows"]:
            for label in ("sdpa", "stats_row", "stats_rowcol"):
                r = row.get(label)
                if isinstance(r, dict):
                    lines.append(f"| {row['n']} | {label} | {r['ms']:.1f} | {_fmt(r.get('ratio_to_sdpa'), '.2f')} | "
                                 f"{_fmt(r['peak_mib'], '.0f')} |")
                else:
                    lines.append(f"| {row['n']} | {label} | {r} | | |")
    (out / "kernel_bench.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'kernel_bench.md'} and {out / 'kernel_bench.json'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 32768, 131072], help="sequence lengths N")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--d-head", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--topk", type=int, default=0, help="top-k keys per query in the stats (0-8)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--cell-budget-s", type=float, default=60.0, help="stop repeating a cell after about this long")
    p.add_argument("--model", action="store_true", help="also benchmark a Llama-3-8B-shaped model")
    p.add_argument("--model-seqs", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--model-layers", type=int, default=32)
    p.add_argument("--model-reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, torch paths only (checks the script)")
    p.add_argument("--out", type=Path, default=Path("results/kernel_bench"), help="directory for .md and .json")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.heads, args.d_head, args.dtype = [64, 128], 2, 64, "fp32"
        args.warmup, args.reps, args.model_reps = 1, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: running the torch paths only on CPU (triton cells are skipped)", flush=True)
    cells = run_grid(args, device)
    model = run_model(args, device) if args.model else None
    write_report(args.out, args, device, cells, model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
