"""What a training run is told (`TrainConfig`): every knob, its defaults (the published CIFAR recipe, SPEC §9),
the data set's recipe and the genotype's space resolved under the caller's options, and one check of them all.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .data.registry import get_entry, names
from .errors import ConfigError, check_choice, check_float, check_int
from .genotype import ZOO, get_genotype
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
from .recipes import DARTS_SPACE, FAST


def _train_datasets() -> list[str]:
    return names("train")


@dataclass
class TrainData(DataOptions):
    """The data, the held-out splits, the augmentation and the input normalisation."""

    dataset: str = again(DataOptions, "dataset", "cifar10", choices=_train_datasets,
                         help="data set to train and test on (folder: your own images, --data-dir "
                         "DIR/CLASS/*.png|jpg|...)")  # fmt: skip
    test_subset: int | None = option(None, "evaluate on the first N test images only (quick runs; results.json "
                                     "records N)", default_text="default: every image")  # fmt: skip
    val_split: float = option(0.0, "share of the training set held out for model selection (0 = none; the test "
                              "split never selects)")  # fmt: skip
    cutout: int = option(16, "cutout square side in pixels (0 = off)")
    crop_padding: int | None = option(None, "random crop after zero padding by this many pixels",
                                      default_text="default: the data set's own augmentation")  # fmt: skip
    eval_flip: bool = option(False, "test logits averaged over each image and its mirror image (test-time "
                             "augmentation)")  # fmt: skip
    normalize: Literal["auto", "data", "off"] = option(
        "auto",
        "input normalisation: auto (the data set's own, SPEC §9), data (per-channel mean and std of the "
        "training split, stored in the run), off (pixels / 255)",
    )

    def check(self) -> None:
        DataOptions.check(self)
        check_int("test_subset", self.test_subset, 1, optional=True)
        check_float("val_split", self.val_split, 0.0, 1.0)
        check_int("cutout", self.cutout, 0)
        check_int("crop_padding", self.crop_padding, 0, optional=True)


@dataclass
class TrainNetwork(NetworkOptions):
    genotype: str = option("BNASv2_CLR_v1", "bundled genotype name (bnas genotype list) or a genotype.json / "
                           "search run directory")  # fmt: skip
    init_channels: int = again(NetworkOptions, "init_channels", 48)
    layers: int = again(NetworkOptions, "layers", 6, help="N, convolution-block cells (bcnn) or cells (darts)")
    enhance_cells: int = again(NetworkOptions, "enhance_cells", 2)
    auxiliary: bool = option(False, "DARTS' auxiliary head (darts-space genotypes)")
    auxiliary_weight: float = option(0.4, "weight of the auxiliary head's loss")

    def check(self) -> None:
        NetworkOptions.check(self)
        check_int("blocks", self.blocks, 2)
        check_float("auxiliary_weight", self.auxiliary_weight, 0.0)


@dataclass
class TrainOptim(OptimOptions):
    recipe: Literal["paper", "fast"] = option(
        "paper",
        "paper: the published recipe of the data set (SPEC §9); fast: the CPU recipe for short budgets "
        "(docs/recipes.md; bnas train --recipe fast --budget 10m)",
    )
    epochs: int = again(OptimOptions, "epochs", 600, help="training epochs")
    budget: str | None = option(
        None, "train for this long instead of --epochs: a bare number is seconds (90 = 90s), or 90s, 20m, 1h, "
        "1h30m; the schedule (epochs, learning rate, drop-path) is sized from the measured step time to end, final "
        "evaluation included, within it", default_text="default: none, --epochs decides"
    )  # fmt: skip
    batch_size: int = again(OptimOptions, "batch_size", 128, help="training batch size")
    lr: float = again(OptimOptions, "lr", 0.025, help="learning rate (SGD, cosine schedule)")
    grad_clip: float = again(OptimOptions, "grad_clip", 5.0, help="gradient norm clip (0 = off)")
    drop_path: float = option(0.3, "drop-path probability reached at the last epoch (linear in the epoch)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")

    def check(self) -> None:
        OptimOptions.check(self)
        check_float("grad_clip", self.grad_clip, 0.0)
        for name in ("drop_path", "label_smoothing"):
            check_float(name, getattr(self, name), 0.0, 1.0)
        check_budget(self.budget)


@dataclass
class TrainRuntime(RuntimeOptions):
    fast: bool | None = again(
        RuntimeOptions, "fast", None,
        help="one ReLU per tensor for every operation that starts with one (the same network, less work)",
        default_text="default: auto = on, off with --compile",
    )  # fmt: skip
    eval_batch_size: int = option(256, "batch size of evaluation", resume=True)

    def check(self) -> None:
        RuntimeOptions.check(self)
        check_int("eval_batch_size", self.eval_batch_size, 1)


@dataclass
class TrainOutput(OutputOptions):
    out: str = again(OutputOptions, "out", "runs/train")


@dataclass
class TrainConfig(TrainOutput, TrainRuntime, TrainOptim, TrainNetwork, TrainData, Options):
    """Every knob of a training run; the defaults are the CIFAR recipe of the published code (SPEC §9)."""

    KIND: ClassVar[str] = "train"

    # what --extend-epochs did to a finished run ({"epochs_before", "epochs"}), recorded in config.json
    extensions: list[dict[str, int]] = field(default_factory=list, metadata={"help": "resume records only"})

    @classmethod
    def resolve(cls, **overrides: Any) -> TrainConfig:
        """Defaults, then the data set's recipe and the genotype's space, then the caller's overrides."""
        given = cls.given(overrides)
        if "budget" in given and "epochs" in given:
            raise ConfigError("budget and epochs cannot be given together: a budget sizes the epochs itself",
                              options=("budget", "epochs"))  # fmt: skip
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
        self.check_choices()
        for group in (TrainData, TrainNetwork, TrainOptim, TrainRuntime, TrainOutput):
            group.check(self)
        self.check_source()

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not out["extensions"]:  # a run never extended records what it always did
            del out["extensions"]
        return out


def _genotype_space(name: object) -> str:
    """The space of --genotype (a bundled name, a genotype file or a search run directory), as one sentence
    when it is not a genotype (GenotypeError) or cannot be read."""
    if not isinstance(name, str):
        raise ConfigError(f"genotype must be a bundled name or a genotype file, got {name!r}", options=("genotype",))
    if name not in ZOO and os.path.isdir(name) and not os.path.isfile(os.path.join(name, "genotype.json")):
        raise ConfigError(
            f"genotype {name} is a directory without genotype.json; give a search run directory, a genotype "
            "file or a bundled name (bnas genotype list)",
            options=("genotype",),
        )
    try:
        return get_genotype(name).space
    except OSError as e:
        raise ConfigError(
            f"genotype {name!r} cannot be read ({e.strerror}); give a genotype file", options=("genotype",)
        ) from None
