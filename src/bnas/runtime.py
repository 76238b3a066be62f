"""The runtime every long command shares (search, train, bench): device, loss scaling, the weight step, the
learning-rate schedule, seeding and accuracy. It knows no network and no method. Which optimizers, mixed
precision, cells and backend switches a device gets is decided once per run in its profile (profile.py)."""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .dist import all_reduce_mean, rank_world
from .errors import ConfigError
from .optim import masked_step


def cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float, warmup: int = 0) -> float:
    """Weight learning rate of an epoch: linear warm-up, then cosine from lr to lr_min."""
    if epoch < warmup:
        return lr * (epoch + 1) / warmup
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * epoch / epochs))


def set_deterministic() -> None:
    """Deterministic kernels on GPU (cuDNN without autotuning, deterministic cuBLAS workspace)."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def synchronize(device: torch.device) -> None:
    """Wait for the device (CUDA; the CPU's work is synchronous): for timing, never inside a step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' was asked for but no CUDA GPU is available; use device='cpu'", options=("device",)
        )
    return torch.device(name)


def compile_regions(model: nn.Module, region: type[nn.Module], backend: str) -> int:
    """Regional compilation: torch.compile each `region` module (the cells) of the network in place (parameter
    names, checkpoints and functional_call unchanged) instead of the whole network. Cells share their forward
    code, so dynamo traces a cell once per distinct structure and shape rather than one huge graph; its
    per-code recompile limit is raised to what the network's cells can need. Returns the count."""
    import torch._dynamo

    cells = [m for m in model.modules() if isinstance(m, region)]
    limit = max(len(cells) * 2, 8)  # x2: a last, smaller batch may trace each variant once more
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for cell in cells:
        cell.compile(backend=backend)
    return len(cells)


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Losses in at least fp32 under autocast; float64 stays float64 (gradient checks)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def grad_scaler(amp_mode: str, device: torch.device) -> torch.amp.GradScaler:  # (the profile's amp mode)
    """fp16 loss scaling: fp16's 5 exponent bits flush gradients below 6e-8 to zero, so the loss is multiplied
    by a scale (2**16 at first, halved after an overflow, doubled after 2000 clean steps) before backward and
    the gradients divided by it before clipping. bf16 (fp32's exponent range) and fp32 get a disabled scaler,
    which changes nothing."""
    return torch.amp.GradScaler(device.type, enabled=amp_mode == "fp16")


class StepResult(NamedTuple):
    """What a guarded step did, as 0-dim bool tensors on the device (reading them is a host sync: the loops
    add them to a `Tally` and read that at log points)."""

    ok: torch.Tensor  # the update was applied
    overflow: torch.Tensor  # fp16: skipped because the scaled gradients overflowed (the scaler's normal working)


def guarded_step(loss: torch.Tensor, optimizer, params: list[torch.Tensor], clip: float, scaler) -> StepResult:
    """Unscale (fp16), clip to `clip` (0 = off), and update only where the loss and the gradients are finite,
    decided on the device: the optimizer's masked step keeps parameters and moments as they were otherwise.

    A skipped fp16 step with a finite loss and a loss scale above 1 is an overflow: the scaler lowers its
    scale and the run goes on. Any other skipped step is non-finite (a NaN loss, or gradients that no
    scaling explains): --on-nan decides, at the next log point.
    """
    finite_loss = torch.isfinite(loss.detach())
    overflow = torch.zeros((), dtype=torch.bool, device=finite_loss.device)
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # before clipping: the norm is the true gradient's
        overflow = finite_loss & (scaler._scale > 1.0)  # read before update() halves it
    grads = [p.grad for p in params if p.grad is not None]
    if clip > 0:
        norm = nn.utils.clip_grad_norm_(params, clip)
    else:  # the norm only to find non-finite gradients: one reduction, no pass that multiplies by 1
        norm = nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=finite_loss.device)
    ok = finite_loss & torch.isfinite(norm)
    masked_step(optimizer, ok)
    if scaler.is_enabled():
        scaler.update()  # from the found-inf flags unscale_ left on the device: an overflow halves the scale
    return StepResult(ok, overflow & ~ok)


