"""Input checks shared by every backend; all raise :class:`KernelInputError` before any launch."""

from __future__ import annotations

import math
import os

import torch

from attnlens.formats.vocab import KernelBackend

from .errors import KernelInputError
from .spec import StatsSpec

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_D_HEADS = (64, 80, 96, 128)
BACKENDS = tuple(b.value for b in KernelBackend)


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: triton kernels then run on CPU tensors (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def validate_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float | None,
    spec: StatsSpec,
    key_padding_mask: torch.Tensor | None,
    allow_float64: bool = False,
) -> float:
    """Check shapes/dtypes/devices/spans; return the softmax scale to use (``d_head ** -0.5`` by default).

    Shapes: ``q [B, H, M, D]``, ``k``/``v`` ``[B, Hkv, N, D]``, ``key_padding_mask [B, N]`` bool.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise KernelInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise KernelInputError(f"{name} must be 4-D [batch, heads, seq, d_head], got shape {tuple(t.shape)}")
    dtypes = FLOAT_DTYPES + ((torch.float64,) if allow_float64 else ())
    if q.dtype not in dtypes:
        raise KernelInputError(f"q dtype {q.dtype} is not supported: use one of {[str(d) for d in dtypes]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise KernelInputError(f"q, k, v dtypes differ: q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise KernelInputError(f"q, k, v devices differ: q={q.device}, k={k.device}, v={v.device}")
    b, h, m, d = q.shape
    if k.shape != v.shape:
        raise KernelInputError(f"k and v shapes differ: k={tuple(k.shape)}, v={tuple(v.shape)}")
    bk, hkv, n, dk = k.shape
    if bk != b:
        raise KernelInputError(f"batch sizes differ: q has {b}, k/v have {bk}")
    if dk != d:
        raise KernelInputError(f"d_head differs: q has {d}, k/v have {dk}")
    if hkv == 0 or h % hkv != 0:
        raise KernelInputError(f"head={h} is not divisible by kv_head={hkv} (GQA needs head % kv_head == 0)")
    if n == 0 or m == 0 or d == 0:
        raise KernelInputError(f"empty sequence or d_head: q_len={m}, k_len={n}, d_head={d}")
    if not isinstance(causal, bool):
        raise KernelInputError(f"causal must be True or False, got {causal!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not _all_finite(t):
            raise KernelInputError(f"{name} holds NaN or inf: attention statistics of non-finite inputs are undefined")
    if causal and m > n:
        raise KernelInputError(
            f"causal attention needs q_len <= k_len (queries align to the end of the keys), got q_len={m}, k_len={n}"
        )
    if not isinstance(spec, StatsSpec):
        raise KernelInputError(f"spec must be a StatsSpec, got {type(spec).__name__}")
    for start, end in spec.spans:
        if end > n:
            raise KernelInputError(f"span ({start}, {end}) is out of range: keys are 0-{n - 1}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise KernelInputError(
                f"key_padding_mask must be a bool tensor (True = keep), got "
                f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}"
            )
        if tuple(key_padding_mask.shape) != (b, n):
            raise KernelInputError(
                f"key_padding_mask shape {tuple(key_padding_mask.shape)} does not match [batch, k_len] = [{b}, {n}]"
            )
        if key_padding_mask.device != q.device:
            raise KernelInputError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    if scale is None:
        return d**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise KernelInputError(f"scale={scale!r} must be a finite positive float")
    return float(scale)


def check_logit_terms(softcap, sinks, q: torch.Tensor) -> tuple[float | None, torch.Tensor | None]:
    """Check the two terms some models add to plain softmax attention; returns ``(softcap, sinks [H] float32)``.

    ``softcap``: None or a finite float > 0 (scores become ``softcap * tanh(scores / softcap)``, Gemma 2).
    ``sinks``: None or a finite ``[head]`` tensor of per-head logits (gpt-oss's ``module.sinks``) on ``q``'s device.
    """
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap) \
                or softcap <= 0:
            raise KernelInputError(f"softcap={softcap!r} must be None or a finite positive float")
        softcap = float(softcap)
    if sinks is None:
        return softcap, None
    h = q.shape[1]
    if not isinstance(sinks, torch.Tensor):
        raise KernelInputError(f"sinks must be None or a [head] tensor of logits, got {type(sinks).__name__}")
    if tuple(sinks.shape) != (h,):
        raise KernelInputError(f"sinks shape {tuple(sinks.shape)} does not match [head] = [{h}]")
    return softcap, _finite_float32("sinks", sinks, q, "a learned sink logit must be finite")


def _finite_float32(name: str, t: torch.Tensor, q: torch.Tensor, why: str) -> torch.Tensor:
    """``t`` (a floating point tensor on ``q``'s device with no NaN or inf) as float32, or a one-line error."""
    if not t.is_floating_point():
        raise KernelInputError(f"{name} dtype {t.dtype} is not a floating point type")
    if t.device != q.device:
        raise KernelInputError(f"{name} is on {t.device} but q is on {q.device}")
    if not bool(torch.isfinite(t).all()):
        raise KernelInputError(f"{name} holds NaN or inf: {why}")
    return t.detach().to(torch.float32).contiguous()


def check_score_bias(score_bias, q: torch.Tensor, k_len: int) -> torch.Tensor | None:
    """``score_bias``: None, or a finite tensor added to the scores: ``[batch or 1, head, k_len]`` per key (ALiBi's
    ``slope_h * j``, MPT's position bias) or ``[batch or 1, head, q_len, k_len]`` per query and key (T5's relative
    position bias). Returned as float32."""
    if score_bias is None:
        return None
    b, h, m = q.shape[:3]
    if not isinstance(score_bias, torch.Tensor):
        raise KernelInputError(f"score_bias must be None or a tensor, got {type(score_bias).__name__}")
    want = (h, k_len) if score_bias.dim() == 3 else (h, m, k_len)
    if score_bias.dim() not in (3, 4) or score_bias.shape[0] not in (1, b) or tuple(score_bias.shape[1:]) != want:
        raise KernelInputError(f"score_bias shape {tuple(score_bias.shape)} is neither [batch or 1, head, k_len] = "
                               f"[{b}, {h}, {k_len}] nor [batch or 1, head, q_len, k_len] = [{b}, {h}, {m}, {k_len}]")
    return _finite_float32("score_bias", score_bias, q, "mask keys with key_padding_mask, not the bias")


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in ``t``.  A NaN or inf element makes the sum NaN or inf, so a finite sum (one reduction, no
    ``[B, H, N, D]`` bool temporaries) proves it; only a non-finite sum, e.g. an overflow of large finite values, takes
    the element-wise check."""
    return bool(torch.isfinite(t.sum(dtype=torch.promote_types(t.dtype, torch.float32)))) or bool(torch.isfinite(t).all())


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """Map ``backend`` ("auto" / "triton" / "torch") to the one that will run, checking triton's requirements."""
    if backend not in BACKENDS:
        raise KernelInputError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return "triton" if q.is_cuda and q.shape[-1] in TRITON_D_HEADS and triton_importable() else "torch"
    if backend == "triton":
        if not triton_importable():
            raise KernelInputError("backend='triton' requested but triton is not importable")
        if not q.is_cuda and not triton_interpreting():
            raise KernelInputError(
                f"backend='triton' needs CUDA tensors (got {q.device}); CPU is only allowed with TRITON_INTERPRET=1"
            )
        if q.shape[-1] not in TRITON_D_HEADS:
            raise KernelInputError(f"d_head={q.shape[-1]} is not supported by the triton backend: use {TRITON_D_HEADS}")
    return backend
