"""Fault class 2b (issue 24): writing and reading results folders safely.

Writers never follow links, never write into something they did not create and never lose
the previous output; ``--force`` replaces only lens output; the file system's refusals are one
line. Readers skip FIFOs, sockets and devices (opening a FIFO blocks) and bound JSON depth
before parsing. Commands that could hang run in a subprocess with a timeout, so a regression
fails instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnlens.formats import HeadScores, Provenance, ResultsFolder, open_sweep
from attnlens.formats.errors import (
    CorruptFileError,
    OutputExistsError,
    OutputPathError,
    SelectionError,
)
from attnlens.formats.output import MARKER, holds_lens_output, output_folder

LENS = [sys.executable, "-m", "lens.cli"]
UNEXPECTED = "a bug in attnlens"


def lens_cmd(*args, timeout=120, cwd=None, preexec_fn=None):
    """The real `lens` in a subprocess (a hang fails the test after ``timeout`` seconds)."""
    return subprocess.run([*LENS, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          preexec_fn=preexec_fn)


def one_line_error(p, *words):
    """Exit 2 with one ``error:`` line holding every word (never the unexpected-bug path)."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, p.stderr
    assert UNEXPECTED not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), lines[-1]


def _results(root: Path) -> Path:
    """A results folder written without a model: one head-score map (the report draws a heatmap of it)."""
    HeadScores("sinks", "first_token_mass", np.linspace(0, 1, 16).reshape(4, 4),
               Provenance(model="tiny-llama")).save(root / "scan")
    return root


@pytest.fixture
def results(tmp_path):
    return _results(tmp_path / "results")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- lens report: links, existing figures, atomic replacement --------------------------------
@pytest.mark.parametrize("fmt", ["html", "md"])
def test_report_never_writes_through_a_link_in_the_results_folder(cli, results, tmp_path, fmt):
    target = tmp_path / "elsewhere" / f"victim.{fmt}"
    target.parent.mkdir()
    (results / f"report.{fmt}").symlink_to(target)
    code, _, err = cli("report", results, "--format", fmt)
    assert code == 2 and "is a symbolic link, and reports are never written through links" in err, err
    assert not target.exists()  # the link's target was not created
    target.write_text("precious")
    code, _, err = cli("report", results, "--format", fmt, "--force")
    assert code == 2 and "is a symbolic link" in err, err
    assert target.read_text() == "precious" and (results / f"report.{fmt}").is_symlink()


