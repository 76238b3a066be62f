"""The exact cost (parameters, MACs) of the network `bnas train` builds from a genotype, as a sum (issue 26).

The trained network is a fixed part (stem, cell preprocessing, taps and their alignment, head) plus one
operation per genotype edge in every cell of that edge's cell type. An operation's cost depends only on where it
sits (its cell's channels, resolution and whether the edge has stride 2), so

    cost(genotype) = fixed + sum over cell types, over the genotype's edges (node, source, op) of T[type][row, op]

where T[type] has the alphas' layout (one row per search edge (node, source), one column per operation of
PRIMITIVES; `none` costs 0 and is never derived) and sums the op's cost over every cell of that type. The model
is measured on the real network rather than re-derived from the wiring: one network is built with a probe
genotype and its fixed part is its count minus the probe's edges, each candidate operation is built once per
distinct (channels, stride, resolution). tests/test_costs.py checks `cost(g)` against `count_parameters` and
`count_macs` of `build_network(g)` for every bundled and many random genotypes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cells import search_edges
from .errors import ConfigError, GenotypeError
from .genotype import CellGenotype, Genotype
from .ops import PRIMITIVES, make_op
from .space import build_network, count_macs, count_parameters

RESOURCES = ("params", "macs", "latency")  # what a budget can limit (latency: with a latency table, latency.py)


def _plus(a: int | None, b: int | None, sign: int = 1) -> int | None:
    return None if a is None and b is None else (a or 0) + sign * (b or 0)


@dataclass(frozen=True)
class Cost:
    """Parameters (auxiliary head excluded, as `count_parameters`) and multiply-accumulates of one image; where a
    latency table is given (latency.py), the predicted forward latency in whole nanoseconds (integers keep the
    constrained derivation exact), else None."""

    params: int = 0
    macs: int = 0
    latency: int | None = None

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs, _plus(self.latency, other.latency))

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.params - other.params, self.macs - other.macs, _plus(self.latency, other.latency, -1))

    def get(self, resource: str) -> int:
        value = getattr(self, resource)
        if value is None:
            raise ConfigError("a latency budget needs a latency table: give latency_table", options=("latency_table",))
        return value

    def to_json(self) -> dict:
        out: dict = {"params": self.params, "macs": self.macs}
        if self.latency is not None:
            out["latency_ms"] = self.latency / 1e6
        return out


@dataclass(frozen=True)
class NetworkShape:
    """What `build_network` is given, and the input size: the network whose cost is modelled."""

    space: str = "bcnn"
    channels: int = 48
    layers: int = 6
    blocks: int = 2
    enhance: int = 2
    num_classes: int = 10
    in_channels: int = 3
    size: int = 32
    stem: str = "cifar"
    auxiliary: bool = False

    def build(self, genotype: Genotype):
        return build_network(
            genotype, self.channels, self.layers, self.enhance, self.num_classes, self.in_channels, self.stem,
            self.blocks, self.auxiliary,
        )  # fmt: skip

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def describe(self) -> str:
        """'bcnn C=8, 4 cells, E=2, 1x28x28 input, 10 classes' (for messages)."""
        return (
            f"{self.space} C={self.channels}, {self.layers} cells, E={self.enhance}, L={self.blocks}, "
            f"{self.in_channels}x{self.size}x{self.size} input, {self.num_classes} classes, {self.stem} stem"
        )


def trained_shape(
    space: str, dataset: str = "cifar10", *, num_classes: int | None = None, in_channels: int | None = None,
    size: int | None = None, stem: str | None = None, channels: int | None = None, layers: int | None = None,
    enhance: int | None = None, blocks: int = 2,
) -> NetworkShape:  # fmt: skip
    """The network `bnas train` builds by default for a genotype of `space` on `dataset` (the data set's recipe,
    then the space's: bcnn C=48, N=6, E=2; darts C=36, 20 cells), with whatever is given instead."""
    import dataclasses

    from .data.registry import get_entry
    from .recipes import DARTS_SPACE
    from .train_config import TrainConfig

    entry = get_entry(dataset)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    values = {k: defaults[k] for k in ("init_channels", "layers", "enhance_cells")}
    values.update({k: v for k, v in entry.train_defaults.items() if k in values})
    if space == "darts":
        values.update({k: v for k, v in DARTS_SPACE.items() if k in values})
    size = size or entry.size
    if not size:
        raise ConfigError(
            f"the trained network's input size on {dataset} depends on its images: give image_size",
            options=("image_size",),
        )
    return NetworkShape(
        space, channels or values["init_channels"], layers or values["layers"], blocks,
        enhance or values["enhance_cells"], num_classes or entry.num_classes, in_channels or entry.in_channels,
        size, stem or entry.stem,
    )  # fmt: skip


@dataclass(frozen=True)
class CellSite:
    """One cell of the network: its type, channels per node, whether it reduces, its inputs' and its nodes'
    resolution (a reduction cell's nodes are at half its inputs' resolution)."""

    kind: str
    channels: int
    reduction: bool
    size: int
    node_size: int

    def stride(self, src: int) -> int:
        """The stride of an edge leaving state `src` (SPEC §3: a reduction cell's edges from its inputs)."""
        return 2 if self.reduction and src < 2 else 1

    def input_size(self, src: int) -> int:
        """The resolution an edge leaving state `src` reads: a cell input's, or a node's."""
        return self.size if src < 2 else self.node_size


def op_cost(name: str, channels: int, stride: int, size: int) -> Cost:
    """One trained-network operation (affine BatchNorm) on a `channels` x size x size input."""
    if name == "none":
        return Cost()
    op = make_op(name, channels, stride, affine=True)
    return Cost(count_parameters(op), count_macs(op, channels, size))


def _probe(space: str, steps: int = 4) -> Genotype:
    """A genotype whose two cell types build different operations, so that every built cell says its type."""
    first = CellGenotype(
        tuple((op, src) for _ in range(steps) for op, src in (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)))
    )
    second = CellGenotype(
        tuple((op, src) for _ in range(steps) for op, src in (("dil_conv_5x5", 0), ("dil_conv_5x5", 1)))
    )
    return Genotype(first, second, space)


