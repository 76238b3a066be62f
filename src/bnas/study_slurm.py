"""A study's workers submitted through submitit: one Slurm job array (`executor="slurm"`) or submitit's local
executor (`executor="local"`: real subprocesses on this machine, what the tests run).

Each array task is one worker of the study (`StudyWorker`, which does what `bnas study --worker DIR` does): it
claims the study's planned runs through their locks (study_work.py) until none is left, and the worker that
ends last writes the results. submitit pickles the workers and their logs into `DIR/jobs/`.

Preemption and the time limit. The job asks Slurm for SIGUSR1 `SIGNAL_DELAY_S` seconds before its time limit
(`--signal=USR1@90`, and `--requeue` so that the job may be requeued), and the job's submitit is told that
SIGUSR1 is its preemption signal (`SUBMITIT_PREEMPT_SIGNAL=USR1`, exported by the job script before submitit
starts; the local executor's processes inherit it). So the two signal handlers take turns instead of fighting:

- while a run runs, or between two runs, bnas's handler holds SIGTERM and SIGUSR1 (preempt.StopSignal): the run
  saves a checkpoint at its next step boundary, gives its lock back and raises `Preempted`;
- the worker then hands SIGUSR1 to submitit's handler, restored by then: it calls `StudyWorker.checkpoint` (the
  same worker, submitted again), requeues the array task (`scontrol requeue`; the local executor restarts it)
  and exits. The requeued worker claims the first open run again: the saved one resumes from its step;
- SIGTERM (`scancel`, or a preemption that sends no user signal) saves the run the same way, but the worker is
  not requeued: a cancelled job stays cancelled, and the study continues with the same command later;
- outside those windows (the worker starting) submitit's own handlers act: SIGUSR1 requeues at once, SIGTERM
  is ignored until Slurm's SIGKILL. Nothing is lost there: no run is in progress.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BnasError, ConfigError

EXECUTORS = ("slurm", "local")
PREEMPT_SIGNAL = "USR1"  # what preempt.StopSignal stops a run on (besides SIGTERM); submitit's default is USR2
SIGNAL_DELAY_S = 90  # SIGUSR1 this long before the time limit: the step in progress and a checkpoint fit in it
# requeues after a time limit before submitit gives a worker up; every requeue resumes where the worker stopped
MAX_TIMEOUTS = 100
JOBS = "jobs"  # in the study directory: submitit's pickles and the workers' logs
# sbatch options that bnas sets itself, and the flag of bnas study that sets them
OWN = {"array": "--workers", "partition": "--partition", "time": "--time", "gpus-per-node": "--gpus-per-run",
       "gpus": "--gpus-per-run", "signal": "", "output": "", "error": "", "open-mode": "", "wrap": ""}  # fmt: skip
_KEY = re.compile(r"[a-z][a-z0-9-]*")
_UNITS = {"d": 1440, "h": 60, "m": 1}
INSTALL = "pip install 'bnas[slurm]'"


def parse_time(text: str) -> int:
    """A time limit in whole minutes (seconds rounded up): `4h`, `90m`, `1h30m`, `2d`, or Slurm's own forms
    `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`."""
    value = str(text).strip().lower()
    minutes: float | None = None
    if re.fullmatch(r"(\d+(\.\d+)?[dhm])+", value):
        minutes = sum(float(n) * _UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([dhm])", value))
    else:
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
        if m:
            days, a, b, c = (int(x) if x is not None else None for x in m.groups())
            if days is not None:  # D-HH[:MM[:SS]]
                minutes = days * 1440 + a * 60 + (b or 0) + (c or 0) / 60
            elif c is not None:  # HH:MM:SS
                minutes = a * 60 + b + c / 60
            else:  # MM or MM:SS
                minutes = a + (b or 0) / 60
    if minutes is None or minutes <= 0:
        raise ConfigError(
            f"time {text!r} is not a time limit; give one such as 4h, 90m, 1h30m, 2d or Slurm's D-HH:MM:SS",
            options=("time",),
        )
    return max(1, int(-(-minutes // 1)))


def parse_slurm_options(items: list[str] | tuple[str, ...]) -> dict[str, str | bool]:
    """`KEY=VALUE` items (sbatch's long options without the dashes: `mem=32G`, `account=lab`, `qos=high`), or
    a bare `KEY` for a flag (`exclusive`); the options bnas sets itself are refused, naming their own flag."""
    out: dict[str, str | bool] = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not _KEY.fullmatch(key) or (eq and not value.strip()):
            raise ConfigError(
                f"slurm_options item {item!r} is not KEY=VALUE (an sbatch option without its dashes, such as "
                "mem=32G or account=lab) nor a bare KEY for a flag (exclusive)",
                options=("slurm_options",),
            )
        if key in OWN:
            own = OWN[key]
            how = f"give it with {own}" if own else "bnas sets it itself (see docs/cluster.md)"
            raise ConfigError(f"slurm_options item {item!r} sets the sbatch option --{key}: {how}",
                              options=("slurm_options",))  # fmt: skip
        out[key] = value.strip() if eq else True
    return out


@dataclass(frozen=True)
class SubmitOptions:
    """How a study's workers are submitted. `workers` None: one per run not ended yet; `time` the time limit of
    each worker's job (parse_time); `gpus_per_run` 0 or 1 (a worker runs one run at a time, in one process);
    `slurm_options` further sbatch options (parse_slurm_options)."""

    executor: str = "slurm"
    time: str = ""
    workers: int | None = None
    partition: str | None = None
    gpus_per_run: int = 1
    slurm_options: tuple[str, ...] = field(default_factory=tuple)
    retries: int = 0

    def check(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor {self.executor!r} is not one of {', '.join(EXECUTORS)}",
                              options=("executor",))  # fmt: skip
        if not str(self.time).strip():
            raise ConfigError("time is needed: the time limit of each worker's job, such as 4h (a worker that "
                              "reaches it saves its run and is requeued)", options=("time",))  # fmt: skip
        self.minutes()
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"workers must be 1 or more to submit workers, got {self.workers}",
                              options=("workers",))  # fmt: skip
        if self.gpus_per_run not in (0, 1):
            raise ConfigError(
                f"gpus_per_run must be 0 or 1, got {self.gpus_per_run}: a worker runs one run at a time in one "
                "process, on one GPU (a run on several GPUs is bnas search|train under torchrun)",
                options=("gpus_per_run",),
            )
        if self.partition is not None and not re.fullmatch(r"[\w.,-]+", self.partition):
            raise ConfigError(f"partition {self.partition!r} is not a Slurm partition name",
                              options=("partition",))  # fmt: skip
        if self.executor == "local" and (self.partition or self.slurm_options):
            given = "partition" if self.partition else "slurm_options"
            raise ConfigError(f"{given} goes with executor 'slurm', not with 'local'", options=(given,))
        parse_slurm_options(self.slurm_options)
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, got {self.retries}", options=("retries",))

    def minutes(self) -> int:
        return parse_time(self.time)


def _job_script_setup() -> list[str]:
    # before submitit starts in the job: its preemption signal is the one bnas's runs stop on
    return [f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}"]


def slurm_parameters(opts: SubmitOptions, out: Path) -> dict[str, Any]:
    """The SlurmExecutor's parameters (submitit's names) of a study's workers."""
    extra: dict[str, Any] = {"requeue": True, "signal": f"{PREEMPT_SIGNAL}@{SIGNAL_DELAY_S}"}
    extra.update(parse_slurm_options(opts.slurm_options))
    params: dict[str, Any] = {"job_name": f"bnas-study-{Path(out).resolve().name}", "time": opts.minutes(),
                              "signal_delay_s": SIGNAL_DELAY_S, "setup": _job_script_setup(),
                              "additional_parameters": extra}  # fmt: skip
    if opts.partition:
        params["partition"] = opts.partition
    if opts.gpus_per_run:
        params["gpus_per_node"] = opts.gpus_per_run
    return params


