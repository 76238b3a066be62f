"""Throughput and memory of a search step and of a training step, behind `bnas bench` (issue 7).

A search step is `search.SearchStep`, the object the run core calls per batch of a search: one architecture
step on a validation batch (first or second order) and one weight step on a training batch, on random
CIFAR-shaped data with the SPEC §7 configuration of the chosen method. A training step is `train.TrainStep`,
the training's step, on the trained network of a genotype (SPEC §8-9). Both are built with the device
decisions a run makes (`runcore.device_parts`). Steps are timed after a warm-up; `images_per_s` is the
images a step consumes over the median step time: 2 x batch for a search step (a training and a validation
batch; a CIFAR-10 search epoch is 25,000 of each, so it takes 50,000 / images_per_s seconds), the batch
for a training step.
Peak memory is the process's peak resident set on the CPU (so run one configuration per process, as the
CLI does) and the peak allocated memory on a GPU. `cpu_s` (process CPU time per step) is recorded too:
on a machine shared with other jobs it moves less than the wall time.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import fast
from .errors import ConfigError
from .genotype import get_genotype
from .runcore import DeviceParts, device_parts
from .runtime import Tally, pick_device, upcast
from .search import SearchConfig, SearchStep
from .space import SuperNet, build_network, count_parameters
from .train import TrainStep

# SPEC §8: the trained networks of each space (CIFAR); DARTS' evaluation network for darts genotypes
TRAIN_SHAPES = {"bcnn": dict(channels=48, layers=6, enhance=2), "darts": dict(channels=36, layers=20, enhance=0)}


@dataclass
class BenchConfig:
    """One benchmark configuration; the switches default to the fast ones."""

    kind: str = "search"  # search | train
    method: str = "clr"
    space: str = "bcnn"
    order: int = 1
    genotype: str = "BNASv2_CLR_v1"  # train
    batch_size: int = 32
    init_channels: int = 0  # 0 = the method's (16) or the trained network's default
    steps: int = 5
    warmup: int = 2
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    seed: int = 0
    # speed switches
    fast: bool = True  # per-source-state search cells (fast.cells); False = the plain per-edge forward
    batch_edges: bool = True  # fast cells: one call per operation for all edges leaving a state
    channels_last: str = "auto"  # auto (on) | on | off
    amp: str = "off"  # off | bf16 | fp16 | auto (bf16 on GPU, off on CPU)
    arch_grads: str = "alpha"  # alpha: autograd for the architecture parameters only; all: full backward
    weight_grads: str = "weights"  # weights: the weight step skips alpha gradients; all: plain backward()
    compile: bool = False  # torch.compile the network
    torch_optim: bool = False  # torch.optim's SGD/Adam as the published code (imports torch._dynamo: +150 MB)

    def validate(self) -> None:
        if self.kind not in ("search", "train"):
            raise ConfigError(f"bench kind must be search or train, got {self.kind!r}")
        if self.steps < 1 or self.warmup < 0:
            raise ConfigError(f"--steps must be at least 1 and --warmup at least 0 (got {self.steps}, {self.warmup})")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2 (BatchNorm needs a batch), got {self.batch_size}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ConfigError(f"--channels-last must be auto, on or off, got {self.channels_last!r}")
        if self.arch_grads not in ("alpha", "all") or self.weight_grads not in ("weights", "all"):
            raise ConfigError("--arch-grads must be alpha or all and --weight-grads weights or all")


def device_name(device: torch.device) -> str:
    """The CPU model (from /proc/cpuinfo) or the GPU name: every figure is paired with its hardware."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """The process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if platform.system() == "Darwin" else 2**10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, n_warmup: int, n_steps: int, device: torch.device) -> tuple[list[float], list[float], float]:
    """Wall and CPU times of `n_steps` steps after `n_warmup` untimed ones, and the warm-up's total wall time
    (with --compile: mostly compilation)."""
    t = time.perf_counter()
    for _ in range(n_warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - t
    wall, cpu = [], []
    for _ in range(n_steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu, warmup_s


def _batches(n: int, batch: int, in_channels: int, size: int, device: torch.device, cl: bool):
    """Random CIFAR-shaped batches, made before timing (normalised images are roughly standard normal)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, in_channels, size, size, generator=gen).to(device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x, torch.randint(0, 10, (batch,), generator=gen).to(device)))
    return out


def _setup(cfg: BenchConfig) -> tuple[torch.device, bool]:
    cfg.validate()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return device, cfg.channels_last in ("auto", "on")


def _device_parts(cfg: BenchConfig, device: torch.device, amp: str) -> DeviceParts:
    """The run's device decisions (runcore.device_parts), with torch.optim's plain optimizers for --torch-optim."""
    parts = device_parts(device, amp, cfg.channels_last)
    if cfg.torch_optim:
        parts.optimizer = "torch"
    return parts


def bench_search(cfg: BenchConfig) -> dict[str, Any]:
    """Time full search steps (architecture step + weight step) of a method's SPEC §7 configuration: the
    `SearchStep` a search runs, built as `Searcher` builds it."""
    device, cl = _setup(cfg)
    overrides = dict(space=cfg.space, order=cfg.order, batch_size=cfg.batch_size, device=str(device), amp=cfg.amp)
    if cfg.init_channels:
        overrides["init_channels"] = cfg.init_channels
    scfg = SearchConfig.resolve(cfg.method, **overrides)
    use_fast = cfg.fast and not cfg.compile  # as bnas search: compiled networks use the plain cells
    parts = _device_parts(cfg, device, scfg.amp)
    backend = fast.FastBackend(batch_edges=cfg.batch_edges) if use_fast else None  # this run's switches only
    supernet = SuperNet(scfg.space_config(10, 3), backend)
    # as `bnas search --compile inductor`: each cell, in place
    model = parts.place(supernet, "inductor" if cfg.compile else "off", supernet.net)
    search_step = SearchStep.build(scfg, model, parts)
    architect, w_opt, autocast = search_step.architect, search_step.w_optimizer, parts.autocast
    if cfg.torch_optim:  # the architect makes its Adam by device (architect.py): torch.optim's instead
        architect.optimizer = torch.optim.Adam(
            model.arch_parameters(), lr=scfg.arch_lr, betas=scfg.arch_betas, weight_decay=scfg.arch_weight_decay
        )
    weights, arch = model.weight_parameters(), model.arch_parameters()
    data = _batches(2 * (cfg.warmup + cfg.steps), cfg.batch_size, 3, 32, device, cl)
    it = iter(range(len(data) // 2))
    model.train()
    tally = Tally(device, SearchStep.FIGURES)
    published = cfg.arch_grads == "all" or cfg.weight_grads == "all"  # the published code's full backward()s

    def step() -> None:
        i = next(it)
        (x, y), (xv, yv) = data[2 * i], data[2 * i + 1]
        if not published:  # what `bnas search` runs, step for step (the run core calls the same object)
            search_step(x, y, xv, yv, scfg.lr, tally, i)
            return
        if cfg.arch_grads == "all" and cfg.order == 1:  # backward() through everything, as the published code
            with autocast(), fast.backward_once():
                arch_logits = model(xv)
            F.cross_entropy(upcast(arch_logits), yv).backward()
            for p in weights:
                p.grad = None
            architect.optimizer.step()
            architect.optimizer.zero_grad(set_to_none=True)
        else:
            architect.step(x, y, xv, yv, scfg.lr)
        w_opt.zero_grad(set_to_none=True)
        with autocast(), fast.backward_once():
            logits = model(x)
        loss = F.cross_entropy(upcast(logits), y)
        loss.backward(inputs=weights if cfg.weight_grads == "weights" else None)
        nn.utils.clip_grad_norm_(weights, scfg.grad_clip)
        w_opt.step()
        model.zero_grad(set_to_none=True)

    base = peak_rss_mb()
    wall, cpu, warmup_s = _timed(step, cfg.warmup, cfg.steps, device)
    return _result(cfg, device, wall, cpu, base, parts.amp_mode, cl) | {
        "warmup_s": warmup_s,
        "method": cfg.method,
        "space": cfg.space,
        "order": cfg.order,
        "init_channels": scfg.init_channels,
        "partial_k": scfg.partial_k,
        "weights": sum(p.numel() for p in weights),
        "arch_params": sum(p.numel() for p in arch),
    }


def bench_train(cfg: BenchConfig) -> dict[str, Any]:
    """Time the `TrainStep` a training runs, on a genotype's trained network (SPEC §8 shape, drop-path on,
    gradient clip 5, no label smoothing or auxiliary head)."""
    device, cl = _setup(cfg)
    genotype = get_genotype(cfg.genotype)
    shape = dict(TRAIN_SHAPES[genotype.space])
    if cfg.init_channels:
        shape["channels"] = cfg.init_channels
    backend = fast.TRAINED if cfg.fast and not cfg.compile else None  # as `bnas train` (auto)
    if genotype.space == "bcnn":
        net = build_network(genotype, shape["channels"], shape["layers"], shape["enhance"], backend=backend)
    else:
        net = build_network(genotype, shape["channels"], shape["layers"], backend=backend)
    parts = _device_parts(cfg, device, cfg.amp)
    net = parts.place(net, "inductor" if cfg.compile else "off")  # as `bnas train --compile inductor`
    net.train()
    net.drop_prob = 0.15  # mid-run of the recipe's 0.3 x epoch / epochs
    opt = parts.sgd(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    train_step = TrainStep(net, opt, parts.scaler(), parts.autocast, grad_clip=5.0)
    tally = Tally(device, TrainStep.FIGURES)
    data = _batches(cfg.warmup + cfg.steps, cfg.batch_size, 3, 32, device, cl)
    it = iter(enumerate(data))

    def step() -> None:
        i, (x, y) = next(it)
        train_step(x, y, tally, i)

    base = peak_rss_mb()
    wall, cpu, warmup_s = _timed(step, cfg.warmup, cfg.steps, device)
    return _result(cfg, device, wall, cpu, base, parts.amp_mode, cl) | {
        "warmup_s": warmup_s,
        "genotype": cfg.genotype,
        "init_channels": shape["channels"],
        "weights": count_parameters(net),
    }


def _result(cfg, device, wall, cpu, base_mb, amp_mode, cl) -> dict[str, Any]:
    med = statistics.median(wall)
    images = 2 * cfg.batch_size if cfg.kind == "search" else cfg.batch_size
    if device.type == "cuda":
        peak, base = torch.cuda.max_memory_allocated(device) / 2**20, None
    else:
        peak, base = peak_rss_mb(), base_mb
    return {
        "kind": cfg.kind,
        "images_per_s": images / med,
        "images_per_step": images,
        "step_s": {"median": med, "min": min(wall), "max": max(wall)},
        "cpu_s": {"median": statistics.median(cpu), "min": min(cpu)},
        "peak_memory_mb": peak,
        "start_memory_mb": base,  # CPU: resident set before the first step (libraries, model, data)
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "switches": {
            "fast": cfg.fast and not cfg.compile,
            "batch_edges": cfg.batch_edges,
            "channels_last": cl,
            "amp": amp_mode,
            "arch_grads": cfg.arch_grads,
            "weight_grads": cfg.weight_grads,
            "compile": cfg.compile,
            "torch_optim": cfg.torch_optim,
            "native_depthwise_grad": _native_on(),
            "glibc_tcache": "off" if "tcache_count=0" in os.environ.get("GLIBC_TUNABLES", "") else "on",
            "glibc_heap_only": "mmap_max=0" in os.environ.get("GLIBC_TUNABLES", ""),
        },
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _native_on() -> bool:
    from .fast import native

    return native.library() is not None


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run one benchmark configuration (in this process) and return its record."""
    return bench_search(cfg) if cfg.kind == "search" else bench_train(cfg)
