"""Bad inputs raise KernelInputError with a message naming the argument and its values, before any launch."""

import pytest
import torch

from attnlens.kernels import KernelInputError, StatsSpec, attention_with_stats
from attnlens.kernels._testing import make_qkv


def _qkv(**kw):
    args = dict(b=1, h=4, hkv=2, m=8, n=300, d=16, dtype=torch.float32)
    args.update(kw)
    return make_qkv(**args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sink_tokens=-1), r"sink_tokens=-1 .*>= 0"),
        (dict(window=-3), r"window=-3 .*>= 0"),
        (dict(topk=9), r"topk=9 .*0-8"),
        (dict(topk=-1), r"topk=-1 .*0-8"),
        (dict(spans=((5, 5),)), r"spans entry \(5, 5\).*start < end"),
        (dict(spans=((-1, 4),)), r"spans entry \(-1, 4\)"),
        (dict(spans=(("a", 4),)), r"spans="),
        (dict(key_stats=1), r"key_stats"),
    ],
)
def test_spec_rejects(kwargs, match):
    with pytest.raises(KernelInputError, match=match):
        StatsSpec(**kwargs)


def test_span_out_of_range_message():
    q, k, v = _qkv()
    with pytest.raises(KernelInputError, match=r"span \(10, 400\) is out of range: keys are 0-299"):
        attention_with_stats(q, k, v, spec=StatsSpec(spans=((10, 400),)))


def test_shape_dtype_device_errors():
    q, k, v = _qkv()
    with pytest.raises(KernelInputError, match=r"head=4 is not divisible by kv_head=3"):
        attention_with_stats(q, *_qkv(hkv=3)[1:])
    with pytest.raises(KernelInputError, match=r"dtypes differ: q=torch.float32, k=torch.float16"):
        attention_with_stats(q, k.half(), v)
    with pytest.raises(KernelInputError, match=r"q dtype torch.int64 is not supported"):
        attention_with_stats(q.long(), k.long(), v.long())
    with pytest.raises(KernelInputError, match=r"d_head differs: q has 16, k/v have 8"):
        attention_with_stats(q, k[..., :8], v[..., :8])
    with pytest.raises(KernelInputError, match=r"k and v shapes differ"):
        attention_with_stats(q, k, v[:, :, :10])
    with pytest.raises(KernelInputError, match=r"batch sizes differ: q has 2, k/v have 1"):
        attention_with_stats(torch.cat([q, q]), k, v)
    with pytest.raises(KernelInputError, match=r"q must be 4-D"):
        attention_with_stats(q[0], k, v)
    with pytest.raises(KernelInputError, match=r"causal attention needs q_len <= k_len.*q_len=300, k_len=8"):
        attention_with_stats(*_qkv(m=300, n=8))
    with pytest.raises(KernelInputError, match=r"scale=nan"):
        attention_with_stats(q, k, v, scale=float("nan"))
    with pytest.raises(KernelInputError, match=r"devices differ"):
        attention_with_stats(q, k.to("meta"), v)


def test_key_padding_mask_errors():
    q, k, v = _qkv()
    with pytest.raises(KernelInputError, match=r"key_padding_mask must be a bool tensor"):
        attention_with_stats(q, k, v, key_padding_mask=torch.ones(1, 300))
    with pytest.raises(KernelInputError, match=r"key_padding_mask shape \(1, 299\) does not match .*\[1, 300\]"):
        attention_with_stats(q, k, v, key_padding_mask=torch.ones(1, 299, dtype=torch.bool))


def test_backend_errors(monkeypatch):
    q, k, v = _qkv()
    with pytest.raises(KernelInputError, match=r"backend='cuda' is not one of"):
        attention_with_stats(q, k, v, backend="cuda")
    with pytest.raises(KernelInputError, match=r"d_head=16 is not supported by the triton backend"):
        attention_with_stats(q, k, v, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelInputError, match=r"backend='triton' needs CUDA tensors"):
        attention_with_stats(q, k, v, backend="triton")
