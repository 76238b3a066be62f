"""What a search is told (`SearchConfig`): the shared option groups (options.py) with the search's defaults, the
architecture group and the method presets (SPEC §7 table); a data set's own defaults (the ImageNet search's) are
its registry entry's (data/registry.py).

The three methods are presets over independent switches (DESIGN "methods are configuration"):
edge kind and K, edge normalisation, architecture-lr schedule (CLR power), warm-up epochs, order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .data.registry import find_entry, names
from .errors import ConfigError, check_float, check_int
from .options import (
    DataOptions,
    NetworkOptions,
    OptimOptions,
    Options,
    OutputOptions,
    RuntimeOptions,
    again,
    check_budget,
    option,
)
from .space import SpaceConfig

Method = Literal["bnas-d", "clr", "pc", "random"]

# SPEC §7 defaults by method (CIFAR-10). Everything else is shared.
METHODS: dict[str, dict[str, Any]] = {
    "bnas-d": dict(
        batch_size=256, lr=0.025, lr_min=0.001, arch_lr=3e-4, enhance_cells=2, arch_start_epoch=0,
        partial_k=1, edge_norm=False, clr_power=0.0, arch_search="gradient",
    ),
    "clr": dict(
        batch_size=256, lr=0.1, lr_min=0.0, arch_lr=3e-4, enhance_cells=1, arch_start_epoch=0,
        partial_k=1, edge_norm=False, clr_power=2.0, arch_search="gradient",
    ),
    "pc": dict(
        batch_size=512, lr=0.2, lr_min=0.0, arch_lr=6e-4, enhance_cells=1, arch_start_epoch=15,
        partial_k=4, edge_norm=True, clr_power=0.0, arch_search="gradient",
    ),
    # random search with weight sharing (random_search.py) on CLR's supernet: no architecture step at all
    "random": dict(
        batch_size=256, lr=0.025, lr_min=0.001, arch_lr=3e-4, enhance_cells=1, arch_start_epoch=0,
        partial_k=1, edge_norm=False, clr_power=0.0, arch_search="random",
    ),
}  # fmt: skip


def _search_datasets() -> list[str]:
    return names("search")


@dataclass
class SearchData(DataOptions):
    dataset: str = again(
        DataOptions, "dataset", "cifar10", choices=_search_datasets,
        help="data set to search on (folder: your own images, --data-dir DIR/CLASS/*.png|jpg|...)",
    )  # fmt: skip
    train_portion: float = option(0.5, "share of the training set for the weights (the rest trains the architecture)")

    def check(self) -> None:
        DataOptions.check(self)
        check_float("train_portion", self.train_portion, 0.0, 1.0, strict_low=True)


@dataclass
class SearchNetwork(NetworkOptions):
    space: Literal["bcnn", "darts"] = option(
        "bcnn", "search space: the broad network (bcnn) or the DARTS stack (darts)"
    )
    partial_k: int = option(1, "K of partial-channel edges (1 = full edges)")
    edge_norm: bool = option(False, "edge normalisation with betas (PC)")

    def check(self) -> None:
        NetworkOptions.check(self)
        check_int("partial_k", self.partial_k, 1)
        check_int("blocks", self.blocks, 2 if self.space == "bcnn" else 1)
        if self.init_channels % self.partial_k:
            raise ConfigError(f"partial_k {self.partial_k} must divide init_channels {self.init_channels}",
                              options=("partial_k", "init_channels"))  # fmt: skip
        if self.space == "bcnn" and self.init_channels % 2:  # FactorizedReduce halves the channels
            raise ConfigError(f"the broad network needs an even init_channels, got {self.init_channels}",
                              options=("init_channels",))  # fmt: skip


@dataclass
class SearchOptim(OptimOptions):
    epochs: int = again(OptimOptions, "epochs", 50, help="search epochs")
    budget: str | None = option(
        None, "search for this long instead of --epochs: a bare number is seconds, or 90s, 20m, 1h, 1h30m; the step "
        "time of the first steps sizes the search (fractional epochs); the weights' cosine, CLR's confidence and the "
        "warm-up (arch_start_epoch's share of epochs) follow its progress per step", default_text="default: none, "
        "--epochs decides",
    )  # fmt: skip
    batch_size: int = again(OptimOptions, "batch_size", 256, help="batch size of both the weight and the "
                            "architecture step")  # fmt: skip

    def check(self) -> None:
        OptimOptions.check(self)
        # the search always clips the weight gradients (0 would zero them: a silent run that learns nothing)
        check_float("grad_clip", self.grad_clip, 0.0, strict_low=True)
        check_budget(self.budget)


@dataclass
class ArchOptions:
    """The architecture's optimisation (SPEC §7): the method preset, order, Adam, CLR, warm-up, random search."""

    TITLE: ClassVar[str] = "architecture"

    method: Method = option("clr", "method preset (SPEC §7 table)")
    order: Literal[1, 2] = option(1, "1 = first order, 2 = DARTS' unrolled second order")
    hvp: Literal["fd", "exact"] = option("fd", "second-order Hessian-vector product: fd (finite differences) or "
                                         "exact (double backprop)")  # fmt: skip
    fd_eps: float = option(0.01, "finite-difference step of the second order: eps = fd_eps / ||v|| (DARTS: 0.01)")
    arch_lr: float | str = option(
        3e-4,
        "architecture learning rate (Adam), or auto: the base rate whose sum over the planned architecture "
        "steps (CLR's confidence included) equals the method's paper search on CIFAR-10 (architect.py)",
    )
    arch_lr_sum: float = option(
        0.0,
        "with --arch-lr auto: the summed architecture learning rate to size the base rate for (0 = the method's "
        "paper search on CIFAR-10, about 0.5 for CLR; a short search on noisy batches needs more: "
        "docs/study-budget.md)",
    )
    arch_weight_decay: float = option(1e-3, "architecture weight decay")
    arch_betas: tuple[float, float] = option((0.5, 0.999), "Adam betas of the architecture optimiser")
    arch_grad_clip: float = option(0.0, "architecture gradient norm clip (0 = off; the ImageNet search clips to 5)")
    clr_power: float = option(2.0, "CLR: arch lr = base x ((epoch+1)/epochs)^power (0 = constant)")
    arch_start_epoch: int = option(0, "warm-up: first epoch with architecture updates")
    arch_search: Literal["gradient", "random"] = option(
        "gradient", "gradient (architecture steps) or random (random search with weight sharing)"
    )
    random_candidates: int = option(8, "random search: sampled cells scored on the architecture split at each "
                                    "epoch's end")  # fmt: skip
    eval_every: int = option(1, "evaluate the supernet on the architecture split every N epochs (0 = never)",
                             resume=True)  # fmt: skip
    hessian_every: int = option(0, "every N epochs log the dominant eigenvalue of the validation-loss Hessian "
                                "w.r.t. the alphas (RobustDARTS' collapse indicator; 0 = off)")  # fmt: skip
    hessian_iters: int = option(20, "at most this many power-iteration steps of --hessian-every (it stops once "
                                "the estimate settles)")  # fmt: skip

    def check(self) -> None:
        for name in ("hessian_iters", "random_candidates"):
            check_int(name, getattr(self, name), 1)
        for name in ("arch_start_epoch", "eval_every", "hessian_every"):
            check_int(name, getattr(self, name), 0)
        for name in ("arch_weight_decay", "arch_grad_clip", "clr_power", "arch_lr_sum"):
            check_float(name, getattr(self, name), 0.0)
        if isinstance(self.arch_lr, str) and self.arch_lr != "auto":
            raise ConfigError(f"arch_lr must be a number or auto, got {self.arch_lr!r}", options=("arch_lr",))
        if self.arch_lr != "auto":
            check_float("arch_lr", self.arch_lr, 0.0)
            if self.arch_lr_sum:
                raise ConfigError("arch_lr_sum needs arch_lr auto", options=("arch_lr_sum", "arch_lr"))
        check_float("fd_eps", self.fd_eps, 0.0, strict_low=True)
        for i, beta in enumerate(self.arch_betas):
            check_float(f"arch_betas B{i + 1}", beta, 0.0, 1.0)


