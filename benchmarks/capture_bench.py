"""Capture overhead on SmolLM2: all layers' attention patterns over N tokens, on CPU.

Times, in one run and interleaved round by round (so machine noise hits all alike):
  - a plain forward (the model's default SDPA attention, no hooks),
  - a plain forward with eager attention (what any pattern capture must compute),
  - lens.run(..., sites=[PATTERN]) through each backend (torch hooks, TransformerLens, nnsight),
  - TransformerLens' own run_with_cache(names_filter=hook_pattern) on the same bridge,
and reports the median time of each and its ratio to the plain forward.

Example:
    python benchmarks/capture_bench.py --tokens 512 --reps 5 --out benchmarks/results/capture_cpu.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import lens
from lens import Site
from lens.backends.transformer_lens import bridge_for


def prompt_ids(lm, n_tokens: int) -> torch.Tensor:
    from attnlens.analyses.prompts import GENERAL_PROMPTS

    text = " ".join(GENERAL_PROMPTS * 20)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :n_tokens]
    if ids.shape[1] < n_tokens:
        raise SystemExit(f"the built-in text has only {ids.shape[1]} tokens")
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()

    lm = lens.load(args.model)
    ids = prompt_ids(lm, args.tokens)
    bridge = bridge_for(lm)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(lm.facts.n_layers)]

    def plain():
        lm.model(ids)

    def plain_eager():
        lm.model.set_attn_implementation("eager")
        try:
            lm.model(ids)
        finally:
            lm.model.set_attn_implementation("sdpa")

    def tl_cache():
        bridge.run_with_cache(ids, names_filter=lambda name: name in names)

    cases = {
        "plain forward (SDPA)": plain,
        "plain forward (eager)": plain_eager,
        "lens capture, torch hooks": lambda: lens.run(lm, ids, sites=[Site.PATTERN]),
        "lens capture, transformer_lens backend": lambda: lens.run(lm, ids, sites=[Site.PATTERN], backend="transformer_lens"),
        "lens capture, nnsight backend": lambda: lens.run(lm, ids, sites=[Site.PATTERN], backend="nnsight"),
        "TransformerLens run_with_cache (patterns)": tl_cache,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for fn in cases.values():  # warm-up
            fn()
        for _ in range(args.reps):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["plain forward (SDPA)"])
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [f"Capture of all {lm.facts.n_layers} layers' patterns, {args.model}, {args.tokens} tokens, "
             f"fp32, CPU ({machine}); median of {args.reps} interleaved rounds.", "",
             "| case | median ms | x plain forward |", "|---|---:|---:|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {med * 1e3:.0f} | {med / base:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
