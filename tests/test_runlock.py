"""One writer per run directory (issue 27 item 5): `bnas search|train` into, or `--resume`/`--overwrite` of, a run
that a live process holds is refused in one sentence naming that process; a lock left by a killed process
(its pid gone, or its heartbeat stale on another host) does not block a later resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnas.cli import main
from bnas.runs import LOCK_FILE, RunDir, RunLock, RunLocked

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["search", "--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8", "--init-channels", "4",
        "--epochs", "1", "--eval-every", "0", "--device", "cpu", "--quiet"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
HOLD = (
    "import sys, time; from bnas.runs import RunLock; RunLock(sys.argv[1], command='bnas search --out X').acquire();"
    "print('held', flush=True); time.sleep(120)"
)


def _holder(run: Path) -> subprocess.Popen:
    """Another process that holds the run directory (as a running `bnas search` does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_by_name_and_a_killed_ones_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    assert not (out / LOCK_FILE).exists()  # the finished run gave its directory back
    capsys.readouterr()
    checkpoint = (out / "checkpoint.pt").read_bytes()

    proc = _holder(out)
    try:
        who = f"being written by process {proc.pid} on {socket.gethostname()} (bnas search --out X)"
        train = [
            "train",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "16",
            "--batch-size",
            "8",
            "--init-channels",
            "4",
            "--layers",
            "2",
            "--enhance-cells",
            "1",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ]
        for argv in (["search", "--resume", str(out), "--quiet"], [*ARGS, "--out", str(out), "--overwrite"],
                     [*ARGS, "--out", str(out)], [*train, "--out", str(out), "--overwrite"]):  # fmt: skip
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert who in err and err.count("\n") == 1, err
        assert (out / "checkpoint.pt").read_bytes() == checkpoint  # --overwrite removed nothing
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid

        os.kill(proc.pid, signal.SIGKILL)  # kill -9: its lock stays behind (and it is a zombie until reaped)
        deadline = time.monotonic() + 10
        while RunLock(out).alive(*RunLock(out).holder()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (out / LOCK_FILE).exists()
        assert main(["search", "--resume", str(out), "--quiet"]) == 0  # taken over
    finally:
        proc.kill()
        proc.wait()
    assert [r["epoch"] for r in RunDir(out).metrics("epoch")] == [1]
    assert not (out / LOCK_FILE).exists()


def _lock_of(run: Path, host: str, age_s: float, pid: int = 12345) -> None:
    run.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": host, "command": "bnas train", "started": time.time() - age_s, "token": "t0"}
    (run / LOCK_FILE).write_text(json.dumps(info))
    os.utime(run / LOCK_FILE, (time.time() - age_s, time.time() - age_s))


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path):
    _lock_of(tmp_path, "elsewhere", age_s=5)
    with pytest.raises(RunLocked, match="process 12345 on elsewhere"):
        RunLock(tmp_path).acquire()
    _lock_of(tmp_path, "elsewhere", age_s=RunLock.STALE_S + 1)  # no heartbeat for STALE_S: its worker died
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert RunLock(tmp_path).acquire().token is None  # this process holds it already: not a conflict
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_of_a_dead_pid_on_this_host_is_stale(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock_of(tmp_path, socket.gethostname(), age_s=0, pid=dead.pid)
    RunLock(tmp_path).acquire().release()


def test_taking_over_never_removes_a_fresh_lock(tmp_path):
    """Two processes found the same stale lock; the first replaced it: the second must not remove the new one."""
    _lock_of(tmp_path, "elsewhere", age_s=0)
    RunLock(tmp_path)._take_over({"token": "the stale one that is gone"})
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "t0"
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_a_copied_run_directory_does_not_carry_its_lock(tmp_path):
    """`cp -r` of a running run directory copies run.lock too: the copy is held by no one."""
    (tmp_path / "a").mkdir()
    lock = RunLock(tmp_path / "a").acquire()
    held = (tmp_path / "a" / LOCK_FILE).read_text()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / LOCK_FILE).write_text(held)
    RunLock(tmp_path / "b").acquire().release()
    assert not (tmp_path / "b" / LOCK_FILE).exists()
    assert (tmp_path / "a" / LOCK_FILE).read_text() == held  # the original stays held
    lock.release()
