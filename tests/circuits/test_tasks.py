import json

import pytest
import torch

from attnlens.analyses.circuits import (
    Example,
    Task,
    TaskError,
    encode_task,
    ioi,
    load_jsonl,
    load_task,
)
from attnlens.analyses.circuits.metrics import Metric, per_row


def _write(tmp_path, lines):
    p = tmp_path / "mine.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"prompt": "ab", "answer": "c", "corrupted": "xb", "distractor": "d"})


def test_jsonl_bad_lines_are_named_and_skipped(tmp_path):
    p = _write(tmp_path, [GOOD, "{not json", json.dumps({"prompt": "ab", "answer": "c"}), "", "# comment",
                          json.dumps(["a"]), json.dumps({"prompt": "ab", "answer": 3, "counterfactual": "x"}), GOOD])
    task = load_jsonl(p)
    assert len(task.examples) == 2 and task.examples[1].source == "mine.jsonl:8"
    assert [s.split(":")[1] for s in task.skipped] == ["2", "3", "6", "7"]
    assert "missing 'corrupted'" in task.skipped[1]
    assert "not valid JSON" in task.skipped[0]


def test_jsonl_strict_raises_on_the_first_bad_line(tmp_path):
    p = _write(tmp_path, [GOOD, "{not json"])
    with pytest.raises(TaskError, match="mine.jsonl:2: not valid JSON"):
        load_jsonl(p, strict=True)


def test_jsonl_without_good_lines(tmp_path):
    with pytest.raises(TaskError, match="has no usable lines"):
        load_jsonl(_write(tmp_path, ["{bad"]))


def test_multi_token_answer_is_named(tiny_lm):
    task = Task("t", [Example("ab", "cd", "xb", "e", source="mine.jsonl:4")])
    with pytest.raises(TaskError, match=r"mine.jsonl:4: answer 'cd' is 2 tokens .* answers must be single tokens"):
        encode_task(task, tiny_lm.tokenizer)
    task.examples.append(Example("ab", "c", "xb", "e"))
    enc = encode_task(task, tiny_lm.tokenizer, skip_bad=True)
    assert enc.n_examples == 1 and "answer 'cd' is 2 tokens" in enc.skipped[0]


def test_length_mismatch_is_an_error(tiny_lm):
    with pytest.raises(TaskError, match="same token length"):
        encode_task(Task("t", [Example("ab", "c", "xyz", "e")]), tiny_lm.tokenizer)


def test_batches_have_equal_lengths(tiny_lm):
    exs = [Example("ab", "c", "xb", "e"), Example("abc", "c", "xbc", "e"), Example("zz", "c", "yy", "e")]
    enc = encode_task(Task("t", exs), tiny_lm.tokenizer, max_batch=8)
    assert sorted(b.clean.shape for b in enc.batches) == [(2, 3), (1, 4)][::-1] or len(enc.batches) == 2
    for b in enc.batches:
        assert b.clean.shape == b.corrupted.shape and b.answer.shape == (b.size,)


def test_ioi_orders_and_abc_corruption():
    task = ioi(None, 20, seed=1)  # 5 default templates x 4 prompts
    abba = [e for e in task.examples if "ABBA" in e.source]
    baba = [e for e in task.examples if "BABA" in e.source]
    assert len(abba) == len(baba) == 10
    for e in task.examples:
        io, s = e.answer.strip(), e.distractor.strip()
        assert e.prompt.count(s) == 2 and e.prompt.count(io) == 1
        assert io not in e.corrupted.split() and s not in e.corrupted.replace(",", " ").split()
    e = abba[0]
    assert e.prompt.index(e.answer.strip()) < e.prompt.index(e.distractor.strip())


def test_unknown_task_names_the_choices():
    with pytest.raises(TaskError, match="unknown task 'iio': use one of ioi, colored-objects"):
        load_task("iio")


def test_metrics():
    logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 1.0]])
    a, d = torch.tensor([1, 2]), torch.tensor([0, 0])
    assert per_row(Metric.LOGIT_DIFF, logits, a, d).tolist() == [2.0, -1.0]
    assert per_row(Metric.ACC, logits, a, d).tolist() == [1.0, 0.0]
    assert torch.allclose(per_row(Metric.LOSS, logits, a, d), -torch.log(per_row(Metric.PROB, logits, a, d)))
    with pytest.raises(TaskError, match="logit-diff needs a distractor"):
        per_row(Metric.LOGIT_DIFF, logits, a, torch.tensor([-1, 0]))


def test_ioi_templates_draw_their_own_names():
    one = [(e.answer, e.distractor) for e in ioi(None, 6, seed=0, template=0).examples]
    two = [(e.answer, e.distractor) for e in ioi(None, 6, seed=0, template=1).examples]
    assert one != two  # not the same name draws under every template
    assert one == [(e.answer, e.distractor) for e in ioi(None, 6, seed=0, template=0).examples]  # seeded
    mixed = ioi(None, 10, seed=0)
    assert [(e.answer, e.distractor) for e in mixed.examples if e.group == "template 0"] == one[:2]
    assert {e.group for e in mixed.examples} == {f"template {k}" for k in range(5)}


def test_ioi_weak_template_left_out_with_its_reason():
    from attnlens.analyses.circuits.tasks import IOI_DEFAULT_TEMPLATES, IOI_WEAK_TEMPLATES

    task = ioi(None, 12)
    assert 5 not in IOI_DEFAULT_TEMPLATES and 5 in IOI_WEAK_TEMPLATES
    assert all("Friends" not in e.prompt for e in task.examples)
    assert task.notes and "template 5 left out" in task.notes[0] and "logit diff" in task.notes[0]
    assert not ioi(None, 3, template=5).notes and "Friends" in ioi(None, 3, template=5).examples[0].prompt
    with pytest.raises(TaskError, match="`template` 6 is out of range: IOI has templates 0-5"):
        ioi(None, 3, template=6)


def test_batches_hold_one_template(tiny_lm):
    exs = [Example("ab", "c", "xb", "e", group="t0"), Example("ab", "c", "yb", "e", group="t1"),
           Example("cd", "c", "zd", "e", group="t0")]
    enc = encode_task(Task("t", exs, notes=["n"]), tiny_lm.tokenizer, max_batch=8)
    assert sorted((b.group, b.size) for b in enc.batches) == [("t0", 2), ("t1", 1)]
    assert enc.notes == ["n"] and enc.batches[0].position_class == (enc.batches[0].group, 3)
