"""The one loop every run shares (search and training): setup, the epochs of a step object, log points,
non-finite handling, records then checkpoint, resume, ranks and the time budget.

A run is made of parts that a builder (`search.Searcher`, `train.Trainer`) puts together: a step object (one
optimisation step on a batch, `SearchStep` or `TrainStep`, which `bnas bench` times alone), the weight
optimizer whose learning rate the `Schedule` sets, the loaders, and a few hooks (the `Job` protocol) for what
differs: the per-epoch feed of the step, the end-of-epoch statistics, the record's own fields and files,
the parts' state for the checkpoint, and the end of the run. A change to how runs run (a budget, preemption,
a new log point) is made here once.

The order of an epoch's writes is the same for every run: its records (metrics.jsonl, a search's genotype
files) first, the atomic checkpoint last. A kill between the two leaves records of an epoch the checkpoint
does not hold; a resume drops them (`RunDir.truncate_metrics`) and computes that epoch again, so a kill at
any moment loses no finished epoch and never writes one twice.

SIGTERM or SIGUSR1 (preempt.py) stops a run at its next step boundary instead: the checkpoint then holds that
point of the epoch ("mid_epoch": the step, the train loader's pass, the tally's partial sums, the job's own
per-epoch state), and a resume continues the epoch from there, computing what an uninterrupted run computes.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .budget import BudgetClock, BudgetPlan, parse_duration
from .cells import Cell
from .dist import NullRun, is_main, rank_world
from .errors import non_finite
from .preempt import Preempted, StopSignal, preempted_message
from .profile import RuntimeProfile, resolve_profile
from .runs import RunDir, RunLock
from .runtime import (
    Tally,
    compile_regions,
    cosine_lr,
    pick_device,
    read_log_point,
    set_deterministic,
    synchronize,
)

# ------------------------------------------------------------------------------------------------ setup


def setup(seed: int, device: str, deterministic: bool = False, threads: int = 0) -> torch.device:
    """Seed, threads and device of a run, before any data or network is made (their random numbers follow
    the seed)."""
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    if deterministic:
        set_deterministic()
    return dev


@dataclass
class DeviceParts:
    """What a run builds from its runtime profile (bnas.profile: every device-dependent decision, resolved
    once by `device_parts`): mixed precision, loss scaling, memory format, optimizers, compilation.
    config.json "runtime" records the profile."""

    device: torch.device
    autocast: Callable[[], Any]  # a context-manager factory (mixed precision, or a null context)
    amp_mode: str  # off | bf16 | fp16
    channels_last: bool
    optimizer: str  # bnas | torch-fused (the CUDA profile) | torch (bench --torch-optim: torch.optim's plain ones)
    defaults: dict[str, object]  # cudnn_benchmark, tf32: what the profile set
    profile: RuntimeProfile

    def sgd(self, params, lr: float, momentum: float, weight_decay: float):
        if self.optimizer == "torch":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return self.profile.sgd(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler of its own for each loss (fp16; disabled otherwise)."""
        return self.profile.grad_scaler()

    def place(self, model: nn.Module, compile: str = "off", regions: nn.Module | None = None) -> nn.Module:
        """The network on the device, in its memory format, its cells compiled in place (`regions`: the module
        whose cells are compiled, the network by default) so that parameter names and checkpoints stay."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if compile != "off":
            compile_regions(regions if regions is not None else model, Cell, compile)
        return model


def device_parts(
    device: torch.device,
    amp: str,
    channels_last: str,
    deterministic: bool = False,
    *,
    fast: bool | None = None,
    compile: str = "off",
    kind: str = "search",
) -> DeviceParts:
    """Resolve the run's runtime profile once (bnas.profile; $BNAS_PROFILE=cuda forces the GPU's on a CPU),
    apply its process-wide switches, and give its parts (channels-last auto = on: faster on GPUs and, for these
    convolutions, on CPUs; docs/benchmarks.md)."""
    profile = resolve_profile(
        device, kind=kind, amp=amp, channels_last=channels_last, deterministic=deterministic, fast=fast,
        compile=compile,
    ).apply()  # fmt: skip
    defaults = {"cudnn_benchmark": profile.cudnn_benchmark, "tf32": profile.tf32}
    return DeviceParts(
        device, profile.autocast, profile.amp, profile.channels_last, profile.optimizer, defaults, profile
    )


# --------------------------------------------------------------------------------------------- schedule


@dataclass
class Schedule:
    """The weight learning rate: per epoch, linear warm-up then cosine from `lr` to `lr_min`; under a budget,
    per step from the plan's progress (budget.py)."""

    lr: float
    lr_min: float
    epochs: int
    warmup_epochs: int = 0

    def epoch_lr(self, epoch: int) -> float:
        return cosine_lr(epoch, self.epochs, self.lr, self.lr_min, self.warmup_epochs)

    def step_lr(self, plan: BudgetPlan, step: int) -> float:
        return plan.lr(step, self.lr, self.lr_min)


