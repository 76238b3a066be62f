"""One prepared GPU check (issue 14, item 6): correctness on CUDA first, then speed, in one timed run.

A GPU session has a few minutes of device time, machine start included, so the run is built to leave figures
whatever happens: every check runs on its own (try/except and a time limit), `gpu_check.json` and
`gpu_check.md` are rewritten after every check (a killed run keeps what it measured, the check it was in
marked `running`), and checks that would start after `--budget-s` are recorded as `skipped (budget)`.

    python benchmarks/gpu_check.py --out gpu-check/              # one GPU, about 7 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc       # the same code paths on the CPU, tiny shapes
    python benchmarks/gpu_check.py --only 'bench_*' --out gc2/   # a subset (fnmatch patterns, comma-separated)

The checks, in order: the environment; fast vs plain gradients in fp32 (TF32 off) of the CLR and PC
supernets; a few search steps of every method x order under `torch.cuda.set_sync_debug_mode("error")` (the
first host sync and where it is), with every sync site listed from "warn" mode; bf16 search and training
losses finite; torchrun (1 process) through `bnas train` + `bnas eval` + results.json, and an all-reduce on
the distributed backend (nccl); benchmarks, one process per configuration, the most telling first (fast and
plain cells, channels-last on, both methods, order 1); a real search epoch of CLR (the Searcher loop with its
evaluation); and the projected wall time of a 50-epoch CIFAR-10 CLR search. With `--dry-run` (CPU, batch 4,
C=4, 1-2 steps, gloo) every check but a subset of the benchmarks runs, in under a minute; the compiled
benchmarks are left out there (the worker would compile with the eager backend, but dynamo's tracing of a
supernet alone takes 20 s on this CPU). A dry run runs under the CUDA runtime profile forced on the CPU
(`BNAS_PROFILE=cuda` unless set otherwise, bnas/profile.py): the GPU's fused optimizers, bf16 autocast with the
plain cells and no native kernel, as a GPU run resolves them. tests/test_gpu_check.py runs it. The exit status
is 0 whenever the files were written: a failed check is a finding in them, not a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if (SRC / "bnas").is_dir():  # a checkout runs its own tree, installed or not
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

EPOCHS = 50  # the search being projected: 50 epochs of CIFAR-10 (SPEC §7)
CIFAR_SPLIT = 25_000  # images in each half of CIFAR-10's training set (weights / architecture)
GRAD_RTOL = 1e-3  # fast vs plain, fp32: max |a - b| / max |a| per tensor (tests/test_fast.py: 1e-4 / 1e-3 on CPU)
PAPER_MIN = 72.0  # 0.05 GPU-days
GOAL_MIN = 10.0  # on one H100-class GPU


# ----------------------------------------------------------------------------------------------- setup


@dataclass
class Shapes:
    """The sizes of one run: real ones on a GPU, tiny ones for --dry-run on a CPU."""

    grad_batch: int
    grad_channels: int
    grad_size: int
    sync_batch: int
    sync_channels: int
    sync_steps: int  # search steps per epoch of the sync and bf16 checks
    bench_steps: int
    bench_warmup: int
    bench_channels: int  # 0 = the configuration's own (SPEC §7 / §8)
    search_batch: dict[str, int]  # per method
    train_batch: int
    train_channels: int
    epoch_steps: int  # steps of the measured real search epoch


def shapes(dry_run: bool, steps: int | None, warmup: int | None) -> Shapes:
    from bnas.search import METHODS
    from bnas.train import TrainConfig

    if dry_run:
        return Shapes(
            4, 4, 16, 4, 4, 1, steps or 1, 1 if warmup is None else warmup, 4, dict.fromkeys(METHODS, 4), 4, 8, 2
        )
    return Shapes(
        16, 16, 32, 32, 16, 2, steps or 5, 2 if warmup is None else warmup, 0,
        {m: p["batch_size"] for m, p in METHODS.items()}, TrainConfig().batch_size, 0, 6,
    )  # fmt: skip


@dataclass
class Check:
    name: str
    fn: Callable[[Ctx], dict[str, Any]]
    kind: str = "check"  # check | bench | projection
    cap_s: float = 120.0  # the longest this check may run
    min_s: float = 5.0  # not started with less budget left than this
    dry_run: bool = True  # runs under --dry-run
    always: bool = False  # runs even past the budget (cheap: reads earlier results)
    child: bool = False  # runs a child process, which its own timeout ends first


@dataclass
class Ctx:
    args: argparse.Namespace
    device: torch.device
    s: Shapes
    tmp: Path
    t0: float
    record: dict[str, Any] = field(default_factory=dict)
    current: str = ""  # the check running now (names the log of a failed child)

    @property
    def dry(self) -> bool:
        return self.args.dry_run

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH", "")
        return dict(os.environ, PYTHONPATH=str(SRC) + (os.pathsep + path if path else ""))

    def sub(self, cmd: list[str], cap: float) -> subprocess.CompletedProcess:
        """A child process bounded by the check's cap and the budget; a failure raises with its last line."""
        limit = max(5.0, min(cap, self.left()))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=limit, cwd=ROOT)
        except subprocess.TimeoutExpired as e:
            self._log(cmd, e.stdout, e.stderr)
            raise TimeoutError(f"timed out after {limit:.0f} s: {' '.join(cmd[1:6])} ...") from None
        if done.returncode:
            self._log(cmd, done.stdout, done.stderr)
            lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            # torchrun ends with its own summary: the worker's exception line says more
            ours = [ln for ln in lines if ln.startswith("bnas: error")]
            errors = [ln for ln in lines if re.match(r"^(\w+\.)*\w*(Error|Exception)\b", ln) and "elastic" not in ln]
            raise RuntimeError(f"exit {done.returncode}: {(ours or errors or lines or ['no output'])[-1]}")
        return done

    def _log(self, cmd: list[str], stdout: str | bytes | None, stderr: str | bytes | None) -> None:
        """A failed child's output, kept beside the results (its last 20,000 characters of each stream)."""
        logs = Path(self.args.out) / "logs"
        logs.mkdir(exist_ok=True)
        text = [" ".join(cmd)]
        for name, stream in (("stdout", stdout), ("stderr", stderr)):
            if isinstance(stream, bytes):
                stream = stream.decode(errors="replace")
            text += [f"--- {name}", (stream or "")[-20_000:]]
        (logs / f"{self.current or 'child'}.txt").write_text("\n".join(text))

    def result(self, name: str) -> dict[str, Any] | None:
        for c in self.record.get("checks", []):
            if c["name"] == name and c["status"] == "ok":
                return c["result"]
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NoBar:
    def update(self, **_: Any) -> None:
        pass


