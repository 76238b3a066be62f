"""The device-dependent defaults, checked without a GPU: what a CUDA run would resolve to, and what a run
records in config.json."""

from __future__ import annotations

import json

import pytest
import torch

from bnas.runtime import device_defaults, make_adam, make_sgd, optimizer_kind
from bnas.search import SearchConfig, Searcher
from bnas.train import TrainConfig, Trainer


def test_fast_cells_are_auto_on_cpu_and_off_on_a_gpu():
    cfg = SearchConfig.resolve("clr")
    assert cfg.fast is None  # auto
    assert cfg.backend(torch.device("cpu")) is not None
    assert cfg.backend(torch.device("cuda", 0)) is None  # plain cells until the GPU check says otherwise
    assert SearchConfig.resolve("clr", fast=True).backend(torch.device("cuda", 0)) is not None  # forced
    assert SearchConfig.resolve("clr", fast=False).backend(torch.device("cpu")) is None
    assert SearchConfig.resolve("clr", compile="eager").backend(torch.device("cpu")) is None


def test_optimizers_by_device():
    params = [torch.nn.Parameter(torch.ones(3))]
    assert optimizer_kind(torch.device("cuda", 0)) == "torch-fused"
    assert optimizer_kind(torch.device("cpu")) == "bnas"
    assert type(make_sgd(params, torch.device("cpu"), 0.1, 0.9, 0.0)).__module__ == "bnas.optim"
    assert type(make_adam(params, torch.device("cpu"), 0.1, (0.5, 0.999), 0.0)).__module__ == "bnas.optim"


def test_a_cpu_run_leaves_the_cudnn_and_tf32_switches_alone():
    before = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    assert device_defaults(torch.device("cpu")) == {"cudnn_benchmark": False, "tf32": False}
    assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before


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
    assert switches["channels_last"] is True and switches["amp"] == "off"
    if command == "search":
        assert switches["cells"] == "fast" and switches["native_kernel"] is True
    else:
        assert switches["ddp"] is False
