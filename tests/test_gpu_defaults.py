"""The device-dependent defaults, checked without a GPU: what a CUDA run would resolve to, and what a run
records in config.json."""

from __future__ import annotations

import json

import pytest
import torch

from bnas.optim import FusedAdam, FusedSGD
from bnas.profile import resolve_profile
from bnas.search import SearchConfig, Searcher
from bnas.train import TrainConfig, Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def _own_profile(monkeypatch):
    monkeypatch.delenv("BNAS_PROFILE", raising=False)  # each device's own profile


def test_fast_cells_are_auto_on_cpu_and_off_on_a_gpu():
    cfg = SearchConfig.resolve("clr")
    assert cfg.fast is None  # auto
    assert resolve_profile(CPU, cfg).cells == "fast"
    assert resolve_profile(CUDA, cfg).cells == "plain"  # plain cells until the GPU check says otherwise
    assert resolve_profile(CUDA, SearchConfig.resolve("clr", fast=True)).cells == "fast"  # forced
    assert resolve_profile(CPU, SearchConfig.resolve("clr", fast=False)).cells == "plain"
    assert resolve_profile(CPU, SearchConfig.resolve("clr", compile="eager")).cells == "plain"


def test_optimizers_by_device():
    params = [torch.nn.Parameter(torch.ones(3))]
    assert resolve_profile(CUDA).optimizer == "torch-fused"
    assert resolve_profile(CPU).optimizer == "bnas"
    assert type(resolve_profile(CPU).sgd(params, 0.1, 0.9, 0.0)).__module__ == "bnas.optim"
    assert type(resolve_profile(CPU).adam(params, 0.1, (0.5, 0.999), 0.0)).__module__ == "bnas.optim"
    assert isinstance(resolve_profile(CPU, name="cuda").sgd(params, 0.1, 0.9, 0.0), FusedSGD)
    assert isinstance(resolve_profile(CPU, name="cuda").adam(params, 0.1, (0.5, 0.999), 0.0), FusedAdam)


def test_a_cpu_run_leaves_the_cudnn_and_tf32_switches_alone():
    before = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    for name in ("cpu", "cuda"):  # the CUDA profile forced on a CPU too: cuDNN and TF32 cannot run there
        profile = resolve_profile(CPU, name=name).apply()
        assert (profile.cudnn_benchmark, profile.tf32) == (False, False)
    resolve_profile(CPU).apply()
    assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before
    cuda = resolve_profile(CUDA)  # not applied: what a GPU run records
    assert (cuda.cudnn_benchmark, cuda.tf32, cuda.amp, cuda.native_kernel) == (True, True, "bf16", False)
    assert resolve_profile(CUDA, deterministic=True).cudnn_benchmark is False


def test_the_native_kernel_is_never_built_off_the_cpu(monkeypatch):
    from bnas.fast import native

    def refuse():
        raise AssertionError("the C kernel was built for a tensor off the CPU")

    monkeypatch.setattr(native, "library", refuse)
    x, g = torch.empty(2, 4, 8, 8, device="meta"), torch.empty(2, 4, 8, 8, device="meta")
    assert native.dw_weight_grad(x, g, 5, 1, 1, 2) is None


@pytest.mark.parametrize("command", ["search", "train"])
def test_config_json_records_the_resolved_runtime_switches(tmp_path, command):
    out = tmp_path / command
    if command == "search":
        run = Searcher(SearchConfig.resolve(
            "clr", dataset="synthetic", synthetic_size=16, batch_size=4, init_channels=4, epochs=1,
            out=str(out), quiet=True, device="cpu",
        ))  # fmt: skip
    else:
        run = Trainer(TrainConfig.resolve(
            dataset="synthetic", synthetic_size=8, batch_size=4, init_channels=4, layers=2, enhance_cells=1,
            epochs=1, out=str(out), quiet=True, device="cpu",
        ))  # fmt: skip
    run.open_run()
    switches = json.loads((out / "config.json").read_text())["runtime"]
    assert switches["optimizer"] == "bnas" and switches["cudnn_benchmark"] is False and switches["tf32"] is False
    assert switches["profile"] == "cpu"
    assert switches["channels_last"] is True and switches["amp"] == "off"
    if command == "search":
        assert switches["cells"] == "fast" and switches["native_kernel"] is True
    else:
        assert switches["ddp"] is False
