"""Workers of a study (study.py): processes that share a study directory, claim its planned runs through the
run-directory lock, retry failed runs, and write the study's results once every run has ended.

A worker walks the plan in order and claims the first run it can: not finished, not failed for good, its
search finished (a searched cell's training waits for it), and its directory's lock (`runs.RunLock`) free or
stale. The lock is held while the run runs, with a heartbeat; a worker killed mid-run leaves a stale lock that
the next worker takes over, resuming the run from its checkpoint, so every run finishes exactly once. A run
that raises is recorded in its directory (`failures.json`: one sentence per attempt) and retried, from its
checkpoint, up to `retries` times; then it is failed for good (and so are the trainings of a failed search).

When no run is left to claim or to wait for, every run has ended: the worker that gets `results.lock` in the
study directory writes the results (unless they are newer than every run already), so whichever worker ends
last writes them; `bnas study DIR --report` writes them too. `run_workers` starts N workers on this machine
(`bnas study --worker DIR` each), one GPU each where there are GPUs, the CPU cores divided among them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .errors import BnasError
from .jsonio import dumps
from .preempt import Preempted, StopSignal
from .runs import RunLock, RunLocked, atomic_write_text

FAILURES = "failures.json"  # in a run directory: the attempts that raised, one sentence each
EXIT_FAILED = 1  # a study that ended with failed runs (their sentences are in its results); 0: every run finished


def failures(run) -> list[dict[str, Any]]:
    import json

    try:
        return json.loads((run.path / FAILURES).read_text())
    except (OSError, ValueError):
        return []


def status(run, by_path: dict[Path, Any], retries: int | None) -> tuple[str, str]:
    """(done | failed | waiting | open, why): `retries` None reads each run's own (its last attempt's)."""
    if (run.path / run.done_file).exists():
        return "done", ""
    if run.search:
        search = by_path.get(run.path.parents[1] / "search" / run.search)
        if search is not None:
            state, _ = status(search, by_path, retries)
            if state == "failed":
                return "failed", f"its search {run.search} failed"
            if state != "done":
                return "waiting", f"waits for its search {run.search}"
    tried = failures(run)
    allowed = retries if retries is not None else (tried[-1].get("retries", 0) if tried else 0)
    if tried and len(tried) > allowed:
        return "failed", tried[-1]["error"]
    return "open", ""


def failed_runs(runs: list, retries: int | None = None) -> list[dict[str, Any]]:
    by_path = {r.path: r for r in runs}
    out = []
    for run in runs:
        state, why = status(run, by_path, retries)
        if state == "failed":
            out.append({"run": f"{run.command}/{run.name}", "attempts": len(failures(run)), "error": why})
    return out


def _record_failure(run, error: BaseException, retries: int) -> str:
    # a bug (not a BnasError): the sentence names it, and its traceback goes into failures.json too
    sentence = str(error) if isinstance(error, BnasError) else f"{type(error).__name__}: {error}"
    entry = {"error": sentence, "time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(),
             "retries": retries}  # fmt: skip
    if not isinstance(error, BnasError):
        entry["traceback"] = "".join(traceback.format_exception(error))
    atomic_write_text(run.path / FAILURES, dumps([*failures(run), entry], 1) + "\n")
    return sentence


def work(spec, out: Path, runs: list, *, retries: int = 0, poll_s: float = 2.0, print_fn=print, after_run=None,
         execute=None, finish=None, describe=str, always: bool = False) -> tuple[Any, list[dict]]:  # fmt: skip
    """One worker: claim and run the study's runs until none is left; (the results if this worker wrote them,
    else None; the runs failed for good). `execute(spec, run)` runs one run, `finish(failed)` writes the
    results, `describe(run)` names it (study.py gives all three)."""
    with StopSignal() as stop:  # between runs too, SIGTERM/SIGUSR1 end the worker cleanly (a run: preempt.py)
        return _work(spec, out, runs, stop, retries, poll_s, print_fn, after_run, execute, finish, describe, always)


def _work(spec, out, runs, stop, retries, poll_s, print_fn, after_run, execute, finish, describe, always):
    by_path = {r.path: r for r in runs}
    announced: set[int] = set()
    command = f"bnas study --worker {out}"
    while True:
        if stop.signal is not None:
            raise Preempted(f"stopped by {stop.signal} between two runs of the study in {out}", signal=stop.signal)
        claimed = waiting = False
        for i, run in enumerate(runs):
            state, why = status(run, by_path, retries)
            if state in ("done", "failed"):
                if i not in announced:
                    announced.add(i)
                    word = "finished, kept" if state == "done" else f"failed: {why}"
                    print_fn(f"[{i + 1}/{len(runs)}] {describe(run)}: {word}")
                continue
            if state == "waiting":
                waiting = True
                continue
            run.path.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run.path, command=command)
            try:
                lock.acquire()
            except RunLocked:
                waiting = True  # another worker runs it (or its lock goes stale: then it is ours)
                continue
            try:
                if status(run, by_path, retries)[0] != "open":
                    continue  # it ended between the look and the claim
                announced.add(i)
                tried = len(failures(run))
                verb = {"resume": "resuming from its checkpoint", "new": "starting"}[run.state()]
                if tried:
                    verb = f"attempt {tried + 1} of {retries + 1}, {verb}"
                print_fn(f"[{i + 1}/{len(runs)}] {describe(run)}: {verb}")
                try:
                    execute(spec, run)
                except (KeyboardInterrupt, Preempted):
                    raise  # the worker stops; the run stays resumable
                except Exception as e:
                    sentence = _record_failure(run, e, retries)
                    print_fn(f"[{i + 1}/{len(runs)}] {run.command} {run.name} failed: {sentence}")
            finally:
                lock.release()
            claimed = True
            if after_run is not None:
                after_run(run)
            break  # look from the top again: the plan's order
        if claimed:
            continue
        if not waiting:
            break
        time.sleep(poll_s)
    failed = failed_runs(runs, retries)
    return write_results(out, runs, failed, finish, always=always), failed


def write_results(out: Path, runs: list, failed: list[dict[str, Any]], finish, always: bool = False) -> Any:
    """The results, by one worker at a time, unless they are newer than every run's end already (None then;
    `always`: written anyway)."""
    lock = RunLock(out, command=f"bnas study --report {out}", name="results.lock")
    try:
        lock.acquire()
    except RunLocked:
        return None  # another worker is writing them
    try:
        written = out / "results.json"
        ends = [p.stat().st_mtime for r in runs for p in (r.path / r.done_file, r.path / FAILURES) if p.exists()]
        if not always and written.exists() and ends and written.stat().st_mtime >= max(ends):
            return None
        return finish(failed)
    finally:
        lock.release()


# --- N workers on this machine ---------------------------------------------------------------------------


def worker_env(index: int, workers: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """Worker `index`'s environment: one GPU of those visible (round robin) where there are GPUs, and its share
    of the CPU threads either way (of OMP_NUM_THREADS where it is set, else of the cores this process may use)."""
    env = dict(os.environ if env is None else env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    budget = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS", "").isdigit() else cores  # a set budget wins
    threads = str(max(1, budget // workers))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    gpus = _visible_gpus(env)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def _visible_gpus(env: dict[str, str]) -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if not Path("/proc/driver/nvidia").exists():
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_workers(out: Path, workers: int, retries: int = 0, print_fn=print) -> int:
    """Start `workers` processes (`bnas study --worker OUT`) and wait for them; SIGTERM/SIGUSR1 are passed on
    (each stops its run at the next step with a checkpoint). The exit code: 0 every run finished, 1 some
    failed, 75 stopped by a signal (resume with the same command)."""
    argv = [sys.executable, "-m", "bnas.cli", "study", "--worker", str(out), "--retries", str(retries)]
    procs = [subprocess.Popen(argv, env=worker_env(i, workers)) for i in range(workers)]
    print_fn(f"started {workers} workers on {out}: pids {', '.join(str(p.pid) for p in procs)}")

    def pass_on(signum, frame) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(c == Preempted.exit_code or c < 0 for c in codes):  # stopped or killed: the same command continues
        return Preempted.exit_code
    if any(c not in (0, EXIT_FAILED) for c in codes):
        return 2  # a worker refused to start (its sentence is on stderr)
    return EXIT_FAILED if EXIT_FAILED in codes else 0
