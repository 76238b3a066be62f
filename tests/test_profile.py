"""The runtime profile (bnas.profile), and the CUDA profile forced on the CPU (BNAS_PROFILE=cuda): the GPU's code
path (torch.optim's fused optimizers and their found_inf masking, bf16 autocast with the plain cells, no native
kernel) run here, against the CPU profile, end to end, under torchrun, and resumed across profiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnas.errors import ConfigError
from bnas.fast import native
from bnas.optim import SGD, Adam, FusedAdam, FusedSGD, masked_step
from bnas.profile import resolve_profile
from bnas.runtime import Tally
from bnas.search import SearchConfig, Searcher, SearchStep
from bnas.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
CPU, CUDA_ = torch.device("cpu"), torch.device("cuda", 0)

SEARCH = dict(dataset="synthetic", synthetic_size=16, batch_size=4, init_channels=4, layers=3, epochs=2, eval_every=0,
              log_every=0, quiet=True, device="cpu", random_candidates=2)  # fmt: skip
TRAIN = dict(dataset="synthetic", synthetic_size=16, batch_size=4, eval_batch_size=8, init_channels=4, layers=2,
             enhance_cells=1, epochs=2, log_every=0, quiet=True, device="cpu")  # fmt: skip


@pytest.fixture(autouse=True)
def _process_switches_restored():
    """A profile's apply() sets a process-wide switch: the tests after these see it as before."""
    before = native.set_enabled(True)
    native.set_enabled(before)
    yield
    native.set_enabled(before)


def _profile(monkeypatch, name: str) -> None:
    monkeypatch.setenv("BNAS_PROFILE", name)


# ------------------------------------------------------------------------------------------- resolution


def test_the_cuda_profile_forced_on_a_cpu(monkeypatch):
    _profile(monkeypatch, "cuda")
    p = resolve_profile(CPU, SearchConfig.resolve("clr"))
    assert (p.name, p.forced, p.device) == ("cuda", True, CPU)
    assert (p.cells, p.optimizer, p.amp, p.native_kernel) == ("plain", "torch-fused", "bf16", False)
    # channels-last with bf16 is left to a GPU (oneDNN's CPU kernels are wrong there), not without mixed precision
    assert not p.channels_last and resolve_profile(CPU, amp="off").channels_last
    assert resolve_profile(CPU, channels_last="on").channels_last and resolve_profile(CUDA_, amp="bf16").channels_last
    assert (p.cudnn_benchmark, p.tf32) == (False, False)  # they cannot run on a CPU
    assert resolve_profile(CPU, amp="off").amp == "off" and resolve_profile(CPU, fast=True).cells == "fast"
    assert resolve_profile(CPU, kind="train").cells == "fast"  # the trained net's shared ReLUs, as on a GPU
    assert not resolve_profile(CPU, name="cpu").forced
    monkeypatch.setenv("BNAS_PROFILE", "tpu")
    with pytest.raises(ConfigError, match="BNAS_PROFILE"):
        resolve_profile(CPU)


def test_the_forced_profile_disables_the_native_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(native, "library", lambda: calls.append(1))
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    resolve_profile(CPU, name="cuda").apply()
    assert native.dw_weight_grad(x, x, 5, 1, 1, 2) is None and not calls
    resolve_profile(CPU, name="cpu").apply()
    assert native.dw_weight_grad(x, x, 5, 1, 1, 2) is None and calls  # asked for (and here refused) the kernel


# ------------------------------------------------------------------------- the first step, both profiles

COMBOS = [(m, o, s) for m in ("bnas-d", "clr", "pc", "random") for o in (1, 2) for s in ("bcnn", "darts")]