def sbatch_lines(opts: SubmitOptions, out: Path, workers: int) -> list[str]:
    """The #SBATCH lines of the job array, as submitit writes them from `slurm_parameters` (the dry run)."""
    p = slurm_parameters(opts, out)
    logs = Path(out).absolute() / JOBS / ("%A_%a_0_log" if workers > 1 else "%j_0_log")  # one worker: no array
    flags: dict[str, Any] = {"job-name": p["job_name"], "time": p["time"], "output": f"{logs}.out",
                             "error": f"{logs}.err", "open-mode": "append"}  # fmt: skip
    if workers > 1:
        flags["array"] = f"0-{workers - 1}%{workers}"
    for key in ("partition", "gpus_per_node"):
        if key in p:
            flags[key.replace("_", "-")] = p[key]
    flags.update(p["additional_parameters"])
    lines = []
    for key in sorted(flags):
        value = flags[key]
        lines.append(f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}")
    return lines


def _hours(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def _submitit():
    try:
        import submitit
    except ImportError:
        raise BnasError(f"submitting a study's workers needs submitit, which is not installed; {INSTALL}") from None
    return submitit


# --- the worker, as a job runs it --------------------------------------------------------------------------


class StudyWorker:
    """One worker of the study in `out`, as a submitit job runs it (`bnas study --worker DIR`); `index` of
    `workers` (the local executor's workers divide this machine's GPUs and threads among them)."""

    def __init__(self, out: str, retries: int = 0, index: int = 0, workers: int = 1, local: bool = False) -> None:
        self.out, self.retries, self.index, self.workers, self.local = str(out), retries, index, workers, local

    def __call__(self) -> int:
        from .preempt import Preempted
        from .study import work_on

        if self.local:
            self._share_machine()
        try:
            return work_on(self.out, retries=self.retries)
        except Preempted as e:
            if e.signal == "SIG" + PREEMPT_SIGNAL:
                _requeue()  # under submitit: requeues this worker and exits (does not return)
            raise  # SIGTERM (scancel): the run is saved and the job ends; the same command continues the study

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook: the same worker, submitted again (its runs resume from their checkpoints)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(StudyWorker(self.out, self.retries, self.index, self.workers, self.local))

    def _share_machine(self) -> None:
        from .study_work import worker_env

        env = worker_env(self.index, self.workers)
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES"):  # before CUDA starts
            if key in env:
                os.environ[key] = env[key]
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))

    def __repr__(self) -> str:
        return f"StudyWorker({self.out!r}, retries={self.retries}, index={self.index}, workers={self.workers})"


