"""The explorer follows the task: a result from a task opens on the rows that matter (the needle
capture's answer rows, with the needle's keys exact), "top key", a click on a token pins the query,
and the pinned query stays while the capture does. On the scan's own needle capture
(tests/dashboards/needle.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlens.dashboards.app import Dashboard
from attnlens.dashboards.compute import window_pattern
from attnlens.formats import (
    CaptureFile,
    CorruptCaptureError,
    ResultsFolder,
    SelectionError,
    set_focus,
)
from tests.dashboards.needle import needle_folder

RETRIEVAL = "scan/retrieval.needle_top_key_share"
NEEDLE = "scan/captures/needle"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ResultsFolder.load(needle_folder(tmp_path_factory))


@pytest.fixture()
def dash(folder):
    return Dashboard(folder, map_method="pca")


def test_the_top_retrieval_head_opens_on_the_answer_row_with_the_needle_exact(dash, folder):
    assert dash.atlas.metric == RETRIEVAL  # the task's score, not summary.sink_mass
    cap = folder.captures[NEEDLE]
    f = cap.focus
    assert f.rows[1] == len(cap.tokens) and f.keys[1] - f.keys[0] > 50 and "needle" in f.why
    scores = folder.results[RETRIEVAL].scores
    layer, head = map(int, np.unravel_index(np.nanargmax(scores), scores.shape))
    dash.selected = (layer, head)
    ex = dash.explorer
    assert (ex.layer, ex.head, ex.capture) == (layer, head, NEEDLE)
    assert f.rows[0] <= ex.query < f.rows[1] and ex.window.q_start <= ex.query < ex.window.q_end
    assert ex.window.q_start > f.keys[1]  # the needle lies before the rows shown ...
    for k in range(f.keys[0], f.keys[1]):  # ... and each of its keys has its own column, not a pooled bin
        j = ex.window.column_of(k)
        assert ex.window.col_ranges[j] == (k, k + 1), k
    rows = cap.pattern(layer, head)[f.rows[0]:f.rows[1]]
    if ((rows.argmax(1) >= f.keys[0]) & (rows.argmax(1) < f.keys[1])).any():  # the top head has such a row
        assert f.keys[0] <= ex.top_key < f.keys[1]
    assert f"task rows {f.rows[0]}-{f.rows[1] - 1}" in ex._message.object
    assert f"top key of query {ex.query}: <b>{ex.top_key}</b>" in ex._top.object


def test_top_key_keeps_a_pooled_key_exact_and_marks_it(dash):
    ex = dash.explorer
    ex.capture = NEEDLE
    ex.param.update(layer=0, head=0)
    ex.window_start, ex.query = 300, 330
    k = ex.top_key
    j = ex.window.column_of(k)
    if ex.window.col_ranges[j] == (k, k + 1):  # make it pooled: pin a row whose top key is pooled
        pooled = [q for q in range(300, 364) if ex.window.col_ranges[ex.window.column_of(
            int(ex._pattern[q].argmax()))][1] - ex.window.col_ranges[ex.window.column_of(int(ex._pattern[q].argmax()))][0] > 1]
        assert pooled, "no row of L0H0 has its top key pooled"
        ex.query = pooled[0]
        k = ex.top_key
    assert "pooled here" in ex._top.object and ex._kmark.data["x"] == []
    ex._jump.clicks += 1  # the "top key" button
    j = ex.window.column_of(k)
    assert ex.window.col_ranges[j] == (k, k + 1) and ex._kmark.data["x"] == [j]
    assert "pooled here" not in ex._top.object


def test_a_token_click_pins_the_query(dash):
    ex = dash.explorer
    ex.capture = NEEDLE
    ex.tokens.query = ex.window.q_start + 2  # what a click on a token sets in the browser
    assert ex.query == ex.window.q_start + 2
    ex.tokens.query = 20  # a token before the rows shown: the rows move to it
    assert ex.query == 20 and ex.window.q_start <= 20 < ex.window.q_end
    ex.capture = NEEDLE  # unchanged: the pin stays
    assert ex.query == 20


def test_on_the_task_rows_each_head_opens_on_its_own_row_and_a_pin_elsewhere_stays(dash, folder):
    cap = folder.captures[NEEDLE]
    f = cap.focus
    ex = dash.explorer
    ex.capture = NEEDLE

    def best(layer, head):  # the row that matters for this head: its top key in the needle, the most mass there
        rows = cap.pattern(layer, head)[f.rows[0]:f.rows[1]]
        top = rows.argmax(1)
        inside = (top >= f.keys[0]) & (top < f.keys[1])
        return f.rows[0] + int(np.argmax(inside * 2.0 + rows[:, f.keys[0]:f.keys[1]].sum(1)))

    heads = [(la, h) for la in cap.layers for h in cap.heads]
    differ = [(a, b) for a in heads for b in heads if best(*a) != best(*b)]
    assert differ, "every head of the needle capture has the same best row"
    a, b = differ[0]
    for want in (a, b, a):  # clicks in the atlas: the query follows each head's own row
        dash.selected = want
        assert (ex.layer, ex.head) == want and ex.query == best(*want), (want, ex.query)
    ex.tokens.query = 20  # pinned by the user outside the task rows: a new head keeps it
    dash.selected = b
    assert ex.query == 20


def test_focus_is_validated_where_written_and_where_read(folder, tmp_path):
    cap = folder.captures[NEEDLE]
    n = len(cap.tokens)
    with pytest.raises(SelectionError, match=rf"focus rows must be a token range \[start, end\) inside 0-{n}, got \(5, {n + 1}\)"):
        set_focus(cap.meta, rows=(5, n + 1))
    with pytest.raises(SelectionError, match=r"focus keys must be a token range .* got \(9, 3\)"):
        set_focus(cap.meta, rows=(0, 2), keys=(9, 3))
    import shutil

    bad = tmp_path / "needle"
    shutil.copytree(cap.path, bad)
    doc = json.loads((bad / "capture.json").read_text())
    doc["meta"]["extra"]["focus"]["rows"] = [3, "end"]
    (bad / "capture.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptCaptureError, match=r"capture.json: focus rows must be a token range .* got \[3, 'end'\]"):
        _ = CaptureFile.load(bad).focus


def test_exact_ranges_keep_their_keys_and_the_rows_still_sum_to_one():
    rng = np.random.default_rng(0)
    p = np.tril(rng.random((300, 300)))
    p /= p.sum(1, keepdims=True)
    w = window_pattern(p, 200, 64, [(40, 60), (150, 151)])
    assert all(w.col_ranges[w.column_of(k)] == (k, k + 1) for k in [*range(40, 60), 150, 0])
    np.testing.assert_allclose(w.values.sum(1), 1.0, rtol=1e-5)
    assert w.values.shape[1] <= 64 + 3 * 16 + 1 + 21
