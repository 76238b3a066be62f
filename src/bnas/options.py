"""Options written once: the groups of options that a search and a training share, as dataclasses that check
themselves, and the one resume policy of the command line, the Python API and `bnas study`.

A field's metadata holds its help text (`help`), a help text for a default that a value cannot say
(`default_text`), whether it may change when a run is resumed (`resume`: it does not change the run's
results) and, for data sets, the choices (`choices`, a function: the registry decides). Choices known in
advance are `Literal` types. `SearchConfig` (search_config.py) and `TrainConfig` (train_config.py) inherit
the groups, so every option stays a flat attribute (`cfg.batch_size`) and `to_json()` a flat dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from .budget import parse_duration
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

Amp = Literal["auto", "off", "bf16", "fp16"]
Switch = Literal["auto", "on", "off"]
OnNan = Literal["stop", "skip"]
Decode = Literal["pil", "gpu"]

CACHE_DEFAULT = "default: DIR/.bnas-cache, or ~/.cache/bnas/folders where DIR is not writable"


def option(default: Any, help: str, *, resume: bool = False, default_text: str | None = None, **meta: Any) -> Any:
    """A field with its help text; `resume=True`: it may change when a run is resumed (its results stay)."""
    metadata = {"help": help, "resume": resume, **meta}
    if default_text is not None:
        metadata["default_text"] = default_text
    return field(default=default, metadata=metadata)


def again(group: type, name: str, default: Any, **meta: Any) -> Any:
    """A group's field with another default (and, optionally, other metadata): a command's own default."""
    old = group.__dataclass_fields__[name]
    return field(default=default, metadata={**old.metadata, **meta})


@dataclass
class DataOptions:
    """What is read: the data set, where it is and how it is decoded."""

    TITLE: ClassVar[str] = "data"

    dataset: str = option("cifar10", "data set (folder: your own images, --data-dir DIR/CLASS/*.png|jpg|...)")
    data_dir: str | None = option(None, "directory holding the data set files (a named one is read or refused)",
                                  resume=True, default_text="default: data, then the system's copies (Debian's "
                                  "Fashion-MNIST)")  # fmt: skip
    download: bool = option(False, "download a missing data set with torchvision where the network allows it",
                            resume=True)  # fmt: skip
    subset: int | None = option(None, "use only the first N training images (quick runs)",
                                default_text="default: every image")  # fmt: skip
    synthetic_size: int = option(512, "number of training images of --dataset synthetic")
    image_size: int = option(
        224,
        "input resolution of image-folder data sets (imagenet, imagenet-subset; folder: 0 = the median image side "
        "rounded to 32, 64 or 96 for small images; the CIFAR stem up to 64 px, the ImageNet stem above)",
    )
    test_split: float = option(0.2, "folder without test/: share of each class held out as the test split, never "
                               "searched on or trained on (seeded, stratified; recorded in the run)")  # fmt: skip
    cache_dir: str | None = option(None, "folder: directory of the decoded-image cache", resume=True,
                                   default_text=CACHE_DEFAULT)  # fmt: skip
    skip_bad: bool = option(False, "folder: leave unreadable or truncated images out (counted in the run) instead "
                            "of stopping")  # fmt: skip
    workers: int = option(4, "image decoding workers of image-folder data sets", resume=True)
    decode: Decode = option("pil", "JPEG decoding of image-folder data sets: pil (in the workers) or gpu (nvJPEG; "
                            "falls back to pil without a GPU)", resume=True)  # fmt: skip

    def check(self) -> None:
        check_int("subset", self.subset, 1, optional=True)
        check_int("synthetic_size", self.synthetic_size, 1)
        check_int("workers", self.workers, 0)
        if self.data_dir is not None:
            check_not_file("data_dir", self.data_dir, "the directory that holds the data set")

    def check_source(self) -> None:
        """What the data set reads, in one sentence each: its registry entry decides (data/registry.py); after
        the other groups, whose values it reads (the batch, the splits)."""
        from .data.registry import get_entry

        get_entry(self.dataset).check_options(self, self.KIND)  # type: ignore[attr-defined]


@dataclass
class NetworkOptions:
    """The network's size (SPEC §5, §8)."""

    TITLE: ClassVar[str] = "network"

    init_channels: int = option(16, "C, initial channels")
    blocks: int = option(2, "L, convolution blocks (bcnn)")
    enhance_cells: int = option(1, "E, enhancement cells (bcnn)")
    layers: int = option(8, "cells of the DARTS stack (darts)")

    def check(self) -> None:
        for name in ("init_channels", "layers", "enhance_cells"):
            check_int(name, getattr(self, name), 1)


