"""Network wirings, each written once and given a cell factory (SPEC §5, §8; DESIGN "one wiring, two uses").

* `BroadNet`: the broad convolutional network (BCNN). Convolution blocks, each `deep` stride-1 cells
  followed by one reduction cell; a GAP tap of every block's input and an enhancement tap of the last two
  blocks' outputs, aligned to the final resolution by FactorizedReduce. Enhancement cell 0 reads those two
  enhancement taps; after it the enhancement cells continue the cell chain on *raw* outputs: cell 1 reads
  the last convolution cell and cell 0, cell j >= 2 reads cells j-2 and j-1 (SPEC §5.4). A head over all
  GAP taps and all enhancement-cell taps. The search supernet is `deep=0` with search cells, the trained
  network `deep=N//L-1` with fixed cells.
* `DeepNet`: the DARTS stack (reductions at 1/3 and 2/3 of the cells), optional auxiliary head.

Both are called with `weights`: for each cell type, (op weights, edge weights) or None for fixed cells.
For L > 2 blocks the published code still feeds blocks 0 and 1 to the first enhancement cell; we feed
the last two blocks (the deepest features), which is the same for L = 2.
Taps and their alignment keep affine BatchNorm even in the supernet, as the published code does
(only the cells' BatchNorms are affine-free there); this is what the parameter counts pin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .cells import Cell
from .ops import FactorizedReduce, ReLUConvBN

# (cell type, c_pp, c_p, c, reduction, reduction_prev) -> Cell
CellFactory = Callable[[str, int, int, int, bool, bool], Cell]
Weights = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


def make_stem(kind: str, in_channels: int, c_out: int) -> tuple[nn.Module, nn.Module | None]:
    """CIFAR stem: one 3x3 conv to c_out. ImageNet stem: stride-2 convs to c_out/2 then c_out (stem0), then a
    stride-2 ReLU-conv-BN c_out -> c_out (stem1). c_out is stem multiplier x C: 3C in the supernets
    (the published ImageNet search too), C in the trained ImageNet networks (SPEC §7, §8)."""
    if kind == "cifar":
        return nn.Sequential(nn.Conv2d(in_channels, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)), None
    if kind == "imagenet":
        c = c_out
        stem0 = nn.Sequential(
            nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        return stem0, stem1
    raise ValueError(f"unknown stem {kind!r} (cifar or imagenet)")


def _align(c: int, halvings: int, affine: bool) -> nn.Module:
    """One FactorizedReduce per missing halving brings a tap to the final resolution."""
    return nn.Sequential(*(FactorizedReduce(c, c, affine=affine) for _ in range(halvings)))


@dataclass(frozen=True)
class BroadShape:
    """The broad network's shape: C, L blocks, `deep` stride-1 cells per block, E enhancement cells."""

    channels: int = 16
    num_classes: int = 10
    in_channels: int = 3
    blocks: int = 2
    deep: int = 0
    enhance: int = 1
    stem: str = "cifar"
    stem_multiplier: int = 3  # the trained ImageNet network uses 1 (SPEC §8)


