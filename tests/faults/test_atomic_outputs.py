"""Fault class 2: output folders are validated before anything is touched, written next to the target and
swapped in on success, and locked against concurrent writers; a SIGKILL leaves the previous output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from attnlens.formats.errors import OutputLockedError
from attnlens.formats.output import MARKER, lock_path, locked, mark, output_folder


def _previous(folder):
    """A previous lens output folder (marked as such: --force replaces only lens output)."""
    folder.mkdir(parents=True)
    mark(folder, "test")
    (folder / "keep.txt").write_text("precious")
    return folder


def test_force_with_bad_arguments_deletes_nothing(cli, tmp_path, task_file):
    out = _previous(tmp_path / "out")
    for args in (["circuit", "tiny-llama", "--task", task_file, "--top-n", "0"],
                 ["circuit", "tiny-llama", "--task", "nonsense"],
                 ["capture", "tiny-llama", "--prompt", "hi", "--backend", "nnsight", "--sites", "q"],
                 ["capture", "tiny-llama", "--prompt", "hi", "--layers", "9"],
                 ["stats", "tiny-llama", "--prompt", "hi", "--span", "0:99"]):
        code, _, err = cli(*args, "--out", out, "--force")
        assert code == 2, err
        assert (out / "keep.txt").read_text() == "precious", args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries, no lock left


def test_a_failure_part_way_leaves_the_previous_output(cli, tmp_path, monkeypatch):
    out = _previous(tmp_path / "out")
    import lens

    real, calls = lens.run, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(lens, "run", failing)
    code, _, err = cli("capture", "tiny-llama", "-p", "one", "-p", "two", "--layers", "0", "--out", out, "--force")
    assert code == 1 and "disk on fire" in err
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_replaces_only_on_success(cli, tmp_path):
    out = _previous(tmp_path / "out")
    code, _, err = cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", out, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "000"]


_HOLD = """
import sys, time
from pathlib import Path
from attnlens.formats.output import locked
with locked(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock(path):
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_writer_is_refused_with_one_line(cli, tmp_path, task_file):
    out = _previous(tmp_path / "out")
    holder = _hold_lock(out)
    try:
        code, _, err = cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", out, "--force")
        assert code == 2 and f"is being written by another lens command (PID {holder.pid})" in err
        code, _, err = cli("ablate", "tiny-llama", "--task", task_file, "--sweep", "heads", "--out", tmp_path / "sw")
        assert code == 0, err  # another folder is not affected
        sweep_holder = _hold_lock(tmp_path / "sw")
        try:
            code, _, err = cli("ablate", "tiny-llama", "--task", task_file, "--sweep", "heads", "--out",
                               tmp_path / "sw", "--force")
            assert code == 2 and "is being written by another lens command" in err
        finally:
            sweep_holder.kill()
            sweep_holder.wait()
    finally:
        holder.kill()
        holder.wait()
    assert (out / "keep.txt").read_text() == "precious"
    code, _, err = cli("capture", "tiny-llama", "--prompt", "hi", "--layers", "0", "--out", out, "--force")
    assert code == 0, err  # the dead holder's lock is stale: taken over


_KILLED = """
import os, signal, sys
from pathlib import Path
from attnlens.formats.output import output_folder
with output_folder(Path(sys.argv[1]), force=True) as tmp:
    (tmp / "half.txt").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_during_a_forced_run_leaves_the_previous_output(tmp_path):
    out = _previous(tmp_path / "out")
    p = subprocess.run([sys.executable, "-c", _KILLED, str(out)])
    assert p.returncode == -signal.SIGKILL
    assert (out / "keep.txt").read_text() == "precious" and not (out / "half.txt").exists()
    assert lock_path(out).exists()  # the killed writer's lock and temporary folder stay behind...
    with output_folder(out, force=True) as tmp:  # ...until the next writer: stale lock taken, temporary removed
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "new.txt").exists()


def test_a_swap_killed_half_way_is_recovered(tmp_path):
    out = tmp_path / "out"
    old = _previous(tmp_path / f".out.old-{os.getpid() + 1}")  # killed after moving the old folder aside
    assert not out.exists() and old.exists()
    with locked(out):
        pass
    assert (out / "keep.txt").read_text() == "precious" and not old.exists()


def test_lock_of_a_live_process(tmp_path):
    out = tmp_path / "x"
    holder = _hold_lock(out)
    try:
        with pytest.raises(OutputLockedError, match=str(holder.pid)):
            with locked(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    with locked(out):
        assert lock_path(out).read_text() == str(os.getpid())


def test_two_processes_racing_for_one_folder(tmp_path):
    """Two real `lens capture --force` processes on one folder at once: one writes, the other is refused
    (or, if the first already finished, writes after it); the result is one complete capture set."""
    out = _previous(tmp_path / "out")
    cmd = [sys.executable, "-m", "lens.cli", "capture", "tiny-llama", "-p", "racing writers", "--layers", "0",
           "--out", str(out), "--force"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert any("is being written by another lens command" in e for _, e in results)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_a_results_folder_gets_the_permissions_of_a_plain_mkdir(tmp_path, mask):
    old = os.umask(mask)
    try:
        with output_folder(tmp_path / "out") as tmp:
            (tmp / "a.json").write_text("{}")
        os.mkdir(tmp_path / "plain")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask == (tmp_path / "plain").stat().st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_written_atomically_get_the_permissions_of_a_plain_open(tmp_path, mask):
    """Results, captures and reports are staged in temporary files (private 0600) and renamed in: they must end up
    with the mode a plain open gives (group-readable under umask 022), not 0600."""
    from attnlens.formats._json import write_bytes

    old = os.umask(mask)
    try:
        with output_folder(tmp_path / "out") as tmp:
            write_bytes(tmp / "a.json", b"{}")
        (tmp_path / "plain.txt").write_text("")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask \
        == (tmp_path / "plain.txt").stat().st_mode & 0o777
