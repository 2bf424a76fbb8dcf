"""Golden behaviour on the embedded SmolLM2-135M (slow tier)."""

import pytest
import torch

from analyses.circuits import encode_task, ioi, per_row
from analyses.circuits._hooks import Parts, last_logits
from analyses.circuits.tasks import colored_objects, greater_than, niah

pytestmark = pytest.mark.slow


def test_ioi_accuracy_is_high(smollm2):
    enc = encode_task(ioi(smollm2.tokenizer, 36, seed=3), smollm2.tokenizer)
    parts = Parts(smollm2)
    acc, ld = [], []
    for b in enc.batches:
        logits = last_logits(parts, b.clean)[0]
        acc.append(per_row("acc", logits, b.answer, b.distractor))
        ld.append(per_row("logit-diff", logits, b.answer, b.distractor))
    assert torch.cat(acc).mean() > 0.8
    assert torch.cat(ld).mean() > 1.0


def test_builtin_tasks_encode_for_smollm2(smollm2):
    for build in (colored_objects, greater_than, niah):
        enc = encode_task(build(smollm2.tokenizer, 6, seed=0), smollm2.tokenizer)
        assert enc.n_examples == 6 and not enc.skipped
    assert len(encode_task(niah(smollm2.tokenizer, 6), smollm2.tokenizer).batches) == 1  # one length
