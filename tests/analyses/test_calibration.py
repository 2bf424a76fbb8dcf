"""ACT calibration: hand-built patterns, and the modifier inside a tiny model."""

import numpy as np
import pytest
import torch

import lens
from attnlens.analyses.calibration import (
    ActCalibration,
    CalibrationError,
    Columns,
    calibrate,
    random_columns,
    received_mean,
    select_heads,
    sink_columns,
)
from lens.attention import attention_mode


def pattern_with_sinks(n=12):
    """One head: every query puts 0.5 on key 0, 0.3 on key 3 (once visible), the rest spread evenly."""
    p = torch.zeros(n, n)
    for i in range(n):
        if i == 0:
            p[0, 0] = 1.0
            continue
        mass = {0: 0.5}
        if i >= 3:
            mass[3] = 0.3
        others = [j for j in range(i + 1) if j not in mass]
        left = 1.0 - sum(mass.values())
        for j in others:
            p[i, j] = left / len(others)
        for j, m in mass.items():
            p[i, j] = m if others else m + left
    return p[None, None]


def test_sink_columns_keep_the_first_sink():
    p = pattern_with_sinks()
    s = received_mean(p)[0, 0]
    assert s[0] > 0.5 and s[3] > 0.1
    cols = sink_columns(p)[0, 0]
    assert cols[3] and not cols[0]
    assert sink_columns(p, keep_first=False)[0, 0, 0]


def test_calibrate_scales_sinks_and_keeps_rows_normalised():
    p = pattern_with_sinks()
    cols = sink_columns(p)
    q = calibrate(p, cols, beta=0.4)
    torch.testing.assert_close(q.sum(-1), torch.ones(1, 1, 12))
    torch.testing.assert_close(q[0, 0, 5:, 3], 0.4 * p[0, 0, 5:, 3])
    # the freed mass goes to the keys that are not calibrated, in proportion to their attention
    i = 7
    rest = [j for j in range(i + 1) if not cols[0, 0, j]]
    assert 0 in rest and 3 not in rest and len(rest) >= 3
    ratio_before = p[0, 0, i, rest] / p[0, 0, i, rest].sum()
    ratio_after = q[0, 0, i, rest] / q[0, 0, i, rest].sum()
    torch.testing.assert_close(ratio_before, ratio_after)
    torch.testing.assert_close(calibrate(p, cols, beta=1.0), p)
    only = torch.zeros(1, 1, 2, 2)
    only[0, 0, :, 1] = 1.0  # rows whose whole mass is on a selected column cannot give it away
    torch.testing.assert_close(calibrate(only, torch.tensor([[[False, True]]])), only)
    with pytest.raises(CalibrationError, match="beta must be in"):
        calibrate(p, cols, beta=1.5)


def test_random_columns_match_counts_and_avoid_sinks():
    p = pattern_with_sinks().repeat(3, 2, 1, 1)
    cols = sink_columns(p)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    r = random_columns(cols, g1)
    assert torch.equal(r.sum(-1), cols.sum(-1)) and not (r & cols).any() and not r[..., 0].any()
    assert torch.equal(r, random_columns(cols, g2))


def test_received_mean_needs_the_prefill():
    with pytest.raises(CalibrationError, match=r"q == k\), got q=1, k=5"):
        received_mean(torch.rand(1, 2, 1, 5))


def test_select_heads():
    eff = np.array([[0.5, -0.1, np.nan], [0.2, 0.3, 0.0]])
    assert select_heads(eff) == {0: [0], 1: [0, 1]}
    assert select_heads(eff, top_k=2) == {0: [0], 1: [1]}
    assert select_heads(eff, first_layer=1, min_gain=0.25) == {1: [1]}


