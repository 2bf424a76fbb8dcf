"""One attention layer on the CPU at 1 and 2 threads: the compiled stats kernel, the PyTorch stats path, SDPA.

Random inputs shaped like SmolLM2-135M's layer (9 query heads over 3 kv heads, d_head 64) and like a model with one kv
head (4 query heads), causal, the default ``StatsSpec``; best of ``--rounds`` per case after one warm-up call.

Example:
    python benchmarks/cpu_kernel_threads.py --tokens 4096 --out benchmarks/results/cpu_kernel_threads.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from attnlens.kernels import StatsSpec  # noqa: E402 (after the path)
from attnlens.kernels.reference import chunked_attention_stats  # noqa: E402

LAYOUTS = {"9 heads / 3 kv heads": (9, 3), "4 heads / 1 kv head": (4, 1)}


def best_of(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n: int, rounds: int, threads: tuple[int, ...]) -> list[dict]:
    rows = []
    for layout, (h, hkv) in LAYOUTS.items():
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(1, h, n, 64, generator=gen) * 2
        k, v = torch.randn(1, hkv, n, 64, generator=gen) * 2, torch.randn(1, hkv, n, 64, generator=gen)
        for t in threads:
            torch.set_num_threads(t)
            cases = {
                "kernel": lambda: chunked_attention_stats(q, k, v, causal=True, spec=StatsSpec(), compile=True),
                "pytorch": lambda: chunked_attention_stats(q, k, v, causal=True, spec=StatsSpec(), compile=False),
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            }
            row = {"layout": layout, "threads": t, **{name: best_of(fn, rounds) for name, fn in cases.items()}}
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(rows: list[dict], n: int) -> str:
    lines = [f"# One causal attention layer, {n:,} tokens: threads", "",
             f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}; best of the rounds.", "",
             "| layout | threads | kernel s | PyTorch path s | SDPA s | kernel x SDPA |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['threads']} | {r['kernel']:.3f} | {r['pytorch']:.3f} | {r['sdpa']:.3f} | "
                     f"{r['kernel'] / r['sdpa']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = measure(args.tokens, args.rounds, tuple(int(t) for t in args.threads.split(",")))
    md = markdown(rows, args.tokens)
    print(md)
    if args.out:
        args.out.write_text(md)


if __name__ == "__main__":
    main()