@dataclass
class CostOptions:
    """A budget on the trained network the search's genotype gives (issue 26, docs/hardware-aware.md): the
    architecture loss gets the expected cost as a penalty, and the genotype is the best-scoring one that fits."""

    TITLE: ClassVar[str] = "cost budget"

    max_params: str | None = option(None, "at most this many parameters in the trained network (K/M suffixes: 2.5M)",
                                    default_text="default: no limit")  # fmt: skip
    max_macs: str | None = option(None, "at most this many multiply-accumulates per image in the trained network "
                                  "(K/M/G suffixes: 400M)", default_text="default: no limit")  # fmt: skip
    max_latency: str | None = option(None, "at most this forward latency of the trained network as --latency-table "
                                     "predicts it (5ms, 800us, or seconds: 0.004)",
                                     default_text="default: no limit")  # fmt: skip
    latency_table: str | None = option(None, "the latency table (bnas latency-table) of the trained network on the "
                                       "target device: --max-latency's predictions, and the predicted latency in "
                                       "the summary under any budget", default_text="default: none")  # fmt: skip
    cost_penalty: Literal["two-sided", "mul-log", "add-linear", "none"] = option(
        "two-sided", "the budget's term in the architecture loss: two-sided (TF-NAS), mul-log or add-linear "
        "(ProxylessNAS); none: the budget only constrains the derivation",
    )  # fmt: skip
    cost_weight: float | None = option(None, "weight of the budget's term",
                                       default_text="default: the form's published one: 0.1, mul-log 0.6")  # fmt: skip
    cost_channels: int | None = option(None, "C of the trained network the budget is for",
                                       default_text="default: the training recipe's: bcnn 48, darts 36")  # fmt: skip
    cost_layers: int | None = option(None, "cells of the trained network the budget is for",
                                     default_text="default: the training recipe's: bcnn 6, darts 20")  # fmt: skip
    cost_enhance: int | None = option(None, "E of the trained network the budget is for (bcnn)",
                                      default_text="default: the training recipe's: 2")  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("max_params", "max_macs", "max_latency"):  # a count or seconds given from Python: its text
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(self, name, str(value))

    def check(self) -> None:
        from pathlib import Path

        from .costs import Budget

        budget = Budget.parse(self.max_params, self.max_macs, self.max_latency)
        if self.max_latency is not None and self.latency_table is None:
            raise ConfigError("max_latency needs the latency table of the target device: give latency_table "
                              "(bnas latency-table writes one)", options=("max_latency", "latency_table"))  # fmt: skip
        if self.latency_table is not None:
            if not budget:
                raise ConfigError("latency_table is read only under a budget: give max_latency (or max_params, "
                                  "max_macs)", options=("latency_table", "max_latency"))  # fmt: skip
            if not Path(self.latency_table).is_file():
                raise ConfigError(f"latency_table {self.latency_table} is not a file (bnas latency-table writes one)",
                                  options=("latency_table",))  # fmt: skip
        if self.cost_weight is not None:
            check_float("cost_weight", self.cost_weight, 0.0)
        for name in ("cost_channels", "cost_layers", "cost_enhance"):
            check_int(name, getattr(self, name), 1, optional=True)


