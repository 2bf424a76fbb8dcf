"""Fault class 6: the Python API misused. Every public entry point checks its arguments first and
raises the project's own error in one line naming the argument (never a raw TypeError, never a
silent coercion such as ``layers="12"`` read as layers 1 and 2)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

import lens
from attnlens.formats.errors import AttnlensError, KernelInputError
from attnlens.kernels import StatsSpec
from lens import Edit, HeadRef, MlpRef, Over, Replace, Scale, Site, Zero

P = "a short prompt"


def _capture(lm, **kw):
    with lens.capture(lm, **kw):
        lm.model(torch.tensor([[1, 2, 3]]))


def _stats_mode(lm, *args, **kw):
    with lens.stats_mode(*args, **kw):
        pass


def _ref(lm):
    return lens.Reference.from_capture(lens.run(lm, P, sites=[Site.Z]).capture)


# (what, call(lm), error type, key words of the message)
CASES = [
    # layers and heads: strictly lists of integers
    ("layers='12'", lambda lm: lens.run(lm, P, layers="12"), lens.SelectionError,
     "layers must be a list of integers like [0, 2], got text '12'"),
    ("layers=[1.5]", lambda lm: lens.run(lm, P, layers=[1.5]), lens.SelectionError, "got float 1.5 in it"),
    ("layers=[True]", lambda lm: lens.run(lm, P, layers=[True]), lens.SelectionError, "got bool True in it"),
    ("layers=['1']", lambda lm: lens.run(lm, P, layers=["1"]), lens.SelectionError, "got str '1' in it"),
    ("layers=[None]", lambda lm: lens.run(lm, P, layers=[None]), lens.SelectionError, "got NoneType None in it"),
    ("layers=3", lambda lm: lens.run(lm, P, layers=3), lens.SelectionError, "got int 3 (write [3])"),
    ("layers=[]", lambda lm: lens.run(lm, P, layers=[]), lens.SelectionError, "layers is empty"),
    ("layers=[9]", lambda lm: lens.run(lm, P, layers=[9]), lens.SelectionError,
     "layer 9 is out of range: tiny-llama has layers 0-3"),
    ("layers float tensor", lambda lm: lens.run(lm, P, layers=torch.tensor([1.0])), lens.SelectionError,
     "got a torch.float32 tensor"),
    ("heads='1'", lambda lm: lens.run(lm, P, heads="1"), lens.SelectionError, "heads must be a list of integers"),
    ("heads=[None]", lambda lm: lens.run(lm, P, heads=[None]), lens.SelectionError, "heads must be a list of integers"),
    ("heads={0: 1}", lambda lm: lens.run(lm, P, heads={0: 1}), lens.SelectionError, "got dict"),
    ("capture layers='12'", lambda lm: _capture(lm, layers="12"), lens.SelectionError, "got text '12'"),
    ("run_stats layers='12'", lambda lm: lens.run_stats(lm, P, layers="12"), lens.SelectionError, "got text '12'"),
    ("stats_mode layers='12'", lambda lm: _stats_mode(lm, lm, StatsSpec(), layers="12"), KernelInputError,
     "got text '12'"),
    # sites
    ("sites='pattern'", lambda lm: lens.run(lm, P, sites="pattern"), lens.SelectionError,
     "sites must be a list of lens.Site like [lens.Site.PATTERN], got str 'pattern'"),
    ("sites=Site.Z", lambda lm: lens.run(lm, P, sites=Site.Z), lens.SelectionError, "got one Site (write [Site.Z])"),
    ("sites=None", lambda lm: lens.run(lm, P, sites=None), lens.SelectionError, "got NoneType"),
    ("sites=['z']", lambda lm: lens.run(lm, P, sites=["z"]), lens.SelectionError, "site 'z' is not a lens.Site"),
    # storage dtype: must hold probabilities
    ("dtype=int64", lambda lm: lens.run(lm, P, dtype=torch.int64), lens.SelectionError,
     "dtype must be one of torch.float32, float16, bfloat16, float64 (or None), got torch.int64"),
    ("dtype=bool", lambda lm: _capture(lm, dtype=torch.bool), lens.SelectionError, "got torch.bool"),
    ("dtype='float16'", lambda lm: lens.run(lm, P, dtype="float16"), lens.SelectionError, "got 'float16'"),
    # devices, budgets, backends, flags
    ("device='bogus'", lambda lm: lens.run(lm, P, device="bogus"), lens.SelectionError,
     "device 'bogus' is not a device"),
    ("device=None", lambda lm: lens.run(lm, P, device=None), lens.SelectionError, "device must be a device like"),
    ("device='meta'", lambda lm: lens.run(lm, P, device="meta"), lens.SelectionError,
     "device 'meta' is not supported"),
    ("budget nan", lambda lm: lens.run(lm, P, budget_bytes=math.nan), lens.SelectionError,
     "budget_bytes must be a positive number of bytes, got nan"),
    ("budget inf", lambda lm: lens.run(lm, P, budget_bytes=math.inf), lens.SelectionError, "got inf"),
    ("budget -1", lambda lm: lens.run(lm, P, budget_bytes=-1), lens.SelectionError, "got -1"),
    ("budget '1GB'", lambda lm: lens.run(lm, P, budget_bytes="1GB"), lens.SelectionError, "got str '1GB'"),
    ("budget True", lambda lm: _capture(lm, budget_bytes=True), lens.SelectionError, "got bool True"),
    ("backend='bogus'", lambda lm: lens.run(lm, P, backend="bogus"), lens.BackendError,
     "backend 'bogus' is not one of torch, transformer_lens, nnsight"),
    ("backend=None", lambda lm: lens.run(lm, P, backend=None), lens.BackendError, "backend must be one of"),
    ("stats backend", lambda lm: lens.run_stats(lm, P, backend="cuda"), KernelInputError,
     "backend must be one of auto, triton, torch, got 'cuda'"),
    ("stats_mode backend", lambda lm: _stats_mode(lm, lm, StatsSpec(), backend=None), KernelInputError,
     "backend must be one of auto, triton, torch"),
    ("chat='yes'", lambda lm: lens.run(lm, P, chat="yes"), lens.SelectionError, "chat must be True or False"),
    ("remote=1", lambda lm: lens.run(lm, P, remote=1), lens.SelectionError, "remote must be True or False"),
    # prompts and ids
    ("ids [1,2,3]", lambda lm: lens.run(lm, torch.ones(1, 2, 3, dtype=torch.long)), lens.PromptError,
     "token ids (prompt) must be [batch, pos] or [pos], got shape (1, 2, 3)"),
    ("ids 0-d", lambda lm: lens.run(lm, torch.tensor(3)), lens.PromptError, "got shape ()"),
    ("ids batch 0", lambda lm: lens.run(lm, torch.ones(0, 3, dtype=torch.long)), lens.PromptError,
     "have an empty batch"),
    ("ids bool", lambda lm: lens.run(lm, torch.ones(1, 3, dtype=torch.bool)), lens.PromptError,
     "must be an integer tensor, got torch.bool"),
    ("ids out of vocab", lambda lm: lens.run(lm, torch.tensor([[1, 10**6]])), lens.PromptError,
     "token ids must be in 0-"),
    ("prompt None", lambda lm: lens.run(lm, None), lens.PromptError,
     "prompt must be text, a list of texts or token ids [batch, pos], got NoneType"),
    ("prompt 3", lambda lm: lens.run(lm, 3), lens.PromptError, "got int"),
    ("prompt bytes", lambda lm: lens.run(lm, b"hi"), lens.PromptError, "got bytes"),
    ("prompt []", lambda lm: lens.run(lm, []), lens.PromptError, "no prompts given"),
    ("decoder_ids on text", lambda lm: lens.run(lm, P, decoder_ids=[1, 2]), lens.PromptError,
     "decoder_ids is for encoder-decoder (speech, T5/BART) models: tiny-llama is a text model"),
    ("run_stats prompt None", lambda lm: lens.run_stats(lm, None), lens.PromptError, "got NoneType"),
    # the model argument
    ("run non-model", lambda lm: lens.run("tiny-llama", P), lens.SelectionError,
     "lm must be a lens.LoadedModel (load it first: lens.load('tiny-llama')), got str"),
    ("run lm.model", lambda lm: lens.run(lm.model, P), lens.SelectionError, "got LlamaForCausalLM"),
    ("capture None", lambda lm: _capture(None), lens.SelectionError, "lm must be a lens.LoadedModel"),
    ("run_stats None", lambda lm: lens.run_stats(None, P), lens.SelectionError, "lm must be a lens.LoadedModel"),
    ("stats_mode None", lambda lm: _stats_mode(lm, None, StatsSpec()), KernelInputError,
     "model_or_lm must be a lens.LoadedModel or a transformers model, got NoneType"),
    ("run_stats spec", lambda lm: lens.run_stats(lm, P, spec={"topk": 2}), KernelInputError,
     "spec must be a StatsSpec or None, got dict"),
    # edits
    ("bare Edit class", lambda lm: lens.run(lm, P, edits=[Edit]), lens.InterventionError,
     "edits must be lens.Edit, got the class Edit (construct one: Edit(...))"),
    ("one Edit", lambda lm: lens.run(lm, P, edits=Edit(HeadRef(0, 0))), lens.InterventionError,
     "got one Edit (write [edit])"),
    ("edits None", lambda lm: _capture(lm, edits=None), lens.InterventionError, "edits must be a list of lens.Edit"),
    ("edits of tuples", lambda lm: lens.run(lm, P, edits=[(0, 1)]), lens.InterventionError, "got tuple (0, 1)"),
    ("Edit action class", lambda lm: Edit(HeadRef(0, 0), Zero), lens.InterventionError,
     "an edit's action is a Zero(), Replace(...) or Scale(...), got the class Zero (write Zero(...))"),
    ("Edit action 3", lambda lm: Edit(HeadRef(0, 0), 3), lens.InterventionError, "got int 3"),
    ("Edit target tuple", lambda lm: Edit((0, 0)), lens.InterventionError, "an edit targets a HeadRef"),
    ("Edit position 1.5", lambda lm: Edit(HeadRef(0, 0), position=1.5), lens.InterventionError,
     "position must be an integer or None"),
    ("HeadRef('a', 0)", lambda lm: HeadRef("a", 0), lens.SelectionError, "HeadRef layer must be an integer >= 0, got str"),
    ("HeadRef(None, None)", lambda lm: HeadRef(None, None), lens.SelectionError, "got NoneType None"),
    ("HeadRef(0, 1.5)", lambda lm: HeadRef(0, 1.5), lens.SelectionError, "HeadRef head must be an integer >= 0, got float"),
    ("HeadRef(-1, 0)", lambda lm: HeadRef(-1, 0), lens.SelectionError, "got -1"),
    ("MlpRef('2')", lambda lm: MlpRef("2"), lens.SelectionError, "MlpRef layer must be an integer >= 0, got str '2'"),
    ("Replace over text", lambda lm: Replace(torch.ones(4), "row"), lens.InterventionError,
     "over must be a lens.Over"),
    ("Replace int value", lambda lm: Replace(torch.ones(4, dtype=torch.long), Over.BATCH_AND_POSITION),
     lens.InterventionError, "must be a floating-point tensor, got torch.int64"),
    ("Scale nan", lambda lm: Scale(math.nan), lens.InterventionError, "a scale factor must be a finite number"),
    ("scale_heads text", lambda lm: lens.scale_heads({(0, 0): "x"}), lens.InterventionError,
     "a scale factor must be a finite number, got 'x'"),
    ("scale_heads list", lambda lm: lens.scale_heads([(0, 0)]), lens.InterventionError, "factors must be a mapping"),
    ("zero_ablation (None, 0)", lambda lm: lens.zero_ablation([(None, 0)]), lens.InterventionError,
     "component (None, 0): HeadRef layer must be an integer"),
    ("mean_ablation reference None", lambda lm: lens.mean_ablation(None, [(0, 0)]), lens.InterventionError,
     "reference must be a lens.Reference (Reference.from_capture(...)), got NoneType"),
    ("zero_ablation None", lambda lm: lens.zero_ablation(None), lens.InterventionError,
     "components must be a list of HeadRef, MlpRef, ResidRef or (layer, head) pairs, got NoneType"),
    ("zero_ablation one HeadRef", lambda lm: lens.zero_ablation(HeadRef(0, 0)), lens.InterventionError,
     "components must be a list"),
    ("resample batch '2'", lambda lm: lens.resample_ablation(_ref(lm), [(0, 0)], batch="2"), lens.InterventionError,
     "batch must be an integer >= 1, got '2'"),
    ("resample batch -1", lambda lm: lens.resample_ablation(_ref(lm), [(0, 0)], batch=-1), lens.InterventionError,
     "batch must be an integer >= 1, got -1"),
    ("resample rows outside", lambda lm: lens.resample_ablation(_ref(lm), [(0, 0)], batch=1, rows=torch.tensor([5])),
     lens.InterventionError, "rows must be an integer tensor [batch] of reference rows 0-0"),
    ("Reference of None", lambda lm: lens.Reference.from_capture(None), lens.InterventionError,
     "capture must be a lens.Capture"),
    ("Reference step 3", lambda lm: lens.Reference.from_capture(lens.run(lm, P, sites=[Site.Z]).capture, step=3),
     lens.InterventionError, "step must be one of the capture's steps 0-0, got 3"),
    ("editing None", lambda lm: lens.editing(None, []).__enter__(), lens.SelectionError,
     "lm must be a lens.LoadedModel"),
    ("editing one Edit", lambda lm: lens.editing(lm, Edit(HeadRef(0, 0))).__enter__(), lens.InterventionError,
     "got one Edit (write [edit])"),
    ("edit head out of range", lambda lm: lens.run(lm, P, edits=[Edit(HeadRef(0, 9))]), lens.InterventionError,
     "head 9 is out of range"),
    # generate
    ("generate max_new_tokens=-1", lambda lm: lm.generate(P, max_new_tokens=-1), lens.SelectionError,
     "max_new_tokens must be in 1-1000000, got -1"),
    ("generate max_new_tokens='a'", lambda lm: lm.generate(P, max_new_tokens="a"), lens.SelectionError,
     "max_new_tokens must be an integer, got str 'a'"),
    ("generate max_new_tokens=2.5", lambda lm: lm.generate(P, max_new_tokens=2.5), lens.SelectionError, "got float 2.5"),
    ("generate prompt None", lambda lm: lm.generate(None), lens.PromptError, "a prompt must be text, got NoneType"),
    ("generate chat=None", lambda lm: lm.generate(P, chat=None), lens.SelectionError, "chat must be True or False"),
    # lens.load's arguments
    ("load name 3", lambda lm: lens.load(3), lens.SelectionError,
     "model must be a zoo name, a folder or a hub id (text or a path), got int 3"),
    ("load name None", lambda lm: lens.load(None), lens.SelectionError, "got NoneType None"),
    ("load dtype text", lambda lm: lens.load("tiny-llama", dtype="bogus"), lens.SelectionError,
     "dtype must be one of torch.float32, float16, bfloat16, float64, got 'bogus'"),
    ("load dtype int64", lambda lm: lens.load("tiny-llama", dtype=torch.int64), lens.SelectionError, "got torch.int64"),
    ("load device bogus", lambda lm: lens.load("tiny-llama", device="bogus"), lens.SelectionError,
     "device 'bogus' is not a device"),
    ("load name too long", lambda lm: lens.load("x" * 5000), lens.UnknownModelError, "unknown model"),
    ("load max_memory not a dict", lambda lm: lens.load("tiny-llama", device_map="auto", max_memory=["1GiB"]),
     lens.SelectionError, "max_memory must be a dict"),
    ("load device_map 3", lambda lm: lens.load("tiny-llama", device_map=3), lens.SelectionError,
     "device_map must be one of auto, balanced, balanced_low_0, sequential or a dict {module name: device}, got int 3"),
    ("load device_map bad device", lambda lm: lens.load("tiny-llama", device_map={"model": "gpu9"}),
     lens.SelectionError, "device_map['model'] 'gpu9' is not a device"),
    ("load device_map leaving modules out", lambda lm: lens.load("tiny-llama", device_map={"model.layers.0": "cpu"}),
     lens.SelectionError, "device_map does not fit tiny-llama: The device_map provided does not give any device"),
    ("load offload_folder 3", lambda lm: lens.load("tiny-llama", device_map="auto", offload_folder=3),
     lens.SelectionError, "offload_folder must be a folder path or None, got int"),
    ("load max_memory nan", lambda lm: lens.load("tiny-llama", device_map="auto", max_memory={"cpu": math.nan}),
     lens.SelectionError, "max_memory['cpu'] must be a positive number of bytes, got nan"),
]
if not torch.cuda.is_available():
    CASES += [
        ("device='cuda'", lambda lm: lens.run(lm, P, device="cuda"), lens.SelectionError,
         "device 'cuda': this machine has no CUDA GPU (use 'cpu')"),
        ("load device cuda", lambda lm: lens.load("tiny-llama", device="cuda"), lens.SelectionError,
         "this machine has no CUDA GPU"),
        ("load max_memory GPU 9", lambda lm: lens.load("tiny-llama", device_map="auto", max_memory={9: "1GiB"}),
         lens.SelectionError, "`max_memory` names GPU 9, but this machine has no CUDA GPU"),
    ]


@pytest.mark.parametrize(("what", "call", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_api_misuse_is_one_line_in_our_errors(tiny_lm, what, call, error, message):
    with pytest.raises(error) as info:
        call(tiny_lm)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text


def test_strict_values_still_take_numpy_and_tensor_integers(tiny_lm):
    """Strict is not narrow: numpy integers, integer tensors and generators are integers."""
    r = lens.run(tiny_lm, P, layers=np.array([1, 3]), heads=torch.tensor([0, 2]), budget_bytes=2**30,
                 device=torch.device("cpu"), edits=(Edit(HeadRef(np.int64(0), 1), Scale(np.float32(2.0))),))
    assert r.capture.meta.layers == [1, 3] and r.capture.meta.heads == [0, 2]
    assert all(type(x) is int for x in r.capture.meta.layers)
    assert HeadRef(np.int64(2), torch.tensor(1)) == HeadRef(2, 1)
    assert lens.run(tiny_lm, torch.tensor([5, 6, 7])).logits.shape[:2] == (1, 3)  # ids of rank 1 are one row


def test_layers_text_is_never_read_as_digits(tiny_lm):
    """The silent coercion the fault hunt found: "12" captured layers 1 and 2."""
    with pytest.raises(lens.SelectionError, match="got text '12'"):
        with lens.capture(tiny_lm, layers="12"):
            tiny_lm.model(torch.tensor([[1, 2, 3]]))


def test_errors_are_ours_and_stable_types(tiny_lm):
    """Each misuse is an AttnlensError that is also the matching builtin (ValueError, ...)."""
    for _, call, error, _ in CASES:
        with pytest.raises(AttnlensError):
            call(tiny_lm)
        assert issubclass(error, AttnlensError)


# ---- threads ------------------------------------------------------------------------------
def test_second_thread_capture_on_one_model_is_refused(tiny_lm):
    inside, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold():
        try:
            with lens.capture(tiny_lm, layers=[0]) as cap:
                tiny_lm.model(torch.tensor([[1, 2, 3]]))
                inside.set()
                done.wait(30)
            holder_steps.append(len(cap.steps))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)
            inside.set()

    holder_steps: list[int] = []
    t = threading.Thread(target=hold, name="holder")
    t.start()
    try:
        assert inside.wait(30)
        with pytest.raises(lens.BackendError, match=r"another thread \(holder\) is capturing from this model"):
            lens.run(tiny_lm, P, layers=[1])
        with pytest.raises(lens.BackendError, match="stats mode cannot start: another thread"):
            lens.run_stats(tiny_lm, P)
        tiny_lm.model(torch.tensor([[4, 5, 6, 7]]))  # a plain pass from this thread: not the holder's step
    finally:
        done.set()
        t.join(30)
    assert not errors, errors
    assert holder_steps == [1]
    # released: this thread captures again
    assert lens.run(tiny_lm, P, layers=[1]).capture.meta.layers == [1]


def test_same_thread_may_nest_captures(tiny_lm):
    with lens.capture(tiny_lm, layers=[0]) as outer:
        r = lens.run(tiny_lm, P, layers=[1])
    assert r.capture.meta.layers == [1] and len(outer.steps) == 1


def test_threads_on_two_models_run_in_parallel():
    """Two models, two threads: both capture, each only its own pass."""
    models = [lens.load("tiny-llama"), lens.load("tiny-llama")]
    results: dict[int, int] = {}
    barrier = threading.Barrier(2)

    def work(i):
        with lens.capture(models[i], layers=[0]) as cap:
            barrier.wait(30)
            models[i].model(torch.tensor([[1] * (3 + i)]))
            barrier.wait(30)
        results[i] = cap.pattern(0, step=0).shape[-1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: 3, 1: 4}


# ---- other modalities ---------------------------------------------------------------------------
MODALITY_CASES = [
    ("tiny-llava", lambda lm: lens.run(lm, None), lens.PromptError,
     "prompt must be text, a list of texts or token ids [batch, pos], got NoneType"),
    ("tiny-llava", lambda lm: lens.run(lm, b"<image>"), lens.PromptError, "got bytes"),
    ("tiny-llava", lambda lm: lens.run_stats(lm, 3), lens.PromptError, "got int"),
    ("tiny-dinov2", lambda lm: lens.run(lm, np.zeros((0, 0, 3), dtype=np.uint8)), lens.PromptError,
     "the image array is empty: shape (0, 0, 3)"),
    ("tiny-dinov2", lambda lm: lens.run(lm, torch.zeros(1, 3, 0, 0)), lens.PromptError, "pixel values are empty"),
    ("tiny-dinov2", lambda lm: lm.generate("hi"), lens.PromptError, "without a tokenizer: it does not generate text"),
    ("tiny-whisper", lambda lm: lm.generate("hi"), lens.PromptError,
     "tiny-whisper is a speech model: it transcribes audio"),
    ("tiny-whisper", lambda lm: lens.run(lm, np.zeros(16000, dtype=np.float32), decoder_ids=[1.5]),
     lens.SelectionError, "decoder_ids must be an integer, got float 1.5"),
    ("tiny-whisper", lambda lm: lens.run(lm, np.zeros(16000, dtype=np.float32), decoder_ids=[]), lens.PromptError,
     "decoder_ids is empty"),
    ("tiny-whisper", lambda lm: lens.run(lm, np.zeros(16000, dtype=np.float32), decoder_ids="12"), lens.PromptError,
     "decoder_ids must be a list of token ids, got str"),
]


@pytest.fixture(scope="module")
def zoo():
    cache: dict[str, lens.LoadedModel] = {}
    return lambda name: cache.setdefault(name, lens.load(name))


@pytest.mark.parametrize(("model", "call", "error", "message"), MODALITY_CASES,
                         ids=[f"{c[0]}-{c[3][:30]}" for c in MODALITY_CASES])
def test_misuse_of_other_modalities(zoo, model, call, error, message):
    with pytest.raises(error) as info:
        call(zoo(model))
    assert message in str(info.value) and "\n" not in str(info.value), info.value


def test_capture_spec_takes_the_same_checks(tiny_lm):
    """CaptureSpec.resolve is public too: the same strictness as the entry points that use it."""
    with pytest.raises(lens.SelectionError, match="layers must be a list of integers like \\[0, 2\\], got text '12'"):
        lens.CaptureSpec.resolve(tiny_lm.facts, layers="12")
    with pytest.raises(lens.SelectionError, match="budget_bytes must be a positive number of bytes, got nan"):
        lens.CaptureSpec.resolve(tiny_lm.facts, budget_bytes=math.nan)
    with pytest.raises(lens.SelectionError, match="dtype must be one of"):
        lens.CaptureSpec.resolve(tiny_lm.facts, dtype=torch.int8)
    assert lens.CaptureSpec.resolve(tiny_lm.facts, layers=[2, 2, 1]).layers == (2, 1)
