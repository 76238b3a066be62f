"""A study's workers submitted through submitit (issue 27 item 2): its local executor (real subprocesses) runs a
study end to end; a worker stopped by its time-limit signal saves its run, is requeued and resumes it; the dry
run prints the sbatch parameters and submits nothing; bad options are one sentence."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bnas.cli import main
from bnas.runs import LOCK_FILE, RunDir
from bnas.study import StudySpec
from bnas.study_slurm import JOBS, SubmitOptions, parse_slurm_options, parse_time, submit_study

pytestmark = pytest.mark.usefixtures("one_thread")

SEARCH = dict(synthetic_size=32, batch_size=8, eval_every=0, quiet=True, device="cpu", epochs=1, init_channels=4,
              log_every=0)  # fmt: skip
TRAIN = dict(synthetic_size=32, batch_size=8, eval_batch_size=16, layers=2, enhance_cells=1, quiet=True, device="cpu",
             epochs=1, init_channels=4, log_every=0)  # fmt: skip
CONFIG = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "random_cells": 1, "search": SEARCH,
          "train": TRAIN}  # fmt: skip


@pytest.fixture
def worker_env(monkeypatch):
    """What the submitted workers inherit: one thread each, this tree's bnas."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    src = str(Path(__file__).parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))


def _file(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(config))
    return str(path)


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "results.csv") as f:
        return {r["candidate"]: r for r in csv.DictReader(f)}


def test_the_local_executor_runs_a_study_with_two_workers_to_its_report(tmp_path, worker_env, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "s"
    code = main(["study", "--config", _file(tmp_path, CONFIG), "--out", str(out), "--executor", "local",
                 "--workers", "2", "--time", "10m"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "started 2 workers of the study" in printed and "local executor" in printed
    assert list(_rows(out)) == ["clr-s0", "random-cell-0"]
    assert (out / "report.html").exists() and not list(out.rglob(LOCK_FILE))
    logs = sorted((out / JOBS).glob("*_0_log.out"))
    assert len(logs) == 2  # one log per worker
    started = [line for p in logs for line in p.read_text().splitlines() if line.endswith(": starting")]
    for run in ("search clr-s0", "train clr-s0", "train random-cell-0"):  # each started by one of the workers
        assert len([line for line in started if f"] {run} (" in line]) == 1, started


def test_a_worker_stopped_by_its_time_limit_signal_is_requeued_and_resumes_its_run(tmp_path, worker_env):
    pytest.importorskip("submitit")
    search = {**SEARCH, "synthetic_size": 160, "epochs": 2, "log_every": 1}  # 20 steps
    config = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "search": search, "train": TRAIN}
    out = tmp_path / "s"
    sub = submit_study(StudySpec.from_json(config), out, SubmitOptions("local", "10m", workers=1),
                       print_fn=lambda *a: None)  # fmt: skip
    assert sub is not None
    run = out / "search" / "clr-s0"
    deadline = time.monotonic() + 300
    pid = None
    while time.monotonic() < deadline and pid is None:
        if any(r["kind"] == "step" for r in RunDir(run).metrics(None)) and (run / LOCK_FILE).exists():
            pid = json.loads((run / LOCK_FILE).read_text())["pid"]  # the worker's process
        time.sleep(0.01)
    assert pid is not None, "the search never started"
    os.kill(pid, signal.SIGUSR1)  # what Slurm sends 90 s before the time limit (--signal=USR1@90)
    assert sub.wait(print_fn=lambda *a: None) == 0

    log = sub.logs[0].read_text()
    assert "requeueing this worker" in log and "resuming from its checkpoint" in log, log
    assert "Caught signal SIGUSR1" in sub.logs[0].with_suffix(".err").read_text()  # submitit requeued it
    records = RunDir(run).metrics(None)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]  # every step exactly once
    steps = [(r["epoch"], r["step"]) for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps))
    assert list(_rows(out)) == ["clr-s0"] and not list(out.rglob(LOCK_FILE))


