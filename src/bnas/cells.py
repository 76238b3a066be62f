"""Edges (full mixed, partial-channel, fixed) and the one Cell that hosts any of them (SPEC §3-4)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from .ops import PRIMITIVES, FactorizedReduce, Identity, ReLUConvBN, channel_shuffle, drop_path, make_op

# `none` contributes zeros: mixed edges never build or run it and simply ignore its weight.
_ACTIVE = tuple(i for i, name in enumerate(PRIMITIVES) if name != "none")
_COLUMN = {name: i for i, name in enumerate(PRIMITIVES)}  # an operation's column in the alphas


def search_edges(steps: int = 4) -> list[tuple[int, int]]:
    """(node, source) of every edge of a search cell, in the row order of the alpha matrix."""
    return [(node, src) for node in range(steps) for src in range(node + 2)]


class MixedEdge(nn.Module):
    """sum_op softmax(alpha)[op] * op(x) over the candidate operations (DARTS relaxation).

    `ops` holds the operations in the order of `op_names` (PRIMITIVES without `none`; the state dict keys are
    their positions); readers ask for an operation by name (`op(name)`)."""

    def __init__(self, c: int, stride: int):
        super().__init__()
        self.op_names: tuple[str, ...] = tuple(PRIMITIVES[i] for i in _ACTIVE)
        self.ops = nn.ModuleList(make_op(name, c, stride, affine=False, mixed=True) for name in self.op_names)

    def op(self, name: str) -> nn.Module:
        """The operation called `name` (KeyError naming the edge's operations otherwise)."""
        if name not in self.op_names:
            raise KeyError(f"this mixed edge has no operation {name!r}; it has {', '.join(self.op_names)}")
        return self.ops._modules[str(self.op_names.index(name))]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for name, op in zip(self.op_names, self.ops, strict=True):
            y = weights[_COLUMN[name]] * op(x)
            out = y if out is None else out + y
        return out


class PartialEdge(nn.Module):
    """PC-DARTS edge: only the first C/K channels go through the mixture, the rest bypass it."""

    def __init__(self, c: int, stride: int, k: int):
        super().__init__()
        if c % k:
            raise ValueError(f"partial channels K={k} must divide the edge's {c} channels")
        self.k = k
        self.c_part = c // k
        self.mixed = MixedEdge(self.c_part, stride)
        self.bypass = nn.MaxPool2d(2, 2) if stride == 2 else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        part, rest = x[:, : self.c_part], x[:, self.c_part :]
        if self.bypass is not None:
            rest = self.bypass(rest)
        return channel_shuffle(torch.cat([self.mixed(part, weights), rest], dim=1), self.k)


EdgeFactory = Callable[[int, int, int], nn.Module]  # (edge index, channels, stride) -> edge


class CellBackend(Protocol):
    """What a cell asks of a backend (bnas.fast): the same mathematics as `Cell.forward`, computed faster."""

    def supports(self, cell: Cell) -> bool: ...

    def cell_forward(self, cell: Cell, s0: torch.Tensor, s1: torch.Tensor, op_weights, edge_weights): ...


class Cell(nn.Module):
    """A cell: two preprocessed inputs, `steps` nodes each summing its incoming edges, concat of nodes.

    The same class hosts search edges (called with per-edge op weights and optional per-edge
    normalisation weights) and fixed edges (one operation each, with drop-path in training).
    A `backend` (bnas.fast) may run a training search cell's forward: the same mathematics computed per
    source state instead of per edge (same modules and parameters; evaluation runs the plain one).
    """

    def __init__(
        self,
        edges: Sequence[tuple[int, int]],
        make_edge: EdgeFactory,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        affine: bool,
        concat: Sequence[int] | None = None,
        backend: CellBackend | None = None,
    ):
        super().__init__()
        self.reduction = reduction
        self.steps = max(node for node, _ in edges) + 1
        self.edge_list = [tuple(e) for e in edges]
        self.concat = list(concat) if concat is not None else list(range(2, 2 + self.steps))
        self.multiplier = len(self.concat)
        self.preprocess0 = (
            FactorizedReduce(c_pp, c, affine=affine) if reduction_prev else ReLUConvBN(c_pp, c, affine=affine)
        )
        self.preprocess1 = ReLUConvBN(c_p, c, affine=affine)
        self.edges = nn.ModuleList(
            make_edge(i, c, 2 if reduction and src < 2 else 1) for i, (_, src) in enumerate(self.edge_list)
        )
        self._by_node = [[i for i, (n, _) in enumerate(self.edge_list) if n == node] for node in range(self.steps)]
        # (edge index, node) of the edges leaving each state: the fast path computes them together
        self.out_edges = [
            [(i, n) for i, (n, s) in enumerate(self.edge_list) if s == src] for src in range(self.steps + 2)
        ]
        self.backend = backend if backend is not None and backend.supports(self) else None

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        op_weights: torch.Tensor | None = None,
        edge_weights: torch.Tensor | None = None,
        drop_prob: float = 0.0,
    ) -> torch.Tensor:
        if self.backend is not None and op_weights is not None and self.training and drop_prob == 0.0:
            return self.backend.cell_forward(self, s0, s1, op_weights, edge_weights)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        drop = drop_prob > 0.0 and self.training
        for node_edges in self._by_node:
            acc = None
            for i in node_edges:
                edge, src = self.edges[i], self.edge_list[i][1]
                h = edge(states[src]) if op_weights is None else edge(states[src], op_weights[i])
                if edge_weights is not None:
                    h = h * edge_weights[i]
                if drop and not isinstance(edge, Identity):
                    h = drop_path(h, drop_prob)
                acc = h if acc is None else acc + h
            states.append(acc)
        return torch.cat([states[i] for i in self.concat], dim=1)
