"""The runtime every long command shares (search, train, bench): device, mixed precision and loss scaling,
the weight step, the learning-rate schedule, seeding and accuracy. It knows no network and no method."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .dist import all_reduce_mean, rank_world
from .errors import ConfigError


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def autocast_factory(amp: str, device: torch.device):
    """A context-manager factory for mixed precision; auto = bf16 on GPU, off on CPU."""
    mode = ("bf16" if device.type == "cuda" else "off") if amp == "auto" else amp
    if mode == "off":
        return contextlib.nullcontext, "off"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), mode


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Losses in at least fp32 under autocast; float64 stays float64 (gradient checks)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def grad_scaler(amp_mode: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 loss scaling: fp16's 5 exponent bits flush gradients below 6e-8 to zero, so the loss is multiplied
    by a scale (2**16 at first, halved after an overflow, doubled after 2000 clean steps) before backward and
    the gradients divided by it before clipping. bf16 (fp32's exponent range) and fp32 get a disabled scaler,
    which changes nothing."""
    return torch.amp.GradScaler(device.type, enabled=amp_mode == "fp16")


def weight_step(loss: torch.Tensor, optimizer, params: list[torch.Tensor], clip: float, scaler) -> str:
    """Backward (of the scaled loss), average the shards (torchrun), unscale, clip to `clip` (0 = off), step.

    Returns "ok"; "overflow" when fp16 gradients overflowed while the loss was scaled up (the scaler skips the
    step and halves its scale: its normal working, not a fault); or "non-finite" (a NaN or infinite loss, or
    non-finite gradients with nothing left to blame on scaling): the step is not taken, --on-nan decides.
    """
    scaler.scale(loss).backward()
    all_reduce_mean([p.grad for p in params if p.grad is not None])  # torchrun: average the shards
    scaler.unscale_(optimizer)  # before clipping: the norm is the true gradient's (no-op without fp16)
    grad_norm = nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    finite_loss = math.isfinite(loss.item())
    if finite_loss and torch.isfinite(grad_norm):
        scaler.step(optimizer)
        scaler.update()
        return "ok"
    overflow = finite_loss and scaler.is_enabled() and scaler.get_scale() > 1.0
    scaler.update()  # an overflow halves the scale
    return "overflow" if overflow else "non-finite"


def accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == y[:, None]).any(dim=1).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, loader, autocast=None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    loss = top1 = top5 = n = 0.0
    for x, y in loader:
        if autocast is not None:
            with autocast():
                logits = upcast(model(x))
        else:
            logits = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        top1 += accuracy(logits, y, 1) * y.shape[0]
        top5 += accuracy(logits, y, 5) * y.shape[0]
        n += y.shape[0]
    model.train(was_training)
    totals = torch.tensor([loss, top1, top5, n], dtype=torch.float64)
    all_reduce_mean([totals])  # torchrun: each rank evaluated its shard; ratios are unaffected by the mean
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1e-12)
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "images": round(n * rank_world()[1])}
