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
