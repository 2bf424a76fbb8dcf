"""NIAH trial generator: exact needle spans, determinism, depths and errors."""

import pytest

from attnlens.analyses.niah import NiahError, make_trial, make_trials, rouge1_recall


def test_needle_span_decodes_to_the_needle(tiny_lm):
    t = make_trial(tiny_lm.tokenizer, length=400, depth=0.5, context_length=512, chat=False)
    s, e = t.needle_span
    assert tiny_lm.tokenizer.decode(t.input_ids[s:e]).strip() == t.needle.text
    assert t.n_tokens <= 400


def test_trials_are_deterministic_and_differ_by_seed(tiny_lm):
    a = make_trial(tiny_lm.tokenizer, length=300, depth=0.3, context_length=512, seed=1, chat=False)
    b = make_trial(tiny_lm.tokenizer, length=300, depth=0.3, context_length=512, seed=1, chat=False)
    c = make_trial(tiny_lm.tokenizer, length=300, depth=0.3, context_length=512, seed=2, chat=False)
    assert a.input_ids.tolist() == b.input_ids.tolist() and a.needle == b.needle
    assert a.input_ids.tolist() != c.input_ids.tolist()


def test_depth_orders_the_needle(tiny_lm):
    starts = [make_trial(tiny_lm.tokenizer, length=450, depth=d, context_length=512, chat=False).needle_span[0]
              for d in (0.0, 0.5, 1.0)]
    assert starts[0] < starts[1] < starts[2]
    assert starts[0] <= 2  # right after BOS


def test_multi_needle_spans_are_disjoint_and_distinct(tiny_lm):
    t = make_trial(tiny_lm.tokenizer, length=500, depth=0.5, context_length=512, n_needles=3, chat=False)
    spans = sorted(t.needle_spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert len({n.question for n in t.needles}) == 3
    for n, (s, e) in zip(t.needles, t.needle_spans):
        assert tiny_lm.tokenizer.decode(t.input_ids[s:e]).strip() == n.text


def test_sweep_size(tiny_lm):
    trials = make_trials(tiny_lm.tokenizer, context_length=512, lengths=(300, 400), depths=(0, 1), seeds=(0, 1),
                         chat=False)
    assert len(trials) == 8 and {t.length for t in trials} == {300, 400}


@pytest.mark.parametrize("depth", [-0.1, 1.5])
def test_depth_outside_unit_interval(tiny_lm, depth):
    with pytest.raises(NiahError, match=r"depth .* outside \[0, 1\]"):
        make_trial(tiny_lm.tokenizer, length=300, depth=depth, context_length=512, chat=False)


def test_needle_longer_than_context(tiny_lm):
    with pytest.raises(NiahError, match="longer than the context length 50"):
        make_trial(tiny_lm.tokenizer, length=50, depth=0.5, context_length=512, chat=False)


def test_length_over_model_context(tiny_lm):
    with pytest.raises(NiahError, match="longer than the model's context of 512"):
        make_trial(tiny_lm.tokenizer, length=600, depth=0.5, context_length=512, chat=False)


def test_chat_without_template(tiny_lm):
    with pytest.raises(NiahError, match="no chat template"):
        make_trial(tiny_lm.tokenizer, length=300, depth=0.5, context_length=512, chat=True)


def test_rouge1_recall():
    assert rouge1_recall("The best thing is cake.", "the BEST thing is cake") == 1.0
    assert rouge1_recall("a b c d", "a b") == 0.5
    assert rouge1_recall("", "x") == 0.0