@dataclass
class CostModel:
    """fixed + per cell type a table (search-edge rows x PRIMITIVES columns) of each op's cost summed over cells."""

    shape: NetworkShape
    fixed: Cost
    sites: list[CellSite]
    tables: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)  # kind -> resource -> rows
    steps: int = 4
    latency_source: dict = field(default_factory=dict)  # the latency table's file, device, batch (latency.py)

    @classmethod
    def build(cls, shape: NetworkShape, steps: int = 4) -> CostModel:
        """Measure the network of `shape` (one build and one forward at batch 1, each op once per place)."""
        probe = _probe(shape.space, steps)
        net = shape.build(probe)
        kinds = probe.names
        sites: list[CellSite] = []
        handles = []
        from .cells import Cell

        def record(cell: Cell, args, out: torch.Tensor) -> None:
            ops = {type(e).__name__ for e in cell.edges}
            kind = kinds[0] if ops == {"SepConv"} else kinds[1]
            c = cell.preprocess1.conv.out_channels
            sites.append(CellSite(kind, c, cell.reduction, args[1].shape[-1], out.shape[-1]))

        for m in net.modules():
            if isinstance(m, Cell):
                handles.append(m.register_forward_hook(record))
        try:
            total = Cost(count_parameters(net), count_macs(net, shape.in_channels, shape.size))
        finally:
            for h in handles:
                h.remove()
        cache: dict[tuple, Cost] = {}

        def cost_at(name: str, site: CellSite, src: int) -> Cost:
            key = (name, site.channels, site.stride(src), site.input_size(src))
            if key not in cache:
                cache[key] = op_cost(*key)
            return cache[key]

        edges = search_edges(steps)
        tables = {}
        for kind in kinds:
            mine = [s for s in sites if s.kind == kind]
            tables[kind] = {
                r: [[sum(cost_at(op, s, src).get(r) for s in mine) for op in PRIMITIVES] for _, src in edges]
                for r in ("params", "macs")
            }
        model = cls(shape, Cost(), sites, tables, steps)
        probe_edges = model.edges_cost(probe)
        model.fixed = total - probe_edges
        return model

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.tables)

    @property
    def resources(self) -> tuple[str, ...]:
        """What this model costs: params and macs, and latency where a latency table was attached."""
        first = self.tables[self.kinds[0]]
        return tuple(r for r in RESOURCES if r in first)

    def row(self, node: int, src: int) -> int:
        """The row of edge (node, source) in the tables (the alphas' row order)."""
        return node * (node + 3) // 2 + src

    def _check(self, genotype: Genotype) -> None:
        if genotype.space != self.shape.space:
            raise GenotypeError(f"a {genotype.space} genotype cannot be costed on the {self.shape.space} network")
        for name in genotype.names:
            cell = genotype.cell(name)
            if cell.steps != self.steps or tuple(cell.concat) != tuple(range(2, 2 + self.steps)):
                raise GenotypeError(
                    f"the cost model knows cells of {self.steps} nodes concatenating nodes 2..{1 + self.steps}; "
                    f"the {name} cell has {cell.steps} nodes and concat {list(cell.concat)}"
                )

    def edges_cost(self, genotype: Genotype) -> Cost:
        """The genotype's operations alone (cost minus the fixed part)."""
        self._check(genotype)
        totals = dict.fromkeys(self.resources, 0)
        for kind in genotype.names:
            t = self.tables[kind]
            for i, (op, src) in enumerate(genotype.cell(kind).edges):
                r, c = self.row(i // 2, src), PRIMITIVES.index(op)
                for resource in totals:
                    totals[resource] += t[resource][r][c]
        return Cost(**totals)

    def cost(self, genotype: Genotype) -> Cost:
        """The parameters and MACs of `build_network(genotype)` for this shape, without building it."""
        return self.fixed + self.edges_cost(genotype)

    def table(self, kind: str, resource: str, dtype=torch.float64) -> torch.Tensor:
        """T[kind] for one resource as a (edges x PRIMITIVES) tensor (the alphas' layout)."""
        return torch.tensor(self.tables[kind][resource], dtype=dtype)

    def to_json(self) -> dict:
        out = {"shape": self.shape.to_json(), "fixed": self.fixed.to_json()}
        if self.latency_source:
            out["latency_table"] = self.latency_source
        return out


# ------------------------------------------------------------------------------------------------ budgets

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


def parse_count(text: str | int, name: str = "max_params") -> int:
    """A count with an optional K, M or G suffix ('3.5M', '600K', '1G', 2000000) as a whole number."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgG]?)\s*", str(text))
        if not m:
            raise ConfigError(f"{name} must be a count such as 3.5M, 600K or 2000000, got {text!r}", options=(name,))
        value = round(float(m.group(1)) * _SUFFIX[m.group(2).upper()])
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {text!r}", options=(name,))
    return int(value)


def format_count(n: float) -> str:
    """3338074 -> '3.34M' (for summaries)."""
    for suffix, unit in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= unit:
            return f"{n / unit:.3g}{suffix}"
    return f"{n:.0f}"


_TIME = {"s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3}


def parse_latency(text: str | float, name: str = "max_latency") -> int:
    """A latency ('5ms', '800us', '0.004s', or a bare number of seconds: 0.004) as whole nanoseconds (the
    latency resource's unit); the seconds of budget.parse_duration, and its sub-second units."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text) * 10**9
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE]-?[0-9]+)?)\s*(s|ms|us|µs)?\s*", str(text))
        if not m:
            raise ConfigError(f"{name} must be a latency such as 5ms, 800us or 0.004 (seconds), got {text!r}",
                              options=(name,))  # fmt: skip
        value = float(m.group(1)) * _TIME[m.group(2) or "s"]
    if not math.isfinite(value) or round(value) <= 0:
        raise ConfigError(f"{name} must be a positive latency, got {text!r}", options=(name,))
    return int(round(value))