def test_sigterm_while_waiting_for_local_workers_saves_their_runs(tmp_path, worker_env):
    pytest.importorskip("submitit")
    search = {**SEARCH, "synthetic_size": 160, "epochs": 2, "log_every": 1}
    config = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "search": search, "train": TRAIN}
    out = tmp_path / "s"
    sub = submit_study(StudySpec.from_json(config), out, SubmitOptions("local", "10m", workers=1),
                       print_fn=lambda *a: None)  # fmt: skip
    run = out / "search" / "clr-s0"

    def stop_when_running() -> None:  # SIGTERM to this process (which waits) once the search is under way
        _wait_for(lambda: any(r["kind"] == "step" for r in RunDir(run).metrics(None)), 300, lambda: "", every=0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=stop_when_running)
    helper.start()
    printed: list[str] = []
    assert sub.wait(print_fn=printed.append) == 75  # the same command continues the study
    helper.join()
    assert "2 of the study's 2 runs have not ended" in printed[-1]
    assert "stopped by SIGTERM after step" in sub.logs[0].with_suffix(".err").read_text()  # saved mid-epoch
    assert "requeueing" not in sub.logs[0].read_text()  # SIGTERM (scancel) does not requeue
    assert (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()


def test_dry_run_prints_the_sbatch_parameters_and_submits_nothing(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["study", "--config", _file(tmp_path, CONFIG), "--out", str(out), "--executor", "slurm",
                 "--partition", "gpu", "--gpus-per-run", "1", "--time", "4h", "--slurm-option", "mem=32G",
                 "--slurm-option", "exclusive", "--dry-run"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "[1/3] search clr-s0" in printed and "[3/3] train random-cell-0" in printed  # the planned runs
    assert "would submit 3 workers as one Slurm job array (nothing submitted)" in printed  # one per run
    for line in ("--array=0-2%3", "--partition=gpu", "--gpus-per-node=1", "--time=240", "--mem=32G", "--exclusive",
                 "--signal=USR1@90", "--requeue", f"--output={out.absolute() / JOBS}/%A_%a_0_log.out"):  # fmt: skip
        assert f"#SBATCH {line}\n" in printed, line
    assert "bnas study --worker" in printed and not out.exists()  # nothing planned on disk, nothing submitted

    assert main(["study", "--config", _file(tmp_path, CONFIG), "--out", str(out), "--executor", "slurm",
                 "--gpus-per-run", "0", "--time", "1-12:00:00", "--workers", "8", "--dry-run"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "#SBATCH --array=0-7%8\n" in printed and "#SBATCH --time=2160\n" in printed
    assert "gpus" not in printed and "--partition" not in printed  # the cluster's default partition


def test_the_slurm_executor_submits_the_script_the_dry_run_shows(tmp_path, capsys, monkeypatch):
    """submitit's SlurmExecutor writes the sbatch script and calls sbatch (here a stand-in that only answers with
    a job id): the script holds every parameter the dry run printed, and the job ids and logs are printed."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", 'echo "$1" >> "$(dirname "$0")/calls"; echo "Submitted batch job 4242"'),
                       ("srun", "exit 0")):  # fmt: skip
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "s"
    args = ["study", "--config", _file(tmp_path, CONFIG), "--out", str(out), "--executor", "slurm", "--partition",
            "gpu", "--time", "90m", "--slurm-option", "account=lab", "--workers", "2", "--retries", "1"]  # fmt: skip
    assert main([*args, "--dry-run"]) == 0
    shown = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("#SBATCH")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "submitted 2 workers of the study in" in printed
    assert "as Slurm job array 4242 (tasks 4242_0 to 4242_1), time limit 1:30:00 each" in printed
    assert f"logs: {out.absolute() / JOBS}/4242_I_0_log.out and .err (I = 0..1)" in printed
    assert "squeue -j 4242" in printed and f"bnas study {out} --report" in printed
    script = Path((bin_dir / "calls").read_text().strip()).read_text()  # what sbatch was given
    assert "#SBATCH --account=lab" in shown and "#SBATCH --array=0-1%2" in shown
    assert all(line in script.splitlines() for line in shown), (shown, script)
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in script  # the job's submitit stops on bnas's signal
    assert len(list((out / JOBS).glob("4242_*_submitted.pkl"))) == 2  # the two pickled workers
    assert (out / "study.json").exists()  # the study is planned


def test_time_limits_and_sbatch_options_parse():
    given = ("4h", "90m", "1h30m", "2d", "0.5h", "30", "1:30", "01:00:00", "1-12", "1-0:30")
    assert [parse_time(t) for t in given] == [240, 90, 90, 2880, 30, 30, 2, 60, 2160, 1470]
    assert parse_slurm_options(["mem=32G", "--account=lab", "cpus_per_task=8", "exclusive"]) == {
        "mem": "32G", "account": "lab", "cpus-per-task": "8", "exclusive": True}  # fmt: skip


@pytest.mark.parametrize(
    "args, sentence",
    [
        (["--time", "4x"], "--time '4x' is not a time limit; give one such as 4h"),
        (["--time", "0m"], "--time '0m' is not a time limit"),
        ([], "--time is needed"),
        (["--time", "4h", "--slurm-option", "=3"], "--slurm-options item '=3' is not KEY=VALUE"),
        (["--time", "4h", "--slurm-option", "mem="], "--slurm-options item 'mem=' is not KEY=VALUE"),
        (["--time", "4h", "--slurm-option", "array=0-3"], "sets the sbatch option --array: give it with --workers"),
        (["--time", "4h", "--slurm-option", "signal=USR2@60"], "sets the sbatch option --signal: bnas sets it"),
        (["--time", "4h", "--gpus-per-run", "2"], "--gpus-per-run must be 0 or 1, got 2"),
        (["--time", "4h", "--workers", "0"], "--workers must be 1 or more to submit workers, got 0"),
        (["--time", "4h", "--partition", "a b"], "--partition 'a b' is not a Slurm partition name"),
    ],
)
def test_bad_submission_options_are_one_sentence(tmp_path, capsys, args, sentence):
    out = tmp_path / "s"
    code = main(["study", "--config", _file(tmp_path, CONFIG), "--out", str(out), "--executor", "slurm", *args,
                 "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and sentence in err and len(err.splitlines()) == 1, err


def test_submission_flags_without_an_executor_and_a_missing_slurm_are_one_sentence(tmp_path, capsys, monkeypatch):
    file = _file(tmp_path, CONFIG)
    assert main(["study", "--config", file, "--out", str(tmp_path / "a"), "--partition", "gpu"]) == 2
    assert "--partition goes with --executor slurm" in capsys.readouterr().err
    assert main(["study", "--config", file, "--out", str(tmp_path / "a"), "--executor", "local", "--time", "1h",
                 "--partition", "gpu"]) == 2  # fmt: skip
    assert "--partition goes with executor 'slurm', not with 'local'" in capsys.readouterr().err
    assert main(["study", "--worker", str(tmp_path / "a"), "--executor", "slurm"]) == 2
    assert "--worker takes no --executor" in capsys.readouterr().err

    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no srun, no sbatch
    assert main(["study", "--config", file, "--out", str(tmp_path / "b"), "--executor", "slurm", "--time", "1h"]) == 2
    assert "--executor 'slurm' needs Slurm's sbatch and srun" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)  # not installed
    assert main(["study", "--config", file, "--out", str(tmp_path / "c"), "--executor", "local", "--time", "1h"]) == 2
    assert "needs submitit, which is not installed; pip install 'bnas[slurm]'" in capsys.readouterr().err


# --- a real one-node Slurm (Debian's slurm-wlm and munge), where they are installed and we are root ---------

SLURM_PROGRAMS = (
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scontrol",
    "scancel",
    "squeue",
    "sinfo",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slurm(tmp_path_factory, monkeypatch):
    """munged, slurmctld and slurmd on free ports with their files in a temporary directory (a few seconds);
    `SLURM_CONF` points the clients (sbatch, and srun in the jobs) at them. Skipped without them or root."""
    if os.geteuid() != 0 or not all(shutil.which(p) for p in SLURM_PROGRAMS):
        pytest.skip("needs root and Slurm (apt-get install slurm-wlm munge)")
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool"):
        (root / d).mkdir()
    host = socket.gethostname().split(".")[0]
    sock = root / "munge.sock"
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join([
            "ClusterName=bnastest", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={sock}", f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}", f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none", "KillWait=5",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", "",
        ])
    )  # fmt: skip
    monkeypatch.setenv("SLURM_CONF", str(conf))
    key = root / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    munge = [f"--socket={sock}", f"--key-file={key}", f"--pid-file={root / 'munged.pid'}",
             f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}", "--force"]  # fmt: skip
    pid_files = [root / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]
    try:
        # a machine where the daemons cannot start (no hostname resolution, a sandbox without the privileges they
        # need) cannot test Slurm: skipped with the reason; everything after a started cluster is asserted
        started = _start_daemons(["munged", *munge], ["slurmctld"], ["slurmd", "-N", host])
        if started:
            pytest.skip(f"a one-node Slurm did not start here: {started}")
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                log = root / "slurmctld.log"
                pytest.skip(f"the one-node Slurm never became idle: {log.read_text()[-500:] if log.exists() else ''}")
            time.sleep(0.5)
        yield root
    finally:
        for pid_file in reversed(pid_files):  # the daemons this fixture started, by their pids
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


def _start_daemons(*commands: list[str]) -> str:
    """Start each daemon; '' when all started, else what the first that failed said."""
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            return f"{command[0]} exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
    return ""


def _wait_for(condition, seconds: float, what, every: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(every)


@pytest.mark.slow
def test_a_study_on_a_real_slurm_survives_its_time_limit_signal_by_requeue(tmp_path, slurm, worker_env, capsys):
    search = {**SEARCH, "synthetic_size": 160, "epochs": 2, "log_every": 1}  # 20 steps
    config = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "search": search, "train": TRAIN}
    out = tmp_path / "s"
    assert main(["study", "--config", _file(tmp_path, config), "--out", str(out), "--executor", "slurm",
                 "--partition", "debug", "--gpus-per-run", "0", "--time", "10m", "--workers", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    array = printed.split("as Slurm job array ")[1].split()[0]
    run = out / "search" / "clr-s0"

    def logs() -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted((out / JOBS).glob("*_log.*")))

    _wait_for(lambda: any(r["kind"] == "step" for r in RunDir(run).metrics(None)), 180, lambda: logs(), every=0.02)
    # what Slurm sends 90 s before the time limit, to every array task: the search saves itself mid-epoch, the
    # waiting worker stops between runs; submitit requeues both
    subprocess.run(["scancel", "--signal=USR1", array], check=True)

    def finished() -> bool:  # Slurm holds a requeued job for about 2 minutes (BeginTime): the test lets it go
        queue = subprocess.run(["squeue", "-h", "-j", array, "-o", "%i %r"], capture_output=True, text=True).stdout
        for job, reason in (line.split(maxsplit=1) for line in queue.splitlines() if line.strip()):
            if reason.strip() == "BeginTime":
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        return (out / "results.json").exists()

    _wait_for(finished, 400, lambda: logs())
    _wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout,
              60, lambda: logs())  # fmt: skip
    text = "".join(p.read_text() for p in (out / JOBS).glob("*_log.out"))
    assert "requeueing this worker" in text and "resuming from its checkpoint" in text, text
    records = RunDir(run).metrics(None)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    steps = [(r["epoch"], r["step"]) for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps))
    assert list(_rows(out)) == ["clr-s0"] and (out / "report.html").exists() and not list(out.rglob(LOCK_FILE))
