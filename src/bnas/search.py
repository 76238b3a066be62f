"""Architecture search (SPEC §7): the search configuration, its method presets and the search loop.

The three methods are presets over independent switches (DESIGN "methods are configuration"):
edge kind and K, edge normalisation, architecture-lr schedule (CLR power), warm-up epochs, order.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import fast
from .architect import Architect, ArchitectOptions, clr_arch_lr
from .constrained import cheapest_fit, derive_within, sample_within
from .costs import Budget, BudgetPenalty, CostModel, trained_shape
from .data.registry import find_entry, names, search_data
from .diagnostics import alpha_entropy, alpha_hessian_eigenvalue, alpha_record
from .errors import (
    ConfigError,
    check_choice,
    check_compile,
    check_device,
    check_float,
    check_int,
    check_not_file,
    check_seed,
    check_types,
)
from .genotype import Genotype
from .random_search import candidates, epoch_paths, select
from .runcore import DeviceParts, Feed, RunLoop, device_parts, setup
from .runs import RunDir, environment
from .runtime import STEP_FIGURES, Tally, correct, upcast, weight_step
from .runtime import (
    evaluate as evaluate_model,
)
from .space import SpaceConfig, SuperNet

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


@dataclass
class SearchConfig:
    """Every knob of a search; `resolve(method, overrides)` fills the method's defaults."""

    method: str = "clr"
    space: str = "bcnn"
    dataset: str = "cifar10"
    data_dir: str | None = None  # None: data, then the system's copies (data/registry.py); a named one only
    download: bool = False  # fetch a missing data set with torchvision (where the network allows)
    subset: int | None = None  # first N training images only (quick runs)
    synthetic_size: int = 512
    image_size: int = 224  # input resolution of image-folder data sets (imagenet-subset; folder: 0 = from the images)
    test_split: float = 0.2  # folder without test/: share of each class held out (never searched on)
    cache_dir: str | None = None  # folder: where the decoded images are cached (default: DIR/.bnas-cache)
    skip_bad: bool = False  # folder: leave unreadable images out (counted in the run) instead of stopping
    workers: int = 4  # decoding workers of image-folder data sets
    decode: str = "pil"  # image-folder data sets: pil (in the workers) | gpu (nvJPEG; PIL without a GPU)
    epochs: int = 50
    batch_size: int = 256
    init_channels: int = 16
    blocks: int = 2  # L, convolution blocks (bcnn)
    enhance_cells: int = 1  # E (bcnn)
    layers: int = 8  # cells (darts)
    partial_k: int = 1
    edge_norm: bool = False
    order: int = 1
    hvp: str = "fd"  # fd (DARTS' finite differences) | exact (double backprop)
    fd_eps: float = 0.01  # finite-difference step: eps = fd_eps / ||v|| (DARTS: 0.01)
    lr: float = 0.1
    lr_min: float = 0.0
    lr_warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_grad_clip: float = 0.0  # 0 = off (ImageNet search clips to 5)
    clr_power: float = 2.0  # 0 = constant architecture learning rate (no CLR)
    arch_start_epoch: int = 0  # warm-up: architecture updates start at this epoch
    arch_search: str = "gradient"  # gradient (architecture steps) | random (random search with weight sharing)
    random_candidates: int = 8  # random: sampled cells scored on the architecture split at each epoch's end
    train_portion: float = 0.5
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto | off | bf16 | fp16
    channels_last: str = "auto"  # auto (= on) | on | off
    # off, or a torch.compile backend for the network (inductor; eager to debug). Compiling uses the plain cells:
    # the fast cells' backward asks the autograd engine at run time which gradients are wanted, an answer
    # torch.compile would bake into the graph (measured: a different search).
    compile: str = "off"
    # per-source-state search cells (fast.cells): the same gradients, less time and memory on a CPU; None = auto:
    # on the CPU, not on a GPU (its kernels are unmeasured there: benchmarks/gpu_check.py decides)
    fast: bool | None = None
    eval_every: int = 1  # evaluate the supernet on the architecture split every N epochs (0 = never)
    log_every: int = 50  # steps between "step" records in metrics.jsonl
    hessian_every: int = 0  # collapse diagnostic: dominant eigenvalue of the alpha Hessian every N epochs (0 = off)
    hessian_iters: int = 20  # at most this many power-iteration steps (it stops once the estimate settles)
    out: str = "runs/search"
    quiet: bool = False
    deterministic: bool = False  # GPU: deterministic kernels (slower); CPU runs are reproducible anyway
    on_nan: str = "stop"  # stop: end the run keeping the last good checkpoint | skip: skip the step and count it
    # a budget on the trained network (docs/hardware-aware.md): K/M/G counts, the penalty's form and weight, and
    # the trained network's size (None: the training recipe's for the space and data set)
    max_params: str | None = None
    max_macs: str | None = None
    cost_penalty: str = "two-sided"  # two-sided | mul-log | add-linear | none
    cost_weight: float | None = None  # None: the form's published weight
    cost_channels: int | None = None
    cost_layers: int | None = None
    cost_enhance: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(cls, method: str = "clr", **overrides: Any) -> SearchConfig:
        if not isinstance(method, str) or method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown search option(s) {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
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

        def bad(msg: str) -> None:
            raise ConfigError(msg)

        check_types(self)
        for name, choices in (
            ("method", list(METHODS)), ("space", ["bcnn", "darts"]), ("dataset", names("search")),
            ("order", [1, 2]), ("hvp", ["fd", "exact"]), ("decode", ["pil", "gpu"]),
            ("amp", ["auto", "off", "bf16", "fp16"]), ("channels_last", ["auto", "on", "off"]),
            ("on_nan", ["stop", "skip"]), ("arch_search", ["gradient", "random"]),
        ):  # fmt: skip
            check_choice(name, getattr(self, name), choices)
        for name in ("epochs", "batch_size", "init_channels", "layers", "partial_k", "synthetic_size", "hessian_iters",
                     "random_candidates"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        for name in ("workers", "lr_warmup_epochs", "arch_start_epoch", "eval_every", "log_every", "hessian_every"):
            check_int(name, getattr(self, name), 0)
        check_int("subset", self.subset, 1, optional=True)
        check_int("blocks", self.blocks, 2 if self.space == "bcnn" else 1)
        check_int("enhance_cells", self.enhance_cells, 1)
        check_seed(self.seed)
        for name in ("lr", "lr_min", "weight_decay", "arch_lr", "arch_weight_decay", "arch_grad_clip", "clr_power"):
            check_float(name, getattr(self, name), 0.0)
        check_float("fd_eps", self.fd_eps, 0.0, strict_low=True)
        # the search always clips the weight gradients (0 would zero them: a silent run that learns nothing)
        check_float("grad_clip", self.grad_clip, 0.0, strict_low=True)
        check_float("momentum", self.momentum, 0.0, 1.0)
        check_float("train_portion", self.train_portion, 0.0, 1.0, strict_low=True)
        for i, beta in enumerate(self.arch_betas):
            check_float(f"--arch-betas B{i + 1}", beta, 0.0, 1.0)
        check_device(self.device)
        check_compile(self.compile)
        if self.data_dir is not None:
            check_not_file("data_dir", self.data_dir, "the directory that holds the data set")
        check_not_file("out", self.out, "a directory for the run")
        if self.init_channels % self.partial_k:
            bad(f"--partial-k {self.partial_k} must divide --init-channels {self.init_channels}")
        if self.space == "bcnn" and self.init_channels % 2:  # FactorizedReduce halves the channels
            bad(f"the broad network needs an even --init-channels, got {self.init_channels}")
        if self.order == 2 and self.amp == "fp16":
            bad("fp16 gives NaNs in the second-order double backward; use --amp bf16 or off with --order 2")
        check_choice("cost_penalty", self.cost_penalty, ["two-sided", "mul-log", "add-linear", "none"])
        Budget.parse(self.max_params, self.max_macs)
        if self.cost_weight is not None:
            check_float("cost_weight", self.cost_weight, 0.0)
        for name in ("cost_channels", "cost_layers", "cost_enhance"):
            check_int(name, getattr(self, name), 1, optional=True)
        find_entry(self.dataset).check_options(self, "search")  # what the data set reads (data/registry.py)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def space_config(self, num_classes: int, in_channels: int, stem: str = "cifar") -> SpaceConfig:
        return SpaceConfig(
            space=self.space, channels=self.init_channels, blocks=self.blocks, enhance=self.enhance_cells,
            layers=self.layers, num_classes=num_classes, in_channels=in_channels, stem=stem,
            partial_k=self.partial_k, edge_norm=self.edge_norm,
        )  # fmt: skip


class SearchStep:
    """One step of a search, as the run core runs it and `bnas bench search` times it: an architecture step on
    a validation batch (unless the architecture is still warming up), then a weight step on a training batch
    that asks autograd for the weights' gradients only. Both are decided on the device (`guarded_step`) and
    their figures go into a `Tally`: the step never waits for the device."""

    FIGURES = (*STEP_FIGURES, "arch_loss", "arch_steps", "arch_bad", "arch_overflow")
    # (tally count, first faulty step, which) in the order a step runs them: the run core's --on-nan check
    FAULTS = (("arch_bad", "arch_first_bad", "architecture"), ("bad", "first_bad", "weight"))

    def __init__(self, model: SuperNet, architect: Architect, w_optimizer, scaler, autocast, grad_clip: float):
        self.model, self.architect, self.w_optimizer = model, architect, w_optimizer
        self.scaler, self.autocast, self.grad_clip = scaler, autocast, grad_clip
        self.weights = model.weight_parameters()

    @classmethod
    def build(cls, cfg: SearchConfig, model: SuperNet, parts: DeviceParts, penalty=None) -> SearchStep:
        """The step of a search with `cfg`'s optimizers (what `Searcher` runs and `bnas bench search` times);
        `penalty` (costs.BudgetPenalty): a cost budget's term in the architecture loss."""
        w_optimizer = parts.sgd(model.weight_parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        scaler = parts.scaler()  # fp16 only: the weight loss's scale
        architect = Architect(model, ArchitectOptions.from_config(cfg), w_optimizer, parts.autocast, parts.scaler(),
                              penalty=penalty)  # fmt: skip
        return cls(model, architect, w_optimizer, scaler, parts.autocast, cfg.grad_clip)

    def __call__(self, x, y, xv, yv, lr: float, tally: Tally, index: int = 0, path=None) -> None:
        """`xv is None`: no architecture step. `index` numbers the step in its epoch (for --on-nan's message).
        `path` (random search): the weight step trains that one architecture (`SuperNet.path_weights`)."""
        if xv is not None:
            arch_loss, a = self.architect.step(x, y, xv, yv, lr)
            a_bad = ~a.ok & ~a.overflow
            tally.add(arch_loss=torch.where(a.ok, arch_loss, 0.0), arch_steps=a.ok, arch_bad=a_bad,
                      arch_overflow=a.overflow)  # fmt: skip
            tally.first("arch_first_bad", a_bad, index + 1)
        self.w_optimizer.zero_grad(set_to_none=True)
        with self.autocast(), fast.backward_once():
            logits = self.model(x, path=path)
        loss = F.cross_entropy(upcast(logits), y)
        w = weight_step(loss, self.w_optimizer, self.weights, self.grad_clip, self.scaler)
        w_bad = ~w.ok & ~w.overflow
        tally.add(train_loss=torch.where(w.ok, loss.detach(), 0.0), train_correct=correct(logits, y) * w.ok,
                  steps=w.ok, images=w.ok * y.shape[0], bad=w_bad, overflow=w.overflow)  # fmt: skip
        tally.first("first_bad", w_bad, index + 1)


class Searcher:
    """Builds a search's parts (data, supernet, step, state, end-of-epoch work) for the run core
    (`runcore.RunLoop`), which runs them in a run directory and resumes them."""

    kind, lr_flags = "search", "--lr/--arch-lr"

    def __init__(self, cfg: SearchConfig, resume: bool = False, overwrite: bool = False, load_data: bool = True):
        self.cfg = cfg
        self.device = setup(cfg.seed, cfg.device, cfg.deterministic)
        # every device-dependent switch, resolved once (bnas.profile; BNAS_PROFILE=cuda forces the GPU's on a CPU)
        parts = device_parts(self.device, cfg.amp, cfg.channels_last, cfg.deterministic, fast=cfg.fast,
                             compile=cfg.compile)  # fmt: skip
        self.profile = parts.profile
        self.channels_last = cl = parts.channels_last
        data = search_data(cfg, self.device, cl, load=load_data)  # load_data=False: a dry run reads no images
        self.train_loader, self.val_loader, self.eval_loader = data.train, data.val, data.eval
        self._split_sizes = data.split_sizes
        self.data_info = data.info  # --dataset folder: the tree, split and statistics (config.json "data")
        space = cfg.space_config(data.num_classes, data.in_channels, data.stem)
        supernet = SuperNet(space, fast.BACKEND if self.profile.cells == "fast" else None)
        self.model = parts.place(supernet, cfg.compile, supernet.net)  # compiled: each cell, not the supernet
        self.autocast, self.amp_mode = parts.autocast, parts.amp_mode
        self.costs, self.cost_budget, penalty = self._cost_budget(data)
        self.step = SearchStep.build(cfg, self.model, parts, penalty)
        self.w_optimizer, self.scaler, self.architect = self.step.w_optimizer, self.step.scaler, self.step.architect
        # what this run resolved its device-dependent switches to (config.json "runtime")
        self.switches = self.profile.record()
        self.path_rng = random.Random(f"bnas-paths-{cfg.seed}")  # random search: one architecture per step
        self._candidates = candidates(cfg.space, cfg.seed, cfg.random_candidates)
        if self.cost_budget:  # random search under a budget: candidates that fit (the same draws where they fit)
            self._candidates = [sample_within(self.costs, self.cost_budget, cfg.seed * 100_003 + i)
                                for i in range(cfg.random_candidates)]  # fmt: skip
        self._selected: Genotype | None = None
        self._arch_on = False
        self.loop = RunLoop(self, cfg, self.device, self.w_optimizer, resume=resume, overwrite=overwrite)

    def _cost_budget(self, data) -> tuple[CostModel | None, Budget, BudgetPenalty | None]:
        """max_params/max_macs: the cost model of the network `bnas train` will build (docs/hardware-aware.md),
        the budget (refused at once when no genotype fits) and the architecture loss's penalty."""
        cfg = self.cfg
        budget = Budget.parse(cfg.max_params, cfg.max_macs)
        if not budget:
            return None, budget, None
        shape = trained_shape(
            cfg.space, cfg.dataset, num_classes=data.num_classes, in_channels=data.in_channels, size=data.size,
            stem=data.stem, channels=cfg.cost_channels, layers=cfg.cost_layers, enhance=cfg.cost_enhance,
            blocks=cfg.blocks,
        )  # fmt: skip
        model = CostModel.build(shape)
        cheapest_fit(model, budget)  # BudgetError: nothing fits
        use = cfg.cost_penalty != "none" and cfg.arch_search == "gradient"
        return model, budget, BudgetPenalty(model, budget, cfg.cost_penalty, cfg.cost_weight) if use else None

    def cost_record(self, genotype: Genotype) -> dict[str, Any]:
        """A budgeted search's genotype cost, budget and the network they are of (records, summary, genotype)."""
        if not self.cost_budget:
            return {}
        return {"cost": self.costs.cost(genotype).to_json(), "cost_budget": self.cost_budget.to_json(),
                "cost_network": self.costs.shape.to_json()}  # fmt: skip

    # --- what the run core keeps (resume, records)
    @property
    def run(self) -> RunDir | None:
        return self.loop.run

    @property
    def start_epoch(self) -> int:
        return self.loop.start_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.loop.history

    # --- counts shown before a search starts (and by --dry-run)
    def counts(self) -> dict[str, int]:
        return {
            "weights": sum(p.numel() for p in self.model.weight_parameters()),
            "arch": sum(p.numel() for p in self.model.arch_parameters()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The search's parts in a checkpoint (the run core adds the epoch, config, generators and budget)."""
        return {
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.architect.optimizer.state_dict(),
            "w_scaler": self.scaler.state_dict(),  # fp16: the loss scales and their growth trackers ({} otherwise)
            "a_scaler": self.architect.scaler.state_dict(),
            "train_loader": self.train_loader.state_dict(),
            "val_loader": self.val_loader.state_dict(),
            "genotype": self.genotype().to_json(),
            "path_rng": self.path_rng.getstate(),  # random search: the architectures of the next epochs
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.architect.optimizer.load_state_dict(state["a_optimizer"])
        for scaler, key in ((self.scaler, "w_scaler"), (self.architect.scaler, "a_scaler")):
            if state.get(key) and scaler.is_enabled():
                scaler.load_state_dict(state[key])
        self.train_loader.load_state_dict(state["train_loader"])
        self.val_loader.load_state_dict(state["val_loader"])
        if state.get("path_rng") is not None:  # (a checkpoint may hold getstate()'s tuples as lists)
            version, internal, gauss = state["path_rng"]
            self.path_rng.setstate((version, tuple(internal), gauss))
            self._selected = Genotype.from_json(state["genotype"])

    def genotype(self) -> Genotype:
        """The run's current genotype: derived from the alphas, or (random search) the best scored candidate."""
        if self.cfg.arch_search == "random" and self._selected:
            return self._selected
        if self.cost_budget:  # the best-scoring genotype that fits (constrained.py)
            kinds, model = self.model.cell_types, self.model
            alphas = [model.arch[f"alpha_{k}"] for k in kinds]
            betas = [model.arch[f"beta_{k}"] for k in kinds] if model.cfg.edge_norm else None
            return derive_within(alphas, betas, self.costs, self.cost_budget)
        return self.model.genotype()

    def check_data(self) -> None:
        n = min(self._split_sizes)
        if n < self.cfg.batch_size:
            raise ConfigError(
                f"--batch-size {self.cfg.batch_size} is larger than the {n} images of a search split "
                f"({sum(self._split_sizes)} training images x train portion {self.cfg.train_portion}); "
                "lower --batch-size or use more data"
            )

    def open_run(self) -> RunDir:
        """Create or resume the run directory (the run core's `open`)."""
        return self.loop.open()

    def start_run(self, run: RunDir) -> None:
        """A new run's config.json (resolved options, counts, runtime switches, data, environment)."""
        cfg = self.cfg
        (run.path / "genotypes").mkdir(exist_ok=True)
        run.write_json(
            "config.json",
            {
                "command": "search",
                **cfg.to_json(),
                "counts": self.counts(),
                "runtime": self.switches,
                **({"data": self.data_info} if self.data_info else {}),
                "environment": environment(),
            },  # fmt: skip
        )
        run.append("alphas.jsonl", alpha_record(self.model, -1))  # the starting point of the evolution plots

    # --- an epoch, as the run core runs it
    def train_epoch(self, epoch: int, progress) -> dict[str, Any]:
        """One epoch of search steps (the run core's `train_epoch`)."""
        return self.loop.train_epoch(epoch, progress)

    def begin_epoch(self, epoch: int) -> Feed:
        """The epoch's architecture learning rate and warm-up, and what feeds each step its batches: a
        validation batch for the architecture step (one persistent iterator, restarted when it ends) and, in a
        random search, the architecture the step trains."""
        cfg, model = self.cfg, self.model
        self._arch_on = arch_on = epoch >= cfg.arch_start_epoch and cfg.arch_search == "gradient"
        paths = epoch_paths(model, self.path_rng, len(self.train_loader)) if cfg.arch_search == "random" else None
        self.architect.set_lr(clr_arch_lr(cfg.arch_lr, epoch, cfg.epochs, cfg.clr_power))
        model.train()
        val = {"it": iter(self.val_loader)}

        def feed(i: int, x, y, lr: float, tally: Tally) -> None:
            xv = yv = None
            if arch_on:
                try:
                    xv, yv = next(val["it"])
                except StopIteration:
                    val["it"] = iter(self.val_loader)
                    xv, yv = next(val["it"])
            # random search: this step trains one uniformly drawn architecture
            self.step(x, y, xv, yv, lr, tally, i, path=paths[i] if paths is not None else None)

        return feed

    def at_progress(self, progress: float) -> None:
        pass  # the search's schedules are by epoch (a budget's per-step schedule sets the weights' lr only)

    def epoch_stats(self, sums: dict[str, float], lr: float, images_per_s: float) -> dict[str, Any]:
        """The epoch's figures from its tally's sums (a record's order of keys)."""
        steps, arch_on = max(sums["steps"], 1), self._arch_on
        out = {"train_loss": sums["train_loss"] / steps, "train_acc": sums["train_correct"] / max(sums["images"], 1)}
        out["arch_loss"] = sums["arch_loss"] / sums["arch_steps"] if arch_on and sums["arch_steps"] else None
        overflows = sums["overflow"] + sums["arch_overflow"]
        out["skipped_steps"] = round(sums["bad"] + sums["arch_bad"] + overflows)
        if self.scaler.is_enabled():  # fp16: the scalers' share of the skipped steps, and their scales now
            out.update(
                amp_skipped_steps=round(overflows), loss_scale=self.scaler.get_scale(),
                arch_loss_scale=self.architect.scaler.get_scale(),
            )  # fmt: skip
        out.update(lr=lr, arch_lr=self.architect.lr if arch_on else 0.0, images_per_s=images_per_s)
        return out

    def end_epoch(self, epoch: int, stats: dict[str, Any]) -> None:
        """The supernet's evaluation, the collapse diagnostic and (random search) the candidates' scores."""
        cfg = self.cfg
        if cfg.arch_search == "random":  # the candidates on the architecture split (all of it at the end)
            last = epoch + 1 == cfg.epochs  # first: the evaluation and the Hessian read the selected one
            self._selected, scores = select(self.model, self.val_loader, self._candidates, self.autocast,
                                            None if last else 4)  # fmt: skip
            stats["candidate_acc"] = scores
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            stats.update(self.evaluate())
        if cfg.hessian_every and ((epoch + 1) % cfg.hessian_every == 0 or epoch + 1 == cfg.epochs):
            t1 = time.perf_counter()
            stats.update(hessian_eig=self.hessian_eigenvalue(epoch), hessian_s=time.perf_counter() - t1)

    def epoch_records(self, run: RunDir, epoch: int, record: dict[str, Any]) -> Genotype:
        """The record's genotype fields, and the epoch's genotype files and alphas (before its metrics line)."""
        genotype = self.genotype()
        record.update(
            parameter_free=genotype.parameter_free(), alpha_entropy=alpha_entropy(self.model),
            genotype=genotype.to_json(), **self.cost_record(genotype),
        )  # fmt: skip
        run.write_json(f"genotypes/epoch_{epoch:03d}.json", genotype.to_json())
        run.write_json("genotype.json", {**genotype.to_json(), **self.cost_record(genotype)})
        run.append("alphas.jsonl", alpha_record(self.model, epoch))
        return genotype

    def selected_path(self) -> dict[str, torch.Tensor] | None:
        """Random search: the op weights of the selected candidate (the best scored one), which the run's
        evaluation, Hessian diagnostic and genotype all read; None for a gradient search (the alphas)."""
        if self.cfg.arch_search != "random" or self._selected is None:
            return None
        return self.model.path_weights(self._selected)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The supernet (random search: the selected candidate on its weights) on the evaluation split (read
        once at the end; combined over torchrun ranks)."""
        path = self.selected_path()
        r = evaluate_model(self.model if path is None else self.model.fixed(path), self.eval_loader, self.autocast)
        return {"valid_loss": r["loss"], "valid_acc": r["top1"]}

    def run_search(self, reporter=None) -> Genotype:
        """Run (or continue) the search to its end; the genotype found."""
        return self.loop.run_epochs(reporter)

    def finish(self, run: RunDir, reporter) -> Genotype:
        """The run's end: genotype.json and summary.json, and the summary on the console."""
        cfg = self.cfg
        genotype = self.genotype()
        run.write_json("genotype.json", {**genotype.to_json(), **self.cost_record(genotype)})
        last = self.history[-1] if self.history else {}
        summary = {
            "command": "search",
            "method": cfg.method,
            "space": cfg.space,
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "order": cfg.order,
            **self.counts(),
            "final": {k: last.get(k) for k in ("train_loss", "train_acc", "arch_loss", "valid_loss", "valid_acc")},
            "parameter_free": genotype.parameter_free(),
            "search_s": sum(r.get("epoch_s", 0.0) for r in self.history),
            "genotype": genotype.to_json(),
            **self.cost_record(genotype),
            "run_dir": str(run.path),
        }
        run.write_json("summary.json", summary)
        reporter.summary(summary, genotype)
        return genotype

    def hessian_eigenvalue(self, epoch: int) -> float:
        """The dominant alpha-Hessian eigenvalue on the first unaugmented validation batch (the same batch
        every time, so epochs compare)."""
        if getattr(self, "_hessian_batch", None) is None:
            self._hessian_batch = next(iter(self.eval_loader))
        x, y = self._hessian_batch
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return alpha_hessian_eigenvalue(self.model, x, y, self.cfg.hessian_iters, generator=gen,
                                        path=self.selected_path())  # fmt: skip


def search(cfg: SearchConfig | None = None, *, resume: bool = False, overwrite: bool = False, **overrides) -> Genotype:
    """Run a search from Python: `bnas.search(method="pc", dataset="synthetic", epochs=2)`."""
    if cfg is None:
        cfg = SearchConfig.resolve(overrides.pop("method", "clr"), **overrides)
    return Searcher(cfg, resume=resume, overwrite=overwrite).run_search()


def resume_config(run_dir: str | Path) -> SearchConfig:
    """The configuration a run directory was started with."""
    saved = RunDir(run_dir).read_json("config.json")
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    values = {k: v for k, v in saved.items() if k in fields}
    values["out"] = str(run_dir)
    if isinstance(values.get("arch_betas"), list):
        values["arch_betas"] = tuple(values["arch_betas"])
    return SearchConfig(**values)
