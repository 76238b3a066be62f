"""Preemption: SIGTERM or SIGUSR1 asks a running search or training to stop at its next step boundary.

Schedulers end a job with SIGTERM and kill it a grace period later (Slurm: `--signal=USR1@120` sends SIGUSR1
before the end of the time limit, `scancel` and preemption send SIGTERM). The handler only sets a flag; the run
core reads it after each step (a Python attribute: no device sync is added to a step), writes a checkpoint of
that exact point (mid-epoch: the step, the loaders' positions, the epoch's partial sums, the random number
generators) and raises `Preempted`, which the command line turns into exit code `EXIT_PREEMPTED`. `--resume`
continues from that step, and the finished run equals one that was never interrupted.

Under torchrun the ranks agree before any of them stops: the flag is combined over ranks at the log points
(`--log-every`) and at each epoch's end, where the loop reads from the device anyway, so a rank that got the
signal stops with the others at the next log point.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from .dist import rank_world
from .errors import BnasError

EXIT_PREEMPTED = 75  # EX_TEMPFAIL of sysexits.h: "try again later", i.e. resume; a requeue script can test for it
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(BnasError):
    """A run stopped by SIGTERM/SIGUSR1 after saving its checkpoint; `resume=True` continues it. `signal` names
    the signal that stopped it (a Slurm worker requeues itself on its time-limit signal only: study_slurm.py)."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, message: str = "", signal: str | None = None) -> None:
        super().__init__(message, options=("resume",))
        self.signal = signal


class StopSignal:
    """While entered, SIGTERM and SIGUSR1 set `signal` (their name) instead of ending the process; the previous
    handlers come back on exit. Outside the main thread (where Python cannot install handlers) it does
    nothing, and the default behaviour of the signals stays. Nested in another (a study worker's, study_work.py,
    around a run's own, runcore.py), they share what arrived: a signal caught by the outer one while the run
    was being set up stops the run at its first step, and one caught by the run reaches the worker."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        outer = self._outer()
        if outer is not None and outer.signal is not None and self.signal is None:
            self.signal = outer.signal  # a signal that came before this block (a study worker's run starting)
        return self

    def __exit__(self, *exc) -> None:
        outer = self._outer()
        if outer is not None and self.signal is not None and outer.signal is None:
            outer.signal = self.signal  # and one that came inside it reaches the enclosing block
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _outer(self) -> StopSignal | None:
        """The StopSignal this one is nested in (a study worker's, around each run's own), if any."""
        owner = getattr(self._previous.get(SIGNALS[0]), "__self__", None)
        return owner if isinstance(owner, StopSignal) else None

    def requested(self, device: torch.device, sync_point: bool) -> bool:
        """Whether the run stops here: in one process, whenever the flag is set; under torchrun, only at a
        `sync_point` (a log point, an epoch's end), and then on every rank if any rank got the signal."""
        if rank_world()[1] == 1:
            return self.signal is not None
        if not sync_point:
            return False
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.signal is None:
            self.signal = "a signal to another rank"
        return self.signal is not None


def preempted_message(command: str, out: str, signal_name: str, epoch: int, step: int | None, steps: int) -> str:
    """The one sentence a preempted run ends with: where it stopped and how to continue."""
    where = f"after step {step}/{steps} of epoch {epoch + 1}" if step is not None else f"after epoch {epoch + 1}"
    run = {"train": "training"}.get(command, command)
    return f"stopped by {signal_name} {where}, which is saved in {out}; continue the {run} with resume=True"
