"""Budgets in `bnas study` (issue 26 item 4): constrained searches against random cells of the same budget.

A method carries a budget as any `bnas search` option (max_params, max_macs, max_latency with latency_table,
cost_penalty, cost_weight), or inherits the study-level one of `search`. A budget is on the network the study
trains: unless a method says otherwise, its cost_channels, cost_layers and cost_enhance are the study's `train`
network's (its recipe's C, cells and E), so the searched cell is chosen for the network it is trained in.

`random_cells` is a count (random cells of the space, drawn under the study-level budget where `search` holds
one) or a list of groups, each `{"name": ..., "count": N}` with its own budget keys or `"like": METHOD` (that
method's budget): each group's cells are drawn uniformly among the genotypes that fit (constrained.sample_within)
and recorded with their predicted cost. The results give every candidate's budget (and predicted latency), and
each group is compared with the random cells of its own budget (study_report.summarise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import did_you_mean
from .study_report import RANDOM

if TYPE_CHECKING:
    from .study import StudySpec

LIMITS = ("max_params", "max_macs", "max_latency")
# what a budget is: its limits, the latency table and the network it is on
BUDGET_KEYS = (*LIMITS, "latency_table", "cost_channels", "cost_layers", "cost_enhance")
# the budget's network, from the study's training: cost option -> TrainConfig field
SHAPE_FROM_TRAIN = {"cost_channels": "init_channels", "cost_layers": "layers", "cost_enhance": "enhance_cells"}
GROUP_KEYS = ("name", "count", "like", *BUDGET_KEYS)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a study's method and group names


@dataclass(frozen=True)
class RandomGroup:
    """Random cells drawn alike: `count` cells, cell i drawn with the seed of random cell `first + i`."""

    name: str
    count: int
    first: int
    budget: dict[str, Any] = field(default_factory=dict)  # BUDGET_KEYS that apply to it

    def run_name(self, i: int) -> str:
        return f"random-cell-{i}" if self.name == RANDOM else f"{self.name}-{i}"

    @property
    def limited(self) -> bool:
        return any(self.budget.get(k) is not None for k in LIMITS)


def budget_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The budget keys of a set of search options."""
    return {k: opts[k] for k in BUDGET_KEYS if k in opts}


def on_trained_network(opts: dict[str, Any], train_cfg) -> dict[str, Any]:
    """`opts` with the trained network's size filled in for a budget that does not name one (no budget: as is)."""
    if not any(opts.get(k) is not None for k in LIMITS):
        return opts
    filled = {k: getattr(train_cfg, t) for k, t in SHAPE_FROM_TRAIN.items() if opts.get(k) is None}
    return {**opts, **filled}


def random_groups(value: object, methods: list, search: dict[str, Any], taken: list[str], bad) -> list[RandomGroup]:
    """The study file's `random_cells`: a count, or a list of group objects (module docstring)."""
    study_level = budget_options(search)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**32:
            bad(f"random_cells must be a whole number of at least 0, got {value!r}")
        return [RandomGroup(RANDOM, value, 0, study_level)] if value else []
    if not isinstance(value, list) or not value:
        bad(f"random_cells must be a whole number of at least 0 or a list of groups, got {value!r}")
    by_name = {m.name: m for m in methods}
    groups: list[RandomGroup] = []
    first = 0
    for i, g in enumerate(value):
        where = f"random_cells[{i}]"
        if not isinstance(g, dict):
            bad(f"{where} must be an object with name and count, got {g!r}")
        unknown = [k for k in g if k.replace("-", "_") not in GROUP_KEYS]
        if unknown:
            bad(f"{where} has unknown key {unknown[0]!r}{did_you_mean(unknown[0], GROUP_KEYS)}; the keys are "
                f"{', '.join(GROUP_KEYS)}")  # fmt: skip
        g = {k.replace("-", "_"): v for k, v in g.items()}
        name, count = g.get("name"), g.get("count")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in taken:
            bad(f"{where} name {name!r} must be letters, digits, '.', '_', '+' or '-', distinct from the methods, "
                "the published genotypes and the other groups")  # fmt: skip
        if name.startswith("random-cell") and name != RANDOM:
            bad(f"{where} name {name!r} must not start with random-cell (the name of the cells of {RANDOM})")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count < 2**32:
            bad(f"{where} count must be a whole number of at least 1, got {count!r}")
        budget = dict(study_level)
        like = g.get("like")
        if like is not None:
            if like not in by_name:
                bad(f"{where} like {like!r} is not a method of the study{did_you_mean(str(like), by_name)}")
            budget.update(budget_options({**search, **by_name[like].options}))
        budget.update(budget_options(g))
        taken = [*taken, name]
        groups.append(RandomGroup(name, count, first, budget))
        first += count
    return groups


def check_group(spec: StudySpec, group: RandomGroup) -> None:
    """A group's budget resolves as a search's would and some genotype fits it (one sentence, before any run)."""
    if group.limited:
        from .constrained import BudgetError, cheapest_fit
        from .errors import ConfigError

        model, budget = cost_model_of(spec, group)
        try:
            cheapest_fit(model, budget)
        except BudgetError as e:
            raise ConfigError(str(e)) from None


def cost_model_of(spec: StudySpec, group: RandomGroup):
    """The cost model and budget of a group's cells: those of a search of the study with the group's budget."""
    from .costs import Budget, trained_shape
    from .latency import cost_model
    from .search import SearchConfig

    opts = {**spec.search, **on_trained_network(dict(group.budget), spec.trained_config()), "dataset": spec.dataset}
    cfg = SearchConfig.resolve("clr", **opts)
    shape = trained_shape(cfg.space, cfg.dataset, channels=cfg.cost_channels, layers=cfg.cost_layers,
                          enhance=cfg.cost_enhance, blocks=cfg.blocks)  # fmt: skip
    return cost_model(shape, cfg.latency_table), Budget.parse(cfg.max_params, cfg.max_macs, cfg.max_latency)


def draw(spec: StudySpec, group: RandomGroup, index: int, seed: int) -> dict[str, Any]:
    """Random cell `index` of `group` as genotype JSON: `sample_genotype(space, seed)` without a budget, else drawn
    uniformly among those that fit, with its predicted cost, the budget and the network they are of."""
    from .genotype import sample_genotype

    if not group.limited:
        return sample_genotype(spec.space, seed).to_json()
    from .constrained import sample_within

    model, budget = cost_model_of(spec, group)
    g = sample_within(model, budget, seed)
    out = {**g.to_json(), "cost": model.cost(g).to_json(), "cost_budget": budget.to_json(),
           "cost_network": model.shape.to_json()}  # fmt: skip
    if model.latency_source:
        out["cost_latency_table"] = model.latency_source
    return out
