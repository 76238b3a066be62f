"""What a training run is told (`TrainConfig`): every knob, its defaults (the published CIFAR recipe, SPEC §9),
the data set's recipe and the genotype's space resolved under the caller's options, and one check of them all.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .budget import parse_duration
from .data.registry import get_entry, names
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
from .genotype import ZOO, get_genotype
from .recipes import DARTS_SPACE, FAST


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the CIFAR recipe of the published code (SPEC §9)."""

    genotype: str = "BNASv2_CLR_v1"  # bundled name or genotype.json / run directory
    recipe: str = "paper"  # paper: SPEC §9's recipe per data set | fast: the CPU recipe (recipes.FAST)
    dataset: str = "cifar10"
    data_dir: str | None = None  # None: data, then the system's copies (data/registry.py); a named one only
    download: bool = False  # fetch a missing data set with torchvision (where the network allows)
    subset: int | None = None  # first N training images only (quick runs)
    test_subset: int | None = None  # first N test images only (quick runs; results.json says how many)
    val_split: float = 0.0  # share of the training set held out for model selection (0 = none)
    test_split: float = 0.2  # folder without test/: share of each class held out as the test split
    cache_dir: str | None = None  # folder: where the decoded images are cached (default: DIR/.bnas-cache)
    skip_bad: bool = False  # folder: leave unreadable images out (counted in the run) instead of stopping
    synthetic_size: int = 512
    image_size: int = 224  # input resolution of image-folder data sets (imagenet; folder: 0 = from the images)
    workers: int = 4  # decoding workers of image-folder data sets
    decode: str = "pil"  # image-folder data sets: pil (in the workers) | gpu (nvJPEG; PIL without a GPU)
    epochs: int = 600
    budget: str | None = None  # train for this long instead of --epochs ("90s", "20m", "1h"): budget.py
    batch_size: int = 128
    init_channels: int = 48
    layers: int = 6  # N convolution-block cells (bcnn) or cells (darts)
    blocks: int = 2  # L convolution blocks (bcnn)
    enhance_cells: int = 2  # E (bcnn)
    auxiliary: bool = False  # DARTS' auxiliary head (darts-space genotypes only)
    auxiliary_weight: float = 0.4
    cutout: int = 16
    crop_padding: int | None = None  # random crop after zero padding (None = the data set's own augmentation)
    eval_flip: bool = False  # test (and validation) logits averaged over the image and its mirror image
    normalize: str = "auto"  # auto: the data set's own (SPEC §9); data: the training split's mean/std; off: [0, 1]
    drop_path: float = 0.3  # drop-path probability at the last epoch (linear in the epoch)
    lr: float = 0.025
    lr_min: float = 0.0
    lr_warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads of torch (0 = its default); 1 is fastest on a busy machine
    amp: str = "auto"  # auto | off | bf16 | fp16
    channels_last: str = "auto"  # auto (= on) | on | off
    compile: str = "off"  # off, or a torch.compile backend for the network (inductor; eager to debug)
    # one ReLU per tensor for all the operations that start with one (fast.TRAINED): the same network with less
    # work; None = auto (on, except with --compile, whose graphs take the plain modules)
    fast: bool | None = None
    eval_batch_size: int = 256
    on_nan: str = "stop"  # stop: end the run keeping the last complete epoch | skip: skip the step and count it
    deterministic: bool = False  # GPU: deterministic kernels (slower); CPU runs are reproducible anyway
    log_every: int = 50
    out: str = "runs/train"
    quiet: bool = False

    @classmethod
    def resolve(cls, **overrides: Any) -> TrainConfig:
        """Defaults, then the data set's recipe and the genotype's space, then the caller's overrides."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "budget" in given and "epochs" in given:
            raise ConfigError("--budget and --epochs cannot be given together: a budget sizes the epochs itself")
        dataset = given.get("dataset", cls.dataset)
        check_choice("dataset", dataset, names("train"))
        recipe = given.get("recipe", cls.recipe)
        check_choice("recipe", recipe, ["paper", "fast"])
        entry = get_entry(dataset)
        values: dict[str, Any] = dict(entry.train_defaults)  # the data set's recipe (SPEC §9)
        if recipe == "fast":
            values.update(FAST)
        if _genotype_space(given.get("genotype", cls.genotype)) == "darts":
            values.update(DARTS_SPACE)
        values.update(given)
        entry.add_warmup(values)  # SPEC §9: warm-up when the batch exceeds 256
        cfg = cls(**values)
        entry.fit(cfg, given, "train")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every option once: its type, a finite value in its range, a known choice, a device and paths that
        exist. Raises ConfigError with one sentence naming the option."""
        check_types(self)
        for name, choices in (
            ("dataset", names("train")), ("amp", ["auto", "off", "bf16", "fp16"]),
            ("channels_last", ["auto", "on", "off"]), ("on_nan", ["stop", "skip"]), ("decode", ["pil", "gpu"]),
            ("normalize", ["auto", "data", "off"]),
        ):  # fmt: skip
            check_choice(name, getattr(self, name), choices)
        for name in ("epochs", "batch_size", "init_channels", "layers", "eval_batch_size", "synthetic_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("workers", "lr_warmup_epochs", "cutout", "threads", "log_every"):
            check_int(name, getattr(self, name), 0)
        check_int("crop_padding", self.crop_padding, 0, optional=True)
        check_int("blocks", self.blocks, 2)
        check_int("enhance_cells", self.enhance_cells, 1)
        for name in ("subset", "test_subset"):
            check_int(name, getattr(self, name), 1, optional=True)
        check_seed(self.seed)
        for name in ("lr", "lr_min", "weight_decay", "grad_clip", "auxiliary_weight"):
            check_float(name, getattr(self, name), 0.0)
        for name in ("momentum", "drop_path", "label_smoothing", "val_split"):
            check_float(name, getattr(self, name), 0.0, 1.0)
        if self.budget is not None:
            parse_duration(self.budget)
        check_device(self.device)
        check_compile(self.compile)
        if self.data_dir is not None:
            check_not_file("data_dir", self.data_dir, "the directory that holds the data set")
        check_not_file("out", self.out, "a directory for the run")
        get_entry(self.dataset).check_options(self, "train")  # what the data set reads (data/registry.py)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _genotype_space(name: object) -> str:
    """The space of --genotype (a bundled name, a genotype file or a search run directory), as one sentence
    when it is not a genotype (GenotypeError) or cannot be read."""
    if not isinstance(name, str):
        raise ConfigError(f"--genotype must be a bundled name or a genotype file, got {name!r}")
    if name not in ZOO and os.path.isdir(name) and not os.path.isfile(os.path.join(name, "genotype.json")):
        raise ConfigError(
            f"--genotype {name} is a directory without genotype.json; give a search run directory, a genotype "
            "file or a bundled name (bnas genotype list)"
        )
    try:
        return get_genotype(name).space
    except OSError as e:
        raise ConfigError(f"--genotype {name!r} cannot be read ({e.strerror}); give a genotype file") from None
