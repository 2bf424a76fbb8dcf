"""The public entry point :func:`attention_with_stats` and its backend dispatch."""

from __future__ import annotations

from typing import Literal

import torch

from ._validate import check_logit_terms, check_score_bias, resolve_backend, validate_inputs
from .errors import KernelInputError
from .reference import chunked_validated, grad_through_sdpa, needs_grad
from .spec import AttnOut, StatsSpec


def attention_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    spec: StatsSpec = StatsSpec(),
    key_padding_mask: torch.Tensor | None = None,
    backend: Literal["auto", "triton", "torch"] = "auto",
    compile: bool | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> AttnOut:
    """Attention output plus per-head statistics, without materialising the ``[M, N]`` attention matrix.

    Args:
        q: ``[batch, head, q_len, d_head]`` fp16 / bf16 / fp32.
        k, v: ``[batch, kv_head, k_len, d_head]``; ``head % kv_head == 0`` and query head ``h`` uses kv head
            ``h // (head // kv_head)`` (GQA, transformers convention).
        causal: query ``i`` sees keys ``j <= i + k_len - q_len`` (end-aligned, as with a KV cache); needs
            ``q_len <= k_len``.
        scale: softmax scale, default ``d_head ** -0.5``.
        spec: which statistics to compute, see :class:`StatsSpec`.
        key_padding_mask: optional ``[batch, k_len]`` bool, True = keep.
        backend: "triton" (CUDA, d_head in 64/80/96/128; on CPU only under ``TRITON_INTERPRET=1``, for tests),
            "torch" (chunked PyTorch, any device and d_head), or "auto": triton when the tensors are on CUDA, the
            d_head is supported and triton imports, else torch.
        compile: torch backend on CPU only: run the compiled C++ kernel (``kernels/_cpu_fused.cpp``); ``None``
            decides by ``ATTNLENS_COMPILE`` or by size (see :mod:`kernels._compiled`).
        softcap: logit soft-capping (Gemma 2's ``attn_logit_softcapping``): each score ``scale * q . k`` becomes
            ``softcap * tanh(score / softcap)`` before masking and softmax.  None: plain scores.
        sinks: ``[head]`` learned sink logits (gpt-oss's ``module.sinks``): one extra softmax column per query head
            that takes probability mass and contributes no value.  None: no sink.
        score_bias: added to the scores after soft-capping, before masking: ``[batch or 1, head, k_len]`` per
            key (ALiBi's ``slope_h * j``: BLOOM, MPT, Falcon with ALiBi) or ``[batch or 1, head, q_len, k_len]``
            per query and key (T5's relative position bias).  Computed by the torch backend ("auto" picks it;
            "triton" is refused).  None: no bias.

    These three are call arguments, not :class:`StatsSpec` fields: like ``scale`` and ``causal`` they say which
    attention is computed (a property of the model's layer, and ``sinks`` and ``score_bias`` are tensors), while the spec says what is
    measured of it and is saved with every run.

    Returns:
        :class:`AttnOut`: ``out [batch, head, q_len, d_head]`` in the input dtype and :class:`AttnStats`
        (float32 statistics, int64 indices).  Statistics follow the semantics documented in :mod:`kernels.spec`.

    Raises:
        KernelInputError: on bad shapes, dtypes, devices, spans, scale or backend, before any launch.
    """
    scale = validate_inputs(q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask)
    softcap, sinks = check_logit_terms(softcap, sinks, q)
    score_bias = check_score_bias(score_bias, q, k.shape[2])
    if score_bias is not None and backend == "triton":
        raise KernelInputError("backend='triton' has no score_bias: use backend='torch' or 'auto'")
    chosen = "torch" if score_bias is not None else resolve_backend(backend, q)
    if chosen == "triton":
        from ._triton_op import (
            triton_attention_stats,  # lazy: importing triton is slow and optional
        )

        def run() -> AttnOut:
            return triton_attention_stats(q, k, v, causal=causal, scale=scale, spec=spec,
                                          key_padding_mask=key_padding_mask, softcap=softcap, sinks=sinks)

        if needs_grad(q, k, v):  # the Triton kernels have no backward
            return grad_through_sdpa(run, q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask,
                                     softcap=softcap, sinks=sinks)
        return run()
    return chunked_validated(q, k, v, causal=causal, scale=scale, spec=spec, key_padding_mask=key_padding_mask,
                             compile=compile, softcap=softcap, sinks=sinks, score_bias=score_bias)
