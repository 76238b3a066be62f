"""One ReLU per state inside a fast supernet's forward, and the taps that use it.

A cell output feeds up to four ReLUConvBN/FactorizedReduce inputs (the next two cells, a GAP tap, an
enhancement tap), each of which would rectify it and keep its own identical copy for backward. Within
`sharing_relus` the fast backend computes that ReLU once per tensor (gradients add up as for separate
ReLUs), and inside `backward_once` does not even keep that copy when the cell registered its output's
parts (the node states, which its edges keep anyway): backward recomputes relu(cat(parts)).
The plain modules (ops.py) know nothing of this: `share_relus(net)` gives a supernet's ReLUConvBN and
FactorizedReduce modules the forward below (subclasses with no state of their own: same parameters,
same state dict).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from ..ops import DilConv, FactorizedReduce, ReLUConvBN
from .functions import conv_bn, once


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
    """Within this block, `shared_relu` of one tensor is computed (and kept for backward) once."""
    sharing = _Sharing(once())
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


class SharedReLUConvBN(ReLUConvBN):
    """ReLUConvBN reading its input's shared ReLU; in a search step its convolution is recomputed in backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if once() and _RELUS.get() is not None:
            return conv_bn(shared_relu(x), self.conv, self.bn)
        return self.bn(self.conv(shared_relu(x)))


class SharedFactorizedReduce(FactorizedReduce):
    """FactorizedReduce reading its input's shared ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(shared_relu(x))


class SharedDilConv(DilConv):
    """DilConv (and so each half of a SepConv) reading its input's shared ReLU: in a trained cell, the edges
    leaving one state (BNASv2_CLR_v1: four from the same state) rectify it once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pw(self.dw(shared_relu(x))))


_SHARED = {ReLUConvBN: SharedReLUConvBN, FactorizedReduce: SharedFactorizedReduce}


def share_relus(net: nn.Module, ops: bool = False) -> None:
    """Gives every ReLUConvBN and FactorizedReduce of `net` the shared-ReLU forward (in place); with `ops`, the
    fixed edges' DilConv and SepConv too (a trained network: a supernet's mixed edges have their own path)."""
    table = _SHARED | {DilConv: SharedDilConv} if ops else _SHARED
    for m in net.modules():
        shared = table.get(type(m))
        if shared is not None:
            m.__class__ = shared
