"""Genotypes under a cost budget (issue 26): the best-scoring derivation that fits, and uniform random cells that fit.

**Score.** Derivation (SPEC §6) keeps, per node, the two incoming edges with the largest op weight (excluding
`none`; PC: times the edge's normalised beta) and the best op on each. That is exactly the genotype that maximises

    score(genotype) = sum over its cells' chosen (edge, op) of weight[edge, op]

(per node, the best pair of distinct edges with the best op on each), so `derive_within` maximises the same score
subject to `fixed + sum of the chosen ops' costs <= budget` (costs.py): with a budget the unconstrained genotype
meets, both return the same genotype.

**Exact search.** Each (cell type, node) is one group whose options are a pair of distinct input edges and an op on
each (up to 10 x 7 x 7 options). Options dominated within their group (another costs no more in every limited
resource and scores at least as much) are dropped; then the groups are combined one by one keeping the Pareto
front of (cost, score) over the combined choices, dropping partial choices that cannot fit even with the cheapest
options of the groups still to come. The front's best score is the optimum of this multiple-choice knapsack,
exactly (integer costs, no rounding), without a table over the budget's range.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .costs import Budget, CostModel, format_cost
from .errors import BnasError
from .genotype import CellGenotype, Genotype, derive, edge_op_scores, sample_cell
from .genotype.io import CELL_NAMES
from .ops import PRIMITIVES

_NONE = PRIMITIVES.index("none")


class BudgetError(BnasError):
    """No genotype of the space fits the budget (or none was drawn that fits)."""


def _pareto(costs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (costs <= in every column and score >=; among equal points
    the first). costs: (n, d): one column per limited resource (params, macs, latency)."""
    n, d = costs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if d == 1:
        order = np.lexsort((-scores, costs[:, 0]))  # by cost, then best score first
        s = scores[order]
        best_before = np.concatenate(([-np.inf], np.maximum.accumulate(s)[:-1]))
        return np.sort(order[s > best_before])
    if d > 2:
        return _pareto_any(costs, scores)
    order = np.lexsort((-scores, costs[:, 1], costs[:, 0]))
    keep = []
    stair_c: list[int] = []  # the kept points' second cost, increasing, with increasing scores
    stair_s: list[float] = []
    for i in order:
        c, s = int(costs[i, 1]), float(scores[i])
        j = bisect.bisect_right(stair_c, c)  # kept points with c2 <= c (all have c1 <= this c1)
        if j and stair_s[j - 1] >= s:
            continue
        keep.append(i)
        # insert (c, s); drop the staircase points it now dominates (c2 >= c, score <= s)
        k = j
        while k < len(stair_c) and stair_s[k] <= s:
            k += 1
        stair_c[j:k] = [c]
        stair_s[j:k] = [s]
    return np.sort(np.array(keep, dtype=np.int64))


def _pareto_any(costs: np.ndarray, scores: np.ndarray, block: int = 512) -> np.ndarray:
    """`_pareto` for three or more resources. In lexicographic order of (costs, -score) a point's dominators all
    come before it, and a point dominated by a dropped one is dominated by a kept one (transitivity): so a point
    is kept when no earlier point dominates it, checked a block at a time against the kept points and the block."""
    n, d = costs.shape
    order = np.lexsort((-scores, *(costs[:, k] for k in range(d - 1, -1, -1))))
    c_sorted, s_sorted = costs[order], scores[order]
    kept_c, kept_s = np.empty((0, d), dtype=costs.dtype), np.empty(0)
    keep = []
    earlier = np.tri(block, k=-1, dtype=bool)  # [i, j]: j comes before i within a block
    for start in range(0, n, block):
        c, s = c_sorted[start : start + block], s_sorted[start : start + block]
        m = len(s)
        dominated = np.zeros(m, dtype=bool)
        if len(kept_s):
            for k0 in range(0, len(kept_s), 4096):  # bounded memory: block x 4096 x d
                kc, ks = kept_c[k0 : k0 + 4096], kept_s[k0 : k0 + 4096]
                dominated |= ((kc[None] <= c[:, None]).all(-1) & (ks[None] >= s[:, None])).any(1)
        inner = (c[None] <= c[:, None]).all(-1) & (s[None] >= s[:, None]) & earlier[:m, :m]
        dominated |= inner.any(1)
        new = ~dominated
        kept_c, kept_s = np.concatenate([kept_c, c[new]]), np.concatenate([kept_s, s[new]])
        keep.append(order[start : start + block][new])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@dataclass