def _first_step(monkeypatch, profile: str, method: str, order: int, space: str, batches=None, **kw):
    _profile(monkeypatch, profile)
    searcher = Searcher(SearchConfig.resolve(method, order=order, space=space, out="unused", **SEARCH, **kw))
    own = next(iter(searcher.train_loader)), next(iter(searcher.val_loader))  # in the profile's memory format
    if batches is not None:  # one seed, the same batches (in whatever layout)
        assert all(torch.equal(a, b) for pair in zip(own, batches, strict=True) for a, b in zip(*pair, strict=True))
    batches = own
    (x, y), (xv, yv) = batches
    before = {n: p.detach().clone() for n, p in searcher.model.named_parameters()}
    tally = Tally(CPU, SearchStep.FIGURES)
    searcher.model.train()
    searcher.step(x, y, None if method == "random" else xv, None if method == "random" else yv, 0.025, tally)
    return searcher, before, tally.read(), batches


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def agree(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of elements moved the same way (Adam's first step: lr * sign of the gradient)."""
    return float((a.sign() == b.sign()).float().mean())


def _moves(searcher, start) -> tuple[torch.Tensor, torch.Tensor]:
    """What the step did to the weights (one flat vector) and to the alphas."""
    moved = {n: (p.detach() - start[n]).flatten() for n, p in searcher.model.named_parameters()}
    weights = torch.cat([v for n, v in moved.items() if not n.startswith("arch.")])
    return weights, torch.cat([v for n, v in moved.items() if n.startswith("arch.")])


@pytest.mark.parametrize("method,order,space", COMBOS, ids=["-".join(map(str, c)) for c in COMBOS])
def test_first_search_step_matches_the_cpu_profile(monkeypatch, method, order, space):
    """The CUDA profile's first step against the CPU profile's: in fp32 the same numbers (fused optimizers and
    plain cells compute what bnas.optim and the fast cells do), in bf16 (its default) within bf16's error."""
    cpu, start, sums, batches = _first_step(monkeypatch, "cpu", method, order, space)
    gpu, start_g, sums_g, _ = _first_step(monkeypatch, "cuda", method, order, space, batches)
    assert gpu.profile.name == "cuda" and gpu.model.backend is None and type(gpu.w_optimizer) is FusedSGD
    assert cpu.model.backend is not None and type(cpu.w_optimizer) is SGD
    assert type(gpu.architect.optimizer) is FusedAdam and type(cpu.architect.optimizer) is Adam
    assert gpu.amp_mode == "bf16" and cpu.amp_mode == "off"
    assert all(torch.equal(start[n], start_g[n]) for n in start)  # one seed, one initial supernet
    arch_on = method != "random"
    for s in (sums, sums_g):
        assert (s["steps"], s["bad"], s["arch_steps"], s["arch_bad"]) == (1, 0, int(arch_on), 0), s
    w, a = _moves(cpu, start)
    if order == 1:  # and in fp32: the same numbers (fused optimizers, plain cells)
        fp32, start32, sums32, _ = _first_step(monkeypatch, "cuda", method, order, space, batches, amp="off")
        assert fp32.amp_mode == "off" and all(torch.equal(start[n], start32[n]) for n in start)
        w32, a32 = _moves(fp32, start)
        assert sums32["train_loss"] == pytest.approx(sums["train_loss"], rel=1e-5)
        assert sums32["arch_loss"] == pytest.approx(sums["arch_loss"], rel=1e-5)
        # in another order of summation (the plain cells against the fast ones, through BatchNorms of 4 images);
        # Adam's first step is lr * sign(g), and a sign may differ where g ~ 0
        assert (w32 - w).abs().max() <= 2e-2 * w.abs().max() and cos(w32, w) > 0.999
        assert agree(a32, a) > 0.95
    # bf16 autocast: about 3 significant digits in the losses, and a weight step in the same direction
    wg, ag = _moves(gpu, start)
    assert sums_g["train_loss"] == pytest.approx(sums["train_loss"], rel=2e-2)
    assert sums_g["arch_loss"] == pytest.approx(sums["arch_loss"], rel=2e-2)
    assert cos(wg, w) > 0.95
    arch_lr = cpu.architect.lr
    assert (ag - a).abs().max() <= 2 * arch_lr + 1e-6
    if arch_on:  # (second order: the finite-difference Hessian term is a difference of two bf16 gradients)
        assert a.abs().max() > 0.5 * arch_lr and agree(ag, a) > (0.9 if order == 1 else 0.65), agree(ag, a)


# ---------------------------------------------------------------------- a non-finite step, skipped on device


def _state(opt, key: str) -> list[torch.Tensor]:
    return [opt.state[p][key].clone() for g in opt.param_groups for p in g["params"]]


def test_fused_optimizers_skip_a_masked_step():
    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    ref_w = [torch.nn.Parameter(p.detach().clone()) for p in w]
    sgd, ref = FusedSGD(w, lr=0.1, momentum=0.9, weight_decay=1e-3), SGD(ref_w, lr=0.1, momentum=0.9, weight_decay=1e-3)
    grads = [torch.randn_like(p) for p in w]
    start = [p.detach().clone() for p in w]
    # a skipped FIRST step (torch makes the momentum buffers with empty_like: they must not keep garbage) ...
    for p in w:
        p.grad = torch.full_like(p, float("nan"))
    masked_step(sgd, torch.tensor(False))
    assert all(torch.equal(p, s) for p, s in zip(w, start, strict=True))
    # ... then a good one is the good first step of a fresh optimizer
    for _ in range(2):
        for p, q, g in zip(w, ref_w, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        masked_step(sgd, torch.tensor(True))
        ref.step()
        for p, q in zip(w, ref_w, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    held, momentum = [p.detach().clone() for p in w], _state(sgd, "momentum_buffer")
    for p in w:
        p.grad = torch.full_like(p, float("inf"))
    masked_step(sgd, torch.tensor(False))
    assert all(torch.equal(p, h) for p, h in zip(w, held, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(_state(sgd, "momentum_buffer"), momentum, strict=True))

    adam = FusedAdam(w, lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3)
    for p, g in zip(w, grads, strict=True):
        p.grad = g.clone()
    masked_step(adam, torch.tensor(True))
    held = [p.detach().clone() for p in w]
    moments = {k: _state(adam, k) for k in ("exp_avg", "exp_avg_sq", "step")}
    for p in w:
        p.grad = torch.full_like(p, float("nan"))
    masked_step(adam, torch.tensor(False))
    assert all(torch.equal(p, h) for p, h in zip(w, held, strict=True))
    for k, before in moments.items():  # the step count too: a skipped step is not counted
        assert all(torch.equal(a, b) for a, b in zip(_state(adam, k), before, strict=True)), k


def test_a_non_finite_search_step_is_skipped_under_the_cuda_profile(monkeypatch):
    _profile(monkeypatch, "cuda")
    searcher = Searcher(SearchConfig.resolve("clr", out="unused", **SEARCH))
    (x, y), (xv, yv) = next(iter(searcher.train_loader)), next(iter(searcher.val_loader))
    searcher.model.train()
    searcher.step(x, y, xv, yv, 0.025, Tally(CPU, SearchStep.FIGURES))  # a good step: momentum and moments
    params = {n: p.detach().clone() for n, p in searcher.model.named_parameters()}
    momentum = _state(searcher.w_optimizer, "momentum_buffer")
    moments = _state(searcher.architect.optimizer, "exp_avg")
    tally = Tally(CPU, SearchStep.FIGURES)
    nan = torch.full_like(x, float("nan"))
    searcher.step(nan, y, nan, yv, 0.025, tally)
    sums = tally.read()
    assert (sums["steps"], sums["bad"], sums["arch_steps"], sums["arch_bad"]) == (0, 1, 0, 1)
    assert all(torch.equal(p, params[n]) for n, p in searcher.model.named_parameters())
    for now, before in ((_state(searcher.w_optimizer, "momentum_buffer"), momentum),
                        (_state(searcher.architect.optimizer, "exp_avg"), moments)):  # fmt: skip
        assert all(torch.equal(a, b) for a, b in zip(now, before, strict=True))


@pytest.mark.parametrize("kind", ["search", "train"])
def test_the_cuda_profiles_steps_read_nothing_back(tmp_path, monkeypatch, kind):
    """tests/test_sync.py's count of host reads, under the CUDA profile (fused optimizers, bf16, plain cells)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_sync import _search_reads, _train_reads

    _profile(monkeypatch, "cuda")
    reads = _train_reads if kind == "train" else _search_reads
    short_steps, short = reads(tmp_path, 16)
    long_steps, long = reads(tmp_path, 40)
    assert long_steps >= short_steps + 3
    assert long == short, f"{long_steps} steps read {dict(long)}, {short_steps} steps {dict(short)}"


# -------------------------------------------------------------------------------- resume across profiles


class _SnapshotAfter:
    """A quiet reporter that copies the run directory once epoch `n` has finished (what a kill leaves)."""

    def __init__(self, src: Path, dst: Path, n: int):
        import io

        from bnas.progress import Reporter

        self.inner, self.src, self.dst, self.n = Reporter(quiet=True, out=io.StringIO()), src, dst, n

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def epoch_done(self, rec, genotype) -> None:
        if rec["epoch"] == self.n:
            import shutil

            shutil.copytree(self.src, self.dst)


def test_loader_state_is_device_agnostic():
    from bnas.data.loaders import Augment, TensorLoader

    images, labels = torch.randint(0, 255, (12, 3, 8, 8), dtype=torch.uint8), torch.arange(12)
    aug = Augment(crop_padding=2, flip=True, cutout=4)
    a = TensorLoader(images, labels, 4, aug, seed=3)
    list(a)
    state = a.state_dict()
    assert state == {"seed": 3, "passes": 1}  # numbers, no generator state of a device
    b = TensorLoader(images, labels, 4, aug, seed=99)
    b.load_state_dict(json.loads(json.dumps(state)))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):  # the next pass is the same pass
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, TensorLoader(images, labels, 4, aug, seed=3),
                                                               strict=True))  # fmt: skip


@pytest.mark.parametrize("kind", ["search", "train"])
@pytest.mark.parametrize("first,then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_resumes_under_the_other_profile(tmp_path, monkeypatch, kind, first, then):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _profile(monkeypatch, first)
    if kind == "search":
        make = lambda out, **kw: Searcher(SearchConfig.resolve("clr", **{**SEARCH, "out": str(out)}), **kw)  # noqa: E731
        a = make(full)
        a.run_search(_SnapshotAfter(full, cut, n=1))
        optimizers = lambda r: (r.w_optimizer, r.architect.optimizer)  # noqa: E731
    else:
        make = lambda out, **kw: Trainer(TrainConfig.resolve(**{**TRAIN, "out": str(out)}), **kw)  # noqa: E731
        a = make(full)
        a.run_training(_SnapshotAfter(full, cut, n=1))
        optimizers = lambda r: (r.optimizer,)  # noqa: E731
    _profile(monkeypatch, then)
    b = make(cut, resume=True)
    b.open_run()
    assert b.start_epoch == 1 and b.profile.name == then
    for opt in optimizers(b):  # the other profile's kind, with the state of the first
        assert isinstance(opt, (FusedSGD, FusedAdam)) is (then == "cuda")
        assert all(bool(g.get("fused")) is (then == "cuda") for g in opt.param_groups)
        assert opt.state and all(torch.isfinite(t).all() for s in opt.state.values() for t in s.values())
    if kind == "search":
        b.run_search(_SnapshotAfter(cut, tmp_path / "unused", n=-1))
        assert json.loads((cut / "config.json").read_text())["runtime"]["profile"] == first  # as it started
    else:
        b.run_training(_SnapshotAfter(cut, tmp_path / "unused", n=-1))
        assert json.loads((cut / "results.json").read_text())["final_epoch"]["test_top1"] is not None
    records = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["skipped_steps"] == 0 for r in epochs)


# ------------------------------------------------------------------ end to end, and torchrun, under the CUDA profile


def test_search_train_eval_export_study_under_the_cuda_profile(tmp_path, monkeypatch, capsys):
    from bnas.cli import main

    _profile(monkeypatch, "cuda")
    s, t = tmp_path / "search", tmp_path / "train"
    size = ["--dataset", "synthetic", "--synthetic-size", "16", "--batch-size", "4", "--init-channels", "4"]
    assert main(["search", "--method", "pc", *size, "--epochs", "1", "--out", str(s), "--quiet"]) == 0
    runtime = json.loads((s / "config.json").read_text())["runtime"]
    assert runtime == {"profile": "cuda", "cudnn_benchmark": False, "tf32": False, "optimizer": "torch-fused",
                       "cells": "plain", "channels_last": False, "amp": "bf16", "native_kernel": False}  # fmt: skip
    assert main(["train", "--genotype", str(s / "genotype.json"), *size, "--eval-batch-size", "8", "--layers", "2",
                 "--enhance-cells", "1", "--epochs", "1", "--out", str(t), "--quiet"]) == 0  # fmt: skip
    runtime = json.loads((t / "config.json").read_text())["runtime"]
    assert (runtime["profile"], runtime["optimizer"], runtime["amp"], runtime["ddp"]) == ("cuda", "torch-fused",
                                                                                           "bf16", False)  # fmt: skip
    results = json.loads((t / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(t), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1"] == pytest.approx(results["final_epoch"]["test_top1"], abs=1e-6)
    assert main(["export", str(t)]) == 0
    program = torch.export.load(t / "model.pt2")
    assert program.module()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    study = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "random_cells": 1,
             "search": {"epochs": 1, "init_channels": 4, "synthetic_size": 16, "batch_size": 4, "eval_every": 0,
                        "quiet": True, "log_every": 0},
             "train": {"epochs": 1, "init_channels": 4, "synthetic_size": 16, "batch_size": 4, "eval_batch_size": 8,
                       "layers": 2, "enhance_cells": 1, "quiet": True, "log_every": 0}}  # fmt: skip
    (tmp_path / "study.json").write_text(json.dumps(study))
    assert main(["study", "--config", str(tmp_path / "study.json"), "--out", str(tmp_path / "study")]) == 0
    for run in ("search/clr-s0", "train/clr-s0", "train/random-cell-0"):
        assert json.loads((tmp_path / "study" / run / "config.json").read_text())["runtime"]["profile"] == "cuda"
    assert (tmp_path / "study" / "results.csv").is_file()


@pytest.mark.slow
def test_torchrun_training_under_the_cuda_profile(tmp_path):
    """torchrun (gloo, 2 ranks) with DistributedDataParallel, fused SGD and bf16: the ranks agree bit for bit."""
    import os

    worker = Path(__file__).parent / "dist_train_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = dict(os.environ, BNAS_PROFILE="cuda", OMP_NUM_THREADS="1")
    proc = subprocess.run([*cmd, str(worker), str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(r0[n], r1[n]) for n in r0)
    runtime = json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]
    assert (runtime["profile"], runtime["optimizer"], runtime["amp"], runtime["ddp"]) == ("cuda", "torch-fused",
                                                                                           "bf16", True)  # fmt: skip
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["final_epoch"]["test_top1"] is not None
    start = {n: p for n, p in torch.load(tmp_path / "rank0.pt").items()}
    assert all(torch.isfinite(p).all() for p in start.values())