def budget_clock(
    budget: str | float | None, steps_per_epoch: int, warmup_epochs: int, device: torch.device, reserve
) -> BudgetClock | None:
    """The clock of a run to a time budget (None without one); `reserve()` times what follows the last step."""
    if budget is None:
        return None
    plan = BudgetPlan(parse_duration(budget), steps_per_epoch, warmup_steps=warmup_epochs * steps_per_epoch)
    return BudgetClock(plan, functools.partial(synchronize, device), reserve)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# -------------------------------------------------------------------------------------------------- loop

Feed = Callable[[int, torch.Tensor, torch.Tensor, float, Tally], None]


class Job(Protocol):
    """What a builder gives the loop besides its step object and optimizer."""

    kind: str  # "search" | "train": the checkpoint's kind, the command in messages
    lr_flags: str  # the learning-rate options a non-finite message suggests lowering
    step: Any  # the step object: FIGURES (its tally), FAULTS ((bad, first-bad step, which step), in run order)
    train_loader: Any

    def check_data(self) -> None: ...  # before a run opens
    def start_run(self, run: RunDir) -> None: ...  # a new run's config.json and first records
    def begin_epoch(self, epoch: int) -> Feed: ...  # per-epoch values; returns what runs step i on a batch
    def at_progress(self, progress: float) -> None: ...  # under a budget, before each step
    def epoch_stats(self, sums: dict[str, float], lr: float, images_per_s: float) -> dict[str, Any]: ...
    def end_epoch(self, epoch: int, stats: dict[str, Any]) -> None: ...  # evaluation and more stats
    def epoch_records(self, run: RunDir, epoch: int, record: dict[str, Any]) -> Any: ...  # own fields, files
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def finish(self, run: RunDir, reporter) -> Any: ...
    # preemption mid-epoch: what begin_epoch drew and the job's own streams (e.g. a search's validation batches)
    def mid_epoch_state(self) -> dict[str, Any]: ...
    def resume_mid_epoch(self, state: dict[str, Any]) -> None: ...  # before begin_epoch of the resumed epoch