def format_cost(resource: str, value: float) -> str:
    """One resource's amount for messages: '3.34M params', '2.5 ms latency' (latency is held in nanoseconds)."""
    if resource == "latency":
        return f"{value / 1e6:.3g} ms latency"
    return f"{format_count(value)} {resource}"


@dataclass(frozen=True)
class Budget:
    """Upper limits on the trained network's parameters, MACs and/or predicted latency (nanoseconds; needs a
    latency table) (None: no limit)."""

    params: int | None = None
    macs: int | None = None
    latency: int | None = None

    @classmethod
    def parse(
        cls, max_params: str | int | None = None, max_macs: str | int | None = None,
        max_latency: str | float | None = None,
    ) -> Budget:  # fmt: skip
        return cls(
            None if max_params is None else parse_count(max_params, "max_params"),
            None if max_macs is None else parse_count(max_macs, "max_macs"),
            None if max_latency is None else parse_latency(max_latency, "max_latency"),
        )

    @property
    def limits(self) -> dict[str, int]:
        """resource -> limit, for the limited resources only."""
        return {r: getattr(self, r) for r in RESOURCES if getattr(self, r) is not None}

    def __bool__(self) -> bool:
        return bool(self.limits)

    def fits(self, cost: Cost) -> bool:
        return all(cost.get(r) <= v for r, v in self.limits.items())

    def describe(self) -> str:
        return " and ".join(format_cost(r, v) for r, v in self.limits.items()) or "no budget"

    def to_json(self) -> dict:
        out: dict = {"params": self.params, "macs": self.macs}
        if self.latency is not None:
            out["latency_ms"] = self.latency / 1e6
        return out


# ------------------------------------------------------------------------------------------------ penalty

