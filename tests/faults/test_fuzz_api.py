"""Fault class 6, fuzzed: the Python API's public entry points called with types and ranges drawn by
hypothesis (valid values mixed with junk) either work or raise one of the project's errors, with a
one-line message; never a raw TypeError, AttributeError, AssertionError or RuntimeError."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lens
from attnlens.formats.errors import AttnlensError
from attnlens.kernels import StatsSpec
from lens import Edit, HeadRef, MlpRef, Over, Replace, ResidRef, Scale, Site, Zero

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# ---- building blocks -------------------------------------------------------------------------
small_ints = st.integers(-3, 6)
scalars = st.one_of(
    st.none(), st.booleans(), small_ints, st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.binary(max_size=4),
    st.sampled_from([np.int64(1), np.float32(1.5), torch.tensor(2), torch.tensor(0.5), math.nan, Site.PATTERN,
                     torch.float32, torch.int64, object(), Zero, Edit, 1j]),
)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner), st.dictionaries(st.text(max_size=2), inner, max_size=2),
    st.frozensets(small_ints, max_size=3)), max_leaves=6)


def tensors(dtypes=(torch.long, torch.int32, torch.float32, torch.bool, torch.uint8)):
    return st.builds(lambda shape, dtype, hi: (torch.randint(0, hi, shape) if dtype not in (torch.float32,)
                                               else torch.rand(shape)).to(dtype),
                     st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple), st.sampled_from(dtypes),
                     st.sampled_from([2, 300, 10**6]))


index_lists = st.one_of(st.none(), st.lists(small_ints, max_size=4), junk,
                        st.builds(np.array, st.lists(st.integers(0, 3), min_size=1, max_size=3)),
                        tensors((torch.long, torch.float32, torch.bool)))
refs = st.one_of(st.builds(HeadRef, st.integers(0, 5), st.integers(0, 5)), st.builds(MlpRef, st.integers(0, 5)),
                 st.builds(ResidRef, st.integers(0, 5)))
actions = st.one_of(st.just(Zero()), st.builds(Scale, st.floats(-3, 3)),
                    st.builds(lambda d: Replace(torch.zeros(d), Over.BATCH_AND_POSITION), st.integers(1, 80)))
edits = st.builds(Edit, refs, actions, st.one_of(st.none(), st.integers(-6, 6)))
edit_lists = st.one_of(st.lists(edits, max_size=3), edits, junk)
prompts = st.one_of(st.text(min_size=0, max_size=12), st.lists(st.text(max_size=6), max_size=3), junk, tensors())
site_lists = st.one_of(st.lists(st.sampled_from(list(Site)), max_size=3), junk, st.sampled_from(list(Site)))
dtypes = st.one_of(st.none(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                               torch.int64, torch.bool, torch.complex64, torch.uint8]), junk)
devices = st.one_of(st.sampled_from(["cpu", "cuda", "cuda:3", "mps", "meta", "bogus", "", torch.device("cpu")]),
                    junk)
budgets = st.one_of(st.none(), st.integers(-5, 2**40), st.floats(allow_nan=True, allow_infinity=True), junk)
flags = st.one_of(st.booleans(), junk)


def mostly_valid(valid: dict, bad: dict):
    """Keyword arguments: each valid, except one or two drawn from the ``bad`` strategies (so every
    argument's own check is reached, not only the first one that fails)."""
    return st.sets(st.sampled_from(sorted(bad)), min_size=1, max_size=2).flatmap(
        lambda keys: st.fixed_dictionaries({k: (bad[k] if k in keys else v) for k, v in valid.items()}))


def ours(call) -> None:
    """``call()`` works or raises one of the project's errors with a one-line message."""
    try:
        call()
    except AttnlensError as err:
        assert "\n" not in str(err), str(err)


# ---- the entry points --------------------------------------------------------------------------
@FUZZ
@given(prompt=prompts, sites=site_lists, layers=index_lists, heads=index_lists, dtype=dtypes, device=devices,
       budget=budgets, edits=edit_lists, backend=st.one_of(st.sampled_from(["torch", "bogus"]), junk),
       chat=flags, decoder_ids=st.one_of(st.none(), junk))
def test_fuzz_run(tiny_lm, prompt, sites, layers, heads, dtype, device, budget, edits, backend, chat, decoder_ids):
    ours(lambda: lens.run(tiny_lm, prompt, sites=sites, layers=layers, heads=heads, dtype=dtype, device=device,
                          budget_bytes=budget, edits=edits, backend=backend, chat=chat, decoder_ids=decoder_ids))


@FUZZ
@given(sites=site_lists, layers=index_lists, heads=index_lists, dtype=dtypes, device=devices, budget=budgets,
       edits=edit_lists, ids=tensors((torch.long,)))
def test_fuzz_capture(tiny_lm, sites, layers, heads, dtype, device, budget, edits, ids):
    def call():
        with lens.capture(tiny_lm, sites=sites, layers=layers, heads=heads, dtype=dtype, device=device,
                          budget_bytes=budget, edits=edits):
            if ids.ndim == 2 and ids.numel() and int(ids.max()) < tiny_lm.facts.vocab_size:
                tiny_lm.model(ids)

    ours(call)


@FUZZ
@given(prompt=prompts, layers=index_lists, backend=st.one_of(st.sampled_from(["auto", "torch", "x"]), junk),
       spec=st.one_of(st.none(), st.just(StatsSpec()), junk), chat=flags)
def test_fuzz_run_stats(tiny_lm, prompt, layers, backend, spec, chat):
    ours(lambda: lens.run_stats(tiny_lm, prompt, spec=spec, layers=layers, backend=backend, chat=chat))


@FUZZ
@given(target=st.one_of(st.just("lm"), st.just("model"), junk), layers=index_lists,
       backend=st.one_of(st.sampled_from(["auto", "torch"]), junk), spec=st.one_of(st.just(StatsSpec()), junk))
def test_fuzz_stats_mode(tiny_lm, target, layers, backend, spec):
    model = {"lm": tiny_lm, "model": tiny_lm.model}.get(target, target) if isinstance(target, str) else target

    def call():
        with lens.stats_mode(model, spec, layers=layers, backend=backend):
            tiny_lm.model(torch.tensor([[1, 2, 3]]))

    ours(call)


@FUZZ
@given(prompt=st.one_of(st.text(max_size=12), junk), max_new_tokens=st.one_of(st.integers(-3, 3), junk),
       chat=flags)
def test_fuzz_generate(tiny_lm, prompt, max_new_tokens, chat):
    ours(lambda: tiny_lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat))