class RunLoop:
    """Runs a job's epochs in a run directory. `cfg` gives out, epochs, lr, lr_min, lr_warmup_epochs,
    log_every, on_nan, quiet and to_json(); `clock` a time budget."""

    def __init__(
        self, job: Job, cfg, device: torch.device, optimizer, *, resume: bool = False, overwrite: bool = False,
        clock: BudgetClock | None = None,
    ):  # fmt: skip
        self.job, self.cfg, self.device, self.optimizer = job, cfg, device, optimizer
        self.clock = clock
        self.resume, self.overwrite = resume, overwrite
        self.run: RunDir | NullRun | None = None
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.stop = StopSignal()  # SIGTERM/SIGUSR1 while the epochs run (preempt.py)
        self.lock: RunLock | None = None  # rank 0's hold on the run directory (runs.RunLock)
        self.mid_epoch: dict[str, Any] | None = None  # a preempted epoch that the resumed run continues

    @property
    def schedule(self) -> Schedule:
        """The weight learning rate of the configuration as it stands (read at each epoch)."""
        cfg = self.cfg
        return Schedule(cfg.lr, cfg.lr_min, cfg.epochs, cfg.lr_warmup_epochs)

    # --- state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The checkpoint of a finished epoch: the job's parts, the random number generators, the budget."""
        return {
            "kind": self.job.kind,
            "epoch": epoch + 1,  # the finished epoch, numbered from 1 as everywhere
            "config": self.cfg.to_json(),
            **self.job.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "budget": self.clock.plan.state() if self.clock is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.job.load_state_dict(state)
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if self.clock is not None and state.get("budget"):
            self.clock.plan = BudgetPlan.from_state(state["budget"])
        self.start_epoch = state["epoch"]  # epochs are numbered from 1: the next one's index
        self.mid_epoch = state.get("mid_epoch")

    def open(self) -> RunDir | NullRun:
        """Create the run directory, or resume it from its checkpoint (records after the checkpoint's epoch are
        dropped and computed again). Under torchrun every rank loads the state and only rank 0 writes."""
        job, cfg = self.job, self.cfg
        job.check_data()
        if self.resume:
            if is_main() and Path(cfg.out).is_dir():  # one writer: a live holder is refused before any read
                self.lock = RunLock(cfg.out).acquire()
            state = RunDir(cfg.out).load_checkpoint(job.kind, cfg.to_json())
            self.load_state_dict(state)
            if not is_main():
                self.run = NullRun()
                return self.run
            self.run = RunDir(cfg.out)
            self.run.truncate_metrics(state["epoch"], steps_kept=self.mid_epoch["step"] if self.mid_epoch else 0)
            self.history = self.run.metrics("epoch")
            self.run.update_config(cfg.to_json())
        elif not is_main():
            self.run = NullRun()
        else:
            self.lock = RunLock(cfg.out)  # taken by create, before an --overwrite removes anything
            self.run = RunDir.create(cfg.out, overwrite=self.overwrite, lock=self.lock)
            job.start_run(self.run)
        return self.run

    # --- one epoch
    def train_epoch(self, epoch: int, progress) -> dict[str, Any]:
        """One epoch of steps, none of which waits for the device: the figures accumulate in a `Tally` read at
        log points (every `log_every` steps, the epoch's end), a non-finite step is skipped on the device, and
        --on-nan stop ends the run at the next log point, keeping the last finished epoch's checkpoint."""
        job, cfg, clock = self.job, self.cfg, self.clock
        loader = job.train_loader
        per_epoch = len(loader)
        schedule = self.schedule
        lr = schedule.epoch_lr(epoch)
        set_lr(self.optimizer, lr)
        mid = self._continue_epoch(epoch)  # a preempted epoch: the job's streams where they stopped
        feed = job.begin_epoch(epoch)
        tally = Tally(self.device, job.step.FIGURES)
        images, done, t0, last = 0, 0, time.perf_counter(), {}
        if mid is not None:  # ... and the loader, the partial sums and the last log point's
            loader.resume_pass(mid["train_loader"])
            tally.sums = {k: v.to(self.device) for k, v in mid["tally"].items()}
            images, done, last = mid["images"], mid["step"], dict(mid["last"])
        for i, (x, y) in enumerate(loader, start=done):
            step = epoch * per_epoch + i  # steps of the run before this one
            if clock is not None:  # a budget: the schedule is per step, by progress
                lr = schedule.step_lr(clock.plan, step)
                set_lr(self.optimizer, lr)
                job.at_progress(clock.plan.progress(step))
            feed(i, x, y, lr, tally)
            images, done = images + x.shape[0], i + 1
            log = bool(cfg.log_every) and (i + 1) % cfg.log_every == 0
            if log:
                last = self.log_point(tally, epoch, i + 1, last)
                if clock is not None:
                    clock.log_point(step + 1)
            progress.update(**({"loss": last["mean_loss"], "acc": last["mean_acc"]} if log else {}),
                            rate=images / (time.perf_counter() - t0))  # fmt: skip
            if clock is not None and clock.step_done(step + 1):
                break  # the budget's last step: a partial epoch
            if i + 1 < per_epoch and self.stop.requested(self.device, sync_point=log):
                self._preempt(epoch, i + 1, tally, last, images)
        sums = self.log_point(tally, epoch, None, last)
        if clock is not None:  # the epoch's end is a log point too (and holds its overheads: evaluation...)
            clock.log_point(epoch * per_epoch + done)
        return job.epoch_stats(sums, lr, images / (time.perf_counter() - t0))

    def log_point(self, tally: Tally, epoch: int, step: int | None, last: dict[str, float]) -> dict[str, float]:
        """The one host read between log points, and --on-nan stop's check of the steps skipped as non-finite
        (the message names the first faulty step; at the same step, the one that runs first)."""
        sums = read_log_point(tally, self.run, epoch + 1, step, last)
        faults = [(sums.get(first, math.inf), which) for bad, first, which in self.job.step.FAULTS if sums[bad] > 0]
        if faults:
            first = min(f for f, _ in faults)
            which = next(w for f, w in faults if f == first)
            cfg = self.cfg
            non_finite(cfg.on_nan, self.job.kind, which, epoch, round(first) - 1, cfg.out, self.job.lr_flags)
        return sums

    # --- the run
    def _more(self, epoch: int) -> bool:
        if self.clock is not None:
            return not self.clock.plan.done(epoch * len(self.job.train_loader))
        return epoch < self.cfg.epochs

    def run_epochs(self, reporter=None) -> Any:
        """Open (or resume) the run, run its epochs, and end it: the job's `finish` gives the result. SIGTERM
        and SIGUSR1 stop it at the next step boundary with its checkpoint saved (raising `Preempted`)."""
        try:
            with self.stop:
                return self._epochs(reporter)
        finally:
            if self.lock is not None:  # the run directory is free again (whatever ended the run)
                self.lock.release()

    def _epochs(self, reporter=None) -> Any:
        from .progress import Reporter

        job, cfg, clock = self.job, self.cfg, self.clock
        reporter = reporter or Reporter(quiet=cfg.quiet)
        run = self.run or self.open()
        per_epoch = len(job.train_loader)
        if clock is not None:
            clock.start(self.start_epoch * per_epoch + (self.mid_epoch["step"] if self.mid_epoch else 0))
        epoch = self.start_epoch
        while self._more(epoch):
            t0 = time.perf_counter()
            # a budget's length is unknown until its first steps are timed: "epoch 1/?" until then
            shown = (math.ceil(clock.plan.epochs()) or "?") if clock is not None else cfg.epochs
            with reporter.epoch(epoch, shown, per_epoch) as progress:
                stats = self.train_epoch(epoch, progress)
            job.end_epoch(epoch, stats)
            record = {"kind": "epoch", "epoch": epoch + 1, **stats, "epoch_s": time.perf_counter() - t0}
            if clock is not None:
                clock.plan.spent_s = clock.elapsed()  # what a resume from this checkpoint has spent
                record.update(budget_progress=clock.plan.progress((epoch + 1) * per_epoch),
                              planned_epochs=clock.plan.epochs())  # fmt: skip
            shown_genotype = job.epoch_records(run, epoch, record)
            run.log(record)  # records first, the (atomic) checkpoint last: see the module's docstring
            run.save_checkpoint(self.state_dict(epoch))
            self.history.append(record)
            reporter.epoch_done(record, shown_genotype)
            epoch += 1
            if self._more(epoch) and self.stop.requested(self.device, sync_point=True):
                self._stopped(epoch - 1, None)
        if clock is not None:  # the epochs the budget resolved to, in config.json as in the results
            cfg.epochs = epoch
            run.update_config({"epochs": epoch, "budget_plan": clock.plan.state()})
        result = job.finish(run, reporter)
        run.close()
        return result

    # --- preemption (preempt.py): a checkpoint between two steps of an epoch, and the resume from it
    def _preempt(self, epoch: int, done: int, tally: Tally, last: dict[str, float], images: int) -> None:
        """Save the run as it stands after `done` steps of `epoch`, then stop (raises `Preempted`)."""
        if self.clock is not None:
            self.clock.plan.spent_s = self.clock.elapsed()
        state = self.state_dict(epoch - 1)  # "epoch" stays the last finished one (readers of checkpoints)
        state["mid_epoch"] = {
            "epoch": epoch,
            "step": done,
            "train_loader": self.job.train_loader.pass_state(),
            "tally": {k: v.detach().cpu() for k, v in tally.sums.items()},  # the host read of this stop only
            "last": dict(last),
            "images": images,
            "job": self.job.mid_epoch_state(),
        }
        self.run.save_checkpoint(state)
        self._stopped(epoch, done)

    def _stopped(self, epoch: int, done: int | None) -> None:
        """Every rank waits for rank 0's checkpoint (torchrun ends the others once one exits), then stops."""
        if rank_world()[1] > 1:
            import torch.distributed as dist

            dist.barrier()
        steps = len(self.job.train_loader)
        message = preempted_message(self.job.kind, self.cfg.out, self.stop.signal, epoch, done, steps)
        raise Preempted(message, signal=self.stop.signal)

    def _continue_epoch(self, epoch: int) -> dict[str, Any] | None:
        """The preempted state of `epoch` (None for an epoch that starts afresh); the job's own part is restored
        at once, before its `begin_epoch` draws what the epoch draws."""
        mid, self.mid_epoch = self.mid_epoch, None
        if mid is None or mid["epoch"] != epoch:
            return None
        self.job.resume_mid_epoch(mid["job"])
        return mid


def interrupted_message(command: str, out: str | Path) -> str:
    """What Ctrl-C leaves on disk, in one sentence: the finished epochs and how to continue, or (before the
    first epoch finished) that nothing was saved and how to start again."""
    if (Path(out) / "checkpoint.pt").exists():
        return f"interrupted: finished epochs are saved; continue with bnas {command} --resume {out}"
    return (
        f"interrupted before the first epoch finished: nothing was saved; start again with the same bnas {command} "
        f"command and --overwrite"
    )


class LoopBuilder:
    """What a builder (Searcher, Trainer) reads back from its run core: the run directory, where it resumed,
    the records so far and the budget's clock."""

    loop: RunLoop

    @property
    def run(self) -> RunDir | None:
        return self.loop.run

    @property
    def start_epoch(self) -> int:
        return self.loop.start_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.loop.history

    @property
    def clock(self) -> BudgetClock | None:
        return self.loop.clock
