"""Architecture search (SPEC §7): the search step and the search's parts for the run core. The configuration and
the method presets are in search_config.py (re-exported here: `from bnas.search import SearchConfig, METHODS`)."""

from __future__ import annotations

import functools
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import decision, fast, options
from .architect import (
    Architect,
    ArchitectOptions,
    auto_arch_lr,
    clr_arch_lr,
    confidence_sum,
    paper_arch_lr_sum,
    step_confidence_sum,
)
from .budget import reserve_s
from .constrained import BudgetError, cheapest_fit, derive_within, sample_within
from .costs import Budget, BudgetPenalty, CostModel, trained_shape
from .data.registry import search_data
from .diagnostics import alpha_entropy, alpha_hessian_eigenvalue, alpha_record
from .errors import (
    ConfigError,
)
from .genotype import Genotype, derive
from .latency import cost_model
from .random_search import candidates, epoch_paths, select
from .runcore import DeviceParts, Feed, LoopBuilder, RunLoop, budget_clock, device_parts, setup
from .runs import RunDir, environment
from .runtime import STEP_FIGURES, Tally, correct, synchronize, upcast, weight_step
from .runtime import (
    evaluate as evaluate_model,
)
from .search_config import METHODS, SearchConfig
from .space import SuperNet

__all__ = ["METHODS", "SearchConfig", "SearchStep", "Searcher", "resume_config", "search"]


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