def weight_step(
    loss: torch.Tensor, optimizer, params: list[torch.Tensor], clip: float, scaler, reduce: bool = True
) -> StepResult:
    """Backward of the (scaled) loss into `params` only (autograd computes no other gradient), average the
    shards under torchrun (`reduce`: False when DistributedDataParallel did it during backward), then
    `guarded_step`."""
    scaler.scale(loss).backward(inputs=params)
    if reduce:
        all_reduce_mean([p.grad for p in params if p.grad is not None])
    return guarded_step(loss, optimizer, params, clip, scaler)


class Tally:
    """Per-step figures summed on the device, read by the host once per log point (`read`): a loop that adds
    to a tally between log points never waits for the device, and copies nothing to it (numbers are added
    as kernel arguments, not as tensors made on the host)."""

    def __init__(self, device: torch.device, names: tuple[str, ...]):
        self._dtype = torch.float32 if device.type == "mps" else torch.float64
        self._device = device
        self.sums = {n: torch.zeros((), dtype=self._dtype, device=device) for n in names}

    def add(self, **values: torch.Tensor | float) -> None:
        for name, v in values.items():
            self.sums[name].add_(v)

    def first(self, name: str, cond: torch.Tensor, value: float) -> None:
        """Keep `value` under `name` the first time `cond` holds (inf until then): the step of a first fault."""
        held = self.sums.get(name)
        if held is None:
            held = self.sums[name] = torch.full((), float("inf"), dtype=self._dtype, device=self._device)
        held.masked_fill_(cond & torch.isinf(held), value)

    def read(self) -> dict[str, float]:
        """The sums so far (one device-to-host copy)."""
        return dict(zip(self.sums, torch.stack(list(self.sums.values())).tolist(), strict=True))


STEP_FIGURES = ("train_loss", "train_correct", "steps", "images", "bad", "overflow")  # a weight step's tally


def read_log_point(tally: Tally, run, epoch: int, step: int | None, last: dict[str, float]) -> dict[str, float]:
    """The one host read of a log point: the tally's sums (with the epoch's mean loss and accuracy so far)
    and, at a step (`step` given), a "step" record of the mean loss since the `last` log point."""
    sums = tally.read()
    if step is not None and run is not None:
        window = max(sums["steps"] - last.get("steps", 0.0), 1)
        run.log({"kind": "step", "epoch": epoch, "step": step,
                 "train_loss": (sums["train_loss"] - last.get("train_loss", 0.0)) / window})  # fmt: skip
    sums["mean_loss"] = sums["train_loss"] / max(sums["steps"], 1)
    sums["mean_acc"] = sums["train_correct"] / max(sums["images"], 1)
    return sums


def correct(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> torch.Tensor:
    """How many of the batch have their label among the top k logits: a 0-dim tensor on the device."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == y[:, None]).any(dim=1).sum()


def accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy of a batch as a number (a host read: for tests and one-off checks, not the loops)."""
    return correct(logits, y, k).item() / y.shape[0]


@torch.no_grad()
def evaluate(model: nn.Module, loader, autocast=None, flip: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 over a loader, summed on the model's device and read once at the end; under
    torchrun every rank evaluated its shard, and the sums are combined there (nccl takes device tensors only).
    `flip`: the logits are the mean of the image's and its mirror image's (test-time augmentation)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tally = Tally(device, ("loss", "top1", "top5", "n"))
    for x, y in loader:
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = upcast(model(x))
            if flip:
                logits = 0.5 * (logits + upcast(model(x.flip(3))))
        tally.add(loss=F.cross_entropy(logits.float(), y, reduction="sum"), top1=correct(logits, y, 1),
                  top5=correct(logits, y, 5), n=y.shape[0])  # fmt: skip
    model.train(was_training)
    totals = torch.stack(list(tally.sums.values()))
    all_reduce_mean([totals])  # a mean of sums: the ratios below are unaffected
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1e-12)
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "images": round(n * rank_world()[1])}
