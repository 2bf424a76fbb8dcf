"""The CPU stats path's compiled kernel (kernels/_cpu_fused.cpp via kernels._compiled) against the float64 oracle and
the PyTorch path, at its edges: query blocks that do not divide the rows, GQA groups, decode rows, full attention,
key padding with rows and batch rows that see nothing, scores that hit the exp floor, exact ties, input dtypes,
threads.  Then what it leaves to the PyTorch path (explicit masks), the policy, and the fallback when building
fails.  The suite builds the kernel once (about 25 s with an empty cache, then cached per machine).
"""

import os
import shutil
import time
import warnings

import pytest
import torch

from attnlens.kernels import KernelInputError, StatsSpec, _compiled
from attnlens.kernels._testing import TOLERANCES, assert_matches_oracle, make_qkv
from attnlens.kernels.reference import chunked_attention_stats

needs_compiler = pytest.mark.skipif(not _compiled.compiler_available(), reason="no C++ compiler or ninja")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 7 query rows (small inputs span several blocks and a short last one); fails a test that did not run
    the built kernel."""
    monkeypatch.setattr(_compiled, "block_rows", lambda group, n_keys: 7)
    built, ran = _compiled.extension, []
    monkeypatch.setattr(_compiled, "extension", lambda: ran.append(built()) or ran[-1])
    yield
    assert ran and all(ext is not None for ext in ran), "the compiled kernel did not run"


def _spec(n: int, topk: int = 4) -> StatsSpec:
    # Spans on the first key, inside, and on the last keys; a window and sink that end inside the keys.
    return StatsSpec(sink_tokens=3, window=7, spans=((0, 1), (n // 3, n // 2 + 1), (n - 3, n)), topk=topk)


def _compiled_and_eager(q, k, v, **kw):
    got = chunked_attention_stats(q, k, v, compile=True, **kw)
    eager = chunked_attention_stats(q, k, v, compile=False, **kw)
    assert_matches_oracle(got, q, k, v, causal=kw["causal"], spec=kw["spec"],
                          key_padding_mask=kw.get("key_padding_mask"), attn_mask=kw.get("attn_mask"))
    tol = TOLERANCES[q.dtype]  # the output is rounded to the input dtype: one ulp of it apart at most
    torch.testing.assert_close(got.out, eager.out, atol=tol.out_atol, rtol=tol.out_rtol)
    for name in ("lse", "entropy", "max_weight", "sink_mass", "window_mass", "span_mass", "topk_weight",
                 "received_sum", "received_mean"):
        torch.testing.assert_close(getattr(got.stats, name), getattr(eager.stats, name), atol=2e-5, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert torch.equal(got.stats.argmax, eager.stats.argmax)
    return got


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal,b,h,hkv,m,n", [
    (True, 1, 6, 2, 130, 130),  # GQA 3:1, blocks of 7 rows: 18 full and one of 4
    (True, 2, 4, 4, 9, 150),  # decode rows at the end of the keys (MHA)
    (True, 1, 4, 1, 1, 77),  # one query (MQA), a key count off the vector width
    (False, 1, 4, 2, 33, 129),  # full attention
    (False, 2, 3, 3, 70, 20),  # q_len > k_len without causal
])
def test_compiled_matches_oracle_and_eager(small_blocks, dtype, causal, b, h, hkv, m, n):
    q, k, v = make_qkv(b, h, hkv, m, n, 16, dtype, seed=m + n)
    _compiled_and_eager(q, k, v, causal=causal, spec=_spec(n))


@needs_compiler
@pytest.mark.parametrize("causal", [True, False])
def test_compiled_key_padding_gives_exact_zeros(small_blocks, causal):
    # Batch 0 left-padded (under causal its first rows see no key), batch 1 fully padded.
    q, k, v = make_qkv(2, 4, 2, 75, 75, 16, torch.float32, seed=7)
    kpm = torch.ones(2, 75, dtype=torch.bool)
    kpm[0, :10] = False
    kpm[0, 40:43] = False
    kpm[1] = False
    got = _compiled_and_eager(q, k, v, causal=causal, spec=_spec(75), key_padding_mask=kpm)
    st = got.stats
    assert (got.out[1] == 0).all() and (st.entropy[1] == 0).all() and (st.argmax[1] == -1).all()
    assert (st.received_sum[0, :, :10] == 0).all() and (st.received_sum[0, :, 40:43] == 0).all()
    if causal:
        assert (st.argmax[0, :, :10] == -1).all() and (st.lse[0, :, :10] == float("-inf")).all()


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_wide_scores_hit_the_exp_floor(small_blocks, dtype):
    q, k, v = make_qkv(1, 2, 1, 140, 140, 16, dtype, seed=3, sharpness=40.0)
    got = _compiled_and_eager(q, k, v, causal=True, spec=_spec(140))
    assert torch.isfinite(got.stats.entropy).all() and (got.stats.entropy >= -1e-6).all()


@needs_compiler
def test_compiled_argmax_is_the_first_of_exact_ties(small_blocks):
    # Keys 5, 37 (the same vector lane), 40 and 100 (lanes after and before it) and 129 (the tail after the last full
    # vector) are equal and score highest for every query that sees them.
    d, n = 8, 130
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(1, 1, n, d, generator=gen) * 0.1
    k[0, 0, [5, 37, 40, 100, 129]] = torch.ones(d)
    q = torch.ones(1, 1, n, d) * 3
    v = torch.randn(1, 1, n, d, generator=gen)
    st = chunked_attention_stats(q, k, v, causal=True, spec=StatsSpec(topk=4), compile=True).stats
    assert (st.argmax[0, 0, 5:] == 5).all()
    assert st.topk_index[0, 0, -1].tolist() == [5, 37, 40, 100]  # the first four of five equal scores, in order
    assert torch.equal(st.argmax, chunked_attention_stats(q, k, v, causal=True, compile=False).stats.argmax)
    kpm = torch.ones(1, n, dtype=torch.bool)
    kpm[0, 5] = False  # with key 5 padded away the first tie is key 37
    st = chunked_attention_stats(q, k, v, causal=True, spec=StatsSpec(topk=4), key_padding_mask=kpm,
                                 compile=True).stats
    assert (st.argmax[0, 0, 37:] == 37).all() and st.topk_index[0, 0, -1].tolist() == [37, 40, 100, 129]


@needs_compiler
def test_compiled_with_threads_equals_one_thread_and_repeats_exactly(small_blocks):
    # Blocks are dealt to threads in a fixed order: every statistic but the per-key mass (one sum per thread, added
    # in thread order) is bitwise the single-thread one, and a rerun with the same threads repeats it exactly.
    q, k, v = make_qkv(1, 4, 1, 90, 90, 16, torch.float32, seed=5)  # one kv head: all parallelism is across blocks
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = chunked_attention_stats(q, k, v, causal=True, spec=_spec(90), compile=True)
        torch.set_num_threads(2)
        two = chunked_attention_stats(q, k, v, causal=True, spec=_spec(90), compile=True)
        again = chunked_attention_stats(q, k, v, causal=True, spec=_spec(90), compile=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.out, two.out)
    for name in one.stats._fields:
        a, b = getattr(one.stats, name), getattr(two.stats, name)
        if name.startswith("received"):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        else:
            assert torch.equal(a, b), name
        assert torch.equal(b, getattr(again.stats, name)), name


@needs_compiler
@pytest.mark.parametrize("topk", [1, 8])
def test_compiled_topk_with_fewer_visible_keys_than_k(small_blocks, topk):
    # The first rows see fewer than 8 keys: their missing entries are weight 0, index -1.
    q, k, v = make_qkv(1, 4, 2, 30, 30, 16, torch.float32, seed=topk)
    got = _compiled_and_eager(q, k, v, causal=True, spec=_spec(30, topk=topk))
    assert torch.equal(got.stats.topk_index, chunked_attention_stats(q, k, v, causal=True, spec=_spec(30, topk=topk),
                                                                     compile=False).stats.topk_index)
    if topk == 8:
        assert (got.stats.topk_index[0, :, 0, 1:] == -1).all() and (got.stats.topk_weight[0, :, 0, 1:] == 0).all()


@needs_compiler
def test_compiled_odd_head_size_transposed_inputs_and_no_optional_stats(small_blocks):
    # d_head 13 (not a vector width), q / k / v as transposed views (what transformers hands over), no top-k, no
    # per-key mass, no sink or window.
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in make_qkv(2, 6, 2, 45, 45, 13, torch.float32))
    assert not q.is_contiguous()
    spec = StatsSpec(sink_tokens=0, window=0, topk=0, key_stats=False)
    got = _compiled_and_eager(q, k, v, causal=True, spec=spec)
    assert got.stats.received_sum.shape == (2, 6, 0) and got.stats.topk_index.shape == (2, 6, 45, 0)


@needs_compiler
def test_explicit_masks_take_the_pytorch_path():
    q, k, v = make_qkv(2, 4, 2, 40, 40, 16, torch.float32, seed=2)
    mask = torch.ones(40, 40, dtype=torch.bool).tril()[None, None].repeat(2, 1, 1, 1)
    kw = dict(causal=False, spec=_spec(40), attn_mask=mask)
    got = chunked_attention_stats(q, k, v, compile=True, **kw)
    eager = chunked_attention_stats(q, k, v, compile=False, **kw)
    assert torch.equal(got.out, eager.out)
    for a, b in zip(got.stats, eager.stats):
        assert torch.equal(a, b)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(_compiled.ENV, raising=False)
    monkeypatch.setattr(_compiled, "compiler_available", lambda: True)


def test_block_rows_keep_a_block_near_the_cache_size():
    assert _compiled.block_rows(3, 8192) == 32  # SmolLM2 at its full context: 3 heads x 32 rows x 8,192 keys = 3 MB
    assert _compiled.block_rows(1, 100) == 128 and _compiled.block_rows(8, 1 << 20) == 8  # the limits
    assert _compiled.block_rows(4, 0) == 128


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


def test_a_failing_build_warns_once_and_stays_on_the_pytorch_path(no_env, monkeypatch):
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("Error building extension\nsecond line")

    monkeypatch.setattr(_compiled, "_build", broken)
    monkeypatch.setattr(_compiled, "_failed", False)
    q, k, v = make_qkv(2, 4, 2, 70, 70, 16, torch.float32, seed=1)
    spec = _spec(70)
    with pytest.warns(RuntimeWarning, match=r"failed \(RuntimeError: Error building extension\); using the PyTorch"):
        got = chunked_attention_stats(q, k, v, causal=True, spec=spec, compile=True)
    assert_matches_oracle(got, q, k, v, causal=True, spec=spec)
    assert calls == [1] and _compiled._failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning; the process stays on the PyTorch path
        assert not _compiled.use_compiled(True, q, 1 << 40)
    assert calls == [1]


def _fake_load(calls: list):
    def load(name, sources, *, extra_cflags, extra_ldflags, build_directory, verbose):
        calls.append(name)
        return "built"
    return load


def test_a_build_without_its_finished_mark_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    # A .so another process is still linking (or one a killed build left) is never imported directly.
    import torch.utils.cpp_extension as cpp

    calls = []
    monkeypatch.setattr(cpp, "load", _fake_load(calls))
    where = tmp_path / _compiled.module_name()
    where.mkdir()
    (where / f"{where.name}.so").write_bytes(b"half a shared object")
    (where / "lock").touch()
    old = time.time() - 2 * _compiled._STALE_LOCK_S
    os.utime(where / "lock", (old, old))  # left by a build that died: removed, or torch would wait on it forever
    assert _compiled.load_or_build(tmp_path) == "built" and calls == [where.name]
    assert (where / _compiled._FINISHED).exists() and not (where / "lock").exists()


def test_a_fresh_build_lock_is_left_to_its_build(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "load", _fake_load([]))
    where = tmp_path / _compiled.module_name()
    where.mkdir()
    (where / "lock").touch()
    _compiled.load_or_build(tmp_path)
    assert (where / "lock").exists()


@needs_compiler
def test_a_finished_build_is_loaded_without_torch_s_loader(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp

    assert _compiled.extension() is not None  # built (or loaded) in the real cache
    name = _compiled.module_name()
    (tmp_path / name).mkdir()
    shutil.copy(_compiled._cache_root() / name / f"{name}.so", tmp_path / name)
    (tmp_path / name / _compiled._FINISHED).touch()
    monkeypatch.setattr(cpp, "load", lambda *a, **k: pytest.fail("torch's loader ran for a finished build"))
    module = _compiled.load_or_build(tmp_path)
    q, k, v = make_qkv(1, 2, 1, 20, 20, 8, torch.float32)
    args = (q.contiguous(), k.transpose(-1, -2).contiguous(), v.contiguous(), torch.empty(0, dtype=torch.bool), True,
            1, 4, torch.empty(0, 2, dtype=torch.int64), 0, True, 8, 0.0, torch.empty(0))
    assert len(module.stats_forward(*args)) == 11
