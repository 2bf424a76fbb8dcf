"""The CPU stats path with its element-wise group compiled by torch.compile (kernels._compiled), against the float64
oracle and the eager path, at the edges the eager path is tested at: chunk tails, GQA, decode rows, key padding with
rows that see nothing, explicit masks, scores that hit the exp floor.  Then the policy (when it compiles) and the
fallback when compiling fails.

Every case has a batch of 2 or more: one compiled graph serves them all (a batch of 1 would be a specialisation of its
own, compiled again), so the suite pays one compile.
"""

import warnings

import pytest
import torch

from kernels import KernelInputError, StatsSpec, _compiled
from kernels._testing import TOLERANCES, assert_matches_oracle, make_qkv
from kernels.reference import chunked_attention_stats

needs_compiler = pytest.mark.skipif(not _compiled.compiler_available(), reason="no C++ compiler for torch.compile")


def _spec(n: int) -> StatsSpec:
    return StatsSpec(sink_tokens=3, window=7, spans=((0, 1), (n // 2, n - 2)), topk=4, key_stats=True)


def _both(q, k, v, **kw):
    got = chunked_attention_stats(q, k, v, compile=True, **kw)
    eager = chunked_attention_stats(q, k, v, compile=False, **kw)
    assert_matches_oracle(got, q, k, v, causal=kw["causal"], spec=kw["spec"],
                          key_padding_mask=kw.get("key_padding_mask"), attn_mask=kw.get("attn_mask"))
    tol = TOLERANCES[q.dtype]  # the output is rounded to the input dtype: one ulp of it apart at most
    torch.testing.assert_close(got.out, eager.out, atol=tol.out_atol, rtol=tol.out_rtol)
    for name in ("lse", "entropy", "max_weight", "sink_mass", "window_mass", "span_mass", "received_sum"):
        torch.testing.assert_close(getattr(got.stats, name), getattr(eager.stats, name), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert torch.equal(got.stats.argmax, eager.stats.argmax)
    return got


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal,h,hkv,m,n,chunk", [
    (True, 6, 2, 130, 130, 64),  # GQA 3:1, chunks 64 + 64 + 2
    (True, 4, 4, 9, 150, 4),  # decode rows: queries at the end of the keys, a tail chunk of 1 (eager)
    (False, 4, 2, 70, 90, 32),
])
def test_compiled_matches_oracle_and_eager(dtype, causal, h, hkv, m, n, chunk):
    q, k, v = make_qkv(2, h, hkv, m, n, 16, dtype, seed=m + n)
    _both(q, k, v, causal=causal, spec=_spec(n), chunk_size=chunk)


@needs_compiler
def test_compiled_key_padding_gives_exact_zeros():
    # Batch 0 left-padded (its first causal rows see no key), batch 1 fully padded.
    q, k, v = make_qkv(2, 4, 2, 75, 75, 16, torch.float32, seed=7)
    kpm = torch.ones(2, 75, dtype=torch.bool)
    kpm[0, :10] = False
    kpm[1] = False
    got = _both(q, k, v, causal=True, spec=_spec(75), key_padding_mask=kpm, chunk_size=16)
    st = got.stats
    assert (got.out[1] == 0).all() and (st.entropy[1] == 0).all() and (st.argmax[0, :, :10] == -1).all()
    assert (st.received_sum[0, :, :10] == 0).all() and (st.received_sum[1] == 0).all()


@needs_compiler
def test_compiled_explicit_mask_and_exp_floor():
    m = n = 90
    q, k, v = make_qkv(2, 4, 2, m, n, 16, torch.float32, seed=11, sharpness=40.0)
    i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
    mask = ((j <= i) & (j > i - 20))[None, None].repeat(2, 1, 1, 1)
    mask[1, 0, 40] = False
    got = _both(q, k, v, causal=False, spec=_spec(n), attn_mask=mask, chunk_size=32)
    assert (got.out[1, 0, 40] == 0).all() and got.stats.argmax[1, 0, 40] == -1


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(_compiled.ENV, raising=False)
    monkeypatch.setattr(_compiled, "compiler_available", lambda: True)


def test_policy_by_size_env_and_device(no_env, monkeypatch):
    cpu = torch.zeros(1)
    assert not _compiled.use_compiled(None, cpu, _compiled.MIN_SCORES - 1)
    assert _compiled.use_compiled(None, cpu, _compiled.MIN_SCORES)
    assert _compiled.use_compiled(True, cpu, 1) and not _compiled.use_compiled(False, cpu, 1 << 40)
    assert not _compiled.use_compiled(True, torch.zeros(1, device="meta"), 1 << 40)  # CPU only
    monkeypatch.setenv(_compiled.ENV, "0")
    assert not _compiled.use_compiled(None, cpu, 1 << 40)
    monkeypatch.setenv(_compiled.ENV, "1")
    assert _compiled.use_compiled(None, cpu, 1)
    monkeypatch.setattr(_compiled, "compiler_available", lambda: False)
    monkeypatch.setenv(_compiled.ENV, "auto")
    assert not _compiled.use_compiled(None, cpu, 1 << 40)  # auto without a compiler stays eager
    with pytest.raises(KernelInputError, match="needs a C\\+\\+ compiler"):
        _compiled.use_compiled(True, cpu, 1)


@pytest.mark.parametrize("bad_env,bad_arg", [("sometimes", None), ("auto", "yes")])
def test_policy_rejects_bad_values(no_env, monkeypatch, bad_env, bad_arg):
    monkeypatch.setenv(_compiled.ENV, bad_env)
    with pytest.raises(KernelInputError, match="ATTNLENS_COMPILE|compile="):
        _compiled.use_compiled(bad_arg, torch.zeros(1), 1)


def test_a_failing_compile_warns_once_and_stays_eager(no_env, monkeypatch):
    calls = []

    def broken(fn):
        def run(*args):
            calls.append(1)
            raise RuntimeError("no compiler today\nsecond line")
        return run

    monkeypatch.setattr(_compiled, "_compile", broken)
    monkeypatch.setattr(_compiled, "_failed", False)
    q, k, v = make_qkv(2, 4, 2, 70, 70, 16, torch.float32, seed=1)
    spec = _spec(70)
    with pytest.warns(RuntimeWarning, match=r"failed \(RuntimeError: no compiler today\); using the eager path"):
        got = chunked_attention_stats(q, k, v, causal=True, spec=spec, chunk_size=16, compile=True)
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec)
    assert calls == [1] and _compiled._failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning; the process stays on the eager path
        chunked_attention_stats(q, k, v, causal=True, spec=spec, chunk_size=16, compile=True)
    assert calls == [1]
