"""Every device-dependent decision of a run in one recorded object: the runtime profile.

A run resolves its profile once (`resolve_profile(device, cfg)`), applies it (`apply()`: cuDNN autotuning,
TF32, the native kernel) and records it in config.json under "runtime". Everything else asks the profile:
which search cells (fast or plain), which optimizers (bnas.optim or torch.optim's fused kernels), which
mixed precision and loss scaling, channels-last, torch.compile.

The profile is named after the device whose choices it makes, "cpu" or "cuda", and is the device's own
unless the environment variable `BNAS_PROFILE` names the other: `BNAS_PROFILE=cuda` on a CPU runs the GPU's
code path (fused optimizers with their `found_inf` masking, bf16 autocast with the plain cells, no native
kernel) wherever it can run on a CPU, so tests and `benchmarks/gpu_check.py --dry-run` execute it without a
GPU (docs/gpu.md). What cannot run on a CPU (cuDNN, TF32) stays off there, and is recorded as off; so is
channels-last with bf16 (see `resolve_profile`: the layout's own code path is the CPU profile's).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError
from .optim import SGD, Adam, FusedAdam, FusedSGD

PROFILES = ("cpu", "cuda")
ENV = "BNAS_PROFILE"  # cpu | cuda | auto (or unset): whose choices a run makes


@dataclass(frozen=True)
class RuntimeProfile:
    """The resolved device-dependent switches of one run (immutable: resolved once, then only read)."""

    name: str  # "cpu" | "cuda": whose choices these are (the device's own unless forced with BNAS_PROFILE)
    device: torch.device  # where the tensors live
    cells: str  # "fast" | "plain": the search cells (a training run: "fast" = fast.TRAINED's shared ReLUs)
    optimizer: str  # "bnas" (bnas.optim) | "torch-fused" (torch.optim, fused=True)
    amp: str  # "off" | "bf16" | "fp16"
    channels_last: bool
    cudnn_benchmark: bool
    tf32: bool
    native_kernel: bool  # fast/native.py's C depthwise weight gradient (CPU profile on a CPU)
    compile: str = "off"  # off, or the torch.compile backend of the cells

    @property
    def forced(self) -> bool:
        """Whether the profile is not the device's own (BNAS_PROFILE)."""
        return self.name != ("cuda" if self.device.type == "cuda" else "cpu")

    @property
    def loss_scaling(self) -> bool:
        """fp16 only: bf16 and fp32 have fp32's exponent range (runtime.grad_scaler)."""
        return self.amp == "fp16"

    def apply(self) -> RuntimeProfile:
        """Set the process-wide switches the profile decides (once per run): on a CUDA device cuDNN autotuning
        and TF32 (a CPU run changes neither), and whether the native kernel may run. Returns the profile."""
        from .fast import native

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            if self.tf32:
                torch.backends.cudnn.allow_tf32 = True
                torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matrix products
        native.set_enabled(self.native_kernel)
        return self

    def autocast(self) -> AbstractContextManager:
        """The mixed-precision block of a forward (a new context per use; none with amp off)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for one loss: enabled with fp16 only (runtime.grad_scaler explains why)."""
        from .runtime import grad_scaler

        return grad_scaler(self.amp, self.device)

    def sgd(self, params: Iterable[torch.Tensor], lr: float, momentum: float, weight_decay: float):
        """torch.optim's fused SGD (one launch for all parameters, masked through found_inf) in the CUDA
        profile; bnas.optim's (the same arithmetic, no torch._dynamo import: 150 MB less) in the CPU's."""
        if self.optimizer == "torch-fused":
            return FusedSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def adam(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float], weight_decay: float):
        """Adam of the profile's kind (see `sgd`)."""
        if self.optimizer == "torch-fused":
            return FusedAdam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        return Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)

    def record(self) -> dict[str, Any]:
        """What config.json records under "runtime"."""
        return {
            "profile": self.name, "cudnn_benchmark": self.cudnn_benchmark, "tf32": self.tf32,
            "optimizer": self.optimizer, "cells": self.cells, "channels_last": self.channels_last,
            "amp": self.amp, "native_kernel": self.native_kernel,
        }  # fmt: skip


def profile_name(device: torch.device, name: str | None = None) -> str:
    """The profile a run on `device` takes: `name`, else $BNAS_PROFILE, else the device's own."""
    name = name or os.environ.get(ENV, "").strip().lower() or "auto"
    if name == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    if name not in PROFILES:
        raise ConfigError(f"{ENV}={name!r} is not a runtime profile; choose one of auto, {', '.join(PROFILES)}")
    return name


def resolve_profile(
    device: torch.device | str,
    cfg: Any = None,
    *,
    kind: str = "search",
    name: str | None = None,
    **fields: Any,
) -> RuntimeProfile:
    """The profile of a run: from the device, the profile's name (`name`, $BNAS_PROFILE or the device's) and
    the run's switches, read from `cfg` (a SearchConfig, TrainConfig or anything with those attributes) and
    `fields` (which win): amp (auto | off | bf16 | fp16), channels_last (auto | on | off), fast (None = auto),
    compile (off | a backend), deterministic. `kind`: "search" (fast search cells on the CPU profile only:
    they are unmeasured on a GPU, benchmarks/gpu_check.py decides) or "train" (fast.TRAINED unless --no-fast)."""
    device = torch.device(device)

    def get(key: str, default: Any) -> Any:
        return fields[key] if key in fields else getattr(cfg, key, default)

    which = profile_name(device, name)
    on_cuda = device.type == "cuda"
    amp, fast, compile_ = get("amp", "auto"), get("fast", None), get("compile", "off") or "off"
    deterministic = bool(get("deterministic", False))
    amp = ("bf16" if which == "cuda" else "off") if amp == "auto" else amp
    # channels-last: on unless off, but auto is off for mixed precision on a CPU under the CUDA profile: oneDNN's
    # bf16 channels-last depthwise dilated convolutions return NaN weight gradients there and can crash the
    # process (torch 2.14, AVX2; the same layout in fp32, and bf16 in the default layout, are right)
    layout = get("channels_last", "auto")
    channels_last = layout == "on" or (layout == "auto" and not (which == "cuda" and not on_cuda and amp != "off"))
    if kind == "search":
        cells = fast if fast is not None else which == "cpu"
    elif kind == "train":
        cells = fast is not False
    else:
        raise ValueError(f"kind must be search or train, not {kind!r}")
    return RuntimeProfile(
        name=which,
        device=device,
        cells="fast" if cells and compile_ == "off" else "plain",  # compiled networks use the plain cells
        optimizer="torch-fused" if which == "cuda" else "bnas",
        amp=amp,
        channels_last=channels_last,
        cudnn_benchmark=which == "cuda" and on_cuda and not deterministic,
        tf32=which == "cuda" and on_cuda,
        native_kernel=which == "cpu" and device.type == "cpu",
        compile=compile_,
    )