def test_report_figures_never_go_through_a_report_files_link(cli, results, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (results / "report_files").symlink_to(elsewhere, target_is_directory=True)
    for force in ((), ("--force",)):
        code, _, err = cli("report", results, "--format", "md", *force)
        assert code == 2 and "report_files: it is a symbolic link" in err, err
        assert list(elsewhere.iterdir()) == [] and not (results / "report.md").exists()


def test_md_report_keeps_existing_figures_without_force(cli, results):
    code, _, err = cli("report", results, "--format", "md")
    assert code == 0, err
    figures = results / "report_files"
    pngs = sorted(figures.glob("*.png"))
    assert pngs
    (results / "report.md").unlink()  # only the figures are left: they are still not overwritten
    pngs[0].write_bytes(b"my edited figure")
    code, _, err = cli("report", results, "--format", "md")
    assert code == 2 and "report_files already holds" in err and "pass --force" in err, err
    assert pngs[0].read_bytes() == b"my edited figure" and not (results / "report.md").exists()
    code, _, err = cli("report", results, "--format", "md", "--force")
    assert code == 0, err
    assert pngs[0].read_bytes().startswith(b"\x89PNG") and (results / "report.md").exists()
    assert (figures / MARKER).is_file()  # the figures folder is marked as lens output


def test_md_report_force_does_not_replace_a_figures_folder_with_other_files(cli, results):
    figures = results / "report_files"
    figures.mkdir()
    (figures / "notes.txt").write_text("mine")
    code, _, err = cli("report", results, "--format", "md", "--force")
    assert code == 2 and "it holds 'notes.txt', which a report does not write" in err, err
    assert (figures / "notes.txt").read_text() == "mine" and not (results / "report.md").exists()


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_report_force_cut_by_a_file_size_limit_keeps_the_old_report(results):
    old = os.urandom(1 << 20)  # the old report: 1 MB
    (results / "report.html").write_bytes(old)
    p = lens_cmd("report", results, "--force", preexec_fn=_limit_file_size)
    one_line_error(p, "cannot write the report to", "report.html", "File too large")
    assert (results / "report.html").read_bytes() == old  # not cut to 16 KB: the new one was never renamed in
    assert sorted(x.name for x in results.iterdir()) == ["report.html", "scan"]  # no temporary left behind
    p = lens_cmd("report", results, "--force")
    assert p.returncode == 0, p.stderr
    assert (results / "report.html").read_bytes() != old and len((results / "report.html").read_bytes()) > 16 * 1024


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_report_target_that_is_not_a_file(results, kind):
    target = results / "report.html"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    p = lens_cmd("report", results, "--force", timeout=60)
    one_line_error(p, "cannot write the report to", "a FIFO, not a file" if kind == "fifo" else "it is a folder")


# ---- --force only over lens output; never over a non-folder; names that are not names ------------
def test_force_refuses_a_folder_lens_did_not_write(cli, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('my code')")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main")
    before = _snapshot(project)
    code, _, err = cli("capture", "tiny-llama", "-p", "hi", "--layers", "0", "--out", project, "--force")
    assert code == 2 and "holds files lens did not write: --force replaces only a folder of lens output" in err, err
    assert _snapshot(project) == before and (project / ".git").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no lock, no temporary


def test_force_replaces_lens_output_old_and_new(cli, tmp_path):
    out = tmp_path / "caps"
    code, _, err = cli("capture", "tiny-llama", "-p", "first", "--layers", "0", "--out", out)
    assert code == 0, err
    assert (out / MARKER).read_text().startswith("attnlens output")
    code, _, err = cli("capture", "tiny-llama", "-p", "second", "--layers", "0", "--out", out, "--force")
    assert code == 0, err
    assert "second" in (out / "000" / "capture.json").read_text()
    (out / MARKER).unlink()  # a folder written before the marker existed: recognised by its lens files
    assert holds_lens_output(out)
    code, _, err = cli("capture", "tiny-llama", "-p", "third", "--layers", "0", "--out", out, "--force")
    assert code == 0, err
    assert "third" in (out / "000" / "capture.json").read_text()
    (out / "000" / "notes.py").write_text("mine")  # unmarked, with a foreign file: no longer replaceable
    (out / MARKER).unlink()
    assert not holds_lens_output(out)


def test_force_never_replaces_a_non_folder(cli, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "somewhere", target_is_directory=True)
    (tmp_path / "somewhere").mkdir()
    for out, what in ((a_file, "is a file, not a folder"), (Path("/dev/null"), "is a character device, not a folder"),
                      (link, "is a symbolic link, not a folder")):
        code, _, err = cli("capture", "tiny-llama", "-p", "hi", "--layers", "0", "--out", out, "--force")
        assert code == 2 and what in err and "never replaces anything else, even with --force" in err, err
    assert a_file.read_text() == "precious" and link.is_symlink() and os.path.exists("/dev/null")
    assert Path("/dev/null").is_char_device()
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        with output_folder(a_file, force=True):
            pass


@pytest.mark.parametrize("out", [".", "", "sub/..", "/"])
def test_out_that_is_not_a_folder_name(cli, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "keep.txt").write_text("precious")
    code, _, err = cli("capture", "tiny-llama", "-p", "hi", "--layers", "0", "--out", out, "--force")
    assert code == 2 and "does not end in a folder name" in err and UNEXPECTED not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "sub"]  # no ..new-XXXX folder, no lock
    assert list((tmp_path / "sub").iterdir()) == []
    with pytest.raises(SelectionError, match="does not end in a folder name"):
        with output_folder(Path(out), force=True):
            pass


def test_sweep_force_refuses_a_foreign_folder(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "main.py").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds files lens did not write"):
        open_sweep(other, {"task": "t"}, force=True)
    assert (other / "main.py").read_text() == "mine"
    with open_sweep(tmp_path / "sw", {"task": "t"}) as log:
        log.finish()
    assert (tmp_path / "sw" / MARKER).is_file()
    with open_sweep(tmp_path / "sw", {"task": "t"}, force=True) as log:  # its own output: replaced
        log.finish()


# ---- what the file system refuses: one line ----------------------------------------------
@pytest.fixture
def unwritable(tmp_path):
    """A folder nothing can be created in: mode 555, and immutable when running as root (root ignores modes)."""
    folder = tmp_path / "locked_down"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        (folder / "probe").mkdir()
    except OSError:
        pass
    else:
        (folder / "probe").rmdir()
        pytest.skip("cannot make a folder unwritable here")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_permission_denied_on_out_is_one_line(cli, unwritable):
    for out in (unwritable / "caps", unwritable / "deeper" / "caps"):
        code, _, err = cli("capture", "tiny-llama", "-p", "hi", "--layers", "0", "--out", out)
        assert code == 2 and UNEXPECTED not in err, err
        assert "Permission denied" in err or "Operation not permitted" in err, err
        assert "caps" in err
    assert list(unwritable.iterdir()) == []
    with pytest.raises(OutputPathError, match="cannot take the lock of"):
        with output_folder(unwritable / "caps"):
            pass