def test_modifier_inside_the_model(tiny_lm):
    ids = torch.tensor([[1, 5, 9, 20, 7, 3, 30, 11, 2, 8, 4, 6]])
    plain = lens.run(tiny_lm, ids, sites=[lens.Site.PATTERN]).capture
    act = ActCalibration({1: [0, 2]}, threshold=0.1)
    with attention_mode(tiny_lm, act):
        run = lens.run(tiny_lm, ids, sites=[lens.Site.PATTERN])
    got = run.capture
    torch.testing.assert_close(got.pattern(0), plain.pattern(0))  # layers before are untouched
    before = plain.pattern(1)[:, [0, 2]].float()
    expected = calibrate(before, sink_columns(before))
    torch.testing.assert_close(got.pattern(1)[:, [0, 2]].float(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.pattern(1)[:, [1, 3]], plain.pattern(1)[:, [1, 3]])
    assert act.counts.get(1, 0) > 0  # something was calibrated: the check above can fail
    with attention_mode(tiny_lm, ActCalibration({1: [0]}, beta=1.0)):
        same = lens.run(tiny_lm, ids).logits
    torch.testing.assert_close(same, lens.run(tiny_lm, ids).logits)


def test_groups_equal_separate_runs(tiny_lm):
    ids = torch.tensor([[1, 5, 9, 20, 7, 3, 30, 11, 2, 8], [4, 6, 2, 9, 9, 1, 5, 7, 3, 2]])
    sels = [{1: [0]}, {2: [1, 3]}, {}]
    with attention_mode(tiny_lm, ActCalibration(groups=sels)):
        together = tiny_lm.model(input_ids=ids.repeat(3, 1)).logits[:, -1]
    for g, sel in enumerate(sels):
        entry = ActCalibration(sel) if sel else ActCalibration({0: []})
        with attention_mode(tiny_lm, entry):
            alone = tiny_lm.model(input_ids=ids).logits[:, -1]
        torch.testing.assert_close(together[2 * g:2 * g + 2], alone, atol=1e-5, rtol=1e-5)


def test_random_control_is_seeded_and_differs(tiny_lm):
    ids = torch.tensor([[1, 5, 9, 20, 7, 3, 30, 11, 2, 8, 4, 6, 12, 13]])
    outs = []
    for seed in (0, 0, 1):
        with attention_mode(tiny_lm, ActCalibration({1: [0, 1, 2, 3], 2: [0, 1]}, columns=Columns.RANDOM, seed=seed)):
            outs.append(tiny_lm.model(input_ids=ids).logits[:, -1])
    torch.testing.assert_close(outs[0], outs[1])
    with attention_mode(tiny_lm, ActCalibration({1: [0, 1, 2, 3], 2: [0, 1]})):
        act = tiny_lm.model(input_ids=ids).logits[:, -1]
    assert not torch.allclose(outs[0], act)
    with pytest.raises(CalibrationError, match="give heads"):
        ActCalibration()


def test_calibration_pipeline_and_cli(tiny_lm, cli, tmp_path):
    import json

    from attnlens.analyses.circuits import Example, Task, encode_task
    from attnlens.formats import Curves
    from attnlens.pipelines.calibration import run_calibration

    exs = [Example(f"{a}b{c}de {a}x", "q", f"{d}b{c}de {a}x", "z") for a, c, d in zip("abcdefgh", "hgfedcba", "mnopqrst")]
    enc = encode_task(Task("tiny", exs), tiny_lm.tokenizer, max_batch=4)
    curves, search = run_calibration(tiny_lm, enc, task_name="tiny", search_enc=enc, first_layer=1, seeds=[0, 1])
    assert curves.x_ticks[1].startswith("ACT") and curves.series["accuracy"].shape == (2, 3)
    assert np.isnan(search.scores[0]).all() and np.isfinite(search.scores[1:]).all()  # layer 0 not tried
    assert curves.params["head_choice"].startswith("ACT head search")
    chosen = {int(k): v for k, v in curves.params["heads"].items()}
    assert all(search.scores[la, h] > 0 for la, hs in chosen.items() for h in hs)
    # "all": every head of layers >= 1, and the random control scales as many columns as ACT
    allc, none = run_calibration(tiny_lm, enc, task_name="tiny", first_layer=1, seeds=[0])
    assert none is None and allc.summary["n_heads_calibrated"] == 12
    assert allc.summary["random_columns_scaled_seed0"] <= allc.summary["act_columns_scaled"]
    assert allc.summary["act_columns_scaled"] > 0
    task_file = tmp_path / "t.jsonl"
    task_file.write_text("\n".join(json.dumps({"prompt": e.prompt, "answer": e.answer, "corrupted": e.corrupted,
                                                "distractor": e.distractor}) for e in exs))
    code, stdout, err = cli("heads", "calibration", "tiny-llama", "--task", task_file, "--heads", "L1H*,L2H0",
                            "--seeds", "0", "--out", tmp_path / "act", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["summary"]["n_heads_calibrated"] == 5 and doc["params"]["head_choice"] == "given"
    assert Curves.load(tmp_path / "act" / "calibration.t_act.curves.json").summary["n_examples"] == 8
    assert not list((tmp_path / "act").glob("*head_search*"))
    code, _, err = cli("heads", "calibration", "tiny-llama", "--task", task_file, "--first-layer", "9",
                       "--out", tmp_path / "never")
    assert code == 2 and "--first-layer 9 is out of range: tiny-llama has layers 0-3" in err
