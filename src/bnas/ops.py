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


class NamedSequential(nn.Sequential):
    """A Sequential whose positions also have names (`PARTS`: name, type), checked at construction.

    The modules stay at their indices, so state dicts (and older checkpoints) keep their keys; code that reads
    a part (the fast backend) asks for it by name (`part(name)` or the subclass's properties), never by
    position: a reordered or retyped part fails here, loudly, instead of computing something else."""

    PARTS: tuple[tuple[str, type[nn.Module]], ...] = ()
    _KEYS: dict[str, str] = {}

    def __init__(self, *modules: nn.Module):
        super().__init__(*modules)
        kinds = [type(m).__name__ for m in modules]
        if len(modules) != len(self.PARTS) or not all(
            isinstance(m, kind) for m, (_, kind) in zip(modules, self.PARTS, strict=False)
        ):
            want = [f"{name}: {getattr(kind, '__name__', kind)}" for name, kind in self.PARTS]
            raise TypeError(f"{type(self).__name__} holds {kinds}, but its PARTS name {want}")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._KEYS = {name: str(i) for i, (name, _) in enumerate(cls.PARTS)}  # name -> its key in _modules

    def part(self, name: str) -> nn.Module:
        """The part called `name` (KeyError naming the known parts otherwise)."""
        key = self._KEYS.get(name)
        if key is None:
            raise KeyError(f"{type(self).__name__} has no part {name!r}; its parts: {[p for p, _ in self.PARTS]}")
        return self._modules[key]


class ReLUConvBN(NamedSequential):
    PARTS = (("relu", nn.ReLU), ("conv", nn.Conv2d), ("bn", nn.BatchNorm2d))

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    conv = property(lambda self: self.part("conv"))
    bn = property(lambda self: self.part("bn"))


class DilConv(NamedSequential):
    PARTS = (("relu", nn.ReLU), ("dw", nn.Conv2d), ("pw", nn.Conv2d), ("bn", nn.BatchNorm2d))

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    dw = property(lambda self: self.part("dw"))  # depthwise kxk (dilated)
    pw = property(lambda self: self.part("pw"))  # pointwise 1x1
    bn = property(lambda self: self.part("bn"))


class SepConv(NamedSequential):
    PARTS = (("first", DilConv), ("second", DilConv))

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine=True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )

    first = property(lambda self: self.part("first"))  # stride s
    second = property(lambda self: self.part("second"))  # stride 1


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


class PoolBN(NamedSequential):
    """A pool followed by an affine-free BatchNorm: a pooling operation inside a mixed edge (SPEC §2)."""

    PARTS = (("pool", nn.MaxPool2d | nn.AvgPool2d), ("bn", nn.BatchNorm2d))

    pool = property(lambda self: self.part("pool"))
    bn = property(lambda self: self.part("bn"))


def _pool(kind: str, c: int, stride: int, affine: bool, bn: bool) -> nn.Module:
    pool = (
        nn.MaxPool2d(3, stride=stride, padding=1)
        if kind == "max"
        else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    )
    return PoolBN(pool, nn.BatchNorm2d(c, affine=False)) if bn else pool


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