class _Group:
    """The options of one (cell type, node): each a pair of (source, op) with its cost vector and score."""

    kind: str
    node: int
    choices: list[tuple[tuple[int, int], tuple[int, int]]]  # ((src, op column), (src, op column))
    costs: np.ndarray  # (n, d) int64
    scores: np.ndarray  # (n,) float64


def _groups(scores: dict[str, torch.Tensor], model: CostModel, resources: Sequence[str]) -> list[_Group]:
    groups = []
    for kind in model.kinds:
        w = scores[kind].detach().double().cpu().numpy()
        tables = [np.array(model.tables[kind][r], dtype=np.int64) for r in resources]
        for node in range(model.steps):
            per_edge = []  # per source: its undominated (op column, cost vector, score)
            for src in range(node + 2):
                row = model.row(node, src)
                cols = [c for c in range(len(PRIMITIVES)) if c != _NONE and np.isfinite(w[row, c])]
                if not cols:
                    per_edge.append([])
                    continue
                c_arr = np.array([[t[row, c] for t in tables] for c in cols], dtype=np.int64)
                s_arr = np.array([w[row, c] for c in cols])
                per_edge.append([(cols[i], c_arr[i], s_arr[i]) for i in _pareto(c_arr, s_arr)])
            choices, costs, sc = [], [], []
            for a in range(node + 2):
                for b in range(a + 1, node + 2):
                    for ca, cost_a, sa in per_edge[a]:
                        for cb, cost_b, sb in per_edge[b]:
                            choices.append(((a, ca), (b, cb)))
                            costs.append(cost_a + cost_b)
                            sc.append(sa + sb)
            c_arr = np.array(costs, dtype=np.int64).reshape(-1, len(resources))
            s_arr = np.array(sc, dtype=np.float64)
            keep = _pareto(c_arr, s_arr)
            groups.append(_Group(kind, node, [choices[i] for i in keep], c_arr[keep], s_arr[keep]))
    return groups