@dataclass
class SearchRuntime(RuntimeOptions):
    fast: bool | None = again(
        RuntimeOptions, "fast", None,
        help="per-source-state search cells: the same gradients as the per-edge cells, less time and memory",
        default_text="default: auto = on on the CPU, off on a GPU until benchmarks/gpu_check.py shows it pays there",
    )  # fmt: skip


@dataclass
class SearchOutput(OutputOptions):
    out: str = again(OutputOptions, "out", "runs/search")


@dataclass
class SearchConfig(
    SearchOutput, SearchRuntime, CostOptions, ArchOptions, SearchOptim, SearchNetwork, SearchData, Options
):
    """Every knob of a search; `resolve(method, overrides)` fills the method's defaults."""

    KIND: ClassVar[str] = "search"

    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "config files only"})

    @classmethod
    def resolve(cls, method: str = "clr", **overrides: Any) -> SearchConfig:
        if not isinstance(method, str) or method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}", options=("method",))
        given = cls.given(overrides)
        if "budget" in given and "epochs" in given:
            raise ConfigError("budget and epochs cannot be given together: a budget sizes the epochs itself",
                              options=("budget", "epochs"))  # fmt: skip
        entry = find_entry(given.get("dataset", cls.dataset))  # its defaults over the preset (SPEC §7: ImageNet)
        values = {**METHODS[method], **(entry.search_defaults if entry else {}), **given, "method": method}
        if entry:
            entry.add_warmup(values)
        if isinstance(values.get("arch_betas"), list):
            values["arch_betas"] = tuple(values["arch_betas"])
        cfg = cls(**values)
        if entry:
            entry.fit(cfg, given, "search")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every option once: its type, a finite value in its range, a known choice, a device and paths that
        exist. Raises ConfigError with one sentence naming the option."""
        self.check_choices()
        for group in (SearchData, SearchNetwork, SearchOptim, ArchOptions, CostOptions, SearchRuntime, SearchOutput):
            group.check(self)
        if self.order == 2 and self.amp == "fp16":
            raise ConfigError("fp16 gives NaNs in the second-order double backward; use bf16 or off for amp with "
                              "order 2", options=("amp", "order"))  # fmt: skip
        self.check_source()

    def space_config(self, num_classes: int, in_channels: int, stem: str = "cifar") -> SpaceConfig:
        return SpaceConfig(
            space=self.space, channels=self.init_channels, blocks=self.blocks, enhance=self.enhance_cells,
            layers=self.layers, num_classes=num_classes, in_channels=in_channels, stem=stem,
            partial_k=self.partial_k, edge_norm=self.edge_norm,
        )  # fmt: skip