def _sync_debug(mode: str | int, device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(mode)


def _ours(filename: str) -> bool:
    """A frame of the bnas package (not of torch, nor of this script)."""
    import bnas

    return os.path.abspath(filename).startswith(os.path.dirname(os.path.abspath(bnas.__file__)) + os.sep)


def _frame(frames: list[traceback.FrameSummary]) -> str:
    """The innermost bnas frame (else the innermost one) as file:line (function: code)."""
    ours = [f for f in frames if _ours(f.filename)] or frames
    if not ours:
        return "?"
    f = ours[-1]
    return f"{_rel(f.filename)}:{f.lineno} ({f.name}: {(f.line or '').strip()[:80]})"


def _where(exc: BaseException) -> str:
    return _frame(traceback.extract_tb(exc.__traceback__))


@contextlib.contextmanager
def _sync_sites(device: torch.device):
    """Every host sync under sync-debug "warn", counted by the bnas line that caused it (the whole stack is
    read when the warning is issued: the warning's own location is often inside torch)."""
    sites: Counter[str] = Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            stack = [f for f in traceback.extract_stack() if f.filename != warnings.__file__]
            sites[_frame(stack[:-1])] += 1  # not this function

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        _sync_debug("warn", device)
        try:
            yield sites
        finally:
            _sync_debug(0, device)


def _rel(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(ROOT))
    return path


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


# ------------------------------------------------------------------------------------------- the checks


def check_environment(ctx: Ctx) -> dict[str, Any]:
    """What every figure is paired with: the GPU, the CUDA stack and the numerics switches."""
    from bnas.bench import device_name
    from bnas.profile import ENV, resolve_profile

    def flag(get: Callable[[], Any]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch >= 2.9 deprecates allow_tf32 for fp32_precision
            try:
                return get()
            except Exception as e:  # an API this torch lacks
                return f"n/a ({type(e).__name__})"

    env: dict[str, Any] = {
        "device": str(ctx.device),
        "device_name": device_name(ctx.device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": flag(lambda: torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": flag(lambda: torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_threads": torch.get_num_threads(),
        "commit": _git_commit(),
        # what a run here resolves to (bnas.profile): the device's own, or the one $BNAS_PROFILE forces
        "profile": resolve_profile(ctx.device).record() | {"forced_by": os.environ.get(ENV) or None},
    }
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2**30, 1))
        with contextlib.suppress(Exception):
            q = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            env["nvidia_smi"] = subprocess.run(q, capture_output=True, text=True, timeout=15).stdout.strip()
    return env


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "-uno"], capture_output=True, text=True
        )
        if done.returncode == 0:
            return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return None


