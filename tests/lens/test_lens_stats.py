"""The "stats" capture mode equals statistics computed from captured patterns."""

import pytest
import torch

import lens
from attnlens.analyses import row_stats_from_kernel, row_stats_from_pattern
from attnlens.kernels import StatsSpec
from lens.recording.stats import StatsRun, run_stats

PROMPT = "When Mary and John went to the store, John gave a drink to"


def check_against_patterns(lm, layers, atol):
    spec = StatsSpec(sink_tokens=1, window=8, topk=2)
    stats = run_stats(lm, PROMPT, spec=spec, layers=layers)
    cap = lens.run(lm, PROMPT, layers=layers).capture
    for layer in layers:
        pattern = cap.pattern(layer)
        want, got = row_stats_from_pattern(pattern), row_stats_from_kernel(stats.stats[layer], sink_tokens=1)
        torch.testing.assert_close(got.entropy, want.entropy, atol=atol, rtol=0)
        torch.testing.assert_close(got.sink_mass, want.sink_mass, atol=atol, rtol=0)
        torch.testing.assert_close(got.max_weight, want.max_weight, atol=atol, rtol=0)
        n = pattern.shape[-1]
        received = pattern.sum(-2)  # [batch, head, k]
        torch.testing.assert_close(stats.stats[layer].received_sum, received, atol=10 * atol, rtol=0)
        torch.testing.assert_close(stats.stats[layer].received_mean, received / torch.arange(n, 0, -1), atol=atol, rtol=0)
    return stats


def test_stats_mode_matches_patterns_on_tiny(tiny_lm):
    stats = check_against_patterns(tiny_lm, [0, 3], atol=1e-5)
    with torch.no_grad():
        plain = tiny_lm.model(tiny_lm.encode(PROMPT)).logits
    torch.testing.assert_close(stats.logits, plain, atol=1e-5, rtol=0)  # the kernel is the attention


def test_stats_round_trip(tiny_lm, tmp_path):
    run = run_stats(tiny_lm, PROMPT, spec=StatsSpec(spans=((2, 5),), topk=3), layers=[1])
    run.save(tmp_path / "s")
    back = StatsRun.load(tmp_path / "s")
    assert back.spec == run.spec and back.meta.tokens == run.meta.tokens
    for a, b in zip(back.stats[1], run.stats[1], strict=True):
        assert torch.equal(a, b)
    with pytest.raises(lens.OutputExistsError):
        run.save(tmp_path / "s")


def test_stats_layers_are_validated(tiny_lm):
    with pytest.raises(lens.SelectionError, match="layer 7 is out of range"):
        run_stats(tiny_lm, PROMPT, layers=[7])


@pytest.mark.slow
def test_stats_mode_matches_patterns_on_smollm2(smollm2):
    check_against_patterns(smollm2, [3, 15, 29], atol=1e-5)
