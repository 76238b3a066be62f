"""Which tensor feeds which cell: the wiring of every network kind against SPEC §5 and §8.

Parameter counts cannot tell two wirings apart when the tensors they swap have the same width (issue 13:
enhancement cell 1 read the last block's enhancement tap instead of the last convolution cell). Here
forward hooks record, for every cell and tap, which module produced each input tensor, and the test compares
that with the wiring spelled out below from the SPEC, independently of how topology.py describes itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnas import SpaceConfig, SuperNet, build_network, get_genotype
from bnas.cells import Cell
from bnas.fast import BACKEND

STEM0, STEM1 = "stem0", "stem1"


def _nodes(net: nn.Module) -> dict[str, nn.Module]:
    """The modules whose outputs are wiring nodes: stems, cells, taps (named relative to the wiring)."""
    out = {}
    for full, m in net.named_modules():
        name = full.removeprefix("net.")  # TrainedNet and SuperNet hold the wiring as .net
        top = name.split(".")[0]
        tap = top in ("gap_taps", "enh_taps", "enh_out_taps") and name.count(".") == 1
        if name in (STEM0, STEM1, "auxiliary") or isinstance(m, Cell) or tap:
            out[name] = m
    return out


def record_wiring(net: nn.Module, x: torch.Tensor, train: bool) -> dict[str, tuple[str, ...]]:
    """For every cell and tap, the producers of its tensor inputs (by identity of the tensor objects)."""
    nodes = _nodes(net)
    producer: dict[int, str] = {id(x): "input"}
    keep: list[torch.Tensor] = [x]  # keep every recorded tensor alive so ids are not reused
    inputs: dict[str, tuple[str, ...]] = {}
    handles = []

    def pre(name: str, n_inputs: int):
        def hook(_m, args):
            ts = [a for a in args[:n_inputs] if isinstance(a, torch.Tensor)]
            inputs[name] = tuple(producer.get(id(t), "?") for t in ts)

        return hook

    def post(name: str):
        def hook(_m, _args, out):
            assert id(out) not in producer, f"{name} returned a tensor another node produced"
            producer[id(out)] = name
            keep.append(out)

        return hook

    for name, m in nodes.items():
        handles.append(m.register_forward_pre_hook(pre(name, 2 if isinstance(m, Cell) else 1)))
        handles.append(m.register_forward_hook(post(name)))
    net.train(train)
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return inputs


# ---- the wiring of SPEC §5 (supernet) and §8 (trained network), written from the SPEC ----


def _stems(imagenet: bool) -> dict[str, tuple[str, ...]]:
    # CIFAR: one stem, both inputs of the first cell; ImageNet: stem1 continues stem0, the cell reads both
    return {STEM0: ("input",), STEM1: (STEM0,)} if imagenet else {STEM0: ("input",)}


def broad_expected(cells_per_block: list[int], enhance: int, imagenet: bool) -> dict[str, tuple[str, ...]]:
    """BCNN: cells chain within and across blocks; block b's GAP tap reads the block input (the output of
    the cell feeding its reduction cell); the last two blocks' outputs get enhancement taps; enhancement
    cell 0 reads those taps, cell 1 the raw last convolution cell and cell 0, cell j >= 2 cells j-2, j-1."""
    exp = _stems(imagenet)
    prev2, prev1 = (STEM0, STEM1) if imagenet else (STEM0, STEM0)
    L = len(cells_per_block)
    block_out = []
    for b, n in enumerate(cells_per_block):
        for i in range(n):
            name = f"blocks.{b}.{i}"
            if i == n - 1:  # the reduction cell: the block's GAP tap reads what feeds it
                exp[f"gap_taps.{b}"] = (prev1,)
            exp[name] = (prev2, prev1)
            prev2, prev1 = prev1, name
        block_out.append(prev1)
    last_conv = prev1
    exp["enh_taps.0"] = (block_out[L - 2],)
    exp["enh_taps.1"] = (block_out[L - 1],)
    prev2, prev1 = "enh_taps.0", "enh_taps.1"
    for j in range(enhance):
        exp[f"enh_cells.{j}"] = (prev2, prev1)
        prev2, prev1 = (last_conv if j == 0 else prev1), f"enh_cells.{j}"
        exp[f"enh_out_taps.{j}"] = (f"enh_cells.{j}",)
    return exp


def deep_expected(layers: int, imagenet: bool, auxiliary: bool) -> dict[str, tuple[str, ...]]:
    """DARTS stack: cell i reads cells i-2 and i-1 (the stem for the first two); aux head after 2/3."""
    exp = _stems(imagenet)
    prev2, prev1 = (STEM0, STEM1) if imagenet else (STEM0, STEM0)
    for i in range(layers):
        exp[f"cells.{i}"] = (prev2, prev1)
        prev2, prev1 = prev1, f"cells.{i}"
    if auxiliary:
        exp["auxiliary"] = (f"cells.{2 * layers // 3}",)
    return exp


BCNN_TRAINED = [
    # (genotype, layers, blocks, enhance, in_channels, stem)
    ("BNASv2_CLR_v1", 6, 2, 1, 3, "cifar"),
    ("BNASv2_CLR_v1", 6, 2, 2, 3, "cifar"),
    ("BNASv2_CLR_v2", 6, 2, 3, 3, "cifar"),
    ("BNASv2_PC_cifar_v1", 6, 2, 2, 1, "cifar"),
    ("BNASv2_PC_cifar_v2", 6, 3, 2, 3, "cifar"),
    ("BNASv2_PC_cifar_v1", 9, 3, 3, 3, "cifar"),
    ("BNASv2_PC_image", 6, 2, 2, 3, "imagenet"),
]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("name", "layers", "blocks", "enhance", "in_ch", "stem"), BCNN_TRAINED)
def test_trained_bcnn_wiring(name, layers, blocks, enhance, in_ch, stem, train):
    net = build_network(
        get_genotype(name), channels=8, layers=layers, enhance=enhance, in_channels=in_ch, stem=stem, blocks=blocks
    )
    net.drop_prob = 0.1 if train else 0.0
    size = 64 if stem == "imagenet" else 32
    got = record_wiring(net, torch.randn(2, in_ch, size, size), train)
    assert got == broad_expected([layers // blocks] * blocks, enhance, stem == "imagenet")


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    ("blocks", "enhance", "k", "fast", "stem"),
    [
        (2, 1, 1, True, "cifar"),
        (2, 2, 1, True, "cifar"),  # BNAS-D's preset has E = 2
        (2, 2, 4, True, "cifar"),
        (2, 2, 1, False, "cifar"),
        (3, 3, 2, True, "cifar"),
        (2, 2, 2, True, "imagenet"),
    ],
)
def test_search_supernet_wiring(blocks, enhance, k, fast, stem, train):
    cfg = SpaceConfig(channels=8, blocks=blocks, enhance=enhance, partial_k=k, edge_norm=k > 1, stem=stem)
    size = 64 if stem == "imagenet" else 16
    got = record_wiring(SuperNet(cfg, BACKEND if fast else None), torch.randn(2, 3, size, size), train)
    assert got == broad_expected([1] * blocks, enhance, stem == "imagenet")


@pytest.mark.parametrize(("stem", "aux"), [("cifar", False), ("cifar", True), ("imagenet", False)])
def test_darts_wiring(stem, aux):
    size = 64 if stem == "imagenet" else 32
    net = build_network(get_genotype("DARTS_V2"), channels=8, layers=6, stem=stem, auxiliary=aux)
    got = record_wiring(net, torch.randn(2, 3, size, size), train=True)
    assert got == deep_expected(6, stem == "imagenet", aux)
    sup = SuperNet(SpaceConfig(space="darts", channels=8, layers=5, stem=stem))
    got = record_wiring(sup, torch.randn(2, 3, size, size), train=True)
    assert got == deep_expected(5, stem == "imagenet", False)


def _widths(net: nn.Module, x: torch.Tensor) -> dict[str, int]:
    out: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, y, n=n: out.__setitem__(n, y.shape[1])) for n, m in _nodes(net).items()
    ]
    net.eval()
    net(x)
    for h in handles:
        h.remove()
    return out


def test_imagenet_stems():
    """SPEC §7: the ImageNet search supernet's stem is 3 -> 3C/2 -> 3C -> 3C; its first GAP tap 3C -> C.
    SPEC §8: the trained ImageNet network keeps C/2 -> C -> C."""
    c = 8
    sup = SuperNet(SpaceConfig(channels=c, stem="imagenet", partial_k=2, edge_norm=True))
    x = torch.randn(2, 3, 64, 64)
    w = _widths(sup, x)
    assert sup.net.stem0[0].out_channels == 3 * c // 2
    assert (w["stem0"], w["stem1"], w["gap_taps.0"]) == (3 * c, 3 * c, c)
    assert sup.net.stem1[1].stride == (2, 2) and sup.net.gap_taps[0][0][1].in_channels == 3 * c
    net = build_network(get_genotype("BNASv2_PC_image"), channels=c, stem="imagenet")
    w = _widths(net, x)
    assert net.net.stem0[0].out_channels == c // 2
    assert (w["stem0"], w["stem1"]) == (c, c)


def test_enhancement_cell_1_sees_the_last_convolution_cell():
    """A perturbation check of the same fact by value, not by hooks: with E=2, changing the last block's
    enhancement tap must not reach enhancement cell 1's input 0 (only cell 0 reads that tap)."""
    torch.manual_seed(0)
    net = build_network(get_genotype("BNASv2_CLR_v1"), channels=8, enhance=2).eval()
    seen: dict[str, torch.Tensor] = {}
    net.net.enh_cells[1].register_forward_pre_hook(lambda _m, a: seen.__setitem__("s0", a[0].clone()))
    x = torch.randn(2, 3, 32, 32)
    net(x)
    before = seen["s0"]
    with torch.no_grad():
        net.net.enh_taps[1][0][1].weight.mul_(2.0)  # the last block's enhancement tap conv
    net(x)
    torch.testing.assert_close(seen["s0"], before)
