"""Candidate operations of the BNAS/DARTS search space (SPEC §2), one registry: name -> constructor."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
PARAMETER_FREE: frozenset[str] = frozenset({"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"})


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine=True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset 1x1 stride-2 convolutions, so no pixel is dropped.

    Written as 1x1 convolutions of the two sub-sampled phases (even pixels, odd pixels): the same products as
    stride-2 convolutions of the map and of its one-pixel shift, but autograd keeps a quarter of the input
    instead of the whole input and a shifted copy of it.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.relu(x))

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the ReLU (the fast backend shares one ReLU between several readers of a state)."""
        return self.bn(self.reduce_convs(x))

    def reduce_convs(self, x: torch.Tensor) -> torch.Tensor:
        """The two convolutions after the ReLU, concatenated (the input of the BatchNorm)."""
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        even = x[:, :, ::2, ::2].contiguous(memory_format=fmt)
        odd = x[:, :, 1::2, 1::2]
        if odd.shape[-2:] != even.shape[-2:]:
            # odd maps (e.g. 7x7 on ImageNet): the shifted half ends in a zero row/column, as the padded original
            odd = nn.functional.pad(odd, (0, even.shape[-1] - odd.shape[-1], 0, even.shape[-2] - odd.shape[-2]))
        odd = odd.contiguous(memory_format=fmt)
        if x.device.type == "cpu" and x.shape[1] <= 4:
            # oneDNN's 1x1 weight gradient (torch 2.x, AVX2) has written out of bounds with at most 4 input
            # channels in channels-last: such tiny ones are a matrix product instead
            return torch.cat([_conv1x1(self.conv_1, even), _conv1x1(self.conv_2, odd)], dim=1)
        return torch.cat([self.conv_1(even), self.conv_2(odd)], dim=1)


def _conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nchw,oc->nohw", x, conv.weight[:, :, 0, 0])


def _pool(kind: str, c: int, stride: int, affine: bool, bn: bool) -> nn.Module:
    pool = (
        nn.MaxPool2d(3, stride=stride, padding=1)
        if kind == "max"
        else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    )
    return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if bn else pool


OpFactory = Callable[[int, int, bool], nn.Module]

#: name -> constructor(C, stride, affine). Pools are bare here; mixed edges add their BatchNorm.
OPS: dict[str, OpFactory] = {
    "none": lambda c, s, a: Zero(s),
    "max_pool_3x3": lambda c, s, a: _pool("max", c, s, a, bn=False),
    "avg_pool_3x3": lambda c, s, a: _pool("avg", c, s, a, bn=False),
    "skip_connect": lambda c, s, a: Identity() if s == 1 else FactorizedReduce(c, c, affine=a),
    "sep_conv_3x3": lambda c, s, a: SepConv(c, c, 3, s, 1, affine=a),
    "sep_conv_5x5": lambda c, s, a: SepConv(c, c, 5, s, 2, affine=a),
    "dil_conv_3x3": lambda c, s, a: DilConv(c, c, 3, s, 2, 2, affine=a),
    "dil_conv_5x5": lambda c, s, a: DilConv(c, c, 5, s, 4, 2, affine=a),
}


def make_op(name: str, c: int, stride: int, affine: bool, mixed: bool = False) -> nn.Module:
    """Build one candidate operation; inside a mixed edge pools get an affine-free BatchNorm (SPEC §2)."""
    if mixed and "pool" in name:
        return _pool(name[:3], c, stride, affine, bn=True)
    return OPS[name](c, stride, affine)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS' channel shuffle; a channels-last input stays channels-last (one copy either way)."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        t = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4)
        return t.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Drops whole samples of an edge output and rescales the rest (per-sample mask, 1/keep)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask.div_(keep)  # one pass over x, not two