def check_budget(budget: str | float | None) -> None:
    """A run's --budget, if any, is a duration (one sentence naming the option otherwise)."""
    if budget is not None:
        try:
            parse_duration(budget, "budget")
        except ConfigError as e:  # budget.py names the flag it is given; here it is the option
            raise ConfigError(str(e), options=("budget",)) from None


@dataclass
class OptimOptions:
    """The weights' optimisation: epochs, batch, SGD with a cosine schedule."""

    TITLE: ClassVar[str] = "optimisation"

    epochs: int = option(50, "epochs")
    batch_size: int = option(256, "batch size")
    lr: float = option(0.1, "learning rate of the weights (SGD, cosine schedule)")
    lr_min: float = option(0.0, "final learning rate of the cosine schedule")
    lr_warmup_epochs: int = option(0, "linear warm-up epochs of the learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(3e-4, "weight decay of the network weights")
    grad_clip: float = option(5.0, "gradient norm clip of the weights")

    def check(self) -> None:
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("lr_warmup_epochs", self.lr_warmup_epochs, 0)
        for name in ("lr", "lr_min", "weight_decay"):
            check_float(name, getattr(self, name), 0.0)
        check_float("momentum", self.momentum, 0.0, 1.0)


@dataclass
class RuntimeOptions:
    """How a run runs: seed, device and its switches. Changing the seed or a switch of the numerics changes the
    run; the device, threads and what to do on a NaN do not change what it computes."""

    TITLE: ClassVar[str] = "runtime"

    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda or cuda:N", resume=True)
    threads: int = option(0, "CPU threads of torch (0 = its default; 1 is fastest on a machine shared with other "
                          "jobs)", resume=True)  # fmt: skip
    amp: Amp = option("auto", "mixed precision: auto (bf16 on GPU, off on CPU), off, bf16, fp16")
    channels_last: Switch = option("auto", "channels-last memory format: auto (= on), on, off")
    compile: str = option("off", "torch.compile each cell with this backend (inductor; eager to debug); off = plain "
                          "PyTorch")  # fmt: skip
    fast: bool | None = option(None, "the fast backend: the same network with less work", resume=True,
                               default_text="default: auto")  # fmt: skip
    deterministic: bool = option(False, "deterministic GPU kernels (slower); CPU runs with the same seed are "
                                 "bit-identical anyway", resume=True)  # fmt: skip
    on_nan: OnNan = option("stop", "on a NaN or infinite loss or gradient: stop (keep the last complete epoch) or "
                           "skip the step and count it", resume=True)  # fmt: skip

    def check(self) -> None:
        check_seed(self.seed)
        check_int("threads", self.threads, 0)
        check_device(self.device)
        check_compile(self.compile)


@dataclass
class OutputOptions:
    """Where the run is written and what it prints."""

    TITLE: ClassVar[str] = "output"

    out: str = option("runs/run", "run directory to write")
    log_every: int = option(50, "steps between step records in metrics.jsonl", resume=True)
    quiet: bool = option(False, "no progress bar or per-epoch lines, only the final summary (when stdout is not a "
                         "terminal the bar gives way to plain lines anyway)", resume=True)  # fmt: skip

    def check(self) -> None:
        check_int("log_every", self.log_every, 0)
        check_not_file("out", self.out, "a directory for the run")


class Options:
    """What SearchConfig and TrainConfig share beside their groups: overrides checked by name, the choices,
    JSON."""

    KIND: ClassVar[str] = ""  # "search" | "train": the run a config.json of this kind records as its command

    @classmethod
    def given(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """The overrides that say something (None: unset), every name an option of this kind."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} option(s) {', '.join(unknown)}", options=unknown)
        return {k: v for k, v in overrides.items() if v is not None}

    def check_choices(self) -> None:
        """Types (Literal choices included: errors.check_types), then the choices the data registry decides."""
        check_types(self)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if "choices" in f.metadata:
                check_choice(f.name, getattr(self, f.name), f.metadata["choices"]())

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def groups(cls: type) -> list[tuple[str, list[dataclasses.Field]]]:
    """The option groups of a config class in their order, each with its fields (for the command line's help)."""
    out: dict[str, list[dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        owner = next(c for c in cls.__mro__ if f.name in vars(c).get("__annotations__", {}))
        out.setdefault(getattr(owner, "TITLE", "other"), []).append(f)
    order = ["data", "network", "optimisation", "architecture", "runtime", "output"]
    return sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def choices_of(cls: type, name: str) -> list | None:
    """The choices of an option: its Literal type's values or its data-set list; None when it is free."""
    f = cls.__dataclass_fields__[name]
    if "choices" in f.metadata:
        return list(f.metadata["choices"]())
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return list(typing.get_args(hint)) if typing.get_origin(hint) is Literal else None


# ---- the resume policy: what a resumed run may be told

C = TypeVar("C", bound=Options)


def _same(a: Any, b: Any) -> bool:
    """The same option value (a JSON list is the tuple it was; True is not 1)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def resume_config(run_dir: str | Path, cls: type[C], overrides: dict[str, Any] | None = None,
                  extend_epochs: int = 0) -> C:  # fmt: skip
    """The configuration a run directory was started with, told `overrides` (None: unset).

    An override equal to the run's own value is accepted, so is one of an option that does not change the
    run's results (metadata `resume`: quiet, log_every, device, threads, on_nan, ...), recorded when the run
    continues; any other is refused in one sentence. `extend_epochs` N (trainings only, not with a budget)
    trains N more epochs than the run was started with and is recorded in config.json ("extensions")."""
    from .runs import RunDir

    saved = RunDir(run_dir).read_json("config.json")
    if not isinstance(saved, dict):
        raise ConfigError(f"{Path(run_dir) / 'config.json'} is malformed; the run cannot be resumed")
    kind = saved.get("command")
    if kind in ("search", "train") and kind != cls.KIND:
        raise ConfigError(f"{run_dir} is a {kind} run, not a {cls.KIND} run", options=("resume",))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: v for k, v in saved.items() if k in fields}
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) is tuple and isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    values["out"] = str(run_dir)
    cfg = cls(**values)
    given = cls.given(dict(overrides or {}))
    if "out" in given and Path(given.pop("out")) != Path(run_dir):
        raise ConfigError(f"a resumed run stays in its directory: give out={str(run_dir)!r} or leave it unset",
                          options=("out",))  # fmt: skip
    refused = []
    for name, value in given.items():
        if _same(value, getattr(cfg, name)):
            continue
        if fields[name].metadata.get("resume"):
            setattr(cfg, name, tuple(value) if isinstance(value, list) else value)
        else:
            refused.append(name)
    if refused:
        was = ", ".join(f"{n}={getattr(cfg, n)!r}" for n in refused)
        hint = "; extend a training with extend_epochs=N" if "epochs" in refused and cls.KIND == "train" else ""
        raise ConfigError(
            f"{', '.join(refused)} cannot change when a run is resumed: it would change the run's results ({run_dir} "
            f"was started with {was}); start a new run{hint}",
            options=(*refused, *(["extend_epochs"] if hint else [])),
        )
    if extend_epochs:
        check_int("extend_epochs", extend_epochs, 1)
        if cls.KIND != "train":
            raise ConfigError("extend_epochs applies to trainings; a search's schedule is set by its epochs",
                              options=("extend_epochs",))  # fmt: skip
        if getattr(cfg, "budget", None) is not None:
            raise ConfigError(f"{run_dir} trains to a budget, which sizes its epochs; extend_epochs cannot apply",
                              options=("extend_epochs",))  # fmt: skip
        cfg.extensions = [*cfg.extensions, {"epochs_before": cfg.epochs, "epochs": cfg.epochs + extend_epochs}]
        cfg.epochs += extend_epochs
    cfg.validate()
    return cfg
