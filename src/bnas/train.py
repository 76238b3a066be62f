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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import fast, options
from .budget import reserve_s
from .data.loaders import Loader
from .data.registry import open_source
from .data.source import DataSource
from .dist import broadcast_buffers, rank_world
from .errors import ConfigError
from .genotype import Genotype, get_genotype
from .progress import print_results
from .runcore import Feed, LoopBuilder, RunLoop, budget_clock, device_parts, setup
from .runs import CHECKPOINT_FORMAT, RunDir, atomic_write_bytes, environment
from .runtime import STEP_FIGURES, Tally, correct, evaluate, synchronize, upcast, weight_step
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


# ----------------------------------------------------------------------------------------------- step


class TrainStep:
    """One training step, as the run core runs it and `bnas bench train` times it: the loss (label smoothing,
    the auxiliary head's share) of a batch, backward into the weights (DDP averages the shards during it), fp16
    unscaling, clipping, then the optimizer step, masked on the device where the loss or a gradient is not
    finite. Its figures go into a `Tally`: the step never waits for the device."""

    FIGURES = STEP_FIGURES
    FAULTS = (("bad", "first_bad", "training"),)  # (tally count, first faulty step, which): --on-nan's check

    def __init__(
        self, model: nn.Module, optimizer, scaler, autocast, grad_clip: float, label_smoothing: float = 0.0,
        auxiliary_weight: float = 0.0, net: nn.Module | None = None,
    ):  # fmt: skip
        self.model, self.optimizer, self.scaler, self.autocast = model, optimizer, scaler, autocast
        self.grad_clip, self.label_smoothing, self.auxiliary_weight = grad_clip, label_smoothing, auxiliary_weight
        self.net = net if net is not None else model  # what the forward runs: DDP's wrapper under torchrun
        self.params = list(model.parameters())
        # the forward returns the auxiliary head's logits where they enter the loss (DARTS networks with one)
        self.with_aux = auxiliary_weight > 0 and getattr(model, "has_auxiliary", False)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, tally: Tally, index: int = 0) -> None:
        """`index` numbers the step in its epoch (for --on-nan's message)."""
        model, net = self.model, self.net
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits, aux = net(x, with_aux=True) if self.with_aux else (net(x), None)
        loss = F.cross_entropy(upcast(logits), y, label_smoothing=self.label_smoothing)
        if aux is not None:
            aux_loss = F.cross_entropy(upcast(aux), y, label_smoothing=self.label_smoothing)
            loss = loss + self.auxiliary_weight * aux_loss
        w = weight_step(loss, self.optimizer, self.params, self.grad_clip, self.scaler, reduce=net is model)
        bad = ~w.ok & ~w.overflow
        tally.add(train_loss=torch.where(w.ok, loss.detach(), 0.0), train_correct=correct(logits, y) * w.ok,
                  steps=w.ok, images=w.ok * y.shape[0], bad=bad, overflow=w.overflow)  # fmt: skip
        tally.first("first_bad", bad, index + 1)


# -------------------------------------------------------------------------------------------- trainer


