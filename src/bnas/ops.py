"""Candidate operations of the BNAS/DARTS search space (SPEC §2), one registry: name -> constructor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from . import fastfn

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


class _Sharing:
    """What `sharing_relus` knows during one forward: the rectified tensors, and which tensors are the
    concatenation of parts (a cell's output) so that their rectified copy need not be kept."""

    def __init__(self, recompute: bool):
        self.relus: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.parts: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self.recipes: dict[int, tuple] = {}  # data pointer -> (cat or relu(cat), parts, relu?)
        self.recompute = recompute
        self.outer = _outer_hooks() if recompute else None  # hooks of an enclosing block still apply

    def close(self) -> None:
        # the graph keeps `unpack` (hence self) for backward: drop the tensors, or they and their graph
        # would form a cycle through the autograd graph that Python's collector cannot see
        self.relus.clear()
        self.parts.clear()
        self.recipes.clear()

    def pack(self, t: torch.Tensor):
        if self.recipes and t.layout == torch.strided:
            hit = self.recipes.get(t.untyped_storage().data_ptr())
            if hit is not None:
                r, parts, relu = hit
                same = t.shape == r.shape and t.stride() == r.stride() and t.storage_offset() == r.storage_offset()
                if same and t.dtype == r.dtype:
                    return _Recipe(parts, t.stride(), relu)
        if self.outer is not None:
            return self.outer[0](t)
        # not t itself: a node keeping its own output (relu, ...) through a hook would keep its graph alive
        return t.detach() if t.requires_grad else t

    def unpack(self, p):
        if isinstance(p, _Recipe):
            r = torch.cat(p.parts, dim=1)
            if p.relu:
                r.relu_()
            if r.stride() != p.stride:
                r = torch.empty_strided(r.shape, p.stride, dtype=r.dtype, device=r.device).copy_(r)
            return r
        return p if self.outer is None else self.outer[1](p)


def _outer_hooks():
    """The saved-tensor hooks of an enclosing `saved_tensors_hooks` block (a memory probe), or None."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)  # private: may go away
    return top(False) if top is not None else None


class _Recipe:
    """cat(parts) or relu(cat(parts)), recomputed when backward needs it."""

    def __init__(self, parts: list[torch.Tensor], stride: tuple[int, ...], relu: bool):
        self.parts, self.stride, self.relu = parts, stride, relu


_RELUS: ContextVar[_Sharing | None] = ContextVar("bnas_shared_relus", default=None)


@contextmanager
def sharing_relus() -> Iterator[None]:
    """Within this block, `shared_relu` of one tensor is computed (and kept for backward) once.

    A cell output feeds up to four ReLUConvBN/FactorizedReduce inputs (the next two cells, a GAP tap, an
    enhancement tap), each of which would rectify it and keep its own identical copy for backward. Inside
    `fastfn.backward_once` not even that one copy is kept when the cell registered its output's parts
    (`register_parts`; the node states, which its edges keep anyway): backward recomputes relu(cat(parts)).
    """
    sharing = _Sharing(fastfn.once())
    token = _RELUS.set(sharing)
    try:
        if sharing.recompute:
            with torch.autograd.graph.saved_tensors_hooks(sharing.pack, sharing.unpack):
                yield
        else:
            yield
    finally:
        _RELUS.reset(token)
        sharing.close()


def register_parts(s: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """Declares s = cat(parts, dim=1) to `sharing_relus` (a no-op outside it)."""
    sharing = _RELUS.get()
    if sharing is not None and sharing.recompute:
        sharing.parts[id(s)] = (s, list(parts))


def shared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x), computed once per tensor inside `sharing_relus` (gradients add up as for separate ReLUs)."""
    sharing = _RELUS.get()
    if sharing is None:
        return torch.relu(x)
    hit = sharing.relus.get(id(x))
    if hit is None or hit[0] is not x:
        parts = sharing.parts.get(id(x))
        if parts is not None and parts[0] is x:
            # neither x (what this ReLU's backward reads) nor relu(x) (what the convolutions reading it keep)
            # is kept: both are recomputed from the parts
            sharing.recipes[x.untyped_storage().data_ptr()] = (x, parts[1], False)
            r = _ReLU.apply(x)
            sharing.recipes[r.untyped_storage().data_ptr()] = (r, parts[1], True)
        else:
            r = torch.relu(x)
        hit = sharing.relus[id(x)] = (x, r)
    return hit[1]


class _ReLU(torch.autograd.Function):
    """relu(x) whose backward reads x, not its output (x can be recomputed from a cell's node states)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g, x, 0)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fastfn.once() and _RELUS.get() is not None:
            # a fast supernet's search step: recompute the convolution in backward instead of keeping it
            return fastfn.conv_bn(shared_relu(x), self[1], self[2])
        return self[2](self[1](shared_relu(x)))


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
        return self.reduce(shared_relu(x))

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the ReLU (the fast search path shares one ReLU between several edges)."""
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
    return x * mask / keep
