"""Sweeps and scans on a local Ray cluster that this module starts (2 CPUs) and stops.

- the same head-ablation sweep and the same scan give identical numbers serially and on Ray;
- a Ray worker killed (SIGKILL) mid-sweep is restarted by Ray and its chunk redone: every item
  is logged once, nothing logged is recomputed, the numbers are the serial ones;
- a worker killed with no restarts left stops the sweep with one line; rerunning resumes it
  without recomputing anything that was logged;
- ``--ray`` through the real CLI; and without Ray installed, a one-line error naming the extra.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from attnlens.analyses.circuits import Example, Task, encode_task
from attnlens.pipelines import sweeps

SETTINGS = {"model": "tiny-llama", "task": "pairs", "method": "mean"}
EXAMPLES = [Example(f"{a}b{c} {a}x", "q", f"{d}b{c} {a}x", "z") for a, c, d in zip("abcdefgh", "hgfedcba", "mnopqrst")]


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU local cluster for this module; shut down also when a test fails."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    # workers import this module's fault-injecting scorers by value (the test module is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_cluster):
    """Two workers that each load tiny-llama once and serve every test that shares them (half a CPU
    each, so that a second pool of two fits next to them on the 2-CPU cluster)."""
    from attnlens.pipelines.executors import ModelSpec, RayExecutor, RayOptions

    with RayExecutor(ModelSpec("tiny-llama"), RayOptions(workers=2, cpus_per_worker=0.5, max_restarts=1)) as ex:
        yield ex


@pytest.fixture(scope="module")
def enc(tiny_lm):
    return encode_task(Task("pairs", EXAMPLES), tiny_lm.tokenizer, max_batch=4)


def _sweep(lm, enc, out, **kw):
    return sweeps.sweep(lm, enc, sweeps.SweepKind.HEADS, out=out, settings=SETTINGS, method="mean",
                        metric="logit-diff", components=(), max_rows=8, **kw)  # 2 heads per chunk: 8 chunks


@pytest.fixture(scope="module")
def serial(tiny_lm, enc, tmp_path_factory):
    """The reference: the same sweep in this process."""
    out = _sweep(tiny_lm, enc, tmp_path_factory.mktemp("serial") / "sweep")
    return {r["item"]: r for r in map(json.loads, (out.folder / "sweep.jsonl").read_text().splitlines())}, out


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "sweep.jsonl").read_text().splitlines()]


class Scorer:
    """``score_sets`` that writes which items it computed to ``record`` and, when ``kill_at`` is
    set, SIGKILLs its own worker at its ``kill_at``-th call (once per sweep: the first process to
    create ``marker`` does it, after noting in it what the sweep log held at that moment)."""

    def __init__(self, record: Path, log: Path | None = None, marker: Path | None = None, kill_at: int = 0):
        self.record, self.log, self.marker, self.kill_at, self.calls = record, log, marker, kill_at, 0

    def __call__(self, ctx, sets, **kw):
        import attnlens.analyses.circuits as circuits

        self.calls += 1
        if self.kill_at and self.calls >= self.kill_at:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                logged = [json.loads(x)["item"] for x in self.log.read_text().splitlines()] if self.log.exists() else []
                os.write(fd, json.dumps(logged).encode())
                os.close(fd)
                with open(self.record, "a") as f:
                    f.write("KILL\n")
                os.kill(os.getpid(), signal.SIGKILL)
        values = circuits.score_sets(ctx, sets, **kw)
        with open(self.record, "a") as f:
            f.write("".join(f"{s[0]}\n" for s in sets))
        return values


def _after_kill(record: Path) -> list[str]:
    lines = record.read_text().splitlines()
    return lines[lines.index("KILL") + 1:]


def test_head_sweep_on_ray_equals_serial(tiny_lm, enc, executor, serial, tmp_path):
    ref, ref_out = serial
    out = _sweep(tiny_lm, enc, tmp_path / "sweep", executor=executor)
    rows = _log(out.folder)
    assert len(rows) == len(ref) == 16 and {r["item"] for r in rows} == set(ref)
    for r in rows:  # the same numbers, bit for bit
        assert r["metric"] == ref[r["item"]]["metric"] and r["effect"] == ref[r["item"]]["effect"]
    assert np.array_equal(out.result.scores, ref_out.result.scores)
    assert out.result.summary["baseline"] == ref_out.result.summary["baseline"]
    assert out.result.summary["executor"].startswith("Ray") and out.computed == 16


def test_worker_killed_mid_sweep_is_restarted_and_loses_nothing(tiny_lm, enc, executor, serial, tmp_path):
    ref, _ = serial
    folder, record, marker = tmp_path / "sweep", tmp_path / "computed.txt", tmp_path / "killed.json"
    out = _sweep(tiny_lm, enc, folder, executor=executor,
                 score=Scorer(record, folder / "sweep.jsonl", marker, kill_at=2))
    assert marker.exists(), "no worker was killed"
    rows = _log(out.folder)
    assert sorted(r["item"] for r in rows) == sorted(ref)  # every item logged, each once
    assert all(r["metric"] == ref[r["item"]]["metric"] for r in rows)
    computed = [x for x in record.read_text().splitlines() if x != "KILL"]
    assert sorted(computed) == sorted(ref)  # the killed chunk was computed once, after the restart; nothing twice
    logged_before_kill = set(json.loads(marker.read_text()))
    assert not logged_before_kill & set(_after_kill(record))


def test_worker_lost_for_good_stops_and_the_rerun_resumes(tiny_lm, enc, ray_cluster, serial, tmp_path):
    from attnlens.pipelines.executors import DistributedError, ModelSpec, RayExecutor, RayOptions

    ref, _ = serial
    folder, record, marker = tmp_path / "sweep", tmp_path / "computed.txt", tmp_path / "killed.json"
    with RayExecutor(ModelSpec("tiny-llama"), RayOptions(workers=2, cpus_per_worker=0.5, max_restarts=0)) as ex:
        with pytest.raises(DistributedError, match="rerun the same command to resume") as err:
            _sweep(tiny_lm, enc, folder, executor=ex, score=Scorer(record, folder / "sweep.jsonl", marker, kill_at=3))
    assert "\n" not in str(err.value)
    logged = [r["item"] for r in _log(folder)]
    assert 0 < len(logged) < 16 and len(set(logged)) == len(logged)
    assert not (folder.parent / ".sweep.lock").exists() and json.loads((folder / "run.json").read_text())["status"] == "running"
    record_before = record.read_text()
    resumed = _sweep(tiny_lm, enc, folder, executor=None, score=Scorer(record))  # resumed here, serially
    redone = record.read_text()[len(record_before):].split()
    assert resumed.resumed_from == len(logged) and resumed.computed == 16 - len(logged)
    assert sorted(redone) == sorted(set(ref) - set(logged))  # only what was not logged
    rows = _log(resumed.folder)
    assert sorted(r["item"] for r in rows) == sorted(ref) and all(r["metric"] == ref[r["item"]]["metric"] for r in rows)


def test_scan_on_ray_equals_serial(tiny_lm, executor):
    from attnlens.pipelines.scan import ScanSettings, scan

    settings = ScanSettings(lengths=(256,), depths=(0.25, 0.75), chat=False, captures=1)
    a = scan(tiny_lm, settings)
    b = scan(tiny_lm, settings, executor=executor)
    assert [r.name for r in a.results] == [r.name for r in b.results] and len(a.results) >= 8
    for x, y in zip(a.results, b.results):
        ax, bx = (x.scores, y.scores) if hasattr(x, "scores") else (np.asarray(list(x.series.values())),
                                                                     np.asarray(list(y.series.values())))
        assert np.array_equal(ax, bx, equal_nan=True), x.name
    assert a.notes == b.notes and any("retrieval skipped" in n for n in a.notes)
    assert [e.name for e in a.examples] == [e.name for e in b.examples]
    for ea, eb in zip(a.examples, b.examples):
        assert all(np.array_equal(ea.capture.steps[0][k].numpy(), eb.capture.steps[0][k].numpy())
                   for k in ea.capture.steps[0])


def test_patching_loop_and_retrieval_trials_on_ray_equal_serial(tiny_lm, enc, executor):
    from attnlens.analyses.circuits import Metric
    from attnlens.analyses.decode import decode_trials
    from attnlens.pipelines import heads
    from attnlens.pipelines.circuits import CircuitMethod, find_circuit
    from attnlens.pipelines.executors import CALLS, call

    a = find_circuit(tiny_lm, enc, CircuitMethod.PATCHING, Metric.LOGIT_DIFF, max_rows=8)
    b = find_circuit(tiny_lm, enc, CircuitMethod.PATCHING, Metric.LOGIT_DIFF, max_rows=8, executor=executor)
    assert np.array_equal(a.head_scores, b.head_scores) and np.array_equal(a.mlp_scores, b.mlp_scores)
    assert a.circuit.nodes == b.circuit.nodes
    trials = heads.niah_trials(tiny_lm, lengths=[256], depths=[0.25, 0.75], seeds=[0, 1], chat=False)
    here = decode_trials(tiny_lm, trials, max_new_tokens=6)
    there = [t for one in executor.map_ordered(CALLS, [call(decode_trials, [t], max_new_tokens=6) for t in trials])
             for t in one]
    assert len(there) == 4 and [t.answer for t in here] == [t.answer for t in there]
    assert all(x.generated.equal(y.generated) and x.top1.equal(y.top1) for x, y in zip(here, there))


def test_cli_sweep_resumes_on_ray(cli, ray_cluster, tmp_path):
    """A sweep started in this process and interrupted resumes on Ray through `lens ablate --ray`."""
    task = tmp_path / "pairs.jsonl"
    task.write_text("\n".join(json.dumps({"prompt": e.prompt, "answer": e.answer, "corrupted": e.corrupted,
                                          "distractor": e.distractor}) for e in EXAMPLES[:4]) + "\n")
    out = tmp_path / "sweep"
    args = ["ablate", "tiny-llama", "--task", task, "--sweep", "layers", "--method", "zero", "--out", out]
    code, _, err = cli(*args, "--json")
    assert code == 0, err
    full = {r["item"]: r for r in _log(out)}
    lines = (out / "sweep.jsonl").read_text().splitlines(keepends=True)
    (out / "sweep.jsonl").write_text("".join(lines[:3]))  # as if it had been killed after three items
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "status": "running"}))
    code, stdout, err = cli(*args, "--ray", "auto", "--workers", "2", "--cpus-per-worker", "0.5", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["done_before_this_run"] == 3 and doc["computed_this_run"] == 5 and doc["executor"].startswith("Ray")
    assert all(r["metric"] == full[r["item"]]["metric"] for r in _log(out)) and len(_log(out)) == 8


def test_cli_circuit_patching_on_ray(cli, ray_cluster, tmp_path):
    from attnlens.formats import Circuit

    task = tmp_path / "pairs.jsonl"
    task.write_text("\n".join(json.dumps({"prompt": e.prompt, "answer": e.answer, "corrupted": e.corrupted,
                                          "distractor": e.distractor}) for e in EXAMPLES[:4]) + "\n")
    base = ["circuit", "tiny-llama", "--task", task, "--method", "patching", "--top-n", "5", "--max-rows", "8"]
    code, _, err = cli(*base, "--out", tmp_path / "serial")
    assert code == 0, err
    code, _, err = cli(*base, "--ray", "auto", "--workers", "1", "--cpus-per-worker", "0.5", "--out", tmp_path / "ray")
    assert code == 0, err
    a, b = (Circuit.load(tmp_path / n / "pairs_patching.circuit.json") for n in ("serial", "ray"))
    assert a.heads == b.heads and a.mlps == b.mlps and a.details["mlp_scores"] == b.details["mlp_scores"]
    assert a.faithfulness == b.faithfulness
    code, _, err = cli("circuit", "tiny-llama", "--task", task, "--method", "eap", "--ray", "auto",
                       "--out", tmp_path / "eap")
    assert code == 2 and "--ray runs the per-component patching loop" in err


def test_ray_options_without_ray_are_refused(cli, tmp_path):
    code, _, err = cli("scan", "tiny-llama", "--workers", "3", "--out", tmp_path / "s")
    assert code == 2 and "--workers apply to Ray runs: add --ray auto" in err
    code, _, err = cli("ablate", "tiny-llama", "--heads", "L0H0", "--ray", "auto", "--out", tmp_path / "a")
    assert code == 2 and "--ray runs the items of a --sweep" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "a").exists()


def test_ray_not_installed_is_one_line(cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    for args in (["ablate", "tiny-llama", "--sweep", "heads", "--ray", "auto"], ["scan", "tiny-llama", "--ray", "auto"],
                 ["heads", "retrieval", "tiny-llama", "--no-chat", "--ray", "auto"]):
        code, _, err = cli(*args, "--out", tmp_path / "x")
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1, (args, err)
        assert lines[0] == "error: --ray needs Ray, which is not installed: pip install 'attnlens[distributed]'"
    assert not (tmp_path / "x").exists()