class Trainer(LoopBuilder):
    """Builds a training run's parts (data, network, step, state, end-of-epoch evaluation, results) for the run
    core (`runcore.RunLoop`), which runs them in a run directory, resumes them and keeps their time budget."""

    kind, lr_flags = "train", "--lr"

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False, load_data: bool = True):
        self.cfg = cfg
        self.device = setup(cfg.seed, cfg.device, cfg.deterministic, cfg.threads)
        # every device-dependent switch, resolved once (bnas.profile; BNAS_PROFILE=cuda forces the GPU's on a CPU)
        parts = device_parts(self.device, cfg.amp, cfg.channels_last, cfg.deterministic, fast=cfg.fast,
                             compile=cfg.compile, kind="train")  # fmt: skip
        self.profile = parts.profile
        self.spec = open_source(cfg, self.device)  # the data set's source; its images are read by _load_data
        saved_genotype = None
        if resume:  # the run's own genotype, even if the file it came from has changed since
            saved_genotype = RunDir(cfg.out).read_json("config.json").get("genotype_json")
        self.genotype = _genotype_of(cfg, saved_genotype)
        self.rank, self.world = rank_world()
        self.num_classes = self.spec.num_classes
        trained = fast.TRAINED if self.profile.cells == "fast" else None
        self.model = network_for(cfg, self.genotype, self.spec, self.num_classes, trained)
        self.parameters = count_parameters(self.model)
        self.size = self.spec.size
        self.macs = count_macs(self.model, self.spec.in_channels, self.size)
        # (torch 2.14's oneDNN corrupted the heap in the channels-last backward of 1x1 stride-2 convolutions with
        # <= 4 input channels; FactorizedReduce no longer runs any.)
        self.channels_last = parts.channels_last
        self.model = parts.place(self.model, cfg.compile)  # compiled: each cell, in place
        self.autocast, self.amp_mode = parts.autocast, parts.amp_mode
        self.scaler = parts.scaler()  # fp16 loss scaling (disabled otherwise)
        self.optimizer = parts.sgd(self.model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        # what this run resolved its device-dependent switches to (config.json "runtime"; the C kernel is the
        # search cells')
        record = {k: v for k, v in self.profile.record().items() if k != "native_kernel"}
        self.switches = record | {"ddp": self.world > 1}
        self.net: nn.Module = self.model  # what the training forward runs: DDP's wrapper under torchrun
        if self.world > 1:  # bucketed gradient all-reduce overlapping backward; BatchNorm statistics: end_epoch
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False, gradient_as_bucket_view=True,
                find_unused_parameters=bool(cfg.auxiliary and cfg.auxiliary_weight == 0),
            )  # fmt: skip
        self.step = TrainStep(self.model, self.optimizer, self.scaler, self.autocast, cfg.grad_clip,
                              cfg.label_smoothing, cfg.auxiliary_weight, self.net)  # fmt: skip
        self.best_val: dict[str, Any] | None = None
        self.loaders: dict[str, Loader] = {}
        if load_data:
            self._load_data()
        clock = None  # --budget: sizes the schedule by measured throughput (budget.py)
        if cfg.budget is not None and load_data:
            sync = functools.partial(synchronize, self.device)
            passes = 2 if cfg.eval_flip else 1
            reserve = functools.partial(
                reserve_s, self.model, self.loaders["test"], self.autocast, self.sizes["test"], sync, passes
            )
            clock = budget_clock(cfg.budget, len(self.loaders["train"]), cfg.lr_warmup_epochs, self.device, reserve)
        self.loop = RunLoop(self, cfg, self.device, self.optimizer, resume=resume, overwrite=overwrite, clock=clock)

    # --- data
    def _load_data(self) -> None:
        loaders, self.sizes, self.spec = self.spec.train_loaders(
            self.cfg, self.device, self.channels_last, self.rank, self.world
        )
        self.loaders.update(loaders)

    @property
    def train_loader(self) -> Loader:
        return self.loaders["train"]

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

    def state_dict(self) -> dict[str, Any]:
        """The training's parts in a checkpoint (the run core adds the epoch, config, generators and budget)."""
        return {
            "meta": self.meta(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),  # fp16: loss scale and growth tracker ({} otherwise)
            "train_loader": self.loaders["train"].state_dict(),
            "best_val": self.best_val,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.loaders["train"].load_state_dict(state["train_loader"])
        self.best_val = state.get("best_val")

    def check_data(self) -> None:
        pass  # the loaders fit any batch size (a last, smaller batch)

    def open_run(self) -> RunDir:
        """Create or resume the run directory (the run core's `open`)."""
        return self.loop.open()

    def start_run(self, run: RunDir) -> None:
        """A new run's config.json; results and best weights of an earlier run in the directory go."""
        cfg = self.cfg
        for name in ("results.json", "best.pt"):
            (run.path / name).unlink(missing_ok=True)
        run.write_json(
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

    # --- an epoch, as the run core runs it
    def train_epoch(self, epoch: int, progress) -> dict[str, Any]:
        """One epoch of training steps (the run core's `train_epoch`)."""
        return self.loop.train_epoch(epoch, progress)

    def begin_epoch(self, epoch: int) -> Feed:
        """Drop-path by epoch (SPEC §8: 0.3 x epoch / epochs), then each step is the `TrainStep` on its batch."""
        self.model.drop_prob = self.cfg.drop_path * epoch / self.cfg.epochs
        self.model.train()
        step = self.step
        return lambda i, x, y, lr, tally: step(x, y, tally, i)

    def mid_epoch_state(self) -> dict[str, Any]:
        return {}  # begin_epoch draws nothing: the run core's state (loader, tally, generators) is all

    def resume_mid_epoch(self, state: dict[str, Any]) -> None:
        pass

    def at_progress(self, progress: float) -> None:
        self.model.drop_prob = self.cfg.drop_path * progress  # a budget: drop-path ramps with the schedule

    def epoch_stats(self, sums: dict[str, float], lr: float, images_per_s: float) -> dict[str, Any]:
        """The epoch's figures from its tally's sums (a record's order of keys)."""
        out = {
            "train_loss": sums["mean_loss"],
            "train_acc": sums["mean_acc"],
            "lr": lr,
            "drop_prob": self.model.drop_prob,
            "skipped_steps": round(sums["bad"] + sums["overflow"]),
            "images_per_s": images_per_s,
        }
        if self.scaler.is_enabled():  # fp16: the scaler's share of the skipped steps, and its scale now
            out.update(amp_skipped_steps=round(sums["overflow"]), loss_scale=self.scaler.get_scale())
        return out

    def end_epoch(self, epoch: int, stats: dict[str, Any]) -> None:
        """Every rank takes rank 0's BatchNorm statistics (as DDP does); the held-out split selects best.pt."""
        broadcast_buffers(self.model)
        if "val" in self.loaders:
            val = self.evaluate("val")
            stats.update(valid_loss=val["loss"], valid_acc=val["top1"], valid_top5=val["top5"])
            if self.best_val is None or val["top1"] > self.best_val["top1"]:
                self.best_val = {"epoch": epoch + 1, **val}
                self._save_weights(self.run.path / "best.pt", epoch + 1)

    def epoch_records(self, run: RunDir, epoch: int, record: dict[str, Any]) -> None:
        return None  # a training's epoch is its metrics line

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Loss, top-1 and top-5 accuracy of the current weights on a split, in eval mode."""
        return evaluate(self.model, self.loaders[split], self.autocast, flip=self.cfg.eval_flip)

    def run_training(self, reporter=None) -> dict[str, Any]:
        """Run (or continue) the training to its end; the results (also in results.json)."""
        return self.loop.run_epochs(reporter)

    def finish(self, run: RunDir, reporter) -> dict[str, Any]:
        """The run's end: the final-epoch test results (with the budget's plan), results.json, summary.json."""
        clock = self.clock
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