@contextlib.contextmanager
def _tf32_off():
    """fp32 means fp32 for the gradient comparison: TF32 matmuls/convolutions differ in the 4th digit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_gradients(ctx: Ctx, method: str) -> dict[str, Any]:
    """The fast cells (channels-last) against the plain per-edge cells (channels-first) on the device: same
    weights and non-uniform alphas, one fp32 forward/backward, every gradient compared (tests/test_fast.py
    does this on the CPU; GPU kernels are other code)."""
    from bnas.fast import BACKEND, backward_once
    from bnas.search import SearchConfig
    from bnas.space import SuperNet

    s, dev = ctx.s, ctx.device
    space = SearchConfig.resolve(method, init_channels=s.grad_channels).space_config(10, 3)
    torch.manual_seed(0)
    plain = SuperNet(space)
    with torch.no_grad():
        for a in plain.arch_parameters():
            a.normal_()
    fastnet = SuperNet(space, BACKEND)
    fastnet.load_state_dict(plain.state_dict())
    plain, fastnet = plain.to(dev), fastnet.to(dev).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(s.grad_batch, 3, s.grad_size, s.grad_size, generator=gen).to(dev)
    y = (torch.arange(s.grad_batch) % 10).to(dev)

    def grads(model, inp):
        with backward_once():  # as the search steps run it
            loss = F.cross_entropy(model(inp), y)
        names = [n for n, _ in model.named_parameters()]
        return loss.detach(), dict(zip(names, torch.autograd.grad(loss, list(model.parameters())), strict=True))

    with _tf32_off():
        loss_p, g_p = grads(plain, x)
        loss_f, g_f = grads(fastnet, x.contiguous(memory_format=torch.channels_last))
    errors = {n: float((g_p[n] - g_f[n]).abs().max() / g_p[n].abs().max().clamp_min(1e-12)) for n in g_p}
    arch = {n: e for n, e in errors.items() if n.startswith("arch.")}
    weights = {n: e for n, e in errors.items() if not n.startswith("arch.")}
    worst = max(errors, key=errors.get)
    out = {
        "batch": s.grad_batch, "channels": s.grad_channels, "size": s.grad_size, "partial_k": space.partial_k,
        "loss_rel_err": float((loss_p - loss_f).abs() / loss_p.abs()),
        "arch_max_rel_err": max(arch.values()), "weight_max_rel_err": max(weights.values()),
        "worst": worst, "tensors": len(errors), "tolerance": GRAD_RTOL, "tf32": "off",
        "arch_grads_nonzero": all(bool(g_p[n].abs().sum() > 0) for n in arch),
    }  # fmt: skip
    bad = max(out["arch_max_rel_err"], out["weight_max_rel_err"], out["loss_rel_err"])
    if not (bad < GRAD_RTOL and out["arch_grads_nonzero"]):
        out["finding"] = f"fast vs plain relative error {bad:.2e} (worst {worst}) over {GRAD_RTOL:g}"
    return out


def _search_config(ctx: Ctx, method: str, order: int, name: str, steps: int = 0, **kw: Any):
    """A synthetic search of `steps` steps per epoch with the data on the device, architecture steps on."""
    from bnas.data.splits import search_images_needed
    from bnas.search import SearchConfig

    batch = kw.pop("batch_size", ctx.s.sync_batch)
    steps = steps or ctx.s.sync_steps
    kw.setdefault("init_channels", ctx.s.sync_channels)
    size = max(2 * steps * batch, search_images_needed(batch, 0.5) or 0)
    return SearchConfig.resolve(
        method, order=order, dataset="synthetic", synthetic_size=size, batch_size=batch, epochs=kw.pop("epochs", 2),
        arch_start_epoch=0, eval_every=0, log_every=0, quiet=True, device=str(ctx.device),
        out=str(ctx.tmp / name), **kw,
    )  # fmt: skip


def check_sync(ctx: Ctx, method: str, order: int) -> dict[str, Any]:
    """Search steps with every host sync an error: the first one and where it is. Then the same under "warn"
    to list every sync site with its count, and the evaluation loop (reported, not judged)."""
    from bnas.search import Searcher

    searcher = Searcher(_search_config(ctx, method, order, f"sync-{method}-{order}"))
    dev = ctx.device
    if dev.type == "cuda":  # warm-up outside the debug mode: first-call allocations, cuDNN handles
        searcher.train_epoch(0, _NoBar())
        _sync(dev)
    profile = searcher.profile
    out: dict[str, Any] = {"profile": profile.name, "optimizer": profile.optimizer, "cells": profile.cells,
                           "amp": searcher.amp_mode, "steps": len(searcher.train_loader),
                           "checked": dev.type == "cuda"}  # fmt: skip
    for phase, call in (("train", lambda: searcher.train_epoch(1, _NoBar())), ("eval", searcher.evaluate)):
        try:
            _sync_debug("error", dev)
            try:
                call()
            finally:
                _sync_debug(0, dev)
            out[f"{phase}_sync"] = None
        except Exception as e:  # the first synchronizing operation raises a RuntimeError
            out[f"{phase}_sync"] = f"{_one_line(e)} at {_where(e)}"
        _sync(dev)
        with _sync_sites(dev) as sites:
            call()
        _sync(dev)
        out[f"{phase}_sync_sites"] = dict(sites.most_common())
    if out["train_sync"]:
        out["finding"] = f"host sync in a search step: {out['train_sync']}"
    return out


def check_bf16_search(ctx: Ctx) -> dict[str, Any]:
    """bf16 autocast (what --amp auto means on a GPU): search losses finite, no step skipped."""
    from bnas.search import Searcher

    out: dict[str, Any] = {}
    for method, order in (("clr", 1), ("pc", 2)):
        searcher = Searcher(_search_config(ctx, method, order, f"bf16-{method}", amp="bf16", epochs=1))
        stats = searcher.train_epoch(0, _NoBar())
        out[f"{method}_o{order}"] = {k: stats.get(k) for k in ("train_loss", "arch_loss", "skipped_steps")}
    bad = [k for k, v in out.items() if not _finite(v["train_loss"], v["arch_loss"]) or v["skipped_steps"]]
    if bad:
        out["finding"] = f"non-finite bf16 loss or skipped steps in {', '.join(bad)}"
    return out


def check_bf16_train(ctx: Ctx) -> dict[str, Any]:
    """bf16 training of BNASv2_CLR_v1: losses finite, no step skipped, evaluation finite."""
    from bnas.train import TrainConfig, Trainer

    cfg = TrainConfig.resolve(
        genotype="BNASv2_CLR_v1", dataset="synthetic", amp="bf16", epochs=2, batch_size=ctx.s.sync_batch,
        synthetic_size=3 * ctx.s.sync_batch, init_channels=8, layers=2, enhance_cells=1, test_subset=16,
        eval_batch_size=16, log_every=0, quiet=True, device=str(ctx.device), out=str(ctx.tmp / "bf16-train"),
    )  # fmt: skip
    trainer = Trainer(cfg)
    stats = [trainer.train_epoch(e, _NoBar()) for e in range(2)]
    test = trainer.evaluate("test")
    out = {
        "amp": trainer.amp_mode, "train_loss": [r["train_loss"] for r in stats],
        "skipped_steps": sum(r["skipped_steps"] for r in stats), "test_loss": test["loss"],
    }  # fmt: skip
    if not _finite(*out["train_loss"], out["test_loss"]) or out["skipped_steps"]:
        out["finding"] = "non-finite bf16 training loss or skipped steps"
    return out


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _torchrun(nproc: int = 1) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def check_torchrun_train_eval(ctx: Ctx) -> dict[str, Any]:
    """`bnas train` under torchrun (1 process), then `bnas eval` on its run: the launch path, the run
    directory, results.json and a checkpoint read back, all as a user would type them."""
    run_dir = ctx.tmp / "torchrun-train"
    dev = ctx.device.type
    train = [
        *_torchrun(), "-m", "bnas.cli", "train", "--genotype", "BNASv2_CLR_v1", "--dataset", "synthetic",
        "--epochs", "1", "--init-channels", "8", "--layers", "2", "--enhance-cells", "1", "--batch-size", "8",
        "--synthetic-size", "32", "--test-subset", "16", "--eval-batch-size", "16", "--device", dev, "--quiet",
        "--out", str(run_dir),
    ]  # fmt: skip
    t = time.perf_counter()
    ctx.sub(train, 150)
    train_s = time.perf_counter() - t
    results = json.loads((run_dir / "results.json").read_text())
    done = ctx.sub([sys.executable, "-m", "bnas.cli", "eval", str(run_dir), "--json", "--device", dev], 90)
    evaluated = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "results_json": True, "results": {k: results.get(k) for k in ("final_epoch", "epochs", "device", "images")},
        "eval": {k: evaluated.get(k) for k in ("top1", "loss", "images", "split")}, "train_s": round(train_s, 1),
        "eval_equals_results": evaluated.get("top1") == results["final_epoch"]["test_top1"],
        "note": "WORLD_SIZE=1: bnas.dist.init_from_env starts no process group; dist_allreduce checks the backend",
    }  # fmt: skip


def check_dist_allreduce(ctx: Ctx) -> dict[str, Any]:
    """The process group itself under torchrun (1 process): init with nccl (gloo on --dry-run), all-reduce
    and broadcast a tensor on the device, destroy."""
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    done = ctx.sub([*_torchrun(), str(Path(__file__).resolve()), "--worker", "dist", "--backend", backend], 90)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _dist_worker(backend: str) -> None:
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend)
    t = torch.arange(4.0, device=dev)
    dist.all_reduce(t)
    dist.broadcast(t, 0)
    out = {"backend": dist.get_backend(), "world": dist.get_world_size(), "allreduce": t.tolist()}
    if dev.type == "cuda":
        version = torch.cuda.nccl.version()
        out["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    dist.destroy_process_group()
    print(json.dumps(out))


# -------------------------------------------------------------------------------------------- benchmarks


def bench_spec(ctx: Ctx, kind: str, method: str = "clr", order: int = 1, cells: str = "fast", cl: bool = True,
               amp: str = "off", cudnn_benchmark: bool = False) -> dict[str, Any]:  # fmt: skip
    """A `bnas.bench.BenchConfig` (plus the worker's own switches) for the device and the shapes."""
    s = ctx.s
    cfg: dict[str, Any] = dict(
        kind=kind, device=str(ctx.device), steps=s.bench_steps, warmup=s.bench_warmup, amp=amp,
        channels_last="on" if cl else "off", init_channels=s.bench_channels if kind == "search" else s.train_channels,
    )  # fmt: skip
    if kind == "search":
        cfg.update(method=method, order=order, batch_size=s.search_batch[method], fast=cells == "fast")
        cfg["compile"] = cells == "compiled"
    else:
        cfg.update(genotype="BNASv2_CLR_v1", batch_size=s.train_batch)
    backend = ("eager" if ctx.dry else "inductor") if cells == "compiled" else None
    return {"config": cfg, "compile_backend": backend, "cudnn_benchmark": cudnn_benchmark}


def check_bench(ctx: Ctx, spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in its own process (peak memory is per process), through bnas.bench.run."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "bench", "--spec", json.dumps(spec)]
    done = ctx.sub(cmd, 240 if spec["compile_backend"] else 120)
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    return rec | {"cudnn_benchmark": spec["cudnn_benchmark"], "compile_backend": spec["compile_backend"]}


def _bench_worker(spec: dict[str, Any]) -> None:
    from bnas.bench import BenchConfig, run
    from bnas.jsonio import dumps

    torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]
    if spec["compile_backend"]:  # bench.py calls torch.compile(net): choose its backend (eager on --dry-run)
        torch.compile = functools.partial(torch.compile, backend=spec["compile_backend"])
    print(dumps(run(BenchConfig(**spec["config"]))))


def check_search_epoch(ctx: Ctx, amp: str) -> dict[str, Any]:
    """The real loop, not the bench step: `Searcher.train_epoch` (with its per-step loss/accuracy reads) and
    `Searcher.evaluate` of CLR at its SPEC batch on synthetic CIFAR-shaped data on the device, one epoch of
    warm-up, then one timed; the projection's main input."""
    from bnas.search import Searcher

    s = ctx.s
    batch = s.search_batch["clr"]
    chans = {} if not s.bench_channels else {"init_channels": s.bench_channels}
    cfg = _search_config(ctx, "clr", 1, f"epoch-{amp}", s.epoch_steps, batch_size=batch, amp=amp, epochs=EPOCHS,
                         **chans)  # fmt: skip
    searcher = Searcher(cfg)
    dev = ctx.device
    searcher.train_epoch(0, _NoBar())
    searcher.evaluate()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    stats = searcher.train_epoch(1, _NoBar())
    _sync(dev)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    searcher.evaluate()
    _sync(dev)
    eval_s = time.perf_counter() - t
    steps = len(searcher.train_loader)
    eval_images = searcher._split_sizes[1]  # the architecture split, all of it (a last partial batch too)
    step_s, eval_per_image = train_s / steps, eval_s / eval_images
    epoch_s = CIFAR_SPLIT / batch * step_s + CIFAR_SPLIT * eval_per_image
    return {
        "amp": searcher.amp_mode, "batch_size": batch, "init_channels": cfg.init_channels, "steps": steps,
        "step_s": step_s, "images_per_s": 2 * batch / step_s, "eval_s_per_image": eval_per_image,
        "eval_share": CIFAR_SPLIT * eval_per_image / epoch_s, "epoch_s": epoch_s,
        "projected_min": EPOCHS * epoch_s / 60, "train_loss": stats["train_loss"],
        "peak_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }  # fmt: skip


EVAL_SHARE_ESTIMATE = 1 / 7  # no measured evaluation: a forward of the 25,000 architecture images per epoch


def check_projection(ctx: Ctx) -> dict[str, Any]:
    """The wall time of a 50-epoch CIFAR-10 CLR search (order 1): an epoch is 25,000 / batch search steps
    (each a training and a validation batch, bench.py) plus one evaluation of the 25,000 architecture images.

    From the real loop where measured; from the bench steps otherwise (and beside it). Without a measured
    evaluation, its share is estimated: an order-1 step is two forward+backward passes (about six forwards)
    per batch and the evaluation one forward per batch, so 1/7 of an epoch."""
    out: dict[str, Any] = {"epochs": EPOCHS, "goal_min": GOAL_MIN, "paper_min": PAPER_MIN, "from": {}}
    measured = {amp: ctx.result(f"search_epoch_clr_{amp}") for amp in ("auto", "off")}
    eval_per_image = next((r["eval_s_per_image"] for r in measured.values() if r), None)
    for r in measured.values():
        if r:
            out["from"][f"search loop, amp {r['amp']}"] = dict(
                minutes=r["projected_min"], step_s=r["step_s"], batch=r["batch_size"], eval_share=r["eval_share"],
                eval="measured",
            )  # fmt: skip
    for name, label in (("bench_search_clr_o1_fast_cl_fp32", "bench fast, fp32"),
                        ("bench_search_clr_o1_fast_cl_bf16", "bench fast, bf16"),
                        ("bench_search_clr_o1_compiled_cl_fp32", "bench compiled, fp32")):  # fmt: skip
        r = ctx.result(name)
        if not r:
            continue
        step, batch = r["step_s"]["median"], r["batch_size"]
        steps_s = CIFAR_SPLIT / batch * step
        if eval_per_image is not None:
            epoch_s, how = steps_s + CIFAR_SPLIT * eval_per_image, "measured (search loop)"
        else:
            epoch_s, how = steps_s / (1 - EVAL_SHARE_ESTIMATE), f"estimated {EVAL_SHARE_ESTIMATE:.0%}"
        out["from"][label] = dict(minutes=EPOCHS * epoch_s / 60, step_s=step, batch=batch, eval=how)
    if out["from"]:
        best = "search loop, amp bf16" if "search loop, amp bf16" in out["from"] else next(iter(out["from"]))
        out["headline"] = best
        out["minutes"] = out["from"][best]["minutes"]
    return out


# ------------------------------------------------------------------------------------------------ plan


def plan(ctx: Ctx) -> list[Check]:
    """Correctness first, then the benchmarks most worth having first: a short budget cuts the tail."""
    p = functools.partial
    checks = [Check("environment", check_environment, always=True, min_s=0)]
    checks += [Check(f"gradients_{m}", p(check_gradients, method=m)) for m in ("clr", "pc")]
    checks += [
        Check(f"sync_{m}_o{o}", p(check_sync, method=m, order=o), cap_s=90)
        for m in ("bnas-d", "clr", "pc")
        for o in (1, 2)
    ]
    checks += [Check("bf16_search", check_bf16_search), Check("bf16_train", check_bf16_train)]
    checks += [Check("torchrun_train_eval", check_torchrun_train_eval, cap_s=240, min_s=20, child=True)]
    checks += [Check("dist_allreduce", check_dist_allreduce, min_s=10, child=True)]

    def bench(kind: str, method: str = "clr", order: int = 1, cells: str = "fast", cl: bool = True,
              amp: str = "off", cudnn: bool = False, dry: bool = False) -> Check:  # fmt: skip
        if kind == "train":
            name = f"bench_train_{'bf16' if amp == 'bf16' else 'fp32'}"
        else:
            name = f"bench_search_{method}_o{order}_{cells}_{'cl' if cl else 'nocl'}_{amp if amp != 'off' else 'fp32'}"
            name += "_cudnnbench" if cudnn else ""
        spec = bench_spec(ctx, kind, method, order, cells, cl, amp, cudnn)
        slow = cells == "compiled"
        return Check(
            name, p(check_bench, spec=spec), "bench", 300 if slow else 150, 90 if slow else 25, dry, child=True
        )

    def epoch(amp: str, dry: bool) -> Check:
        return Check(f"search_epoch_clr_{amp}", p(check_search_epoch, amp=amp), "bench", 150, 20, dry)

    checks += [
        bench("search", "clr", dry=True), bench("search", "pc"), epoch("auto", True),
        bench("search", "clr", cells="plain"), bench("search", "pc", cells="plain"),
        bench("train", dry=True), bench("train", amp="bf16"),
        bench("search", "clr", amp="bf16"), bench("search", "pc", amp="bf16"),
        bench("search", "clr", 2), bench("search", "pc", 2),
        bench("search", "clr", cl=False), bench("search", "pc", cl=False),
        bench("search", "clr", cudnn=True), bench("search", "clr", cells="compiled"),
        bench("search", "clr", 2, "plain"), bench("search", "pc", 2, "plain", cl=False, dry=True),
        bench("search", "pc", cells="compiled"),
        bench("search", "clr", cells="plain", cl=False), bench("search", "pc", cells="plain", cl=False),
        bench("search", "clr", 2, cl=False), bench("search", "pc", 2, cl=False),
        bench("search", "clr", 2, "plain", cl=False), bench("search", "pc", 2, "plain"), epoch("off", False),
        bench("search", "clr", 2, "compiled"), bench("search", "pc", 2, "compiled"),
        bench("search", "clr", 1, "compiled", cl=False), bench("search", "pc", 1, "compiled", cl=False),
        bench("search", "clr", 2, "compiled", cl=False), bench("search", "pc", 2, "compiled", cl=False),
    ]  # fmt: skip
    checks.append(Check("projection", check_projection, "projection", always=True, min_s=0))
    return checks


# ------------------------------------------------------------------------------------------------ runner


class _Budget(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Budget("time limit reached")


def run_check(ctx: Ctx, check: Check) -> tuple[str, str | None, dict[str, Any] | None]:
    """(status, one-line error, result); never raises. In-process checks are cut by SIGALRM at their cap or
    the budget, whichever is first (a child process by its own timeout)."""
    limit = check.cap_s if check.always else max(1.0, min(check.cap_s, ctx.left()))
    armed = hasattr(signal, "SIGALRM")
    if armed:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit + (10 if check.child else 0))
    try:
        result = check.fn(ctx)
        if result.get("finding"):
            return "failed", result["finding"], result
        return "ok", None, result
    except _Budget:
        return "failed", f"cut at its time limit ({limit:.0f} s)", None
    except Exception as e:
        ours = any(_ours(f.filename) for f in traceback.extract_tb(e.__traceback__))
        return "failed", _one_line(e) + (f" [{_where(e)}]" if ours else ""), None
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        _sync_debug(0, ctx.device)
        with contextlib.suppress(Exception):
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()


def write(ctx: Ctx) -> None:
    """Rewrite both files (atomically: a kill mid-write leaves the previous version)."""
    out = Path(ctx.args.out)
    ctx.record["elapsed_s"] = round(time.perf_counter() - ctx.t0, 1)
    for name, text in (("gpu_check.json", json.dumps(ctx.record, indent=1, default=str)),
                       ("gpu_check.md", markdown(ctx.record))):  # fmt: skip
        tmp = out / f".{name}.tmp"
        tmp.write_text(text + "\n")
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu_check.json and .md")
    ap.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU with tiny shapes")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no check starts after this (default 420)")
    ap.add_argument("--only", help="comma-separated fnmatch patterns of check names (the rest: skipped)")
    ap.add_argument("--bench-steps", type=int, help="timed steps per benchmark (default 5; --dry-run 1)")
    ap.add_argument("--bench-warmup", type=int, help="warm-up steps per benchmark (default 2; --dry-run 1)")
    ap.add_argument("--worker", choices=["bench", "dist"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "bench":
        _bench_worker(json.loads(args.spec))
        return 0
    if args.worker == "dist":
        _dist_worker(args.backend)
        return 0

    if args.dry_run:  # the GPU's code path on the CPU, in this process and the children (Ctx.env)
        os.environ.setdefault("BNAS_PROFILE", "cuda")
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if gpu else "cpu")
    with tempfile.TemporaryDirectory(prefix="bnas-gpu-check-") as tmp:
        ctx = Ctx(args, device, shapes(args.dry_run, args.bench_steps, args.bench_warmup), Path(tmp), t0)
        checks = plan(ctx)
        ctx.record = {
            "tool": "benchmarks/gpu_check.py", "dry_run": args.dry_run, "budget_s": args.budget_s,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "finished": False,
            "checks": [{"name": c.name, "kind": c.kind, "status": "pending", "seconds": None, "error": None,
                        "result": None} for c in checks],
        }  # fmt: skip
        write(ctx)
        only = args.only.split(",") if args.only else None
        for i, (check, entry) in enumerate(zip(checks, ctx.record["checks"], strict=True)):
            t = time.perf_counter()
            chosen = (
                check.always or check.name == "environment" or any(fnmatch.fnmatch(check.name, p) for p in only or ())
            )
            if only and not chosen:
                status, error, result = "skipped (--only)", None, None
            elif args.dry_run and not check.dry_run:
                status, error, result = "skipped (dry-run)", None, None
            elif not gpu and not args.dry_run and check.name != "environment":
                status, error, result = "skipped (no GPU)", None, None
            elif not check.always and ctx.left() < check.min_s:
                status, error, result = "skipped (budget)", None, None
            else:
                entry["status"] = "running"
                ctx.current = check.name
                write(ctx)
                status, error, result = run_check(ctx, check)
            secs = round(time.perf_counter() - t, 2)
            entry.update(status=status, seconds=secs, error=error, result=result)
            if check.name == "environment" and result:
                ctx.record["environment"] = result
            if check.name == "projection" and result:
                ctx.record["projection"] = result
            write(ctx)
            summary = error or _summary(entry)
            print(f"[{i + 1:2d}/{len(checks)}] {check.name:<40} {status:<18} {secs:6.1f} s  {summary}", flush=True)
        ctx.record["finished"] = True
        write(ctx)
    if not gpu and not args.dry_run:
        print("no CUDA GPU here: only the environment was recorded (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    failed = [c["name"] for c in ctx.record["checks"] if c["status"] == "failed"]
    print(f"done in {time.perf_counter() - t0:.0f} s; {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0


# ------------------------------------------------------------------------------------------------ report


def _summary(entry: dict[str, Any]) -> str:
    """One short cell per check for the progress line and the markdown."""
    r = entry.get("result")
    if not r:
        return ""
    name = entry["name"]
    if name == "environment":
        return f"{r['device_name']}, torch {r['torch']}, CUDA {r['cuda']}, cuDNN {r['cudnn']}"
    if name.startswith("gradients_"):
        return f"max rel. err. arch {r['arch_max_rel_err']:.1e}, weights {r['weight_max_rel_err']:.1e}"
    if name.startswith("sync_"):
        if not r["checked"]:
            return f"no CUDA: ran without the debug mode ({r['steps']} step(s) per epoch, amp {r['amp']})"
        sites = ", ".join(f"{k} x{v}" for k, v in list(r["train_sync_sites"].items())[:4])
        text = (
            f"step: {'syncs' if r['train_sync'] else 'sync-free'}; eval: {'syncs' if r['eval_sync'] else 'sync-free'}"
        )
        return text + (f"; sites {sites}" if sites else "")
    if name.startswith("bf16_search"):
        return "; ".join(f"{k} loss {v['train_loss']:.3f} arch {v['arch_loss']:.3f}" for k, v in r.items() if "_o" in k)
    if name == "bf16_train":
        return f"losses {', '.join(f'{v:.3f}' for v in r['train_loss'])}, test {r['test_loss']:.3f}"
    if name == "torchrun_train_eval":
        test = r["results"]["final_epoch"]
        return (f"results.json test top-1 {test['test_top1']:.3f} loss {test['test_loss']:.3f}; bnas eval top-1 "
                f"{r['eval']['top1']:.3f} on {r['eval']['images']} images")  # fmt: skip
    if name == "dist_allreduce":
        return f"{r['backend']} world {r['world']}: {r['allreduce']}" + (f", NCCL {r['nccl']}" if "nccl" in r else "")
    if name.startswith("bench_"):
        return (
            f"{r['images_per_s']:.1f} img/s, step {1000 * r['step_s']['median']:.1f} ms, {r['peak_memory_mb']:.0f} MB"
        )
    if name.startswith("search_epoch"):
        return (f"step {1000 * r['step_s']:.1f} ms ({r['images_per_s']:.0f} img/s, amp {r['amp']}), eval share "
                f"{r['eval_share']:.0%}, 50 epochs: {r['projected_min']:.1f} min")  # fmt: skip
    if name == "projection" and "minutes" in r:
        return f"{r['minutes']:.1f} min ({r['headline']})"
    return ""


def markdown(rec: dict[str, Any]) -> str:
    env = rec.get("environment") or {}
    lines = ["# GPU check" + (" (dry run: CPU, tiny shapes, not real figures)" if rec["dry_run"] else ""), ""]
    if env:
        lines.append(
            f"{env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, CUDA {env.get('cuda')}, "
            f"cuDNN {env.get('cudnn')}, cudnn.benchmark {env.get('cudnn_benchmark')}, TF32 matmul "
            f"{env.get('matmul_allow_tf32')} / cuDNN {env.get('cudnn_allow_tf32')}, commit {env.get('commit')}; "
            f"started {rec['started']}, {rec.get('elapsed_s')} s of a {rec['budget_s']:.0f} s budget"
            + ("" if rec.get("finished") else " (**unfinished**)")
        )
        lines.append("")
    lines.append(_projection_line(rec.get("projection"), rec["dry_run"]))
    lines += ["", "## Checks", "", "| check | status | s | result |", "|---|---|---|---|"]
    for c in rec["checks"]:
        if c["kind"] == "bench":
            continue
        text = (c["error"] or _summary(c)).replace("|", "/")
        lines.append(f"| {c['name']} | {c['status']} | {c['seconds'] if c['seconds'] is not None else ''} | {text} |")
    lines += ["", "## Benchmarks (median step; search images/s = 2 x batch / step)", ""]
    lines += ["| benchmark | status | batch | cells | channels-last | amp | images/s | step ms | peak MB |"]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for c in rec["checks"]:
        if c["kind"] != "bench":
            continue
        r = c["result"] or {}
        if c["name"].startswith("search_epoch") and r:
            peak = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
            lines.append(
                f"| {c['name']} (Searcher loop) | {c['status']} | {r['batch_size']} | fast | on | {r['amp']} | "
                f"{r['images_per_s']:.1f} | {1000 * r['step_s']:.1f} | "
                f"{peak} |"
            )
        elif r:
            sw = r["switches"]
            cells = "compiled" if sw["compile"] else "fast" if sw["fast"] else "plain"
            cells = "trained net" if r["kind"] == "train" else cells
            cells += " +cudnn.benchmark" if r.get("cudnn_benchmark") else ""
            lines.append(
                f"| {c['name']} | {c['status']} | {r['batch_size']} | {cells} | "
                f"{'on' if sw['channels_last'] else 'off'} | {sw['amp']} | {r['images_per_s']:.1f} | "
                f"{1000 * r['step_s']['median']:.1f} | {r['peak_memory_mb']:.0f} |"
            )
        else:
            err = (c["error"] or "").replace("|", "/")
            status = f"{c['status']}: {err}" if err else c["status"]
            lines.append(f"| {c['name']} | {status} | | | | | | | |")
    return "\n".join(lines)


def _projection_line(p: dict[str, Any] | None, dry: bool) -> str:
    head = "Projected 50-epoch CIFAR-10 CLR search (order 1)"
    if dry:
        head += " [dry run: CPU, tiny shapes, not a real figure]"
    if not p or "minutes" not in p:
        return f"{head}: no figure (no CLR order-1 measurement finished)."
    parts = [
        f"{label}: {v['minutes']:.1f} min (step {1000 * v['step_s']:.1f} ms at batch {v['batch']}, "
        f"evaluation {v['eval']}" + (f", {v['eval_share']:.0%} of an epoch" if "eval_share" in v else "") + ")"
        for label, v in p["from"].items()
    ]
    return (
        f"{head}: **{p['minutes']:.1f} min** ({p['headline']}); goal under {GOAL_MIN:.0f} min on one H100-class GPU, "
        f"the paper's 0.05 GPU-days = {PAPER_MIN:.0f} min on an older GPU. An epoch = 25,000 / batch search steps "
        f"+ one evaluation of 25,000 images. By source: " + "; ".join(parts) + "."
    )


if __name__ == "__main__":
    sys.exit(main())
