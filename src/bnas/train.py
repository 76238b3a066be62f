"""Training a found network from scratch and evaluating it (SPEC §8-9).

`TrainConfig` holds the published recipe (CIFAR: batch 128, SGD 0.025 cosine to 0, momentum 0.9, wd 3e-4,
clip 5, drop-path 0.3 x epoch/epochs, cutout 16, 600 epochs); each data set's registry entry adapts it (transfer
sets without cutout, ImageNet's own recipe) and DARTS-space genotypes get DARTS' 20 cells of 36 channels.
`Trainer` owns a run directory (config.json, metrics.jsonl, checkpoint.pt each epoch, results.json) and
resumes from the last complete epoch bit for bit. The reported number is always the *final* epoch on the
test split; `val_split` holds out part of the training set, and only that split selects a model.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import fast, options
from .budget import BudgetClock, BudgetPlan, parse_duration, reserve_s
from .cells import Cell
from .data.loaders import Loader
from .data.registry import open_source
from .data.source import DataSource
from .dist import NullRun, broadcast_buffers, rank_world
from .errors import (
    ConfigError,
    non_finite,
)
from .genotype import Genotype, get_genotype
from .progress import print_results
from .runs import CHECKPOINT_FORMAT, RunDir, atomic_write_bytes, environment
from .runtime import (
    STEP_FIGURES,
    Tally,
    autocast_factory,
    compile_regions,
    correct,
    cosine_lr,
    device_defaults,
    evaluate,
    grad_scaler,
    make_sgd,
    optimizer_kind,
    pick_device,
    read_log_point,
    set_deterministic,
    synchronize,
    upcast,
    weight_step,
)
from .space import TrainedNet, build_network, count_macs, count_parameters
from .train_config import TrainConfig

# ------------------------------------------------------------------------------------------ building


def network_for(
    cfg: TrainConfig, genotype: Genotype, spec: DataSource, num_classes: int | None = None, backend=None
) -> TrainedNet:
    """The network a configuration trains (also what eval/export rebuild from a checkpoint, with the plain
    modules: `backend` is fast.TRAINED or None)."""
    if cfg.auxiliary and genotype.space != "darts":
        raise ConfigError("auxiliary exists only for DARTS-space genotypes; the broad network has no such head",
                          options=("auxiliary",))  # fmt: skip
    if genotype.space == "bcnn" and cfg.layers % cfg.blocks:
        raise ConfigError(f"layers {cfg.layers} must be a multiple of the {cfg.blocks} convolution blocks",
                          options=("layers",))  # fmt: skip
    if genotype.space == "bcnn" and (cfg.blocks < 2 or cfg.enhance_cells < 1):
        raise ConfigError("the broad network needs blocks of at least 2 and enhance_cells of at least 1",
                          options=("blocks", "enhance_cells"))  # fmt: skip
    if genotype.space == "bcnn" and cfg.init_channels % 2:
        raise ConfigError(
            f"the broad network needs an even init_channels (FactorizedReduce halves them), got {cfg.init_channels}",
            options=("init_channels",),
        )
    return build_network(
        genotype,
        channels=cfg.init_channels,
        layers=cfg.layers,
        enhance=cfg.enhance_cells,
        num_classes=num_classes or spec.num_classes,
        in_channels=spec.in_channels,
        stem=spec.stem,
        blocks=cfg.blocks,
        auxiliary=cfg.auxiliary,
        backend=backend,
    )


def _genotype_of(cfg: TrainConfig, saved: dict | None = None) -> Genotype:
    return Genotype.from_json(saved) if saved is not None else get_genotype(cfg.genotype)


# -------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Owns a training run: data, network, optimiser, run directory, checkpoints, resume, results."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False, load_data: bool = True):
        self.cfg = cfg
        self._resume, self._overwrite = resume, overwrite
        torch.manual_seed(cfg.seed)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        if cfg.deterministic:
            set_deterministic()
        self.spec = open_source(cfg, self.device)  # the data set's source; its images are read by _load_data
        saved_genotype = None
        if resume:  # the run's own genotype, even if the file it came from has changed since
            saved_genotype = RunDir(cfg.out).read_json("config.json").get("genotype_json")
        self.genotype = _genotype_of(cfg, saved_genotype)
        self.rank, self.world = rank_world()
        self.num_classes = self.spec.num_classes
        trained = fast.TRAINED if cfg.fast is not False and cfg.compile == "off" else None
        self.model = network_for(cfg, self.genotype, self.spec, self.num_classes, trained)
        self.parameters = count_parameters(self.model)
        self.size = self.spec.size
        self.macs = count_macs(self.model, self.spec.in_channels, self.size)
        # auto = on: 1.3-2x faster on CPUs too. (torch 2.14's oneDNN corrupted the heap in the channels-last backward
        # of 1x1 stride-2 convolutions with <= 4 input channels; FactorizedReduce no longer runs any.)
        cl = cfg.channels_last != "off"
        self.channels_last = cl
        self.model = self.model.to(self.device)
        if cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile != "off":  # in place: parameter names and checkpoints stay as they are
            compile_regions(self.model, Cell, cfg.compile)  # each cell, not the whole network
        self.autocast, self.amp_mode = autocast_factory(cfg.amp, self.device)
        self.scaler = grad_scaler(self.amp_mode, self.device)  # fp16 loss scaling (disabled otherwise)
        self.optimizer = make_sgd(
            self.model.parameters(), self.device, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.switches = {  # what this run resolved its device-dependent switches to (config.json "runtime")
            **device_defaults(self.device, cfg.deterministic), "optimizer": optimizer_kind(self.device),
            "channels_last": cl, "amp": self.amp_mode, "ddp": self.world > 1,
            "cells": "fast" if trained is not None else "plain",
        }  # fmt: skip
        self.net: nn.Module = self.model  # what the training forward runs: DDP's wrapper under torchrun
        if self.world > 1:  # bucketed gradient all-reduce overlapping backward; BatchNorm statistics: see run_training
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False, gradient_as_bucket_view=True,
                find_unused_parameters=bool(cfg.auxiliary and cfg.auxiliary_weight == 0),
            )  # fmt: skip
        self.start_epoch = 0
        self.run: RunDir | None = None
        self.history: list[dict[str, Any]] = []
        self.best_val: dict[str, Any] | None = None
        self.loaders: dict[str, Loader] = {}
        if load_data:
            self._load_data()
        self.clock: BudgetClock | None = None  # --budget: sizes the schedule by measured throughput
        if cfg.budget is not None and load_data:
            per_epoch = len(self.loaders["train"])
            plan = BudgetPlan(parse_duration(cfg.budget), per_epoch, warmup_steps=cfg.lr_warmup_epochs * per_epoch)
            sync = functools.partial(synchronize, self.device)
            reserve = functools.partial(
                reserve_s,
                self.model,
                self.loaders["test"],
                self.autocast,
                self.sizes["test"],
                sync,
                2 if cfg.eval_flip else 1,
            )
            self.clock = BudgetClock(plan, sync, reserve)

    # --- data
    def _load_data(self) -> None:
        loaders, self.sizes, self.spec = self.spec.train_loaders(
            self.cfg, self.device, self.channels_last, self.rank, self.world
        )
        self.loaders.update(loaders)

    # --- state
    def meta(self) -> dict[str, Any]:
        """What eval/export need to rebuild the network and feed it, without the data set."""
        aug = self.spec.eval_augment
        return {
            "genotype": self.genotype.to_json(),
            "num_classes": self.num_classes,
            "in_channels": self.spec.in_channels,
            "size": self.size,
            "mean": aug.mean,
            "std": aug.std,
            "stem": self.spec.stem,
            "classes": list(self.spec.classes) if self.spec.classes else None,
            "parameters": self.parameters,
            "macs": self.macs,
        }

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "kind": "train",
            "epoch": epoch,
            "config": self.cfg.to_json(),
            "meta": self.meta(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),  # fp16: loss scale and growth tracker ({} otherwise)
            "train_loader": self.loaders["train"].state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "best_val": self.best_val,
            "budget": self.clock.plan.state() if self.clock is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.loaders["train"].load_state_dict(state["train_loader"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.best_val = state.get("best_val")
        if self.clock is not None and state.get("budget"):
            self.clock.plan = BudgetPlan.from_state(state["budget"])
        self.start_epoch = state["epoch"] + 1

    def open_run(self) -> RunDir:
        cfg = self.cfg
        if self.rank != 0:  # under torchrun only rank 0 writes
            if self._resume:
                self.load_state_dict(RunDir(cfg.out).load_checkpoint("train", cfg.to_json()))
            self.run = NullRun()
            return self.run
        if self._resume:
            self.run = RunDir(cfg.out)
            state = self.run.load_checkpoint("train", cfg.to_json())
            self.load_state_dict(state)
            self.run.truncate_metrics(state["epoch"])
            self.history = self.run.metrics("epoch")
            self.run.update_config(cfg.to_json())
        else:
            self.run = RunDir.create(cfg.out, overwrite=self._overwrite)
            for name in ("results.json", "best.pt"):
                (self.run.path / name).unlink(missing_ok=True)
            self.run.write_json(
                "config.json",
                {
                    "command": "train",
                    **cfg.to_json(),
                    "genotype_json": self.genotype.to_json(),
                    "parameters": self.parameters,
                    "macs": self.macs,
                    "runtime": self.switches,
                    **({"data": self.spec.info} if self.spec.info else {}),
                    "environment": environment(),
                },
            )
        return self.run

    # --- one epoch
    def train_epoch(self, epoch: int, progress) -> dict[str, float]:
        """One epoch of SGD steps, none of which waits for the device: the figures accumulate in a `Tally` read
        at log points (every `log_every` steps, the epoch's end), a non-finite step is skipped on the device
        (no NaN reaches the weights or the momentum buffers), and --on-nan stop ends the run at the next log
        point, keeping the last complete epoch's checkpoint."""
        cfg, model, clock = self.cfg, self.model, self.clock
        lr = cosine_lr(epoch, cfg.epochs, cfg.lr, cfg.lr_min, cfg.lr_warmup_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model.drop_prob = cfg.drop_path * epoch / cfg.epochs
        model.train()
        per_epoch = len(self.loaders["train"])
        tally = Tally(self.device, STEP_FIGURES)
        images, t0, last = 0, time.perf_counter(), {}
        params = list(model.parameters())
        net = self.net  # DistributedDataParallel under torchrun, the network itself otherwise
        for i, (x, y) in enumerate(self.loaders["train"]):
            if clock is not None:  # a budget: the schedule is per step, by progress (budget.py)
                lr = clock.plan.lr(epoch * per_epoch + i, cfg.lr, cfg.lr_min)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                model.drop_prob = cfg.drop_path * clock.plan.progress(epoch * per_epoch + i)
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                logits = net(x)
            loss = F.cross_entropy(upcast(logits), y, label_smoothing=cfg.label_smoothing)
            aux = model.aux_logits
            if aux is not None and cfg.auxiliary_weight > 0:
                aux_loss = F.cross_entropy(upcast(aux), y, label_smoothing=cfg.label_smoothing)
                loss = loss + cfg.auxiliary_weight * aux_loss
            # backward (DDP averages the shards during it), fp16 unscaling, clipping (the norm finds non-finite
            # gradients too), then the step, masked on the device where the loss or a gradient is not finite
            w = weight_step(loss, self.optimizer, params, cfg.grad_clip, self.scaler, reduce=net is model)
            bad = ~w.ok & ~w.overflow
            tally.add(train_loss=torch.where(w.ok, loss.detach(), 0.0), train_correct=correct(logits, y) * w.ok,
                      steps=w.ok, images=w.ok * y.shape[0], bad=bad, overflow=w.overflow)  # fmt: skip
            tally.first("first_bad", bad, i + 1)
            images += x.shape[0]
            log = bool(cfg.log_every) and (i + 1) % cfg.log_every == 0
            if log:
                last = self._log_point(tally, epoch, i + 1, last)
                if clock is not None:
                    clock.log_point(epoch * per_epoch + i + 1)
            progress.update(**({"loss": last["mean_loss"], "acc": last["mean_acc"]} if log else {}),
                            rate=images / (time.perf_counter() - t0))  # fmt: skip
            if clock is not None and clock.step_done(epoch * per_epoch + i + 1):
                break  # the budget's last step: a partial epoch
        sums = self._log_point(tally, epoch, None, last)
        if clock is not None:  # the epoch's end is a log point too (and holds its overheads: evaluation...)
            clock.log_point(epoch * per_epoch + i + 1)
        out = {
            "train_loss": sums["mean_loss"],
            "train_acc": sums["mean_acc"],
            "lr": lr,
            "drop_prob": model.drop_prob,
            "skipped_steps": round(sums["bad"] + sums["overflow"]),
            "images_per_s": images / (time.perf_counter() - t0),
        }
        if self.scaler.is_enabled():  # fp16: the scaler's share of the skipped steps, and its scale now
            out.update(amp_skipped_steps=round(sums["overflow"]), loss_scale=self.scaler.get_scale())
        return out

    def _log_point(self, tally: Tally, epoch: int, step: int | None, last: dict[str, float]) -> dict[str, float]:
        """The one host read between log points, and --on-nan stop's check of the steps skipped as non-finite."""
        sums = read_log_point(tally, self.run, epoch, step, last)
        if sums["bad"] > 0:
            self._non_finite(epoch, round(sums["first_bad"]) - 1)  # raises unless --on-nan skip
        return sums

    def _non_finite(self, epoch: int, step: int) -> int:
        """--on-nan stop (default): end the run keeping the last complete epoch; skip: count the step and go on."""
        return non_finite(self.cfg.on_nan, "train", "training", epoch, step, self.cfg.out, "--lr")

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Loss, top-1 and top-5 accuracy of the current weights on a split, in eval mode."""
        return evaluate(self.model, self.loaders[split], self.autocast, flip=self.cfg.eval_flip)

    def run_training(self, reporter=None) -> dict[str, Any]:
        from .progress import Reporter

        reporter = reporter or Reporter(quiet=self.cfg.quiet)
        run = self.run or self.open_run()
        cfg, clock, per_epoch = self.cfg, self.clock, len(self.loaders["train"])
        if clock is not None:
            clock.start(self.start_epoch * per_epoch)
        epoch = self.start_epoch
        while (clock.plan.done(epoch * per_epoch) is False) if clock is not None else epoch < cfg.epochs:
            t0 = time.perf_counter()
            # a budget's length is unknown until its first steps are timed: "epoch 1/?" until then
            shown = (math.ceil(clock.plan.epochs()) or "?") if clock is not None else cfg.epochs
            with reporter.epoch(epoch, shown, per_epoch) as progress:
                stats = self.train_epoch(epoch, progress)
            broadcast_buffers(self.model)  # every rank keeps rank 0's BatchNorm statistics, as DDP does
            if "val" in self.loaders:
                val = self.evaluate("val")
                stats.update(valid_loss=val["loss"], valid_acc=val["top1"], valid_top5=val["top5"])
                if self.best_val is None or val["top1"] > self.best_val["top1"]:
                    self.best_val = {"epoch": epoch, **val}
                    self._save_weights(run.path / "best.pt", epoch)
            record = {"kind": "epoch", "epoch": epoch, **stats, "epoch_s": time.perf_counter() - t0}
            if clock is not None:
                clock.plan.spent_s = clock.elapsed()  # what a resume from this checkpoint has spent
                record.update(budget_progress=clock.plan.progress((epoch + 1) * per_epoch),
                              planned_epochs=clock.plan.epochs())  # fmt: skip
            run.save_checkpoint(self.state_dict(epoch))  # checkpoint first (atomic), then the record
            run.log(record)
            self.history.append(record)
            reporter.epoch_done(record, None)
            epoch += 1
        if clock is not None:  # the epochs the budget resolved to, in config.json as in results.json
            cfg.epochs = epoch
            run.update_config({"epochs": epoch, "budget_plan": clock.plan.state()})
        results = self.results()
        if clock is not None:
            results["budget"] = {**clock.plan.state(), "epochs": clock.plan.epochs(), "wall_s": clock.elapsed()}
            results["epochs"] = clock.plan.epochs()
        run.write_json("results.json", results)
        run.write_json("summary.json", {"command": "train", **results})
        print_results(results, reporter.print)
        return results

    def _save_weights(self, path: Path, epoch: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "kind": "train",
            "epoch": epoch,
            "config": self.cfg.to_json(),
            "meta": self.meta(),
            "model": self.model.state_dict(),
        }
        atomic_write_bytes(path, lambda f: torch.save(state, f))

    def results(self) -> dict[str, Any]:
        """Final-epoch test accuracy (never a best epoch chosen on test), size, cost, and where it ran."""
        cfg, aug = self.cfg, self.spec.eval_augment
        test = self.evaluate("test")
        last = self.history[-1] if self.history else {}
        out: dict[str, Any] = {
            "genotype": cfg.genotype,
            "space": self.genotype.space,
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "final_epoch": {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]},
            "images": self.sizes,
            "parameters": self.parameters,
            "macs_per_image": self.macs,
            "input": {"normalize": cfg.normalize, "mean": aug.mean, "std": aug.std},  # what eval and export feed
            "train_s": sum(r.get("epoch_s", 0.0) for r in self.history),
            "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"),
            "seed": cfg.seed,
            "device": str(self.device),
            "environment": environment(),
            "run_dir": str(self.run.path if self.run else cfg.out),
        }
        if "val" in self.loaders and self.best_val is not None:
            out["final_epoch"].update(val_top1=last.get("valid_acc"), val_top5=last.get("valid_top5"))
            # the model selected on the held-out split, then measured once on the test split
            best = torch.load(Path(out["run_dir"]) / "best.pt", map_location=self.device, weights_only=False)
            final_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(best["model"])
            sel = self.evaluate("test")
            self.model.load_state_dict(final_state)
            out["selected_on_val"] = {
                "epoch": self.best_val["epoch"],
                "val_top1": self.best_val["top1"],
                "test_top1": sel["top1"],
                "test_top5": sel["top5"],
            }
        return out


def train(
    cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    extend_epochs: int = 0,
    **overrides,
) -> dict:
    """Train from Python: `bnas.train.train(genotype="BNASv2_CLR_v1", dataset="synthetic", epochs=2)`.

    `resume=True` continues the run in `out` (or `cfg.out`) under the resume policy (options.resume_config):
    options that would change its results are refused; `extend_epochs=N` trains a run N epochs longer."""
    if resume:
        given = cfg.to_json() if cfg is not None else dict(overrides)
        given.pop("extensions", None)
        cfg = resume_config(given.get("out") or TrainConfig.out, extend_epochs=extend_epochs, **given)
    elif extend_epochs:
        raise ConfigError(
            "extend_epochs continues a run: give it with resume=True", options=("extend_epochs", "resume")
        )
    cfg = cfg or TrainConfig.resolve(**overrides)
    return Trainer(cfg, resume=resume, overwrite=overwrite).run_training()


def resume_config(run_dir: str | Path, extend_epochs: int = 0, **overrides: Any) -> TrainConfig:
    """The configuration a run directory was started with, told `overrides` under the resume policy."""
    return options.resume_config(run_dir, TrainConfig, overrides, extend_epochs)