def _requeue() -> bool:
    """Hand the time-limit signal to submitit's handler (restored once bnas's StopSignal has exited): it calls
    `StudyWorker.checkpoint`, requeues this job and exits. False where no submitit handler holds the signal."""
    sig = getattr(signal, "SIG" + PREEMPT_SIGNAL)
    handler = signal.getsignal(sig)
    owner = getattr(handler, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("submitit"):
        return False
    print(f"bnas: requeueing this worker of {os.environ.get('SUBMITIT_FOLDER', 'the study')}", flush=True)
    signal.raise_signal(sig)
    return True


# --- submission ------------------------------------------------------------------------------------------


@dataclass
class Submission:
    """The submitted workers: submitit's jobs, their ids and their logs."""

    executor: str
    out: Path
    jobs: list[Any]
    job_ids: list[str]
    logs: list[Path]

    @property
    def array_id(self) -> str:
        return self.job_ids[0].split("_")[0] if self.job_ids else ""

    def wait(self, print_fn=print) -> int:
        """Wait for every worker (the local executor's; SIGTERM meanwhile is passed on to them); the study's exit
        code: 0 every run finished, 1 some failed, 75 some have not ended (a worker stopped or failed: the same
        command continues the study)."""
        from .preempt import EXIT_PREEMPTED
        from .study import load_study, plan
        from .study_work import EXIT_FAILED, status

        def pass_on(signum, frame) -> None:  # SIGTERM: each worker saves its run and stops (not requeued)
            for job in self.jobs:  # a local job's id is its controller's pid, which hands SIGTERM to the worker
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(job.job_id), signal.SIGTERM)

        local = self.executor == "local" and threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, pass_on) if local else None
        try:
            for job in self.jobs:
                job.wait()
        except KeyboardInterrupt:
            for job in self.jobs:
                job.cancel(check=False)
            raise
        finally:
            if local:
                signal.signal(signal.SIGTERM, previous)
        for job, log in zip(self.jobs, self.logs):
            if job.state != "FINISHED" or _job_error(job):
                print_fn(f"worker job {job.job_id} did not end cleanly ({job.state}); its log: {log}")
        runs = plan(load_study(self.out), self.out)
        by_path = {r.path: r for r in runs}
        states = [status(r, by_path, None)[0] for r in runs]
        left = sum(s not in ("done", "failed") for s in states)
        if left:
            print_fn(f"{left} of the study's {len(runs)} runs have not ended; the same command continues the study")
            return EXIT_PREEMPTED
        return EXIT_FAILED if "failed" in states else 0


