"""Column pass: per-key received attention mass, using the final per-query log-sum-exp of the row pass.

One program owns ``BLOCK_N`` keys of one (batch, query head) and loops over the query blocks that can see them
(causal: from the first query whose position reaches the block), recomputing ``p = 2^(s * scale * log2e - lse2)``
and summing over queries in registers (soft-capped like the row pass; a learned sink needs nothing here, since
the row pass's ``lse`` already holds its term).  Every output element is written by exactly one program, in a fixed loop
order: deterministic, no atomics.  Padded keys are zeroed at the end rather than masked in the loop.

``count[j]`` (queries that see key ``j``) is analytic: ``M - max(0, j - (N - M))`` when causal, else ``M``, and 0 for
padded keys; ``received_mean = received_sum / count`` (0 where count is 0).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_row import _tanh
from ._validate import triton_interpreting


@triton.jit
def _col_stats_kernel(
    Q, K, LSE, RSUM, RMEAN, PAD,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd,
    H, GROUP, M, N, OFFSET, qk_scale, SOFTCAP2, M_BUCKET, N_BUCKET,
    HAS_SOFTCAP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, IEEE: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h64 = h.to(tl.int64)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_mb = tl.arange(0, BLOCK_M)
    col_ok = offs_n < N
    d_ok = offs_d < D
    kt = tl.load(K + b * skb + hk * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                 mask=col_ok[None, :] & d_ok[:, None], other=0.0)
    if INTERPRET:
        kt = kt.to(tl.float32)
    q_base = Q + b * sqb + h64 * sqh
    lse_base = LSE + (b * H + h64) * M

    acc = tl.zeros([BLOCK_N], tl.float32)
    lo = 0
    if CAUSAL:
        # First query whose position i + OFFSET reaches this key block, rounded down to a block boundary.
        lo = (tl.maximum(start_n - OFFSET, 0) // BLOCK_M) * BLOCK_M
    for start_m in range(lo, M, BLOCK_M):
        offs_m = start_m + offs_mb
        row_ok = offs_m < M
        q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if INTERPRET:
            q = q.to(tl.float32)
        # lse = -inf (row sees nothing) -> +inf in log2 units so that p = 2^(s - inf) = 0; same for padded rows.
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("-inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = s * qk_scale
        if HAS_SOFTCAP:
            s = SOFTCAP2 * _tanh(s / SOFTCAP2)
        if CAUSAL:
            if start_n + BLOCK_N - 1 > start_m + OFFSET:  # block crosses the diagonal
                s = tl.where(offs_n[None, :] <= (offs_m + OFFSET)[:, None], s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
        acc += tl.sum(p, 0)

    count = tl.zeros([BLOCK_N], tl.float32) + M
    if CAUSAL:
        count = (M - tl.maximum(offs_n - OFFSET, 0)).to(tl.float32)
    if HAS_PAD:
        pad = tl.load(PAD + b * N + offs_n, mask=col_ok, other=0)
        count = tl.where(pad != 0, count, 0.0)
        acc = tl.where(pad != 0, acc, 0.0)
    mean = tl.where(count > 0.0, acc / tl.maximum(count, 1.0), 0.0)
    out_off = (b * H + h64) * N + offs_n
    tl.store(RSUM + out_off, acc, mask=col_ok)
    tl.store(RMEAN + out_off, mean, mask=col_ok)


_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
    for bm, bn, w, st in [(64, 128, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (32, 128, 4, 3)]
]

if triton_interpreting():
    col_stats_kernel = _col_stats_kernel
else:
    col_stats_kernel = triton.autotune(_GPU_CONFIGS, key=["M_BUCKET", "N_BUCKET", "D", "CAUSAL", "HAS_PAD", "IEEE",
                                                          "HAS_SOFTCAP"])(
        _col_stats_kernel
    )
