"""The trained network's fast backend (fast.TRAINED): the same network and gradients as the plain modules, with
one ReLU per tensor instead of one per reader."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bnas import fast
from bnas.genotype import get_genotype
from bnas.space import build_network


class _CountReLUs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.relu.default, torch.ops.aten.clamp_min.default):
            self.n += 1
        return func(*args, **(kwargs or {}))


def _pair(genotype: str, **shape):
    torch.manual_seed(0)
    plain = build_network(get_genotype(genotype), **shape)
    fastnet = copy.deepcopy(plain)
    fastnet.backend = fast.TRAINED
    fast.TRAINED.adopt(fastnet.net)
    return plain, fastnet


@pytest.mark.parametrize(
    ("genotype", "shape"),
    [
        ("BNASv2_CLR_v1", dict(channels=8, layers=4, enhance=2)),
        ("BNASv2_PC_cifar_v1", dict(channels=8, layers=2, enhance=1, in_channels=1)),
        ("DARTS_V2", dict(channels=8, layers=5)),
    ],
)
@pytest.mark.parametrize("drop", [0.0, 0.2])
def test_trained_backend_same_outputs_gradients_and_statistics(genotype, shape, drop):
    plain, fastnet = _pair(genotype, **shape)
    assert plain.state_dict().keys() == fastnet.state_dict().keys()
    x = torch.randn(6, shape.get("in_channels", 3), 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,))
    counts = []
    for net in (plain, fastnet):
        net.train()
        net.drop_prob = drop
        torch.manual_seed(1)  # the same drop-path masks
        with _CountReLUs() as c:
            F.cross_entropy(net(x), y).backward()
        counts.append(c.n)
    for (name, p), q in zip(plain.named_parameters(), fastnet.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b), c in zip(plain.named_buffers(), fastnet.buffers(), strict=True):
        torch.testing.assert_close(c, b, msg=name)  # BatchNorm running statistics
    assert counts[1] < counts[0]  # fewer ReLUs computed (each shared tensor rectified once)
    plain.eval()
    fastnet.eval()
    with torch.no_grad():
        torch.testing.assert_close(fastnet(x), plain(x), rtol=1e-5, atol=1e-6)


def test_trained_backend_on_broad_network_counts():
    """BNASv2_CLR_v1's convolution cell reads state 1 with four operations that start with a ReLU: one is kept."""
    plain, fastnet = _pair("BNASv2_CLR_v1", channels=8, layers=6, enhance=2)
    x = torch.randn(2, 3, 16, 16)
    counts = []
    for net in (plain, fastnet):
        with torch.no_grad(), _CountReLUs() as c:
            net.eval()(x)
        counts.append(c.n)
    assert counts == [106, 77]


def test_trainer_uses_the_fast_trained_network_unless_switched_off(tmp_path):
    from bnas.train import TrainConfig, Trainer

    base = dict(dataset="synthetic", epochs=1, batch_size=8, init_channels=4, layers=2, enhance_cells=1, quiet=True)
    on = Trainer(TrainConfig.resolve(**base, out=str(tmp_path / "on")), load_data=False)
    off = Trainer(TrainConfig.resolve(**base, fast=False, out=str(tmp_path / "off")), load_data=False)
    assert on.model.backend is fast.TRAINED and on.switches["cells"] == "fast"
    assert off.model.backend is None and off.switches["cells"] == "plain"