def test_a_lock_that_cannot_be_taken_over_is_one_line(cli, tmp_path):
    out = tmp_path / "caps"
    lock = tmp_path / ".caps.lock"
    lock.write_text("999999999")  # a dead writer's lock, which this user may not remove
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(lock)], capture_output=True).returncode != 0:
            pytest.skip("chattr is not available")
    else:
        tmp_path.chmod(0o555)
    try:
        code, _, err = cli("capture", "tiny-llama", "-p", "hi", "--layers", "0", "--out", out)
        assert code == 2 and "cannot take the lock of" in err and ".caps.lock" in err and UNEXPECTED not in err, err
        assert not out.exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(lock)], check=True)
        else:
            tmp_path.chmod(0o755)


def test_names_too_long_for_the_file_system(cli, tmp_path):
    for out, words in ((tmp_path / ("n" * 250), "too long for this file system"),
                       (tmp_path / ("n" * 300), "too long for this file system"),
                       (tmp_path / ("d" * 300) / "caps", "File name too long")):
        code, _, err = cli("capture", "tiny-llama", "-p", "hi", "--layers", "0", "--out", out)
        assert code == 2 and words in err and UNEXPECTED not in err, err
    assert list(tmp_path.iterdir()) == []


def test_read_only_system_location_is_one_line(cli):
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys here")
    code, _, err = cli("capture", "tiny-llama", "-p", "hi", "--layers", "0", "--out", "/sys/kernel/attnlens-out")
    assert code == 2 and UNEXPECTED not in err, err
    assert any(w in err for w in ("Permission denied", "Read-only file system", "Operation not permitted")), err


# ---- reading: special files never opened, depth bounded, damaged tensors named ------------------
def _special_files(root: Path) -> None:
    os.mkfifo(root / "scan" / "x.json")
    os.mkfifo(root / "y.safetensors")
    (root / "cap").mkdir()
    os.mkfifo(root / "cap" / "capture.json")  # a capture folder whose metadata is a FIFO
    (root / "sweep").mkdir()
    (root / "sweep" / "run.json").write_text(json.dumps({"kind": "sweep_log", "format_version": 2,
                                                         "settings": {}, "status": "running"}))
    os.mkfifo(root / "sweep" / "sweep.jsonl")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "z.json"))
    s.close()


_LOAD = "import sys; from attnlens.formats import ResultsFolder; f = ResultsFolder.load(sys.argv[1]); print(dict(f.problems))"


