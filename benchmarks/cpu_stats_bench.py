"""Whole-model CPU benchmark of the stats mode: SmolLM2-135M, every layer, one forward over N tokens.

Cases, run interleaved round by round in one process (so machine noise hits all alike), median of ``--rounds``:

  sdpa           plain forward, the model's own SDPA attention
  eager_attn     eager attention with ``output_attentions=True`` (every [N, N] pattern kept): what materialising
                 costs; skipped where the kept patterns alone would exceed ``--eager-limit-gb``
  stats_rows     ``lens.run_stats(..., StatsSpec(key_stats=False), backend="torch")``
  stats_rowkeys  the same with ``StatsSpec()`` (per-key received mass too; the default)
  stats_rowkeys_eager     ``stats_rowkeys`` with ``ATTNLENS_COMPILE=0``: the PyTorch path, never the compiled kernel
  stats_rowkeys_compiled  ``stats_rowkeys`` with ``ATTNLENS_COMPILE=1``: always the compiled kernel

The first four run as a user's call would: by default the stats path runs its compiled kernel
(``kernels/_cpu_fused.cpp``) for calls with at least ``kernels._compiled.MIN_SCORES`` visible scores (here from about
1,000 tokens on), below that the PyTorch path.  The kernel is built or loaded before the timed rounds, and its build
is measured on its own, in fresh processes with an empty and with the warm kernel cache (``--compile-cost``).

Each case reports the forward's wall time and process CPU time (all threads), and its *attention-only* time: the
attention function of every layer is wrapped by a timer (transformers' SDPA entry, the model's eager function, the
stats attention entry), so the ratio of attention times shows the kernels apart from the rest of the forward.

Peak memory (``--memory``): every case runs once more in a fresh subprocess that loads the model, resets the kernel's
peak-RSS counter (``/proc/self/clear_refs`` = 5) and runs one forward; ``VmHWM`` from ``/proc/self/status`` is then the
true peak resident memory of the forward, model weights and logits included (``tracemalloc`` would miss torch's
allocations, and a shared process would carry earlier cases' freed-but-resident memory).

Example:
    python benchmarks/cpu_stats_bench.py --tokens 512,2048,8192 --rounds 5,3,1 --memory \\
        --out benchmarks/results/cpu_stats.md
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from attnlens.kernels._compiled import ENV, MIN_SCORES  # noqa: E402 (after the path)

CASES = ("sdpa", "eager_attn", "stats_rows", "stats_rowkeys", "stats_rowkeys_eager", "stats_rowkeys_compiled")
_COMPILE_ENV = {"stats_rowkeys_eager": "0", "stats_rowkeys_compiled": "1"}


class AttnClock:
    """Sums the wall time and the process CPU time spent inside wrapped attention functions."""

    def __init__(self) -> None:
        self.seconds = self.cpu_seconds = 0.0

    def reset(self) -> None:
        self.seconds = self.cpu_seconds = 0.0

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.process_time() - c0

        return timed


def install_clock(lm, clock: AttnClock) -> Callable[[], None]:
    """Route the model's SDPA, eager and stats attention through ``clock``; returns the function that undoes it."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from lens import attention as stack

    stack._register_once()  # stats mode runs through the attention stack's dispatcher (under either of its names)
    stack_fns = {name: ALL_ATTENTION_FUNCTIONS[name] for name in (stack.EAGER, stack.FAST)}
    model_module = sys.modules[type(lm.model).__module__]
    eager_fn = model_module.eager_attention_forward
    AttentionInterface.register("sdpa", clock.wrap(sdpa_attention_forward))
    for name, fn in stack_fns.items():
        AttentionInterface.register(name, clock.wrap(fn))
    model_module.eager_attention_forward = clock.wrap(eager_fn)

    def undo() -> None:
        AttentionInterface.register("sdpa", sdpa_attention_forward)
        for name, fn in stack_fns.items():
            AttentionInterface.register(name, fn)
        model_module.eager_attention_forward = eager_fn

    return undo


