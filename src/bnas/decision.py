"""How decided a search's architecture is: a derived cell is only worth its name if the search chose it.

A gradient search derives a cell from its alphas whatever their values: after a short search the op weights
are still within a few thousandths of uniform (1/8), and the derived cell is then one the noise of the last
steps picked, close to a random cell of the space. Three figures say how far the search got:

* **op margin**, per cell type, on the edges the derivation keeps: the chosen op's softmax weight minus the
  best other non-`none` op's (0 = a coin toss between two ops; uniform alphas give 0);
* **edge margin**, per node with more than two inputs: the weakest kept edge's strength minus the strongest
  dropped edge's, where an edge's strength is its best non-`none` op weight (PC: times the softmax of its
  node's betas), exactly what derivation ranks edges by;
* **stable**: the share of the last fifth of the search's decision points (every log point, at least ten
  per epoch, and each epoch's end) whose derived genotype equals the final one.

The rule (`settled`): a search **settled** when every cell type's mean op margin is at least `OP_MARGIN`
(0.05: the chosen op's weight is 0.05 above the runner-up's, about a 0.35 difference of alphas when the other
ops are near uniform) **and** the genotype was stable over at least `STABLE_SHARE` (80%) of the last fifth of
its decision points. A search that did not settle gets one line of advice (`advice`): its cell is close to a
random cell of the space; more steps (--budget, --epochs), a larger architecture step (--arch-lr auto) help.

These figures are read from the alphas only; they never change the search.

**Gradient consistency** (`GradConsistency`) says why a search does or does not get there: per architecture
parameter and epoch, the norm of the mean architecture gradient over its spread across the epoch's batches
(the root mean squared distance of a step's gradient from that mean). Adam moves an alpha by about its
learning rate per step only while the gradient's sign holds from batch to batch; near 0 the steps cancel
(a random walk), above about 1 they add up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .ops import PRIMITIVES

OP_MARGIN = 0.05  # a settled search's smallest mean op margin (every cell type)
STABLE_SHARE = 0.8  # and the smallest share of the last fifth whose genotype equals the final one
LAST_SHARE = 0.2  # "the last fifth" of the search's decision points


def _node_rows(n_edges: int) -> list[tuple[int, int]]:
    """(first row, incoming edges) per node of a cell with `n_edges` edges (2, 3, 4, 5 inputs: 14 edges)."""
    rows, start, n = [], 0, 2
    while start < n_edges:
        rows.append((start, n))
        start, n = start + n, n + 1
    if start != n_edges:
        raise ValueError(f"{n_edges} edges do not make a cell of nodes with 2, 3, ... inputs")
    return rows


def cell_margins(alphas: torch.Tensor, betas: torch.Tensor | None = None) -> dict[str, list[float]]:
    """The op margins of a cell's kept edges and the edge margins of its nodes (module docstring), from raw
    alphas (edges x ops) and, with PC's edge normalisation, raw betas (edges). Derivation's own ranking: per
    node the two edges of largest strength are kept (ties keep the lower input, as `derive_cell` does)."""
    ops = torch.softmax(alphas.detach().double(), dim=-1)
    none = PRIMITIVES.index("none")
    op_margins, edge_margins = [], []
    for start, n in _node_rows(ops.shape[0]):
        w = ops[start : start + n].clone()
        w[:, none] = -1.0
        top2 = w.topk(2, dim=1).values  # per edge: the chosen op's weight and the runner-up's
        strength = top2[:, 0].clone()
        if betas is not None:
            strength = strength * torch.softmax(betas.detach().double()[start : start + n], dim=-1)
        order = sorted(range(n), key=lambda j: -float(strength[j]))
        kept, dropped = order[:2], order[2:]
        op_margins += [float(top2[j, 0] - top2[j, 1]) for j in kept]
        if dropped:
            edge_margins.append(float(min(strength[j] for j in kept) - max(strength[j] for j in dropped)))
    return {"op": op_margins, "edge": edge_margins}


def margins(
    alphas: Sequence[torch.Tensor], betas: Sequence[torch.Tensor] | None, cell_types: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per cell type: mean and smallest op margin, mean and smallest edge margin."""
    out: dict[str, dict[str, float]] = {}
    for i, kind in enumerate(cell_types):
        m = cell_margins(alphas[i], betas[i] if betas is not None else None)
        out[kind] = {
            "op_margin": sum(m["op"]) / len(m["op"]),
            "op_margin_min": min(m["op"]),
            "edge_margin": sum(m["edge"]) / len(m["edge"]) if m["edge"] else 0.0,
            "edge_margin_min": min(m["edge"]) if m["edge"] else 0.0,
        }
    return out


def model_margins(model) -> dict[str, dict[str, float]]:
    """`margins` of a SuperNet's alphas (and betas under edge normalisation)."""
    kinds = model.cell_types
    alphas = [model.arch[f"alpha_{k}"] for k in kinds]
    betas = [model.arch[f"beta_{k}"] for k in kinds] if model.cfg.edge_norm else None
    return margins(alphas, betas, kinds)


