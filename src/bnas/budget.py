"""Training to a time budget (`bnas train --budget 20m`): the schedule is sized by measured throughput.

Comparing candidate cells is only fair when each gets the same time, and a CPU user wants a result in an
hour, not after 600 epochs. The run measures its step time over its first steps and sizes the schedule so
that training plus the final evaluation end within the budget. The schedule is a function of *progress*
(0 -> 1) rather than of the epoch: the learning rate follows cosine (after any warm-up) from `lr` to exactly
`lr_min` at the last step, and drop-path ramps linearly. Every few seconds of wall time (and at each log point)
the remaining steps are re-planned from the time left and the recent step rate, continuing from the progress
reached, so the curve stays continuous and still completes when the machine gets faster or slower.

The clock starts when training starts (data loading is not counted) and a resumed run starts it at the time
its checkpoint had spent.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: object, flag: str = "budget") -> float:
    """'90s', '20m', '1h', '1h30m' or a number of seconds -> seconds; anything else is one sentence naming the
    argument `flag` (the command line says it as a flag)."""
    named = (flag,) if flag.isidentifier() else ()
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str) and re.fullmatch(r"\s*(\d+(\.\d+)?\s*[smh]\s*)+", text.lower()):
        seconds = sum(float(n) * _UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)\s*([smh])", text.lower()))
    elif isinstance(text, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", text):
        seconds = float(text)
    else:
        raise ConfigError(f"{flag} must be a duration such as 90s, 20m, 1h or 1h30m, got {text!r}", options=named)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{flag} must be a positive duration, got {text!r}", options=named)
    return seconds


@dataclass
class BudgetPlan:
    """The schedule of a budgeted run, in steps; checkpointed (`state`) so a resumed run continues it."""

    budget_s: float
    steps_per_epoch: int
    warmup_steps: int = 0
    total_steps: int = 0  # 0 = not planned yet (the first steps run at the start of the schedule)
    anchor_step: int = 0  # the progress at anchor_step is anchor_progress; it is linear up to total_steps
    anchor_progress: float = 0.0
    spent_s: float = 0.0  # training time of the checkpointed epochs (a resume starts the clock here)
    step_s: float = 0.0  # the last measured time per step
    reserve_s: float = 0.0  # what the run still needs after its last step (final evaluation, last checkpoint)

    # measuring: steps [PROBE_FROM, PROBE_TO) are timed for the first plan (the first ones warm caches up)
    PROBE_FROM = 3
    PROBE_TO = 13

    def progress(self, step: int) -> float:
        """Schedule progress after `step` steps (0 at the start, 1 at the last step)."""
        if not self.total_steps:
            return 0.0
        span = max(self.total_steps - self.anchor_step, 1)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span)

    def lr(self, step: int, lr: float, lr_min: float) -> float:
        """The learning rate of step `step` (0-based): linear warm-up, then cosine to lr_min at the last step."""
        if step < self.warmup_steps:
            return lr * (step + 1) / self.warmup_steps
        if not self.total_steps:
            return lr
        p = self.progress(step + 1)
        w = self.progress(self.warmup_steps) if self.warmup_steps else 0.0
        t = (p - w) / max(1.0 - w, 1e-12)
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    def plan(self, step: int, elapsed_s: float, step_s: float, reserve_s: float) -> None:
        """Size the rest of the schedule: after `step` steps and `elapsed_s` seconds of training, at `step_s`
        per step, with `reserve_s` still needed after the last step. Keeps the progress reached so far."""
        if self.total_steps and step >= self.total_steps:
            return  # the schedule is over: nothing to re-plan
        self.step_s, self.reserve_s = step_s, reserve_s
        if self.total_steps:
            self.anchor_progress, self.anchor_step = self.progress(step), step
        left = self.budget_s - elapsed_s - reserve_s
        more = max(int(left / max(step_s, 1e-9)), 1)
        self.total_steps = max(step + more, self.warmup_steps + 1, step + 1)

    def done(self, step: int) -> bool:
        return bool(self.total_steps) and step >= self.total_steps

    def epochs(self) -> float:
        """The planned length in (fractional) epochs."""
        return self.total_steps / self.steps_per_epoch if self.total_steps else 0.0

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> BudgetPlan:
        return cls(**state)


class BudgetClock:
    """Drives a `BudgetPlan` from a training loop: host-clock timing, with a device sync only at the two ends of
    the probe window (and none on the CPU, whose work is synchronous). After the first plan it re-plans on wall
    time, every `REPLAN_SHARE` of the budget (at least a second), from the step rate since the last re-plan:
    a machine that gets busier mid-run shortens the rest of the schedule within seconds, not at the next log
    point (which may be minutes of slow steps away)."""

    REPLAN_SHARE = 0.02

    def __init__(self, plan: BudgetPlan, sync: Callable[[], None], reserve: Callable[[], float]):
        self.plan, self._sync, self._reserve = plan, sync, reserve
        self._t0 = self._probe_t = 0.0
        self._start_step = self._probe_step = 0
        self._start_elapsed = 0.0
        self._win_step, self._win_t = -1, 0.0  # the re-planning window's start (step, elapsed); -1: none yet

    def start(self, step: int) -> None:
        """Training starts (or resumes) at global step `step`, with `plan.spent_s` already spent."""
        self._t0 = time.perf_counter() - self.plan.spent_s
        self._start_step, self._start_elapsed = step, self.plan.spent_s
        self._probe_step = -1
        self._win_step, self._win_t = (step, self.plan.spent_s) if self.plan.total_steps else (-1, 0.0)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def _replan(self, step: int, step_s: float) -> None:
        reserve = self.plan.reserve_s if self.plan.reserve_s else self._reserve()
        self.plan.plan(step, self.elapsed(), step_s, reserve)
        self._win_step, self._win_t = step, self.elapsed()

    def step_done(self, step: int) -> bool:
        """After each step (`step` = global steps done): probing until the first plan, then re-planning on wall
        time; True once the schedule is over."""
        plan = self.plan
        if not plan.total_steps:
            done_here = step - self._start_step
            if self._probe_step < 0 and (done_here >= plan.PROBE_FROM or self.elapsed() > 0.05 * plan.budget_s):
                self._sync()
                self._probe_t, self._probe_step = time.perf_counter(), step
            elif self._probe_step >= 0 and (
                step - self._probe_step >= plan.PROBE_TO - plan.PROBE_FROM or self.elapsed() > 0.1 * plan.budget_s
            ):
                self._sync()
                self._replan(step, (time.perf_counter() - self._probe_t) / (step - self._probe_step))
        elif self._win_step >= 0 and step > self._win_step and not plan.done(step):
            now = self.elapsed()
            if now - self._win_t >= max(1.0, self.REPLAN_SHARE * plan.budget_s):
                self._replan(step, (now - self._win_t) / (step - self._win_step))
        return plan.done(step)

    def log_point(self, step: int) -> None:
        """Re-plan from the rate since the last re-plan (the loop has just read from the device: every overhead
        of the window is in it)."""
        if self.plan.total_steps and step > max(self._win_step, self._start_step):
            start_step, start_t = (self._win_step, self._win_t) if self._win_step >= 0 else (
                self._start_step, self._start_elapsed)  # fmt: skip
            self._replan(step, (self.elapsed() - start_t) / (step - start_step))


def reserve_s(model, loader, autocast, images: int, sync: Callable[[], None], passes: int = 1) -> float:
    """What a budgeted run needs after its last step: the final test evaluation, timed on one batch and
    scaled to the `images` of the test split and its `passes` over each (2 with --eval-flip), plus 10%, and a
    second for the last checkpoint and results."""
    import torch

    x, _ = next(iter(loader))
    model.eval()
    try:
        with torch.no_grad(), autocast():
            model(x)  # warm
            sync()
            t = time.perf_counter()
            model(x)
            sync()
    finally:
        model.train()
    return (time.perf_counter() - t) / x.shape[0] * images * passes * 1.1 + 1.0