RUN_VALID = dict(prompt=st.sampled_from(["a prompt", "two"]), sites=st.just([Site.PATTERN, Site.Z]),
                 layers=st.sampled_from([None, [0, 3]]), heads=st.sampled_from([None, [1]]),
                 dtype=st.sampled_from([None, torch.float16]), device=st.just("cpu"), budget_bytes=st.just(None),
                 edits=st.just([]), backend=st.just("torch"), chat=st.just(False), decoder_ids=st.just(None))
RUN_BAD = dict(prompt=prompts, sites=site_lists, layers=index_lists, heads=index_lists, dtype=dtypes, device=devices,
               budget_bytes=budgets, edits=edit_lists, backend=junk, chat=junk, decoder_ids=junk)


@FUZZ
@given(kwargs=mostly_valid(RUN_VALID, RUN_BAD))
def test_fuzz_run_one_argument_at_a_time(tiny_lm, kwargs):
    prompt = kwargs.pop("prompt")
    ours(lambda: lens.run(tiny_lm, prompt, **kwargs))


LOAD_VALID = dict(dtype=st.just(torch.float32), device=st.just("cpu"), device_map=st.sampled_from([None, "auto"]),
                  max_memory=st.just(None), offload_folder=st.just(None))
LOAD_BAD = dict(dtype=dtypes, device=devices, device_map=st.one_of(
    junk, st.dictionaries(st.one_of(st.sampled_from(["", "model", "lm_head", "model.layers.0"]), scalars),
                          st.one_of(st.sampled_from(["cpu", "disk", 0, "cuda:1"]), junk), max_size=2)),
    max_memory=st.one_of(junk, st.dictionaries(st.one_of(small_ints, st.sampled_from(["cpu", "disk", "gpu"])),
                                               st.one_of(st.sampled_from(["1GiB", "x", "0"]), budgets), max_size=2)),
    offload_folder=junk)


@FUZZ
@given(kwargs=mostly_valid(LOAD_VALID, LOAD_BAD))
def test_fuzz_load_one_argument_at_a_time(kwargs):
    ours(lambda: lens.load("tiny-llama", **kwargs))