class BroadNet(nn.Module):
    """The BCNN wiring; `make_cell` decides whether it is the supernet or a trained network."""

    cell_types = ("conv", "enh")

    def __init__(self, shape: BroadShape, make_cell: CellFactory, affine: bool):
        super().__init__()
        if shape.blocks < 2:
            raise ValueError("the broad network needs at least 2 convolution blocks")
        if shape.enhance < 1:
            raise ValueError("the broad network needs at least 1 enhancement cell")
        self.shape = shape
        c = shape.channels
        L = shape.blocks
        c_stem = shape.stem_multiplier * c
        self.stem0, self.stem1 = make_stem(shape.stem, shape.in_channels, c_stem)
        # after the ImageNet stem, input 0 of the first cell (stem0) has twice the resolution of input 1
        c_pp, c_p, reduction_prev = c_stem, c_stem, shape.stem != "cifar"
        c_cur = c

        self.blocks = nn.ModuleList()
        self.gap_taps = nn.ModuleList()
        self.enh_taps = nn.ModuleList()
        tap_channels: list[int] = []
        enh_in: list[int] = []
        for b in range(L):
            block = nn.ModuleList()
            for _ in range(shape.deep):
                block.append(make_cell("conv", c_pp, c_p, c_cur, False, reduction_prev))
                c_pp, c_p, reduction_prev = c_p, block[-1].multiplier * c_cur, False
            # GAP tap of the block input (the cell feeding the reduction), at resolution / 2^b
            self.gap_taps.append(nn.Sequential(ReLUConvBN(c_p, c_cur), _align(c_cur, L - b, True)))
            tap_channels.append(c_cur)
            c_cur *= 2
            block.append(make_cell("conv", c_pp, c_p, c_cur, True, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, block[-1].multiplier * c_cur, True
            self.blocks.append(block)
            if b >= L - 2:  # enhancement tap of the block output, at resolution / 2^(b+1)
                c_tap = c_cur if b < L - 1 else 4 * c_cur
                self.enh_taps.append(nn.Sequential(ReLUConvBN(c_p, c_tap), _align(c_tap, L - 1 - b, True)))
                enh_in.append(c_tap)
        c_last = c_p  # the last convolution cell's raw output: input 0 of enhancement cell 1
        c_pp, c_p = enh_in
        self.enh_cells = nn.ModuleList()
        self.enh_out_taps = nn.ModuleList()
        for j in range(shape.enhance):
            cell = make_cell("enh", c_pp, c_p, c_cur, False, False)
            self.enh_cells.append(cell)
            c_out = cell.multiplier * c_cur
            c_tap = c_cur if j < shape.enhance - 1 else 4 * c_cur
            self.enh_out_taps.append(ReLUConvBN(c_out, c_tap))
            tap_channels.append(c_tap)
            c_pp, c_p = (c_last if j == 0 else c_p), c_out
        self.head_channels = sum(tap_channels)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.head_channels, shape.num_classes)

    def forward(self, x: torch.Tensor, weights: Weights | None = None, drop_prob: float = 0.0, with_aux: bool = False):
        """The logits; `with_aux`: (logits, None), as DeepNet's (the broad network has no auxiliary head)."""
        w_conv = weights["conv"] if weights else (None, None)
        w_enh = weights["enh"] if weights else (None, None)
        s0 = self.stem0(x)
        s1 = s0 if self.stem1 is None else self.stem1(s0)
        features, enh_inputs = [], []
        for b, block in enumerate(self.blocks):
            for cell in block:
                if cell.reduction:
                    features.append(self.gap_taps[b](s1))
                s0, s1 = s1, cell(s0, s1, *w_conv, drop_prob=drop_prob)
            k = b - (len(self.blocks) - len(self.enh_taps))
            if k >= 0:
                enh_inputs.append(self.enh_taps[k](s1))
        last_conv = s1
        s0, s1 = enh_inputs
        for j, (cell, tap) in enumerate(zip(self.enh_cells, self.enh_out_taps, strict=True)):
            s0, s1 = (last_conv if j == 0 else s1), cell(s0, s1, *w_enh, drop_prob=drop_prob)
            features.append(tap(s1))
        out = self.global_pooling(torch.cat(features, dim=1))
        logits = self.classifier(out.flatten(1))
        return (logits, None) if with_aux else logits


@dataclass(frozen=True)
class DeepShape:
    """The DARTS stack: `layers` cells, reductions at layers//3 and 2*layers//3."""

    channels: int = 16
    num_classes: int = 10
    in_channels: int = 3
    layers: int = 8
    stem: str = "cifar"
    stem_multiplier: int = 3  # DARTS' ImageNet network uses 1
    auxiliary: bool = False


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier on the 8x8 features after the second reduction (CIFAR)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class DeepNet(nn.Module):
    """The DARTS wiring; `make_cell` decides whether it is the supernet or a trained network."""

    cell_types = ("normal", "reduce")

    def __init__(self, shape: DeepShape, make_cell: CellFactory, affine: bool):
        super().__init__()
        self.shape = shape
        c = shape.channels
        c_stem = shape.stem_multiplier * c
        self.stem0, self.stem1 = make_stem(shape.stem, shape.in_channels, c_stem)
        # after the ImageNet stem, input 0 of the first cell (stem0) has twice the resolution of input 1
        c_pp, c_p, reduction_prev = c_stem, c_stem, shape.stem != "cifar"
        c_cur = c
        self.cells = nn.ModuleList()
        self.aux_index = 2 * shape.layers // 3
        self.auxiliary = None
        for i in range(shape.layers):
            reduction = i in (shape.layers // 3, 2 * shape.layers // 3)
            if reduction:
                c_cur *= 2
            cell = make_cell("reduce" if reduction else "normal", c_pp, c_p, c_cur, reduction, reduction_prev)
            self.cells.append(cell)
            c_pp, c_p, reduction_prev = c_p, cell.multiplier * c_cur, reduction
            if shape.auxiliary and i == self.aux_index:
                self.auxiliary = AuxiliaryHead(c_p, shape.num_classes)
        self.head_channels = c_p
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, shape.num_classes)

    def forward(self, x: torch.Tensor, weights: Weights | None = None, drop_prob: float = 0.0, with_aux: bool = False):
        """The logits; `with_aux`: (logits, the auxiliary head's logits, or None without a head or in eval mode)."""
        s0 = self.stem0(x)
        s1 = s0 if self.stem1 is None else self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            w = weights["reduce" if cell.reduction else "normal"] if weights else (None, None)
            s0, s1 = s1, cell(s0, s1, *w, drop_prob=drop_prob)
            if self.auxiliary is not None and self.training and i == self.aux_index:  # trained in train mode
                aux = self.auxiliary(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux) if with_aux else logits