def _job_error(job) -> bool:
    try:
        return job.exception() is not None
    except Exception:  # no result written (the worker was killed): an error too
        return True


def open_runs(spec, out: Path, retries: int) -> tuple[list, list]:
    """(every planned run, those not ended yet)."""
    from .study import plan
    from .study_work import status

    runs = plan(spec, out)
    by_path = {r.path: r for r in runs}
    return runs, [r for r in runs if status(r, by_path, retries)[0] not in ("done", "failed")]


def default_workers(opts: SubmitOptions, left: int) -> int:
    """One worker per run not ended; on this machine (local) no more than its GPUs, or its cores without any."""
    if opts.executor == "slurm":
        return max(1, left)
    from .study_work import _visible_gpus

    gpus = _visible_gpus(dict(os.environ)) if opts.gpus_per_run else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(left, len(gpus) or cores))


def submit_study(spec, out: str | Path, opts: SubmitOptions, *, dry_run: bool = False,
                 print_fn=print) -> Submission | None:  # fmt: skip
    """Plan the study in `out` (as `run_study` does), then submit its workers as one job array through
    submitit; the dry run prints the planned runs and the sbatch parameters and submits nothing. None when
    nothing is submitted (a dry run, or every run has ended)."""
    from .study import describe, open_study

    opts.check()
    out = Path(out)
    open_study(spec, out, create=not dry_run)
    runs, left = open_runs(spec, out, opts.retries)
    workers = opts.workers if opts.workers is not None else default_workers(opts, len(left))
    if dry_run:
        for i, run in enumerate(runs):
            print_fn(f"[{i + 1}/{len(runs)}] {describe(run)} -> {run.path} ({run.state()})")
        print_fn(_dry_run_text(opts, out, workers))
        return None
    if not left:
        print_fn(f"every run of the study in {out} has ended; nothing to submit (bnas study {out} --report)")
        return None
    executor = _executor(opts, out, workers)
    fns = [StudyWorker(str(out.absolute()), opts.retries, i, workers, opts.executor == "local") for i in range(workers)]
    try:
        with _preempt_signal_env():  # the local executor's controllers and workers inherit it
            jobs = executor.submit_array(fns)
    except Exception as e:  # sbatch refused (a partition, an option): its message is the sentence
        raise BnasError(f"submitting the workers failed: {_first_line(e)}") from None
    logs = [Path(j.paths.stdout) for j in jobs]
    sub = Submission(opts.executor, out, jobs, [str(j.job_id) for j in jobs], logs)
    print_fn(_submitted_text(sub, opts))
    return sub


@contextlib.contextmanager
def _preempt_signal_env():
    previous = os.environ.get("SUBMITIT_PREEMPT_SIGNAL")
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SUBMITIT_PREEMPT_SIGNAL"]
        else:
            os.environ["SUBMITIT_PREEMPT_SIGNAL"] = previous