@FUZZ
@given(lm=junk)
def test_fuzz_first_argument(lm):
    for call in (lambda: lens.run(lm, "hi"), lambda: lens.run_stats(lm, "hi"),
                 lambda: lens.capture(lm).__enter__()):
        with pytest.raises(AttnlensError):
            call()


@FUZZ
@given(name=st.one_of(st.sampled_from(["tiny-llama"]), st.text(alphabet=st.characters(blacklist_characters="/"),
                                                                 max_size=8), junk),
       dtype=st.one_of(st.just(torch.float32), dtypes), device=devices,
       device_map=st.one_of(st.none(), st.sampled_from(["auto", "bogus"]), junk),
       max_memory=st.one_of(st.none(), st.dictionaries(st.one_of(small_ints, st.sampled_from(["cpu", "disk"])),
                                                        st.one_of(st.sampled_from(["1GiB", "x"]), budgets),
                                                        max_size=2), junk))
def test_fuzz_load_arguments(name, dtype, device, device_map, max_memory):
    ours(lambda: lens.load(name, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory))


@FUZZ
@given(a=junk, b=junk, action=st.one_of(actions, junk), position=st.one_of(st.none(), junk), factor=junk,
       over=st.one_of(st.sampled_from(list(Over)), junk), value=st.one_of(tensors(), junk))
def test_fuzz_edit_constructors(a, b, action, position, factor, over, value):
    ours(lambda: HeadRef(a, b))
    ours(lambda: MlpRef(a))
    ours(lambda: Edit(HeadRef(0, 0), action, position))
    ours(lambda: Edit(a, Zero()))
    ours(lambda: Scale(factor))
    ours(lambda: Replace(value, over))
    ours(lambda: lens.zero_ablation([(a, b)]))
    ours(lambda: lens.zero_ablation(a))
    ours(lambda: lens.scale_heads({(0, 0): factor}))
    ours(lambda: lens.scale_heads(a))


@pytest.fixture(scope="module")
def reference(tiny_lm):
    return lens.Reference.from_capture(lens.run(tiny_lm, ["abc", "abd"], sites=[Site.Z]).capture)


@FUZZ
@given(components=st.one_of(st.lists(refs, max_size=2), junk), over=st.one_of(st.sampled_from(list(Over)), junk),
       position=st.one_of(st.none(), st.integers(-4, 4), junk), batch=st.one_of(st.integers(-1, 3), junk),
       seed=st.one_of(st.integers(0, 5), junk), rows=st.one_of(st.none(), tensors(), junk), ref=junk)
def test_fuzz_edit_builders(tiny_lm, reference, components, over, position, batch, seed, rows, ref):
    ours(lambda: lens.mean_ablation(reference, components, over=over, position=position))
    ours(lambda: lens.patch(reference, components, position=position))
    ours(lambda: lens.resample_ablation(reference, components, batch=batch, seed=seed, rows=rows, position=position))
    ours(lambda: lens.mean_ablation(ref, components))
    ours(lambda: lens.editing(tiny_lm, ref).__enter__())


@pytest.fixture(scope="module")
def other_models():
    return {name: lens.load(name) for name in ("tiny-dinov2", "tiny-whisper", "tiny-llava")}


images_and_audio = st.one_of(
    junk, prompts,
    st.builds(lambda h, w, c: np.zeros((h, w, c), dtype=np.uint8), st.integers(0, 20), st.integers(0, 20),
              st.integers(1, 4)),
    st.builds(lambda n, v: np.full(n, v, dtype=np.float32), st.integers(0, 4000),
              st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda s: torch.rand(s), st.lists(st.integers(0, 17), max_size=4).map(tuple)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(model=st.sampled_from(["tiny-dinov2", "tiny-whisper", "tiny-llava"]), prompt=images_and_audio,
       image=st.one_of(st.none(), images_and_audio), decoder_ids=st.one_of(st.none(), junk),
       layers=st.one_of(st.just([0]), index_lists))
def test_fuzz_run_other_modalities(other_models, model, prompt, image, decoder_ids, layers):
    lm = other_models[model]
    ours(lambda: lens.run(lm, prompt, image=image, decoder_ids=decoder_ids, layers=layers))
    ours(lambda: lm.generate(prompt, max_new_tokens=2))
