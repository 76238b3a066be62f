"""The fast backend: the same mathematics as the plain modules, computed with less time and memory.

A supernet is given a backend at construction (`SuperNet(cfg, backend=fast.BACKEND)`); the plain modules
(ops, cells, topology, space) never import this package. The backend has one small interface:

* `supports(cell)`: whether `cell_forward` knows the cell's edges;
* `cell_forward(cell, s0, s1, op_weights, edge_weights)`: a search cell's training forward, state by state;
* `adopt(net)`: prepares a wiring's modules (one shared ReLU per state for its taps and preprocessing);
* `context()`: the block a training forward of the supernet runs in.

Its switches are constructor arguments (`FastBackend(batch_edges=False)`), never process-wide state:
`BACKEND` is the default instance, and a caller that wants other switches (`bnas bench --no-batch-edges`)
builds its own. `TRAINED` is the trained network's backend: `adopt` and `context` only (its cells are fixed).

The backend reads the plain modules by name (`MixedEdge.op(name)`, `DilConv.dw`, `ReLUConvBN.conv`, ...),
never by position; a mixed edge with an operation it does not compute is refused at construction.

`backward_once()` marks the search steps whose graphs are differentiated once (not Hessian-vector
products), where more can be recomputed instead of kept. Everything is tested against the plain modules
(tests/test_fast.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

from ..cells import Cell, MixedEdge, PartialEdge
from . import cells as fastcells
from .functions import backward_once
from .sharing import share_relus, sharing_relus


class FastBackend:
    """Per-source-state search cells (fast.cells), fused autograd functions (fast.functions, fast.multi),
    shared ReLUs (fast.sharing).

    `batch_edges`: the edges leaving a state run batched, one call per operation (None: fast.cells'
    default, on); False runs them one by one (the comparison `bnas bench search --no-batch-edges` makes)."""

    name = "fast"

    def __init__(self, batch_edges: bool | None = None):
        self.batch_edges = batch_edges

    def supports(self, cell: Cell) -> bool:
        """Whether the cell's edges are search edges of one kind; raises on a mixed edge whose operations the
        fast cells do not compute (rather than compute something else)."""
        kinds = {type(e) for e in cell.edges}
        if len(kinds) != 1 or not kinds <= {MixedEdge, PartialEdge}:
            return False
        for edge in cell.edges:
            fastcells.check_ops((edge.mixed if isinstance(edge, PartialEdge) else edge).op_names)
        return True

    def cell_forward(
        self, cell: Cell, s0: torch.Tensor, s1: torch.Tensor, op_weights: torch.Tensor, edge_weights
    ) -> torch.Tensor:
        return fastcells.cell_forward(cell, s0, s1, op_weights, edge_weights, self.batch_edges)

    def adopt(self, net: nn.Module) -> None:
        share_relus(net)

    def context(self) -> AbstractContextManager:
        return sharing_relus()


class TrainedBackend:
    """A trained network's forward: one ReLU per tensor for every operation, preprocessing and tap that starts
    with one (fast.sharing); the fixed cells themselves run their plain forward."""

    name = "fast"

    def adopt(self, net: nn.Module) -> None:
        share_relus(net, ops=True)

    def context(self) -> AbstractContextManager:
        return sharing_relus()


BACKEND = FastBackend()
TRAINED = TrainedBackend()

__all__ = ["BACKEND", "TRAINED", "FastBackend", "TrainedBackend", "backward_once"]