class GradConsistency:
    """Sums of the architecture gradients and of their squared norms over an epoch's architecture steps, kept
    on the device (a step adds to them without a host read; `read` is the epoch end's one copy)."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self._shapes = {n: (p.shape, p.device) for n, p in params.items()}
        self.reset()

    def reset(self) -> None:
        self.sums = {n: torch.zeros(s, dtype=torch.float64, device=d) for n, (s, d) in self._shapes.items()}
        self.squares = {n: torch.zeros((), dtype=torch.float64, device=d) for n, (_, d) in self._shapes.items()}
        device = next(iter(self._shapes.values()))[1] if self._shapes else "cpu"
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, grads: Sequence[torch.Tensor], ok: torch.Tensor) -> None:
        """One step's gradients (in the parameters' order); a step whose gradient was not finite (`ok` false)
        adds nothing."""
        for name, g in zip(self.sums, grads, strict=True):
            g = torch.where(ok, g.detach().double(), 0.0)
            self.sums[name].add_(g)
            self.squares[name].add_(g.square().sum())
        self.count.add_(ok.double())

    def read(self) -> dict[str, float | None] | None:
        """Per parameter: |mean gradient| / spread over the steps since `reset` (None: fewer than two steps);
        one device-to-host copy."""
        parts = [self.count] + [t for n in self.sums for t in (self.sums[n].square().sum(), self.squares[n])]
        n, *rest = torch.stack(parts).tolist()
        if n < 2:
            return None
        out = {}
        for i, name in enumerate(self.sums):
            mean_sq = rest[2 * i] / n**2
            spread_sq = max(rest[2 * i + 1] / n - mean_sq, 0.0)
            out[name] = round(math.sqrt(mean_sq / spread_sq), 5) if spread_sq > 0 else None  # no spread
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "squares": dict(self.squares), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.sums:
            self.sums[name].copy_(state["sums"][name])
            self.squares[name].copy_(state["squares"][name])
        self.count.copy_(state["count"])


def stable_share(trail: Sequence[tuple[int, str]], final: str, total_steps: int | None = None) -> float:
    """The share of the decision points in the last fifth of the search whose genotype is `final`.

    `trail`: (global step, genotype key) per decision point, in order; `total_steps`: the search's length
    (default: the last point's step, i.e. the search so far). At least the last point counts."""
    if not trail:
        return 0.0
    end = total_steps if total_steps is not None else trail[-1][0]
    last = [key for step, key in trail if step >= (1.0 - LAST_SHARE) * end] or [trail[-1][1]]
    return sum(key == final for key in last) / len(last)


def settled(figures: dict[str, dict[str, float]], stable: float) -> bool:
    """The rule of the module's docstring: every cell type's mean op margin >= OP_MARGIN and stable >=
    STABLE_SHARE."""
    return bool(figures) and all(f["op_margin"] >= OP_MARGIN for f in figures.values()) and stable >= STABLE_SHARE


def summarise(figures: dict[str, dict[str, float]], stable: float, arch_lr_auto: bool = False) -> dict[str, Any]:
    """summary.json's "decision": the figures, the rule's thresholds and verdict, and the advice when not
    settled."""
    ok = settled(figures, stable)
    out: dict[str, Any] = {
        "settled": ok,
        "cells": {k: {n: round(v, 5) for n, v in f.items()} for k, f in figures.items()},
        "stable": round(stable, 4),
        "rule": {"op_margin": OP_MARGIN, "stable": STABLE_SHARE, "last_share": LAST_SHARE},
    }
    if not ok:
        out["advice"] = advice(figures, stable, arch_lr_auto)
    return out


def advice(figures: dict[str, dict[str, float]], stable: float, arch_lr_auto: bool = False) -> str:
    """One line for a search that did not settle: what it means and what to change (`arch_lr_auto`: the
    search already sized its architecture step)."""
    op = min((f["op_margin"] for f in figures.values()), default=0.0)
    step = (
        " (a larger --arch-lr-sum moves the alphas further, but did not give better cells in docs/study-budget.md)"
        if arch_lr_auto
        else " or a larger architecture step (--arch-lr auto --arch-lr-sum 3)"
    )
    return (
        f"the architecture did not settle (smallest mean op margin {op:.3f}, needs {OP_MARGIN}; genotype stable "
        f"over {stable:.0%} of the last fifth, needs {STABLE_SHARE:.0%}): the cell is close to a random cell of "
        f"the space; give the search more steps (--budget or --epochs, more --subset){step}"
    )


def genotype_key(genotype) -> str:
    """A genotype as a short comparable string (its cells' edges)."""
    return ";".join(",".join(f"{op}/{src}" for op, src in genotype.cell(name).edges) for name in genotype.names)


def epoch_figures(model, trail: Sequence[tuple[int, str]], final: str) -> dict[str, Any]:
    """An epoch record's "decision": per cell type the mean op and edge margins, and the share of the last fifth
    of the search so far whose genotype is the current one."""
    figures = model_margins(model)
    return {
        "op_margin": {k: round(f["op_margin"], 5) for k, f in figures.items()},
        "edge_margin": {k: round(f["edge_margin"], 5) for k, f in figures.items()},
        "stable": round(stable_share(trail, final), 4),
    }