def _solve(groups: list[_Group], capacity: np.ndarray) -> list[int] | None:
    """The option index per group that maximises the total score with total cost <= capacity (per resource), or
    None when nothing fits. Exact: Pareto fronts of partial choices, pruned by what the later groups need at least."""
    d = len(capacity)
    cheapest_after = np.zeros((len(groups) + 1, d), dtype=np.int64)  # the least the groups from i on can cost
    for i in range(len(groups) - 1, -1, -1):
        if len(groups[i].scores) == 0:
            return None
        cheapest_after[i] = cheapest_after[i + 1] + groups[i].costs.min(axis=0)
    if (cheapest_after[0] > capacity).any():
        return None
    front_c = np.zeros((1, d), dtype=np.int64)
    front_s = np.zeros(1)
    trail: list[tuple[np.ndarray, np.ndarray]] = []  # per group: (index into the previous front, option index)
    for i, g in enumerate(groups):
        n, m = len(front_s), len(g.scores)
        c = (front_c[:, None, :] + g.costs[None, :, :]).reshape(n * m, d)
        s = (front_s[:, None] + g.scores[None, :]).reshape(n * m)
        ok = np.all(c + cheapest_after[i + 1] <= capacity, axis=1)
        idx = np.nonzero(ok)[0]
        keep = idx[_pareto(c[idx], s[idx])]
        trail.append((keep // m, keep % m))
        front_c, front_s = c[keep], s[keep]
    best = int(np.argmax(front_s))
    picks = []
    for prev, opt in reversed(trail):
        picks.append(int(opt[best]))
        best = int(prev[best])
    return picks[::-1]


def _cell_from(choices: list[tuple[tuple[int, int], tuple[int, int]]], w: np.ndarray, model: CostModel) -> CellGenotype:
    edges = []
    for node, pair in enumerate(choices):
        # the derivation's order within a node: the larger weight first, ties the lower input
        ranked = sorted(pair, key=lambda e: (-w[model.row(node, e[0]), e[1]], e[0]))
        edges += [(PRIMITIVES[col], src) for src, col in ranked]
    return CellGenotype(tuple(edges), tuple(range(2, 2 + model.steps)))


def best_within(scores: dict[str, torch.Tensor], model: CostModel, budget: Budget) -> Genotype:
    """The genotype of the highest score (sum of the chosen (edge, op) scores; -inf or NaN: not allowed) whose
    cost fits `budget`; BudgetError (one sentence) when none does."""
    limits = budget.limits
    if not limits:
        raise ValueError("best_within needs a budget (derive() is the unconstrained derivation)")
    resources = list(limits)
    if len(resources) > 2:  # three limits: the optimum of two of them is the optimum when it meets the third
        for pair in ((0, 1), (0, 2), (1, 2)):
            relaxed = Budget(**{resources[k]: limits[resources[k]] for k in pair})
            g = best_within(scores, model, relaxed)  # BudgetError: nothing fits two of the limits, nor all three
            if budget.fits(model.cost(g)):
                return g
    capacity = np.array([limits[r] - model.fixed.get(r) for r in resources], dtype=np.int64)
    groups = _groups(scores, model, resources)
    picks = _solve(groups, capacity)
    if picks is None:
        least = [model.fixed.get(r) + sum(int(g.costs[:, k].min()) for g in groups if len(g.scores))
                 for k, r in enumerate(resources)]  # fmt: skip
        got = " and ".join(format_cost(r, v) for v, r in zip(least, resources, strict=True))
        fixed = " and ".join(format_cost(r, model.fixed.get(r)) for r in resources)
        raise BudgetError(
            f"no genotype fits the budget of {budget.describe()}: the cheapest network of this space costs {got} "
            f"(of which {fixed} do not depend on the cells); raise the budget or make the network smaller "
            "(channels, layers)"
        )
    cells = []
    for kind in model.kinds:
        mine = [(g, p) for g, p in zip(groups, picks, strict=True) if g.kind == kind]
        w = scores[kind].detach().double().cpu().numpy()
        cells.append(_cell_from([g.choices[p] for g, p in mine], w, model))
    g = Genotype(cells[0], cells[1], model.shape.space)
    assert budget.fits(model.cost(g)), "the constrained derivation returned a genotype over its budget"
    return g


def derive_within(
    alphas: Sequence[torch.Tensor], betas: Sequence[torch.Tensor] | None, model: CostModel, budget: Budget
) -> Genotype:
    """`derive` under a budget: the derived genotype itself when it fits (or without a budget), else the
    best-scoring one that fits (module docstring); BudgetError when nothing fits."""
    g = derive(alphas, betas, model.shape.space)
    if not budget or budget.fits(model.cost(g)):
        return g
    b = betas if betas is not None else (None, None)
    scores = {kind: edge_op_scores(a, bb, model.steps) for kind, a, bb in zip(model.kinds, alphas, b, strict=True)}
    return best_within(scores, model, budget)


def score(genotype: Genotype, scores: dict[str, torch.Tensor], model: CostModel) -> float:
    """The derivation's score of a genotype: the sum of its (edge, op) scores."""
    total = 0.0
    for kind in genotype.names:
        w = scores[kind]
        for i, (op, src) in enumerate(genotype.cell(kind).edges):
            total += float(w[model.row(i // 2, src), PRIMITIVES.index(op)])
    return total


def cheapest_fit(model: CostModel, budget: Budget) -> Genotype:
    """A genotype that fits `budget` (the cheapest in its first limited resource); BudgetError when none does."""
    first = next(iter(budget.limits))
    return best_within({k: -model.table(k, first) for k in model.kinds}, model, budget)


def sample_within(model: CostModel, budget: Budget, seed: int = 0, tries: int = 200_000) -> Genotype:
    """A genotype drawn uniformly among those of the space that fit `budget` (rejection sampling over
    `sample_genotype`'s draws: without a budget, or when its first draw fits, the same genotype as
    `sample_genotype(space, seed)`). BudgetError when nothing fits or no draw of `tries` fits."""
    space = model.shape.space
    if space not in CELL_NAMES:
        raise ValueError(space)
    if budget:  # refuse at once when nothing fits at all
        cheapest_fit(model, budget)
    rng = random.Random(f"bnas-genotype-{space}-{seed}")  # sample_genotype's stream
    for _ in range(tries):
        g = Genotype(sample_cell(rng, model.steps), sample_cell(rng, model.steps), space)
        if not budget or budget.fits(model.cost(g)):
            return g
    raise BudgetError(
        f"none of {tries:,} random genotypes fits the budget of {budget.describe()}: too few of the space's "
        "genotypes fit to draw one uniformly; raise the budget"
    )