def _executor(opts: SubmitOptions, out: Path, workers: int):
    submitit = _submitit()
    folder = out / JOBS
    if opts.executor == "local":
        # no setup commands: they would put a shell between this process and the job's controller (whose pid is
        # the job's id, and which hands SIGTERM to its worker); the workers see the GPUs listed here, each takes
        # one of them (StudyWorker), or none with gpus_per_run 0
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
        from .study_work import _visible_gpus

        gpus = _visible_gpus(dict(os.environ)) if opts.gpus_per_run else []
        if not all(g.isdigit() for g in gpus):  # the controller writes CUDA_VISIBLE_DEVICES as indices
            raise ConfigError(
                "executor 'local' needs GPU indices in CUDA_VISIBLE_DEVICES, not UUIDs; set indices, or run the "
                "workers with bnas study --workers N",
                options=("executor",),
            )
        executor.update_parameters(timeout_min=opts.minutes(), signal_delay_s=SIGNAL_DELAY_S, gpus_per_node=len(gpus),
                                   visible_gpus=tuple(int(g) for g in gpus))  # fmt: skip
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError:  # no srun here
        raise BnasError(
            "executor 'slurm' needs Slurm's sbatch and srun on this machine's PATH (submit from a login node); "
            "dry_run=True shows what would be submitted",
            options=("executor", "dry_run"),
        ) from None
    executor.update_parameters(**slurm_parameters(opts, out))
    return executor


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


def _worker_command(opts: SubmitOptions, out: Path) -> str:
    return f"bnas study --worker {shlex.quote(str(out))} --retries {opts.retries}"


def _dry_run_text(opts: SubmitOptions, out: Path, workers: int) -> str:
    minutes = opts.minutes()
    if opts.executor == "local":
        gpus = "a GPU each where there are GPUs" if opts.gpus_per_run else "no GPU"
        return (f"would start {workers} workers through submitit's local executor (nothing started): time limit "
                f"{_hours(minutes)} each, SIG{PREEMPT_SIGNAL} {SIGNAL_DELAY_S} s before it, {gpus}; each worker "
                f"runs {_worker_command(opts, out)}")  # fmt: skip
    what = f"{workers} workers as one Slurm job array" if workers > 1 else "1 worker as one Slurm job"
    lines = [f"would submit {what} (nothing submitted); its sbatch parameters:"]
    lines += [f"  {line}" for line in sbatch_lines(opts, out, workers)]
    lines.append(f"  (time {minutes} minutes = {_hours(minutes)}; SIG{PREEMPT_SIGNAL} {SIGNAL_DELAY_S} s before it "
                 "saves the run in progress and requeues the worker)")  # fmt: skip
    lines.append(f"each array task: srun {sys.executable} -u -m submitit.core._submit {out.absolute() / JOBS}, "
                 f"which runs {_worker_command(opts, out)}")  # fmt: skip
    return "\n".join(lines)


def _submitted_text(sub: Submission, opts: SubmitOptions) -> str:
    n, out = len(sub.jobs), sub.out
    if sub.executor == "local":
        return "\n".join([
            f"started {n} workers of the study in {out} through submitit's local executor: jobs "
            f"{', '.join(sub.job_ids)} (time limit {_hours(opts.minutes())} each)",
            f"logs: {', '.join(str(p) for p in sub.logs)} (and .err)",
        ])  # fmt: skip
    array = sub.array_id
    log = sub.logs[0]
    if n > 1:
        what = f"{n} workers of the study in {out} as Slurm job array {array} (tasks {sub.job_ids[0]} to "
        what += f"{sub.job_ids[-1]})"
        logs = f"{str(log).replace(f'{array}_0_', f'{array}_I_')} and .err (I = 0..{n - 1})"
    else:
        what, logs = f"1 worker of the study in {out} as Slurm job {array}", f"{log} and .err"
    return "\n".join([
        f"submitted {what}, time limit {_hours(opts.minutes())} each",
        f"logs: {logs}",
        f"follow: squeue -j {array}; sacct -j {array} --format=JobID,State,Elapsed,ExitCode; tail -f {log}",
        f"results: written into {out} by the last worker to end; bnas study {out} --report writes them again "
        "once every run has ended",
    ])  # fmt: skip
