"""Row pass: FlashAttention-2 style forward that also accumulates per-query statistics online.

One program owns ``BLOCK_M`` queries of one (batch, query head) and walks the key/value blocks once, keeping in
float32 registers: running max ``m`` (log2 domain), ``l = sum 2^(s - m)``, ``t = sum 2^(s - m) (s - m)`` (entropy),
the first argmax, sink/window/span partial masses and the running top-k, all rescaled by ``alpha = 2^(m_old - m_new)``
like the output accumulator.  Scores are pre-multiplied by ``scale * log2(e)`` so the softmax uses ``exp2``.

Causal programs stop at the last key block their last query can see.  Sink/window/span/top-k work is skipped (scalar
branch) on blocks that cannot contribute, so the steady-state loop costs one extra reduction (argmax) over plain
flash attention.  Empty rows (no visible key) keep ``m = -inf``; ``m_use`` substitutes 0 so no NaN is formed.

Soft-capping (``HAS_SOFTCAP``): scores in log2 units ``x`` become ``SOFTCAP2 * tanh(x / SOFTCAP2)`` with
``SOFTCAP2 = softcap * log2(e)``, which is ``softcap * tanh(score / softcap)`` in natural units; applied before masking.
Learned sinks (``HAS_SINKS``): the loop is unchanged; at the end the denominator becomes ``L = l + 2^(z_h - m)`` (the
sink's extra softmax column, which has no value) and every weight is divided by ``L`` instead of ``l``.

Under ``TRITON_INTERPRET=1`` (CPU tests) ``INTERPRET`` upcasts every load to float32, because the interpreter stores
bfloat16 as raw uint16 bits and its ``tl.dot`` would multiply bit patterns.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._validate import triton_interpreting

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
SINK_CLAMP2 = tl.constexpr(80.0 * LOG2E)  # the sink term's exponent clamp, log2 units (kernels._cpu_stats)


@triton.jit
def _tanh(y):
    """tanh from exp2 (no libdevice under the interpreter): sign(y) (1 - e) / (1 + e), e = exp(-2|y|) <= 1."""
    e = tl.math.exp2(-2.8853900817779268 * tl.abs(y))  # 2 * log2(e)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(y < 0.0, -t, t)


@triton.jit
def _row_stats_kernel(
    Q, K, V, O, LSE, ENT, MAXW, ARGMAX, SINK, WIN, SPAN, TOPW, TOPI, PAD, SPANS, SINKS,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
    H, GROUP, M, N, OFFSET, qk_scale, SOFTCAP2, SINK_TOKENS, WINDOW, M_BUCKET, N_BUCKET,
    HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, N_SPANS: tl.constexpr, SPAN_PAD: tl.constexpr,
    TOPK: tl.constexpr, TOPK_PAD: tl.constexpr, IEEE: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h64 = h.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_nb = tl.arange(0, BLOCK_N)
    row_ok = offs_m < M
    d_ok = offs_d < D
    pos = offs_m + OFFSET  # absolute key position of each query (end-aligned)

    q = tl.load(Q + b * sqb + h64 * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if INTERPRET:
        q = q.to(tl.float32)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    t_i = tl.zeros([BLOCK_M], tl.float32)
    arg_i = tl.full([BLOCK_M], -1, tl.int32)
    sink_i = tl.zeros([BLOCK_M], tl.float32)
    win_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    span_cols = tl.arange(0, SPAN_PAD)
    span_acc = tl.zeros([BLOCK_M, SPAN_PAD], tl.float32)
    top_cols = tl.arange(0, TOPK_PAD)
    top_v = tl.full([BLOCK_M, TOPK_PAD], float("-inf"), tl.float32)
    top_i = tl.full([BLOCK_M, TOPK_PAD], -1, tl.int32)

    first_pos = pid_m * BLOCK_M + OFFSET
    last_pos = first_pos + BLOCK_M - 1
    hi = N
    if CAUSAL:
        hi = tl.minimum(N, last_pos + 1)

    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_nb
        col_ok = offs_n < N
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        if INTERPRET:
            kt = kt.to(tl.float32)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = s * qk_scale
        if HAS_SOFTCAP:
            s = SOFTCAP2 * _tanh(s / SOFTCAP2)
        # Masking only where needed: the ragged last block, padding, and blocks crossing the causal diagonal.
        if HAS_PAD:
            needs_mask = start_n >= 0
        else:
            needs_mask = start_n + BLOCK_N > N
        if CAUSAL:
            needs_mask = needs_mask | (start_n + BLOCK_N - 1 > first_pos)
        if needs_mask:
            keep = col_ok[None, :] & (offs_m[:, None] >= 0)
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= pos[:, None])
            if HAS_PAD:
                pad = tl.load(PAD + b * N + offs_n, mask=col_ok, other=0)
                keep = keep & (pad != 0)[None, :]
            s = tl.where(keep, s, float("-inf"))

        m_blk = tl.max(s, 1)
        blk_arg = tl.argmax(s, 1).to(tl.int32) + start_n
        arg_i = tl.where(m_blk > m_i, blk_arg, arg_i)  # strict: earlier key wins ties
        m_new = tl.maximum(m_i, m_blk)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_use)
        shift = tl.where(m_i == float("-inf"), 0.0, m_i - m_use)
        centered = s - m_use[:, None]
        p = tl.math.exp2(centered)
        # Masked keys have p = 0 and centered = -inf: zero `centered` there so no 0 * inf NaN is ever formed.
        t_i = alpha * (t_i + l_i * shift) + tl.sum(p * tl.where(p > 0.0, centered, 0.0), 1)
        l_i = l_i * alpha + tl.sum(p, 1)

        sink_i = sink_i * alpha
        if start_n < SINK_TOKENS:
            sink_i += tl.sum(tl.where(offs_n[None, :] < SINK_TOKENS, p, 0.0), 1)
        win_i = win_i * alpha
        # Nested ifs: triton specialises an int argument equal to 1 into a constexpr, which must not be `&`-ed
        # with a runtime scalar.
        if WINDOW > 0:
            if (start_n <= last_pos) & (start_n + BLOCK_N - 1 > first_pos - WINDOW):
                in_win = (offs_n[None, :] <= pos[:, None]) & (offs_n[None, :] > pos[:, None] - WINDOW)
                win_i += tl.sum(tl.where(in_win, p, 0.0), 1)
        if N_SPANS > 0:
            span_acc = span_acc * alpha[:, None]
            for si in tl.static_range(N_SPANS):
                s0 = tl.load(SPANS + 2 * si)
                e0 = tl.load(SPANS + 2 * si + 1)
                if (start_n < e0) & (start_n + BLOCK_N > s0):
                    part = tl.sum(tl.where((offs_n[None, :] >= s0) & (offs_n[None, :] < e0), p, 0.0), 1)
                    span_acc += tl.where(span_cols[None, :] == si, part[:, None], 0.0)
        if TOPK > 0:
            # Merge the block into the running sorted top-k only if some row's block max beats its k-th best.
            kth = tl.min(tl.where(top_cols[None, :] < TOPK, top_v, float("inf")), 1)
            if tl.max((m_blk > kth).to(tl.int32), 0) > 0:
                cand = s
                new_v = tl.full([BLOCK_M, TOPK_PAD], float("-inf"), tl.float32)
                new_i = tl.full([BLOCK_M, TOPK_PAD], -1, tl.int32)
                for t in tl.static_range(TOPK):
                    bm = tl.max(cand, 1)
                    bi = tl.argmax(cand, 1).to(tl.int32)
                    rm = tl.max(top_v, 1)
                    rc = tl.argmax(top_v, 1).to(tl.int32)
                    take_run = rm >= bm  # running entries are earlier keys: they win ties
                    ri = tl.sum(tl.where(top_cols[None, :] == rc[:, None], top_i, 0), 1)
                    val = tl.where(take_run, rm, bm)
                    idx = tl.where(take_run, ri, bi + start_n)
                    new_v = tl.where(top_cols[None, :] == t, val[:, None], new_v)
                    new_i = tl.where(top_cols[None, :] == t, idx[:, None], new_i)
                    top_v = tl.where(take_run[:, None] & (top_cols[None, :] == rc[:, None]), float("-inf"), top_v)
                    cand = tl.where((~take_run)[:, None] & (offs_nb[None, :] == bi[:, None]), float("-inf"), cand)
                top_v = new_v
                top_i = new_i

        vb = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                     mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if INTERPRET:
            acc = acc * alpha[:, None] + tl.dot(p, vb.to(tl.float32), input_precision="ieee")
        elif IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, vb, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb)
        m_i = m_new

    has = l_i > 0.0
    l_safe = tl.where(has, l_i, 1.0)
    if HAS_SINKS:
        z2 = tl.load(SINKS + h) * 1.4426950408889634
        m_fin = tl.where(has, m_i, 0.0)
        denom = l_safe + tl.math.exp2(tl.minimum(z2 - m_fin, SINK_CLAMP2))
        inv_l = 1.0 / denom
        # lse = log2(2^(m + log2 l) + 2^z), taken around the larger term
        a = m_fin + tl.math.log2(l_safe)
        lse2 = tl.maximum(a, z2) + tl.math.log2(1.0 + tl.math.exp2(-tl.abs(a - z2)))
        ent2 = l_safe * inv_l * tl.math.log2(denom) - t_i * inv_l
    else:
        inv_l = 1.0 / l_safe
        log2_l = tl.math.log2(l_safe)
        lse2 = m_i + log2_l
        ent2 = log2_l - t_i * inv_l
    out = acc * inv_l[:, None]
    tl.store(O + b * sob + h64 * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    row = (b * H + h64) * M + offs_m
    tl.store(LSE + row, tl.where(has, lse2 * 0.6931471805599453, float("-inf")), mask=row_ok)
    tl.store(ENT + row, tl.where(has, ent2 * 0.6931471805599453, 0.0), mask=row_ok)
    tl.store(MAXW + row, tl.where(has, inv_l, 0.0), mask=row_ok)
    tl.store(ARGMAX + row, arg_i.to(tl.int64), mask=row_ok)
    tl.store(SINK + row, sink_i * inv_l, mask=row_ok)
    tl.store(WIN + row, win_i * inv_l, mask=row_ok)
    if N_SPANS > 0:
        tl.store(SPAN + row[:, None] * N_SPANS + span_cols[None, :], span_acc * inv_l[:, None],
                 mask=row_ok[:, None] & (span_cols[None, :] < N_SPANS))
    if TOPK > 0:
        valid = top_v > float("-inf")
        m_fin = tl.where(has, m_i, 0.0)
        w = tl.where(valid, tl.math.exp2(top_v - m_fin[:, None]) * inv_l[:, None], 0.0)
        idx = tl.where(valid, top_i, -1)
        tmask = row_ok[:, None] & (top_cols[None, :] < TOPK)
        tl.store(TOPW + row[:, None] * TOPK + top_cols[None, :], w, mask=tmask)
        tl.store(TOPI + row[:, None] * TOPK + top_cols[None, :], idx.to(tl.int64), mask=tmask)


# M_BUCKET / N_BUCKET (next powers of two of M, N) are only autotuning keys: keying on exact lengths would re-tune
# at every decoding step.
# GPU launch configurations (BLOCK_M, BLOCK_N, num_warps, num_stages); the autotuner picks per shape bucket.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
    for bm, bn, w, st in [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4), (128, 128, 8, 2)]
]

if triton_interpreting():
    # No autotuning under the interpreter (it needs a GPU driver); the launcher passes fixed block sizes.
    row_stats_kernel = _row_stats_kernel
else:
    row_stats_kernel = triton.autotune(
        _GPU_CONFIGS, key=["M_BUCKET", "N_BUCKET", "D", "CAUSAL", "HAS_PAD", "N_SPANS", "TOPK", "IEEE", "HAS_SOFTCAP",
             "HAS_SINKS"]
    )(_row_stats_kernel)
