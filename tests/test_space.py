"""Parameter parity with the published code (SPEC §5, §8) and forward shapes of every wiring."""

import pytest
import torch

from bnas import SpaceConfig, SuperNet, build_network, count_parameters, get_genotype, list_genotypes


def _counts(model: SuperNet) -> tuple[int, int]:
    return sum(p.numel() for p in model.weight_parameters()), sum(p.numel() for p in model.arch_parameters())


@pytest.mark.parametrize(("k", "edge_norm", "weights", "arch"), [(1, False, 1_224_762, 224), (4, True, 289_242, 252)])
def test_bcnn_supernet_parameter_parity(k, edge_norm, weights, arch):
    model = SuperNet(SpaceConfig(partial_k=k, edge_norm=edge_norm))
    assert _counts(model) == (weights, arch)
    # weights and architecture are disjoint sets that cover the module
    assert _counts(model)[0] + _counts(model)[1] == sum(p.numel() for p in model.parameters())


def test_darts_supernet_matches_darts():
    # DARTS' train_search logs "param size = 1.930618MB" for C=16, 8 cells
    assert _counts(SuperNet(SpaceConfig(space="darts")))[0] == 1_930_618


@pytest.mark.parametrize(
    ("name", "in_ch", "expected"),
    [("BNASv2_CLR_v1", 3, 3_338_074), ("BNASv2_PC_cifar_v1", 3, 3_678_682), ("BNASv2_CLR_v1", 1, 3_335_482)],
)
def test_trained_bcnn_parameter_parity(name, in_ch, expected):
    assert count_parameters(build_network(get_genotype(name), in_channels=in_ch)) == expected


def test_darts_v2_trained_parity():
    net = build_network(get_genotype("DARTS_V2"), channels=36, layers=20, auxiliary=True)
    assert count_parameters(net) == 3_349_342  # DARTS' reported 3.349342 MB (auxiliary head excluded)


@pytest.mark.parametrize("space", ["bcnn", "darts"])
@pytest.mark.parametrize("k", [1, 4])
def test_supernet_forward_backward(space, k):
    model = SuperNet(SpaceConfig(space=space, channels=8, layers=5, partial_k=k, edge_norm=k > 1))
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.arch_parameters())


@pytest.mark.parametrize("name", list_genotypes())
def test_every_bundled_genotype_builds_and_runs(name):
    g = get_genotype(name)
    net = build_network(g, channels=8, layers=6 if g.space == "bcnn" else 5, in_channels=1)
    net.train()
    net.drop_prob = 0.2
    out = net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
