"""Architecture search (SPEC §7): the search step and the search loop. The configuration and the method
presets are in search_config.py (re-exported here: `from bnas.search import SearchConfig, METHODS`)."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import fast, options
from .architect import Architect, alpha_entropy, alpha_hessian_eigenvalue, alpha_record, clr_arch_lr
from .cells import Cell
from .data.registry import search_data
from .dist import NullRun, is_main
from .errors import (
    ConfigError,
    non_finite,
)
from .genotype import Genotype
from .random_search import candidates, epoch_paths, select
from .runs import RunDir, environment
from .runtime import (
    STEP_FIGURES,
    Tally,
    autocast_factory,
    compile_regions,
    correct,
    cosine_lr,
    device_defaults,
    grad_scaler,
    make_sgd,
    optimizer_kind,
    pick_device,
    read_log_point,
    set_deterministic,
    upcast,
    weight_step,
)
from .runtime import (
    evaluate as evaluate_model,
)
from .search_config import METHODS, SearchConfig
from .space import SuperNet

__all__ = ["METHODS", "SearchConfig", "SearchStep", "Searcher", "resume_config", "search"]


class SearchStep:
    """One step of the search loop, as `Searcher.train_epoch` runs it and `bnas bench search` times it: an
    architecture step on a validation batch (unless the architecture is still warming up), then a weight step
    on a training batch that asks autograd for the weights' gradients only. Both are decided on the device
    (`guarded_step`) and their figures go into a `Tally`: the step never waits for the device."""

    FIGURES = (*STEP_FIGURES, "arch_loss", "arch_steps", "arch_bad", "arch_overflow")

    def __init__(self, model: SuperNet, architect: Architect, w_optimizer, scaler, autocast, grad_clip: float):
        self.model, self.architect, self.w_optimizer = model, architect, w_optimizer
        self.scaler, self.autocast, self.grad_clip = scaler, autocast, grad_clip
        self.weights = model.weight_parameters()

    def __call__(self, x, y, xv, yv, lr: float, tally: Tally, index: int = 0) -> None:
        """`xv is None`: no architecture step. `index` numbers the step in its epoch (for --on-nan's message)."""
        if xv is not None:
            arch_loss, a = self.architect.step(x, y, xv, yv, lr)
            a_bad = ~a.ok & ~a.overflow
            tally.add(arch_loss=torch.where(a.ok, arch_loss, 0.0), arch_steps=a.ok, arch_bad=a_bad,
                      arch_overflow=a.overflow)  # fmt: skip
            tally.first("arch_first_bad", a_bad, index + 1)
        self.w_optimizer.zero_grad(set_to_none=True)
        with self.autocast(), fast.backward_once():
            logits = self.model(x)
        loss = F.cross_entropy(upcast(logits), y)
        w = weight_step(loss, self.w_optimizer, self.weights, self.grad_clip, self.scaler)
        w_bad = ~w.ok & ~w.overflow
        tally.add(train_loss=torch.where(w.ok, loss.detach(), 0.0), train_correct=correct(logits, y) * w.ok,
                  steps=w.ok, images=w.ok * y.shape[0], bad=w_bad, overflow=w.overflow)  # fmt: skip
        tally.first("first_bad", w_bad, index + 1)


class Searcher:
    """Owns a search run: data, supernet, optimisers, architect, run directory, resume."""

    def __init__(self, cfg: SearchConfig, resume: bool = False, overwrite: bool = False, load_data: bool = True):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        if cfg.deterministic:
            set_deterministic()
        cl = cfg.channels_last != "off"  # faster on GPUs and, for these convolutions, on CPUs (docs/benchmarks.md)
        self.channels_last = cl
        data = search_data(cfg, self.device, cl, load=load_data)  # load_data=False: a dry run reads no images
        self.train_loader, self.val_loader, self.eval_loader = data.train, data.val, data.eval
        self._split_sizes = data.split_sizes
        self.data_info = data.info  # --dataset folder: the tree, split and statistics (config.json "data")
        space = cfg.space_config(data.num_classes, data.in_channels, data.stem)
        self.model = SuperNet(space, cfg.backend(self.device)).to(self.device)
        if cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile != "off":  # in place: parameter names, checkpoints and functional_call stay as they are
            compile_regions(self.model.net, Cell, cfg.compile)  # each cell, not the whole supernet
        self.autocast, self.amp_mode = autocast_factory(cfg.amp, self.device)
        self.w_optimizer = make_sgd(
            self.model.weight_parameters(), self.device, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scaler = grad_scaler(self.amp_mode, self.device)  # fp16 only: the weight loss's scale
        self.architect = Architect(
            self.model, cfg, self.w_optimizer, self.autocast, grad_scaler(self.amp_mode, self.device)
        )
        self.step = SearchStep(self.model, self.architect, self.w_optimizer, self.scaler, self.autocast, cfg.grad_clip)
        # what this run resolved its device-dependent switches to (config.json "runtime")
        self.switches = {
            **device_defaults(self.device, cfg.deterministic), "optimizer": optimizer_kind(self.device),
            "cells": "fast" if self.model.backend is not None else "plain", "channels_last": cl,
            "amp": self.amp_mode, "native_kernel": self.device.type == "cpu",
        }  # fmt: skip
        self.path_rng = random.Random(f"bnas-paths-{cfg.seed}")  # random search: one architecture per step
        self._candidates = candidates(cfg.space, cfg.seed, cfg.random_candidates)
        self._selected: Genotype | None = None
        self.start_epoch = 0
        self.run: RunDir | None = None
        self._resume = resume
        self._overwrite = overwrite
        self.history: list[dict[str, Any]] = []

    # --- counts shown before a search starts (and by --dry-run)
    def counts(self) -> dict[str, int]:
        return {
            "weights": sum(p.numel() for p in self.model.weight_parameters()),
            "arch": sum(p.numel() for p in self.model.arch_parameters()),
        }

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "kind": "search",
            "epoch": epoch,
            "config": self.cfg.to_json(),
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.architect.optimizer.state_dict(),
            "w_scaler": self.scaler.state_dict(),  # fp16: the loss scales and their growth trackers ({} otherwise)
            "a_scaler": self.architect.scaler.state_dict(),
            "train_loader": self.train_loader.state_dict(),
            "val_loader": self.val_loader.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
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
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if state.get("path_rng") is not None:  # (a checkpoint may hold getstate()'s tuples as lists)
            version, internal, gauss = state["path_rng"]
            self.path_rng.setstate((version, tuple(internal), gauss))
            self._selected = Genotype.from_json(state["genotype"])
        self.start_epoch = state["epoch"] + 1

    def genotype(self) -> Genotype:
        """The run's current genotype: derived from the alphas, or (random search) the best scored candidate."""
        return self._selected if self.cfg.arch_search == "random" and self._selected else self.model.genotype()

    def check_data(self) -> None:
        n = min(self._split_sizes)
        if n < self.cfg.batch_size:
            raise ConfigError(
                f"--batch-size {self.cfg.batch_size} is larger than the {n} images of a search split "
                f"({sum(self._split_sizes)} training images x train portion {self.cfg.train_portion}); "
                "lower --batch-size or use more data"
            )

    def open_run(self) -> RunDir:
        cfg = self.cfg
        self.check_data()
        if self._resume:
            run = RunDir(cfg.out)
            state = run.load_checkpoint("search", cfg.to_json())
            self.load_state_dict(state)
            if not is_main():  # under torchrun only rank 0 writes
                self.run = NullRun()
                return self.run
            self.run = run
            self.run.truncate_metrics(state["epoch"])
            self.history = self.run.metrics("epoch")
            self.run.update_config(cfg.to_json())
        elif not is_main():
            self.run = NullRun()
        else:
            self.run = RunDir.create(cfg.out, overwrite=self._overwrite)
            (self.run.path / "genotypes").mkdir(exist_ok=True)
            self.run.write_json(
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
            self.run.append("alphas.jsonl", alpha_record(self.model, -1))  # the starting point of the evolution plots
        return self.run

    def train_epoch(self, epoch: int, progress) -> dict[str, float]:
        """One epoch of search steps. Nothing is read back from the device between log points (every
        `log_every` steps and the epoch's end): the figures accumulate in a `Tally`, a non-finite step is
        skipped on the device, and --on-nan stop ends the run at the next log point."""
        cfg, model = self.cfg, self.model
        lr = cosine_lr(epoch, cfg.epochs, cfg.lr, cfg.lr_min, cfg.lr_warmup_epochs)
        for group in self.w_optimizer.param_groups:
            group["lr"] = lr
        arch_on = epoch >= cfg.arch_start_epoch and cfg.arch_search == "gradient"
        paths = epoch_paths(model, self.path_rng, len(self.train_loader)) if cfg.arch_search == "random" else None
        self.architect.set_lr(clr_arch_lr(cfg.arch_lr, epoch, cfg.epochs, cfg.clr_power))
        model.train()
        tally = Tally(self.device, SearchStep.FIGURES)
        val_iter = iter(self.val_loader)
        images, t0, seen = 0, time.perf_counter(), {}
        for i, (x, y) in enumerate(self.train_loader):
            xv = yv = None
            if arch_on:
                try:
                    xv, yv = next(val_iter)
                except StopIteration:
                    val_iter = iter(self.val_loader)
                    xv, yv = next(val_iter)
            if paths is not None:  # random search: this step trains one uniformly drawn architecture
                model.path = paths[i]
            self.step(x, y, xv, yv, lr, tally, i)
            images += x.shape[0]
            log = bool(cfg.log_every) and (i + 1) % cfg.log_every == 0
            if log:
                seen = self._log_point(tally, epoch, i + 1, seen)
            progress.update(**({"loss": seen["mean_loss"], "acc": seen["mean_acc"]} if log else {}),
                            rate=images / (time.perf_counter() - t0))  # fmt: skip
        sums = self._log_point(tally, epoch, None, seen)
        steps = max(sums["steps"], 1)
        out = {"train_loss": sums["train_loss"] / steps, "train_acc": sums["train_correct"] / max(sums["images"], 1)}
        out["arch_loss"] = sums["arch_loss"] / sums["arch_steps"] if arch_on and sums["arch_steps"] else None
        overflows = sums["overflow"] + sums["arch_overflow"]
        out["skipped_steps"] = round(sums["bad"] + sums["arch_bad"] + overflows)
        if self.scaler.is_enabled():  # fp16: the scalers' share of the skipped steps, and their scales now
            out.update(
                amp_skipped_steps=round(overflows), loss_scale=self.scaler.get_scale(),
                arch_loss_scale=self.architect.scaler.get_scale(),
            )  # fmt: skip
        out.update(
            lr=lr, arch_lr=self.architect.lr if arch_on else 0.0, images_per_s=images / (time.perf_counter() - t0)
        )
        return out

    def _log_point(self, tally: Tally, epoch: int, step: int | None, last: dict[str, float]) -> dict[str, float]:
        """The one host read between log points, and --on-nan stop's check of the steps skipped as non-finite
        (weight or architecture steps: the message names the first)."""
        sums = read_log_point(tally, self.run, epoch, step, last)
        if sums["bad"] + sums["arch_bad"] > 0:
            w_first, a_first = sums.get("first_bad", math.inf), sums.get("arch_first_bad", math.inf)
            which = "weight" if w_first < a_first else "architecture"  # the architecture step runs first
            self._non_finite(epoch, round(min(w_first, a_first)) - 1, which)  # raises unless --on-nan skip
        return sums

    def _non_finite(self, epoch: int, step: int, which: str) -> int:
        """--on-nan stop (default): end the run keeping the last complete epoch; skip: count the step and go on."""
        return non_finite(self.cfg.on_nan, "search", which, epoch, step, self.cfg.out, "--lr/--arch-lr")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The supernet on the evaluation split (read once at the end; combined over torchrun ranks)."""
        r = evaluate_model(self.model, self.eval_loader, self.autocast)
        return {"valid_loss": r["loss"], "valid_acc": r["top1"]}

    def run_search(self, reporter=None) -> Genotype:
        from .progress import Reporter

        reporter = reporter or Reporter(quiet=self.cfg.quiet)
        run = self.run or self.open_run()
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            with reporter.epoch(epoch, cfg.epochs, len(self.train_loader)) as progress:
                stats = self.train_epoch(epoch, progress)
            if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                stats.update(self.evaluate())
            if cfg.hessian_every and ((epoch + 1) % cfg.hessian_every == 0 or epoch + 1 == cfg.epochs):
                t1 = time.perf_counter()
                stats.update(hessian_eig=self.hessian_eigenvalue(epoch), hessian_s=time.perf_counter() - t1)
            if cfg.arch_search == "random":  # the candidates on the architecture split (all of it at the end)
                last = epoch + 1 == cfg.epochs
                self._selected, scores = select(self.model, self.val_loader, self._candidates, self.autocast,
                                                None if last else 4)  # fmt: skip
                stats["candidate_acc"] = scores
            genotype = self.genotype()
            record = {
                "kind": "epoch",
                "epoch": epoch,
                **stats,
                "epoch_s": time.perf_counter() - t0,
                "parameter_free": genotype.parameter_free(),
                "alpha_entropy": alpha_entropy(self.model),
                "genotype": genotype.to_json(),
            }
            # records first, the (atomic) checkpoint last: a resume drops the records of epochs after its
            # checkpoint and recomputes them (runs.py), so a kill anywhere loses no complete epoch
            run.write_json(f"genotypes/epoch_{epoch:03d}.json", genotype.to_json())
            run.write_json("genotype.json", genotype.to_json())
            run.append("alphas.jsonl", alpha_record(self.model, epoch))
            run.log(record)
            run.save_checkpoint(self.state_dict(epoch))
            self.history.append(record)
            reporter.epoch_done(record, genotype)
        genotype = self.genotype()
        genotype.save(run.path / "genotype.json")
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
            "run_dir": str(run.path),
        }
        run.write_json("summary.json", summary)
        run.close()
        reporter.summary(summary, genotype)
        return genotype

    def hessian_eigenvalue(self, epoch: int) -> float:
        """The dominant alpha-Hessian eigenvalue on the first unaugmented validation batch (the same batch
        every time, so epochs compare)."""
        if getattr(self, "_hessian_batch", None) is None:
            self._hessian_batch = next(iter(self.eval_loader))
        x, y = self._hessian_batch
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return alpha_hessian_eigenvalue(self.model, x, y, self.cfg.hessian_iters, generator=gen)


def search(cfg: SearchConfig | None = None, *, resume: bool = False, overwrite: bool = False, **overrides) -> Genotype:
    """Run a search from Python: `bnas.search.search(method="pc", dataset="synthetic", epochs=2)`.

    `resume=True` continues the run in `out` (or `cfg.out`) under the resume policy (options.resume_config):
    options that would change its results are refused, the others are recorded."""
    if resume:
        given = cfg.to_json() if cfg is not None else dict(overrides)
        cfg = resume_config(given.get("out") or SearchConfig.out, **given)
    elif cfg is None:
        cfg = SearchConfig.resolve(overrides.pop("method", "clr"), **overrides)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return Searcher(cfg, resume=resume, overwrite=overwrite).run_search()


def resume_config(run_dir: str | Path, **overrides: Any) -> SearchConfig:
    """The configuration a run directory was started with, told `overrides` under the resume policy."""
    return options.resume_config(run_dir, SearchConfig, overrides)
