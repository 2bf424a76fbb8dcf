"""Golden behaviour on the embedded SmolLM2-135M (slow tier)."""

import pytest
import torch

from attnlens.analyses.circuits import encode_task, ioi, per_row
from attnlens.analyses.circuits._hooks import CircuitModules, last_logits
from attnlens.analyses.circuits.tasks import colored_objects, greater_than, niah

pytestmark = pytest.mark.slow


def test_ioi_accuracy_is_high(smollm2):
    enc = encode_task(ioi(smollm2.tokenizer, 36, seed=3), smollm2.tokenizer)
    parts = CircuitModules(smollm2)
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


def test_per_head_patching_agrees_with_an_independent_loop(smollm2):
    """Held-out check: the project's per-head patching (prepare + score_sets through lens.edits)
    against a loop written here with its own hooks on the model's modules."""
    import numpy as np

    from attnlens.analyses.circuits import prepare, score_sets
    from lens.heads import HeadRef

    enc = encode_task(ioi(smollm2.tokenizer, 6, seed=5, template=0), smollm2.tokenizer)
    (b,) = enc.batches
    layers = smollm2.model.model.layers
    n_heads, d_head = smollm2.facts.n_heads, smollm2.facts.d_head
    heads = [(la, h) for la in (20, 23) for h in range(n_heads)]

    def logit_diff(ids, hooks=()):
        handles = [layers[la].self_attn.o_proj.register_forward_pre_hook(fn) for la, fn in hooks]
        try:
            with torch.no_grad():
                logits = smollm2.model(input_ids=ids).logits[:, -1].float()
        finally:
            for handle in handles:
                handle.remove()
        rows = torch.arange(ids.shape[0])
        return float((logits[rows, b.answer] - logits[rows, b.distractor]).mean())

    stored = {}

    def keep(la):
        def fn(module, args):
            stored[la] = args[0].detach().clone()
        return fn

    logit_diff(b.corrupted, [(la, keep(la)) for la in (20, 23)])
    clean = logit_diff(b.clean)

    def patch_in(la, h):
        def fn(module, args):
            x = args[0].clone()
            x[..., h * d_head:(h + 1) * d_head] = stored[la][..., h * d_head:(h + 1) * d_head]
            return (x,)
        return fn

    independent = np.array([logit_diff(b.clean, [(la, patch_in(la, h))]) - clean for la, h in heads])
    ctx = prepare(smollm2, enc, "patch", "logit-diff")
    ours = score_sets(ctx, [[HeadRef(la, h)] for la, h in heads]) - ctx.baseline
    assert ctx.baseline == pytest.approx(clean, abs=1e-4)
    np.testing.assert_allclose(ours, independent, atol=2e-3)
    top = lambda v: {heads[i] for i in np.argsort(-np.abs(v))[:5]}  # noqa: E731
    assert top(ours) == top(independent) and (23, 3) in top(ours)
    assert np.abs(independent).max() > 0.5  # IOI heads are among these: the comparison can fail