class Searcher(LoopBuilder):
    """Builds a search's parts (data, supernet, step, state, end-of-epoch work) for the run core
    (`runcore.RunLoop`), which runs them in a run directory and resumes them."""

    kind, lr_flags = "search", "--lr/--arch-lr"

    def __init__(self, cfg: SearchConfig, resume: bool = False, overwrite: bool = False, load_data: bool = True):
        self.cfg = cfg
        self.device = setup(cfg.seed, cfg.device, cfg.deterministic, cfg.threads)
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
        # how consistent the architecture gradient is from batch to batch (decision.py), per epoch
        self.grad_stats = self.architect.grad_stats = decision.GradConsistency(dict(supernet.arch.items()))
        # what this run resolved its device-dependent switches to (config.json "runtime")
        self.switches = self.profile.record()
        self.path_rng = random.Random(f"bnas-paths-{cfg.seed}")  # random search: one architecture per step
        self._candidates = candidates(cfg.space, cfg.seed, cfg.random_candidates)
        if self.cost_budget:  # random search under a budget: candidates that fit (the same draws where they fit)
            self._candidates = [sample_within(self.costs, self.cost_budget, cfg.seed * 100_003 + i)
                                for i in range(cfg.random_candidates)]  # fmt: skip
        self._selected: Genotype | None = None
        self._arch_on = False
        self._epoch_path_rng = self.path_rng.getstate()
        # how decided the architecture is (decision.py): (global step, genotype key) at each decision point
        self._trail: list[tuple[int, str]] = []
        self._pending: list[tuple[int, list[torch.Tensor], list[torch.Tensor] | None]] = []  # device snapshots
        self._steps_done = 0
        # a budget's warm-up: the share of the search that arch_start_epoch is of the configured epochs
        self._warm_share = cfg.arch_start_epoch / cfg.epochs
        self._auto: dict[str, Any] | None = None  # --arch-lr auto: the base rate, its sum and the paper's
        if cfg.arch_lr == "auto" and cfg.budget is None:
            self._auto = self._auto_arch_lr(confidence_sum(cfg.epochs, len(self.train_loader), cfg.arch_start_epoch,
                                                           cfg.clr_power))  # fmt: skip
        clock = None  # --budget: the search's length is sized by its measured step time (budget.py)
        if cfg.budget is not None and load_data:
            reserve = functools.partial(reserve_s, self.model, self.eval_loader, self.autocast,
                                        self._split_sizes[1] if cfg.eval_every else 0,
                                        functools.partial(synchronize, self.device))  # fmt: skip
            clock = budget_clock(cfg.budget, len(self.train_loader), 0, self.device, reserve)
        self.loop = RunLoop(self, cfg, self.device, self.w_optimizer, resume=resume, overwrite=overwrite, clock=clock)

    def _auto_arch_lr(self, confidence: float) -> dict[str, Any]:
        """--arch-lr auto: the base rate whose summed rate over this search's `confidence` (its architecture
        steps' summed CLR confidence) equals its method's paper search on CIFAR-10 (architect.py), or
        arch_lr_sum."""
        cfg, paper = self.cfg, METHODS[self.cfg.method]
        paper_sum = paper_arch_lr_sum(paper["arch_lr"], paper["batch_size"], paper["arch_start_epoch"],
                                      paper["clr_power"])  # fmt: skip
        target = cfg.arch_lr_sum or paper_sum
        base = auto_arch_lr(target, confidence)
        self.architect.set_lr(base)
        return {"arch_lr": base, "sum": target, "paper_sum": paper_sum, "confidence_sum": confidence,
                "paper_arch_lr": paper["arch_lr"], "clr_power": cfg.clr_power}  # fmt: skip

    @property
    def arch_base(self) -> float:
        """The base architecture learning rate: the configured one, or --arch-lr auto's (before a budget's plan
        sizes it: the method's paper rate)."""
        if self._auto is not None:
            return self._auto["arch_lr"]
        return METHODS[self.cfg.method]["arch_lr"] if self.cfg.arch_lr == "auto" else self.cfg.arch_lr

    def _cost_budget(self, data) -> tuple[CostModel | None, Budget, BudgetPenalty | None]:
        """max_params/max_macs/max_latency: the cost model of the network `bnas train` will build
        (docs/hardware-aware.md), the budget (refused at once when no genotype fits) and the architecture loss's
        penalty."""
        cfg = self.cfg
        budget = Budget.parse(cfg.max_params, cfg.max_macs, cfg.max_latency)
        if not budget:
            return None, budget, None
        shape = trained_shape(
            cfg.space, cfg.dataset, num_classes=data.num_classes, in_channels=data.in_channels, size=data.size,
            stem=data.stem, channels=cfg.cost_channels, layers=cfg.cost_layers, enhance=cfg.cost_enhance,
            blocks=cfg.blocks,
        )  # fmt: skip
        model = cost_model(shape, cfg.latency_table)  # with the table's predicted latency where one is given
        try:
            cheapest_fit(model, budget)
        except BudgetError as e:  # nothing fits: say it before the search starts, in the search's options
            msg = str(e).replace("(channels, layers)", "(cost_channels, cost_layers)")
            raise BudgetError(msg, options=("cost_channels", "cost_layers")) from None
        use = cfg.cost_penalty != "none" and cfg.arch_search == "gradient"
        return model, budget, BudgetPenalty(model, budget, cfg.cost_penalty, cfg.cost_weight) if use else None

    def cost_record(self, genotype: Genotype) -> dict[str, Any]:
        """A budgeted search's genotype cost, budget and the network they are of (records, summary, genotype)."""
        if not self.cost_budget:
            return {}
        return {"cost": self.costs.cost(genotype).to_json(), "cost_budget": self.cost_budget.to_json(),
                "cost_network": self.costs.shape.to_json(),
                **({"cost_latency_table": self.costs.latency_source} if self.costs.latency_source else {})}  # fmt: skip

    # --- counts shown before a search starts (and by --dry-run)
    def counts(self) -> dict[str, int]:
        return {
            "weights": sum(p.numel() for p in self.model.weight_parameters()),
            "arch": sum(p.numel() for p in self.model.arch_parameters()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The search's parts in a checkpoint (the run core adds the epoch, config, generators and budget)."""
        self._flush_snapshots()  # a checkpoint is a host moment anyway: the trail it saves is complete
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
            "decision_trail": [list(t) for t in self._trail],
            "arch_lr_auto": self._auto,
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
        self._trail = [(int(step), str(key)) for step, key in state.get("decision_trail", [])]
        self._steps_done = self._trail[-1][0] if self._trail else 0
        if state.get("arch_lr_auto"):
            self._auto = state["arch_lr_auto"]

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
                f"batch_size {self.cfg.batch_size} is larger than the {n} images of a search split "
                f"({sum(self._split_sizes)} training images x train portion {self.cfg.train_portion}); "
                "lower it or use more data",
                options=("batch_size",),
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
                **({"arch_lr_auto": self._auto} if self._auto else {}),
                **({"data": self.data_info} if self.data_info else {}),
                "environment": environment(),
            },  # fmt: skip
        )
        run.append("alphas.jsonl", alpha_record(self.model, 0))  # epoch 0: the starting point of the evolution plots

    # --- an epoch, as the run core runs it
    def train_epoch(self, epoch: int, progress) -> dict[str, Any]:
        """One epoch of search steps (the run core's `train_epoch`)."""
        return self.loop.train_epoch(epoch, progress)

    def begin_epoch(self, epoch: int) -> Feed:
        """The epoch's architecture learning rate and warm-up, and what feeds each step its batches: a
        validation batch for the architecture step (one persistent iterator, restarted when it ends) and, in a
        random search, the architecture the step trains."""
        cfg, model, clock = self.cfg, self.model, self.clock
        gradient = cfg.arch_search == "gradient"
        per_epoch = len(self.train_loader)
        self._arch_on = epoch >= cfg.arch_start_epoch and gradient
        self._epoch_path_rng = self.path_rng.getstate()  # a preempted epoch draws its paths again from here
        paths = epoch_paths(model, self.path_rng, per_epoch) if cfg.arch_search == "random" else None
        if clock is None:
            self.architect.set_lr(clr_arch_lr(self.arch_base, epoch, cfg.epochs, cfg.clr_power))
        model.train()
        val = {"it": iter(self.val_loader)}
        every = max(1, min(cfg.log_every or per_epoch, math.ceil(per_epoch / 10)))  # decision points

        def feed(i: int, x, y, lr: float, tally: Tally) -> None:
            step = epoch * per_epoch + i
            if clock is not None:  # a budget: warm-up and CLR confidence follow the plan's progress per step
                self._budget_step(step)
            xv = yv = None
            if self._arch_on:
                try:
                    xv, yv = next(val["it"])
                except StopIteration:
                    val["it"] = iter(self.val_loader)
                    xv, yv = next(val["it"])
            # random search: this step trains one uniformly drawn architecture
            self.step(x, y, xv, yv, lr, tally, i, path=paths[i] if paths is not None else None)
            self._steps_done = step + 1
            if (i + 1) % every == 0:
                self._snapshot()

        return feed

    def mid_epoch_state(self) -> dict[str, Any]:
        """Preempted mid-epoch: random search's generator as the epoch began (its paths are drawn again), and
        where the validation batches of the architecture steps stand."""
        return {"path_rng": self._epoch_path_rng, "val": self.val_loader.pass_state() if self._arch_on else None,
                "grad_stats": self.grad_stats.state_dict()}  # fmt: skip

    def resume_mid_epoch(self, state: dict[str, Any]) -> None:
        if "grad_stats" in state:
            self.grad_stats.load_state_dict(state["grad_stats"])
        version, internal, gauss = state["path_rng"]
        self.path_rng.setstate((version, tuple(internal), gauss))
        if state["val"] is not None:
            self.val_loader.resume_pass(state["val"])

    def _budget_step(self, step: int) -> None:
        """A budgeted search's step: architecture updates once the plan's progress passes the warm-up's share,
        at base x progress ** clr_power (confidence 1 at the last step); --arch-lr auto is sized by the first
        plan (until then: the method's paper rate)."""
        cfg, plan = self.cfg, self.clock.plan
        if cfg.arch_lr == "auto" and self._auto is None and plan.total_steps:
            start = math.ceil(self._warm_share * plan.total_steps)
            self._auto = self._auto_arch_lr(step_confidence_sum(plan.total_steps, start, cfg.clr_power))
        self._arch_on = cfg.arch_search == "gradient" and plan.progress(step) >= self._warm_share
        confidence = plan.progress(step + 1) ** cfg.clr_power if cfg.clr_power else 1.0
        self.architect.set_lr(self.arch_base * confidence)

    def _snapshot(self) -> None:
        """A decision point between log points: the alphas (and betas) copied on the device, derived into a
        genotype at the next host moment (`_flush_snapshots`), so the step never waits for the device. Random
        search's genotype is the selected candidate, which changes only at epoch ends."""
        if self.cfg.arch_search != "gradient":
            return
        m = self.model
        alphas = [m.arch[f"alpha_{k}"].detach().clone() for k in m.cell_types]
        betas = [m.arch[f"beta_{k}"].detach().clone() for k in m.cell_types] if m.cfg.edge_norm else None
        self._pending.append((self._steps_done, alphas, betas))

    def _flush_snapshots(self) -> None:
        pending, self._pending = self._pending, []
        for step, alphas, betas in pending:
            if not self._trail or self._trail[-1][0] != step:
                self._trail.append((step, decision.genotype_key(derive(alphas, betas, self.cfg.space))))

    def _decision_point(self) -> None:
        """The derived genotype after the steps done so far, for the decision figures (decision.py)."""
        self._flush_snapshots()
        if not self._trail or self._trail[-1][0] != self._steps_done:
            self._trail.append((self._steps_done, decision.genotype_key(self.genotype())))

    def _last_epoch(self, epoch: int) -> bool:
        """Whether `epoch` is the search's last (under a budget: its plan ends within it)."""
        if self.clock is not None:
            return self.clock.plan.done((epoch + 1) * len(self.train_loader))
        return epoch + 1 == self.cfg.epochs

    def at_progress(self, progress: float) -> None:
        pass  # the search's schedules are by epoch (a budget's per-step schedule sets the weights' lr only)

    def epoch_stats(self, sums: dict[str, float], lr: float, images_per_s: float) -> dict[str, Any]:
        """The epoch's figures from its tally's sums (a record's order of keys)."""
        steps = max(sums["steps"], 1)
        arch_on = self._arch_on or (self.clock is not None and sums["arch_steps"] > 0)
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
        out["arch_grad_consistency"] = self.grad_stats.read() if arch_on else None
        self.grad_stats.reset()  # (not at the epoch's start: a resumed epoch brings its sums so far)
        return out

    def end_epoch(self, epoch: int, stats: dict[str, Any]) -> None:
        """The supernet's evaluation, the collapse diagnostic and (random search) the candidates' scores."""
        cfg = self.cfg
        if cfg.arch_search == "random":  # the candidates on the architecture split (all of it at the end)
            last = self._last_epoch(epoch)  # first: the evaluation and the Hessian read the selected one
            self._selected, scores = select(self.model, self.val_loader, self._candidates, self.autocast,
                                            None if last else 4)  # fmt: skip
            stats["candidate_acc"] = scores
        last = self._last_epoch(epoch)
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or last):
            stats.update(self.evaluate())
        if cfg.hessian_every and ((epoch + 1) % cfg.hessian_every == 0 or last):
            t1 = time.perf_counter()
            stats.update(hessian_eig=self.hessian_eigenvalue(epoch), hessian_s=time.perf_counter() - t1)

    def epoch_records(self, run: RunDir, epoch: int, record: dict[str, Any]) -> Genotype:
        """The record's genotype fields, and the epoch's genotype files and alphas (before its metrics line)."""
        genotype = self.genotype()
        self._decision_point()
        record.update(
            parameter_free=genotype.parameter_free(), alpha_entropy=alpha_entropy(self.model),
            decision=decision.epoch_figures(self.model, self._trail, decision.genotype_key(genotype)),
            genotype=genotype.to_json(), **self.cost_record(genotype),
        )  # fmt: skip
        run.write_json(f"genotypes/epoch_{epoch + 1:03d}.json", genotype.to_json())
        run.write_json("genotype.json", {**genotype.to_json(), **self.cost_record(genotype)})
        run.append("alphas.jsonl", alpha_record(self.model, epoch + 1))
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
        key = decision.genotype_key(genotype)
        stable = decision.stable_share(self._trail, key, self._steps_done or None)
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
            "decision": decision.summarise(decision.model_margins(self.model), stable, cfg.arch_lr == "auto"),
            "search_s": sum(r.get("epoch_s", 0.0) for r in self.history),
            "genotype": genotype.to_json(),
            **self.cost_record(genotype),
            "run_dir": str(run.path),
        }
        if self._auto is not None:
            summary["arch_lr_auto"] = self._auto
            run.update_config({"arch_lr_auto": self._auto})
        if self.clock is not None:
            plan = self.clock.plan
            summary["budget"] = {**plan.state(), "epochs": plan.epochs(), "wall_s": self.clock.elapsed()}
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
    """Run a search from Python: `bnas.search.search(method="pc", dataset="synthetic", epochs=2)`.

    `resume=True` continues the run in `out` (or `cfg.out`) under the resume policy (options.resume_config):
    options that would change its results are refused, the others are recorded."""
    if resume:
        given = cfg.to_json() if cfg is not None else dict(overrides)
        cfg = resume_config(given.get("out") or SearchConfig.out, **given)
    elif cfg is None:
        cfg = SearchConfig.resolve(overrides.pop("method", "clr"), **overrides)
    return Searcher(cfg, resume=resume, overwrite=overwrite).run_search()


def resume_config(run_dir: str | Path, **overrides: Any) -> SearchConfig:
    """The configuration a run directory was started with, told `overrides` under the resume policy."""
    return options.resume_config(run_dir, SearchConfig, overrides)