def test_fifos_and_sockets_are_skipped_never_opened(results):
    _special_files(results)
    p = subprocess.run([sys.executable, "-c", _LOAD, str(results)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    problems = eval(p.stdout)  # noqa: S307 (our own repr of a dict of str)
    assert problems["scan/x.json"] == "is a FIFO, not a regular file: not read"
    assert problems["y.safetensors"] == "is a FIFO, not a regular file: not read"
    assert problems["z.json"] == "is a socket, not a regular file: not read"
    assert "is not a regular file (a FIFO): not read" in problems["cap"]
    assert problems["sweep/sweep.jsonl"] == "is a FIFO, not a regular file: not read"
    assert list(ResultsFolder.load(results).results) == ["scan/sinks.first_token_mass"]  # the rest still loads


def test_report_and_dashboard_do_not_hang_on_fifos(results):
    _special_files(results)
    p = lens_cmd("report", results, "--format", "md", timeout=120)
    assert p.returncode == 0, p.stderr
    text = (results / "report.md").read_text()
    assert "is a FIFO, not a regular file: not read" in text and "is a socket" in text
    dash = subprocess.Popen([*LENS, "dashboard", str(results), "--no-show", "--port", "0", "--maps", "pca"],
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in dash.stderr:  # the server starts: the warnings came first, nothing blocked
            seen.append(line)
            if "http://" in line:
                break
        assert any("x.json" in s and "is a FIFO" in s for s in seen), seen
        assert seen and "http://" in seen[-1], seen
    finally:
        dash.kill()
        dash.wait(timeout=30)


def test_a_deep_line_in_a_sweep_log_skips_that_line_only(tmp_path):
    out = tmp_path / "sw"
    settings = {"task": "t"}
    with open_sweep(out, settings) as log:
        log.append([{"item": "L0H0", "effect": 1.0}])
    with open(out / "sweep.jsonl", "a") as f:
        f.write("[" * 50_000 + "]" * 50_000 + "\n")
        f.write(json.dumps({"item": "L0H1", "effect": 2.0}) + "\n")
    folder = ResultsFolder.load(tmp_path)
    assert folder.sweeps["sw"]["done"] == 2 and not folder.problems
    with open_sweep(out, settings) as again:
        assert again.resumed and set(again.done) == {"L0H0", "L0H1"}


def test_a_task_file_nested_100k_deep_is_one_line(cli, tmp_path):
    task = tmp_path / "deep.jsonl"
    task.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    code, _, err = cli("circuit", "tiny-llama", "--task", task, "--strict", "--out", tmp_path / "c")
    assert code == 2 and "deep.jsonl:1: nested deeper than 32 levels" in err and UNEXPECTED not in err, err
    os.remove(task)
    os.mkfifo(task)  # a FIFO given as the task file
    p = lens_cmd("circuit", "tiny-llama", "--task", task, "--out", tmp_path / "c", timeout=120)
    one_line_error(p, "task", "deep.jsonl")  # refused (the CLI's own check or the loader's), never blocked on
    load = "import sys; from attnlens.analyses.circuits.tasks import load_jsonl; load_jsonl(sys.argv[1])"
    p = subprocess.run([sys.executable, "-c", load, str(task)], capture_output=True, text=True, timeout=60)
    assert "TaskError: task file" in p.stderr and "deep.jsonl is not a regular file (a FIFO): not read" in p.stderr


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "deep header"])
def test_damaged_result_tensors_are_a_problem_line(results, damage):
    t = results / "scan" / "sinks.first_token_mass.safetensors"
    data = t.read_bytes()
    header = b"[" * 5000 + b"]" * 5000
    t.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(4096),
                   "deep header": len(header).to_bytes(8, "little") + header}[damage])
    folder = ResultsFolder.load(results)
    assert not folder.results
    why = folder.problems["scan/sinks.first_token_mass.json"]
    assert "sinks.first_token_mass.safetensors" in why
    assert any(w in why for w in ("truncated", "not safetensors", "nested deeper")), why
    p = lens_cmd("report", results)
    assert p.returncode == 0, p.stderr
    assert "sinks.first_token_mass.json" in (results / "report.html").read_text()


def test_a_lone_surrogate_in_a_capture_model_name(results, tmp_path):
    import dataclasses

    import lens
    from attnlens.formats import CaptureFile

    lm = lens.load("tiny-llama")
    cap = lens.run(lm, "a surrogate in the name", layers=[0]).capture
    cap.meta = dataclasses.replace(cap.meta, facts=dataclasses.replace(cap.meta.facts, name="tiny\udcffllama"))
    cap.save(results / "cap")  # writing: JSON escapes it
    assert CaptureFile.load(results / "cap").model == "tiny\udcffllama"  # reading: the same string back
    p = lens_cmd("report", results)  # a document: written with the character escaped, never a UnicodeEncodeError
    assert p.returncode == 0, p.stderr
    assert "tiny\\udcffllama" in (results / "report.html").read_text(encoding="utf-8")


def test_report_refusals_of_the_file_system_are_one_line(cli, results, unwritable, tmp_path):
    code, _, err = cli("report", results, "--out", unwritable / "report.html")
    assert code == 2 and "cannot write the report to" in err and UNEXPECTED not in err, err
    assert "Permission denied" in err or "Operation not permitted" in err, err
    code, _, err = cli("report", results, "--out", tmp_path / ("r" * 300 + ".html"))
    assert code == 2 and "cannot write the report to" in err and "File name too long" in err, err
    code, _, err = cli("report", tmp_path / ("r" * 300))
    assert code == 2 and "cannot be read: File name too long" in err and UNEXPECTED not in err, err
    assert list(unwritable.iterdir()) == []


@pytest.mark.parametrize("doc", [
    {"prompt": "[" * 200 + "{" * 200, "answer": "\\\"[[[[", "corrupted": "]]]] \"}}}"},  # brackets inside strings
    [[[[{"a": [1, {"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}]]], "x" * 100],
    json.loads("[" * 32 + "]" * 32),
])
def test_depth_before_parsing_matches_the_parsed_depth(doc):
    from attnlens.formats import _json

    text = json.dumps(doc)
    assert _json.text_depth(text) == _json.depth(doc)  # each has more than MAX_DEPTH brackets: fully scanned
    assert _json.loads(text, "x") == doc  # accepted: strings full of brackets are not nesting
    if _json.depth(doc) == 32:
        with pytest.raises(CorruptFileError, match="x is nested deeper than 32 levels"):
            _json.loads("[" + text + "]", "x")