def prompt_ids(lm, n_tokens: int) -> torch.Tensor:
    """``[1, n_tokens]`` ids of the built-in prompts, repeated as often as needed."""
    from attnlens.analyses.prompts import GENERAL_PROMPTS

    ids = lm.tokenizer(" ".join(GENERAL_PROMPTS), return_tensors="pt").input_ids[0]
    return ids.repeat(n_tokens // ids.numel() + 1)[:n_tokens][None]


def eager_patterns_gb(lm, n_tokens: int) -> float:
    """Size of the float32 patterns ``output_attentions=True`` keeps: layers x heads x N x N."""
    return lm.facts.n_layers * lm.facts.n_heads * n_tokens**2 * 4 / 1e9


def run_case(lm, ids: torch.Tensor, case: str) -> None:
    """One forward of ``case`` over ``ids [1, N]``; results are dropped at once."""
    from attnlens.kernels import StatsSpec
    from lens.recording.stats import run_stats

    with torch.no_grad():
        if case == "sdpa":
            lm.model(ids)
        elif case == "eager_attn":
            lm.model.set_attn_implementation("eager")
            try:
                lm.model(ids, output_attentions=True)
            finally:
                lm.model.set_attn_implementation("sdpa")
        elif case == "stats_rows":
            run_stats(lm, ids, spec=StatsSpec(key_stats=False), backend="torch")
        elif case == "stats_rowkeys":
            run_stats(lm, ids, spec=StatsSpec(), backend="torch")
        elif case in _COMPILE_ENV:
            with _env(ENV, _COMPILE_ENV[case]):
                run_stats(lm, ids, spec=StatsSpec(), backend="torch")
        else:
            raise ValueError(f"unknown case {case!r}: use one of {CASES}")


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _compiled_calls(n_heads: int, n_kv_heads: int, d_head: int) -> list[float]:
    """Seconds of two stats calls through the compiled kernel: the first builds it (or loads the built one), the
    second runs it."""
    from attnlens.kernels import StatsSpec
    from attnlens.kernels.reference import chunked_attention_stats

    times = []
    for _ in range(2):
        q = torch.randn(1, n_heads, 200, d_head)
        k, v = torch.randn(1, n_kv_heads, 200, d_head), torch.randn(1, n_kv_heads, 200, d_head)
        t0 = time.perf_counter()
        chunked_attention_stats(q, k, v, causal=True, spec=StatsSpec(), compile=True)
        times.append(time.perf_counter() - t0)
    return times


def _compiles(cases: list[str], tokens: list[int], lm) -> bool:
    """Whether some selected case runs the compiled kernel: the forced one, or a default stats case at an N where the
    size rule of :mod:`kernels._compiled` switches it on (causal, one batch row, all heads)."""
    long = any(lm.facts.n_heads * n * (n + 1) // 2 >= MIN_SCORES for n in tokens)
    return "stats_rowkeys_compiled" in cases or (long and any(c in cases for c in ("stats_rows", "stats_rowkeys")))


def compile_warmup(lm) -> float:
    """Build or load the compiled kernel before the timed rounds; seconds it took."""
    return _compiled_calls(lm.facts.n_heads, lm.facts.n_kv_heads, lm.facts.d_head)[0]


def compile_child(threads: int) -> dict:
    """Fresh process (torch and kernels imported): the building (or loading) call and a second one."""
    torch.set_num_threads(threads)
    first, again = _compiled_calls(9, 3, 64)
    return {"first_call_s": first, "second_call_s": again}


def measure_compile_cost(threads: int) -> dict:
    """The first compiled call in a fresh process with an empty kernel cache (it builds), then with the cache it left."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=cache)
        for label in ("empty_cache", "warm_cache"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-compile", "--threads", str(threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            out[label] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                          else {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
            print(f"  compile cost, {label}: {out[label]}", flush=True)
    return out


def compile_markdown(cost: dict | None, warmup_s: float | None) -> str:
    if not cost and warmup_s is None:
        return ""
    lines = ["", "## The compiled kernel (kernels/_cpu_fused.cpp): building and loading it", ""]
    if warmup_s is not None:
        lines.append(f"- In this run, before the timed rounds: {warmup_s:.1f} s for the first compiled call.")
    for label, res in (cost or {}).items():
        if "error" in res:
            lines.append(f"- Fresh process, {label.replace('_', ' ')}: failed: {res['error']}")
        else:
            what = "builds the kernel" if label == "empty_cache" else "loads the built kernel"
            lines.append(f"- Fresh process, {label.replace('_', ' ')}: first compiled call {res['first_call_s']:.2f} s"
                         f" (it {what}), a second call {res['second_call_s'] * 1e3:.0f} ms")
    return "\n".join(lines) + "\n"


def _proc_mib(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def memory_child(model: str, case: str, n_tokens: int, threads: int) -> dict:
    """Fresh process: load, reset the peak-RSS counter, one forward of ``case``; peak and pre-forward RSS in MiB."""
    import lens

    torch.set_num_threads(threads)
    lm = lens.load(model)
    ids = prompt_ids(lm, n_tokens)
    with torch.no_grad():
        lm.model(ids[:, :8])  # first-call allocations (kernels, caches) belong to the process, not the case
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_mib("VmRSS")
    t0 = time.perf_counter()
    run_case(lm, ids, case)
    return {"case": case, "n": n_tokens, "peak_rss_mib": _proc_mib("VmHWM"), "rss_before_mib": before,
            "seconds": time.perf_counter() - t0}


def measure_memory(args, n_tokens: int, cases: list[str]) -> dict[str, dict]:
    out = {}
    for case in cases:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", case, "--tokens", str(n_tokens),
               "--threads", str(args.threads), "--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            out[case] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            out[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  memory N={n_tokens} {case}: {out[case]}", flush=True)
    return out


def time_cases(lm, ids: torch.Tensor, cases: list[str], rounds: int, warmup: bool, clock: AttnClock) -> dict:
    """Interleaved rounds; per case the lists of wall, CPU and attention-only seconds."""
    times = {case: {"wall": [], "cpu": [], "attn": [], "attn_cpu": []} for case in cases}
    if warmup:
        for case in cases:
            run_case(lm, ids, case)
    for r in range(rounds):
        for case in cases:
            clock.reset()
            w0, c0 = time.perf_counter(), time.process_time()
            run_case(lm, ids, case)
            times[case]["wall"].append(time.perf_counter() - w0)
            times[case]["cpu"].append(time.process_time() - c0)
            times[case]["attn"].append(clock.seconds)
            times[case]["attn_cpu"].append(clock.cpu_seconds)
            print(f"  N={ids.shape[1]} round {r + 1}/{rounds} {case}: {times[case]['wall'][-1]:.2f} s wall, "
                  f"attention {clock.seconds:.2f} s", flush=True)
    return times


def summarise(n: int, times: dict, memory: dict, skipped: dict) -> list[dict]:
    """One row per case: medians, ratios to SDPA (median of the per-round ratios), peak memory."""
    rows = []
    base = times.get("sdpa")
    for case in CASES:
        if case in skipped:
            rows.append({"n": n, "case": case, "skipped": skipped[case]})
            continue
        t = times[case]
        row = {"n": n, "case": case, "rounds": len(t["wall"]),
               "wall_s": statistics.median(t["wall"]), "cpu_s": statistics.median(t["cpu"]),
               "attn_s": statistics.median(t["attn"]), "attn_cpu_s": statistics.median(t["attn_cpu"])}
        if base and case != "sdpa":
            for key in ("wall", "cpu", "attn", "attn_cpu"):
                row[f"{key}_ratio"] = statistics.median(a / b for a, b in zip(t[key], base[key]))
        if case == "sdpa":
            row.update(wall_ratio=1.0, cpu_ratio=1.0, attn_ratio=1.0, attn_cpu_ratio=1.0)
        mem = memory.get(case, {})
        row["peak_rss_mib"] = mem.get("peak_rss_mib")
        row["rss_before_mib"] = mem.get("rss_before_mib")
        rows.append(row)
    return rows


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(rows: list[dict], machine: dict) -> str:
    lines = [
        "# Stats mode on CPU: SmolLM2-135M whole-model forward",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch thread(s), torch "
        f"{machine['torch']}; {machine['note']}",
        "",
        "1-minute load average (whole machine) before / after each size's timed rounds: "
        + ", ".join(f"N={n}: {a} / {b}" for n, (a, b) in machine.get("load_1min", {}).items()),
        "",
        "Ratios are medians of per-round ratios to the SDPA forward of the same round (interleaved, one process).",
        "Attention = time inside the attention functions of all layers; its ratio compares with SDPA's attention.",
        "CPU s = process CPU time (all threads): less sensitive than wall time to the other jobs on the machine.",
        "Peak RSS: fresh process per case, peak resident memory of the forward (model and logits included).",
        "",
        "| N | case | forward wall s | x SDPA | CPU s | x SDPA (CPU) | attention wall s | x SDPA | attention CPU s | "
        "x SDPA (CPU) | peak RSS GiB | RSS before GiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['n']} | {r['case']} | skipped: {r['skipped']} | | | | | | | | | |")
            continue
        peak = None if r["peak_rss_mib"] is None else r["peak_rss_mib"] / 1024
        before = None if r["rss_before_mib"] is None else r["rss_before_mib"] / 1024
        lines.append(
            f"| {r['n']} | {r['case']} | {r['wall_s']:.2f} | {_fmt(r.get('wall_ratio'), '.2f')} | {r['cpu_s']:.2f} | "
            f"{_fmt(r.get('cpu_ratio'), '.2f')} | {r['attn_s']:.2f} | {_fmt(r.get('attn_ratio'), '.2f')} | "
            f"{r['attn_cpu_s']:.2f} | {_fmt(r.get('attn_cpu_ratio'), '.2f')} | {_fmt(peak, '.2f')} | {_fmt(before, '.2f')} |"
        )
    return "\n".join(lines) + "\n"


# ---- candidates: one real attention layer, the alternatives the issue names ----------------------------------------


def capture_qkv(lm, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q [1, H, N, D]``, ``k``/``v`` ``[1, Hkv, N, D]`` of ``layer`` in a plain forward over ``ids``."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    got = {}
    sdpa_fn = ALL_ATTENTION_FUNCTIONS["sdpa"]  # possibly the timed wrapper: put back exactly this one

    def grab(module, query, key, value, *args, **kwargs):
        if module.layer_idx == layer:
            got["qkv"] = (query.clone(), key.clone(), value.clone())
        return sdpa_fn(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("sdpa", grab)
    try:
        with torch.no_grad():
            lm.model(ids)
    finally:
        AttentionInterface.register("sdpa", sdpa_fn)
    return got["qkv"]


def _cpu_median(fn: Callable, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _fused_rows(s: torch.Tensor, mx: torch.Tensor, e_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The element-wise group of one chunk in the stats path (centre, floor, exp, row sum, entropy dot), as one
    function Inductor can fuse into a single loop; the eager path runs the same ops one by one."""
    c = (s - mx.unsqueeze(-1)).clamp_min(-40.0)
    e = torch.exp(c)
    e_out.copy_(e)
    return e.sum(-1), (e * c).sum(-1)


def _eager_rows(s: torch.Tensor, mx: torch.Tensor, e_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s.sub_(mx.unsqueeze(-1)).clamp_min_(-40.0)
    e = torch.exp(s, out=e_out)
    return e.sum(-1), s.mul_(e).sum(-1)


def inductor_child(qkv_file: str, threads: int) -> dict:
    """Fresh process: compile :func:`_fused_rows` (``dynamic=True``) on real score blocks; first-call and steady times."""
    torch.set_num_threads(threads)
    q, k, v = torch.load(qkv_file)
    b, h, n, d = q.shape
    g = h // k.shape[1]
    rows = 64
    blocks = []
    for k_end in (n // 4, n // 2, n):  # three widths: a dynamic-shape kernel must not recompile for each
        qc = q[:, :, k_end - rows: k_end].reshape(b, k.shape[1], g * rows, d) * d**-0.5
        s = (qc @ k[:, :, :k_end].transpose(-1, -2)).reshape(b, h, rows, k_end)
        blocks.append(s)
    fused = torch.compile(_fused_rows, dynamic=True)
    first = []
    for s in blocks:
        t0 = time.perf_counter()
        fused(s, s.amax(-1), torch.empty_like(s))
        first.append(time.perf_counter() - t0)
    steady = {}
    for s in blocks:
        mx, e_out, work = s.amax(-1), torch.empty_like(s), s.clone()
        melem = s.numel() / 1e6

        def eager(s=s, mx=mx, e_out=e_out, work=work):
            work.copy_(s)  # the eager ops work in place; the copy is timed separately and subtracted
            _eager_rows(work, mx, e_out)

        copy_s = _cpu_median(lambda s=s, work=work: work.copy_(s), 7)
        steady[s.shape[-1]] = {
            "compiled_ms_per_melem": _cpu_median(lambda s=s, mx=mx, e_out=e_out: fused(s, mx, e_out), 7) * 1e3 / melem,
            "eager_ms_per_melem": (_cpu_median(eager, 7) - copy_s) * 1e3 / melem,
        }
    return {"first_call_s": first, "steady": steady}


def flex_candidate(q, k, v, rounds: int) -> dict:
    """flex_attention on CPU (compiled): what it can return, its compile time and its out-only speed."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = q.shape[2]
    block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device="cpu")
    flex = torch.compile(flex_attention)
    result: dict = {}
    t0 = time.perf_counter()
    flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    result["compile_s"] = time.perf_counter() - t0  # compile + first call, output only
    try:
        flex(q, k, v, block_mask=block_mask, enable_gqa=True, return_lse=True)
        result["return_lse"] = "ok"
    except Exception as err:  # the point is to record what CPU flex_attention refuses
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "NotImplementedError" in ln or "not supported" in ln), lines[0] if lines else "")
        result["return_lse"] = f"{type(err).__name__}: {why[:240]}"
    result["out_only_s"] = _cpu_median(lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True), rounds)
    return result


def candidates(args, lm, n: int, layer: int) -> dict:
    """Per-layer times (process CPU seconds) of SDPA, this stats path, flex_attention; Inductor in fresh processes."""
    import tempfile

    from attnlens.kernels import StatsSpec
    from attnlens.kernels.reference import chunked_attention_stats

    q, k, v = capture_qkv(lm, prompt_ids(lm, n), layer)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    res = {"n": n, "layer": layer, "rounds": args.candidate_rounds}
    timed = {
        "sdpa_s": lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True),
        "torch_rows_s": lambda: chunked_attention_stats(q, k, v, spec=StatsSpec(key_stats=False)),
        "torch_rowkeys_s": lambda: chunked_attention_stats(q, k, v, spec=StatsSpec()),
        "torch_rowkeys_top8_s": lambda: chunked_attention_stats(q, k, v, spec=StatsSpec(topk=8)),
    }
    for name, fn in timed.items():
        res[name] = _cpu_median(fn, args.candidate_rounds)
    res["flex"] = flex_candidate(q, k, v, args.candidate_rounds)
    with tempfile.TemporaryDirectory() as tmp:
        qkv_file = str(Path(tmp) / "qkv.pt")
        torch.save((q, k, v), qkv_file)
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        for label in ("inductor_cold", "inductor_warm"):  # the second process finds the first one's cache
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-inductor", qkv_file,
                   "--threads", str(args.threads)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            wall = time.perf_counter() - t0
            res[label] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                          else {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
            res[label]["process_wall_s"] = wall
        res["inductor_cache_mib"] = sum(f.stat().st_size for f in Path(tmp, "inductor").rglob("*") if f.is_file()) / 2**20
    print(json.dumps(res, indent=1), flush=True)
    return res


def candidates_markdown(res: dict | None) -> str:
    if not res:
        return ""
    base = res["sdpa_s"]
    lines = ["", f"## Candidates: layer {res['layer']} alone, {res['n']} tokens (process CPU time, median of "
             f"{res['rounds']})", "", "| method | ms | x SDPA |", "|---|---:|---:|"]
    for key, label in (("sdpa_s", "SDPA (output only)"), ("torch_rows_s", "torch stats path, rows"),
                       ("torch_rowkeys_s", "torch stats path, rows + keys"),
                       ("torch_rowkeys_top8_s", "torch stats path, rows + keys + top-8"),):
        lines.append(f"| {label} | {res[key] * 1e3:.1f} | {res[key] / base:.2f} |")
    flex = res["flex"]
    lines.append(f"| flex_attention compiled (output only) | {flex['out_only_s'] * 1e3:.1f} | "
                 f"{flex['out_only_s'] / base:.2f} |")
    lines += ["", f"flex_attention: compile {flex['compile_s']:.1f} s; return_lse on CPU: {flex['return_lse']}", ""]
    for label in ("inductor_cold", "inductor_warm"):
        ind = res[label]
        if "error" in ind:
            lines.append(f"- {label}: {ind['error']}")
            continue
        steady = "; ".join(f"k={k}: compiled {v['compiled_ms_per_melem']:.2f} vs eager {v['eager_ms_per_melem']:.2f}"
                           f" ms/Melem" for k, v in ind["steady"].items())
        lines.append(f"- {label}: first calls {', '.join(f'{t:.2f}' for t in ind['first_call_s'])} s, process "
                     f"{ind['process_wall_s']:.1f} s; steady {steady}")
    lines.append(f"- Inductor cache written for this function: {res['inductor_cache_mib']:.2f} MiB")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", default="512,2048,8192", help="comma-separated token counts")
    parser.add_argument("--rounds", default="5,3,1", help="timed rounds per token count (one value or one each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: 1 is steadiest)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--eager-limit-gb", type=float, default=12.0,
                        help="skip eager_attn where its kept patterns alone exceed this")
    parser.add_argument("--warmup-below", type=int, default=4096, help="one untimed round first when N is below this")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS, one fresh process per case")
    parser.add_argument("--note", default="", help="free text about the machine's load, copied into the report")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report path; the raw JSON goes next to it")
    parser.add_argument("--candidates", type=int, default=0, metavar="N",
                        help="also time the alternatives (flex_attention, Inductor) on one real layer over N tokens")
    parser.add_argument("--candidate-layer", type=int, default=15)
    parser.add_argument("--candidate-rounds", type=int, default=5)
    parser.add_argument("--skip-model", action="store_true", help="only the --candidates part")
    parser.add_argument("--compile-cost", action="store_true",
                        help="also time the first compiled call in fresh processes (empty and warm kernel cache)")
    parser.add_argument("--child-compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-inductor", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tokens = [int(x) for x in args.tokens.split(",")]
    if args.child_memory:
        print(json.dumps(memory_child(args.model, args.child_memory, tokens[0], args.threads)))
        return 0
    if args.child_compile:
        print(json.dumps(compile_child(args.threads)))
        return 0
    if args.child_inductor:
        print(json.dumps(inductor_child(args.child_inductor, args.threads)))
        return 0
    rounds = [int(x) for x in args.rounds.split(",")]
    rounds = rounds * len(tokens) if len(rounds) == 1 else rounds
    if len(rounds) != len(tokens):
        raise SystemExit(f"--rounds has {len(rounds)} values for {len(tokens)} token counts")
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"--cases {unknown} unknown: use {CASES}")

    import lens

    torch.set_num_threads(args.threads)
    lm = lens.load(args.model)
    clock = AttnClock()
    undo = install_clock(lm, clock)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": _cpu_count(), "threads": args.threads,
               "torch": torch.__version__, "note": args.note or "shared machine, other jobs running"}
    machine["cpu"] = _cpu_name() or machine["cpu"]
    report = {"machine": machine, "model": args.model, "rows": [], "raw": {}}
    try:
        if args.compile_cost:
            report["compile_cost"] = measure_compile_cost(args.threads)
        if not args.skip_model and _compiles(cases, tokens, lm):
            report["compile_warmup_s"] = compile_warmup(lm)
        if args.candidates:
            report["candidates"] = candidates(args, lm, args.candidates, args.candidate_layer)
        for n, n_rounds in zip(tokens, [] if args.skip_model else rounds):
            ids = prompt_ids(lm, n)
            skipped = {}
            if "eager_attn" in cases and eager_patterns_gb(lm, n) > args.eager_limit_gb:
                skipped["eager_attn"] = f"needs {eager_patterns_gb(lm, n):.0f} GB for the patterns alone"
            skipped.update({c: "not selected" for c in CASES if c not in cases})
            run = [c for c in CASES if c not in skipped]
            load_before = os.getloadavg()[0]
            times = time_cases(lm, ids, run, n_rounds, warmup=n < args.warmup_below, clock=clock)
            load_after = os.getloadavg()[0]
            memory = measure_memory(args, n, run) if args.memory else {}
            report["raw"][str(n)] = {"times": times, "memory": memory, "load_1min": [load_before, load_after]}
            machine.setdefault("load_1min", {})[n] = [round(load_before, 1), round(load_after, 1)]
            report["rows"].extend(summarise(n, times, memory, skipped))
    finally:
        undo()
    md = (markdown(report["rows"], machine) + compile_markdown(report.get("compile_cost"), report.get("compile_warmup_s"))
          + candidates_markdown(report.get("candidates")))
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return 0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def _cpu_name() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    found = re.search(r"model name\s*:\s*(.+)", text)
    return found.group(1).strip() if found else None


if __name__ == "__main__":
    raise SystemExit(main())