# form -> its published default weight. With E = the expected cost and T = the budget:
#   mul-log    (ProxylessNAS' multiplicative form):  loss = CE * (log E / log T) ** w      (w = 0.6)
#   add-linear (ProxylessNAS' additive form):        loss = CE + w * (E - T) / T          (w = 0.1)
#   two-sided  (TF-NAS' latency loss):               loss = CE + w * |E / T - 1|          (w = 0.1)
# The first two keep pushing the cost down below the budget (weakly: log E / log T is near 1); the two-sided one
# pulls the expected cost towards the budget from both sides, so a search under a generous budget is not driven
# to needlessly small cells.
PENALTIES: dict[str, float] = {"mul-log": 0.6, "add-linear": 0.1, "two-sided": 0.1}


class CostPenalty:
    """The architecture loss under a budget: the expected cost of the derived network under the architecture
    weights, in one of the forms of PENALTIES, as a differentiable function of the alphas (and betas).

    Expected cost E = fixed + sum over cell types, edges e, operations o != none of
    edge_weight[e] * p[e, o] * T[e, o], where p is the softmax of the edge's alphas over the operations derivation
    can keep (`none` is never derived: its weight is left out rather than counted as free), and edge_weight is
    what the edge counts for among the two edges derivation keeps per node: 2 x the softmax of the node's betas
    (PC's edge normalisation), or 2 / (the node's number of edges) without betas. In the limit of one-hot op
    weights and betas that split each node's weight evenly between two edges, E is that genotype's cost."""

    def __init__(
        self, model: CostModel, resource: str, target: int, form: str = "two-sided", weight: float | None = None
    ):
        if resource not in RESOURCES:
            raise ConfigError(f"a penalty limits one of {', '.join(RESOURCES)}, got {resource!r}")
        if form not in PENALTIES:
            raise ConfigError(
                f"cost_penalty must be one of {', '.join(PENALTIES)}, got {form!r}", options=("cost_penalty",)
            )
        self.model, self.resource, self.target, self.form = model, resource, int(target), form
        self.weight = PENALTIES[form] if weight is None else float(weight)
        self.fixed = float(model.fixed.get(resource))
        self._tables = {k: model.table(k, resource)[:, 1:] for k in model.kinds}  # without `none`
        steps = model.steps
        self._starts = [node * (node + 3) // 2 for node in range(steps)]
        self._uniform = torch.cat(
            [torch.full((node + 2,), 2.0 / (node + 2), dtype=torch.float64) for node in range(steps)]
        )

    def expected(self, alphas: Sequence[torch.Tensor], betas: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """E (float64, differentiable in the alphas and betas); alphas/betas in the cost model's cell-type order."""
        total = torch.tensor(self.fixed, dtype=torch.float64, device=alphas[0].device)
        for i, kind in enumerate(self.model.kinds):
            a = alphas[i].double()
            p = torch.softmax(a[:, 1:], dim=-1)
            per_edge = (p * self._tables[kind].to(a.device)).sum(dim=1)
            if betas is not None and betas[i] is not None:
                b = betas[i].double()
                w = torch.cat([2 * torch.softmax(b[s : s + n + 2], dim=-1) for n, s in enumerate(self._starts)])
            else:
                w = self._uniform.to(a.device)
            total = total + (w * per_edge).sum()
        return total

    def __call__(
        self, loss: torch.Tensor, alphas: Sequence[torch.Tensor], betas: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The architecture loss with the penalty (in `loss`'s dtype)."""
        e, t = self.expected(alphas, betas), float(self.target)
        if self.form == "mul-log":
            out = loss * (torch.log(e) / math.log(t)) ** self.weight
        elif self.form == "add-linear":
            out = loss + self.weight * (e - t) / t
        else:
            out = loss + self.weight * torch.abs(e / t - 1)
        return out.to(loss.dtype)

    def describe(self) -> str:
        return f"{self.form} penalty (weight {self.weight:g}) towards {format_cost(self.resource, self.target)}"


class BudgetPenalty:
    """One CostPenalty per limited resource of a budget, applied in turn (additive terms add up; mul-log factors
    multiply): what a search's architecture loss gets (`Architect(penalty=...)`)."""

    def __init__(self, model: CostModel, budget: Budget, form: str = "two-sided", weight: float | None = None):
        self.parts = [CostPenalty(model, r, v, form, weight) for r, v in budget.limits.items()]

    def __call__(self, loss: torch.Tensor, alphas, betas=None) -> torch.Tensor:
        for part in self.parts:
            loss = part(loss, alphas, betas)
        return loss

    def expected(self, alphas, betas=None) -> dict[str, float]:
        """The expected cost per limited resource (for records)."""
        return {p.resource: float(p.expected(alphas, betas)) for p in self.parts}

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.parts)
