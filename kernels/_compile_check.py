"""Ahead-of-time compile the triton kernels for an H100 (sm_90) without a GPU: a CI check that the GPU code path
(no interpreter upcasts, tensor-core dots, scalar branches) lowers through MLIR and ptxas.

Run as ``TRITON_INTERPRET=0 python -m attnlens.kernels._compile_check``; prints one line per variant, exits 1 on failure.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ._validate import triton_interpreting

TARGET = GPUTarget("cuda", 90, 32)


def _signature(fn, types: dict[str, str], consts: dict) -> dict[str, str]:
    return {name: "constexpr" if name in consts else types.get(name, "i32") for name in fn.arg_names}


def compile_row(dtype: str, d: int, causal: bool, has_pad: bool, n_spans: int, topk: int, block_m: int = 128,
                block_n: int = 64, num_warps: int = 8, num_stages: int = 3, softcap: bool = False,
                sinks: bool = False):
    from ._triton_row import _row_stats_kernel as fn

    types = {name: f"*{dtype}" for name in "QKVO"}
    types.update({name: "*fp32" for name in ("LSE", "ENT", "MAXW", "SINK", "WIN", "SPAN", "TOPW")})
    types.update(ARGMAX="*i64", TOPI="*i64", PAD="*i8", SPANS="*i32", SINKS="*fp32", qk_scale="fp32",
                 SOFTCAP2="fp32")
    consts = dict(HAS_SOFTCAP=softcap, HAS_SINKS=sinks, D=d, BLOCK_D=triton.next_power_of_2(d), BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                  HAS_PAD=has_pad, N_SPANS=n_spans, SPAN_PAD=triton.next_power_of_2(max(n_spans, 1)), TOPK=topk,
                  TOPK_PAD=triton.next_power_of_2(max(topk, 1)), IEEE=dtype == "fp32", INTERPRET=False)
    src = ASTSource(fn, _signature(fn, types, consts), consts)
    return triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))


def compile_col(dtype: str, d: int, causal: bool, has_pad: bool, block_m: int = 64, block_n: int = 128,
                num_warps: int = 8, num_stages: int = 3, softcap: bool = False):
    from ._triton_col import _col_stats_kernel as fn

    types = dict(Q=f"*{dtype}", K=f"*{dtype}", LSE="*fp32", RSUM="*fp32", RMEAN="*fp32", PAD="*i8", qk_scale="fp32",
                 SOFTCAP2="fp32")
    consts = dict(HAS_SOFTCAP=softcap, D=d, BLOCK_D=triton.next_power_of_2(d), BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                  HAS_PAD=has_pad, IEEE=dtype == "fp32", INTERPRET=False)
    src = ASTSource(fn, _signature(fn, types, consts), consts)
    return triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))


def main() -> int:
    if triton_interpreting():
        print("unset TRITON_INTERPRET: the interpreter replaces the jit functions", file=sys.stderr)
        return 1
    variants = [
        ("row bf16 d128 causal, all stats", lambda: compile_row("bf16", 128, True, True, 2, 8)),
        ("row fp32 d80 non-causal", lambda: compile_row("fp32", 80, False, False, 1, 0, 64, 32, 4, 2)),
        ("row bf16 d64 causal, soft-capped, sinks", lambda: compile_row("bf16", 64, True, False, 0, 2, softcap=True,
                                                                         sinks=True)),
        ("col bf16 d128 causal", lambda: compile_col("bf16", 128, True, False)),
        ("col fp16 d64 causal, soft-capped", lambda: compile_col("fp16", 64, True, False, softcap=True)),
    ]
    for label, build in variants:
        kernel = build()
        print(f"ok: {label} (shared memory {kernel.metadata.shared} B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
