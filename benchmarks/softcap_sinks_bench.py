"""CPU cost of soft-capping (Gemma 2) and learned sinks (gpt-oss) in the stats attention, one layer's call.

Shapes are one attention call of SmolLM2-135M (9 query heads, 3 kv heads, d_head 64, causal) over N tokens, random
inputs (scores of a few units, so the cap bites), one thread.  Cases, interleaved round by round, median of
``--rounds``:

  sdpa                    plain causal SDPA: the best existing kernel, but it cannot soft-cap nor hold a sink
  eager_softcap / eager_sinks  the model's own eager attention for that term (what runs without attnlens: it
                          materialises [H, N, N])
  stats_{plain,softcap,sinks}_{compiled,torch}  kernels.attention_with_stats with StatsSpec() (every statistic,
                          key stats included), on the compiled C++ kernel or the PyTorch path

Example:
    python benchmarks/softcap_sinks_bench.py --tokens 2048 --rounds 5 --out benchmarks/results/softcap_sinks.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlens.kernels import StatsSpec, attention_with_stats

H, HKV, D = 9, 3, 64
SOFTCAP = 50.0  # Gemma 2's attn_logit_softcapping


def _inputs(n: int):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, n, D, generator=g) * 2
    k, v = torch.randn(1, HKV, n, D, generator=g), torch.randn(1, HKV, n, D, generator=g)
    sinks = torch.randn(H, generator=g)
    return q, k, v, sinks


def _eager(q, k, v, *, softcap=None, sinks=None):
    """Gemma 2's / gpt-oss's eager attention written as they do (float32, causal mask added)."""
    kk, vv = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
    s = q @ kk.transpose(-1, -2) * D ** -0.5
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    n = s.shape[-1]
    s = s + torch.full((n, n), torch.finfo(s.dtype).min).triu(1)
    if sinks is not None:
        s = torch.cat([s, sinks.reshape(1, -1, 1, 1).expand(*s.shape[:-1], 1)], -1)
        s = s - s.amax(-1, keepdim=True)
        return torch.softmax(s, -1)[..., :n] @ vv
    return torch.softmax(s, -1) @ vv


def cases(q, k, v, sinks) -> dict:
    spec = StatsSpec()
    out = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "eager_softcap": lambda: _eager(q, k, v, softcap=SOFTCAP),
        "eager_sinks": lambda: _eager(q, k, v, sinks=sinks),
    }
    terms = {"plain": {}, "softcap": {"softcap": SOFTCAP}, "sinks": {"sinks": sinks}}
    for path, compiled in (("compiled", True), ("torch", False)):
        for name, kw in terms.items():
            out[f"stats_{name}_{path}"] = (lambda kw=kw, c=compiled: attention_with_stats(
                q, k, v, spec=spec, backend="torch", compile=c, **kw))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    q, k, v, sinks = _inputs(args.tokens)
    run = cases(q, k, v, sinks)
    with torch.no_grad():
        for fn in run.values():  # warm-up (builds or loads the compiled kernel)
            fn()
        times = {name: [] for name in run}
        for _ in range(args.rounds):
            for name, fn in run.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    base = {"plain": "sdpa", "softcap": "eager_softcap", "sinks": "eager_sinks"}
    lines = [
        f"# Stats attention with soft-capping and sinks, CPU, N = {args.tokens}",
        "",
        f"One causal attention call of SmolLM2-135M's shape (9 heads, 3 kv heads, d_head 64), random inputs, one "
        f"thread, median of {args.rounds} interleaved rounds; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}. Soft-cap {SOFTCAP} (Gemma 2's), sinks ~ N(0, 1) per head. "
        "`x SDPA`: against plain causal SDPA (which computes neither term); `x eager`: against the model's own eager "
        "attention for the same term (what runs without attnlens).",
        "",
        "| case | ms | x SDPA | x eager (same term) |",
        "|---|---|---|---|",
    ]
    for name, t in med.items():
        term = name.split("_")[1] if name.startswith("stats_") else None
        ref = med[base[term]] if term and term != "plain" else None
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / med['sdpa']:.2f} | {'' if ref is None else f'{t / ref:.2f}'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
