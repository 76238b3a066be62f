"""Every data set name and what it is (SPEC §9): its shape, statistics and transforms, where its files come from,
its options' defaults and checks, and how it opens into a run's `source.DataSource` (`open_source`). Nothing
outside data/ asks a data set's name: it asks the name's `Entry`.

Where the files are: `--data-dir DIR` is read as given, and a data set that is not there is one sentence saying
so. Without --data-dir (None), `data` is read, then the system's copies (Debian's Fashion-MNIST).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, check_int, did_you_mean
from . import formats
from .formats import ArrayData, MissingData
from .loaders import Augment
from .source import DEFAULT_DIR, ArraySplit, DataSource, ImageNetSplit, SearchData
from .splits import search_images_needed, search_split, training_images_needed
from .streamed import IMAGENET_MEAN, IMAGENET_STD

CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
# torchvision classes that can fetch a data set into --data-dir in the official format (--download)
_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_TRANSFER = dict(cutout=0)  # SPEC §9: MNIST, Fashion-MNIST, SVHN, smallNORB: flip (+ resize), no cutout


@dataclass(frozen=True)
class Entry:
    """A data set read as whole arrays from its official files (formats.py), kept on the device."""

    name: str
    num_classes: int
    in_channels: int
    size: int
    read: Any  # (root, train, system copies allowed) -> ArrayData
    train_augment: Augment
    eval_augment: Augment
    stem: str = "cifar"  # the network's stem: cifar (one 3x3 conv) or imagenet (two stride-2 convs)
    train_defaults: dict[str, Any] = field(default_factory=dict)  # its training recipe over the CIFAR one (SPEC §9)
    search_defaults: dict[str, Any] = field(default_factory=dict)  # over the search method's preset (SPEC §7)
    trainable: bool = True  # bnas train accepts it (imagenet-subset is a search's data only)
    big_batch_warmup: bool = False  # SPEC §7/§9: 5 warm-up epochs when the batch exceeds 256

    @property
    def downloadable(self) -> bool:
        return self.name in _TORCHVISION or self.name == "svhn"

    # --- options
    def add_warmup(self, values: dict[str, Any]) -> None:
        """The learning-rate warm-up the data set's recipe asks for, unless the options say otherwise."""
        batch = values.get("batch_size")
        if self.big_batch_warmup and isinstance(batch, int) and "lr_warmup_epochs" not in values:
            values["lr_warmup_epochs"] = 5 if batch > 256 else 0

    def fit(self, cfg, given: dict[str, Any], task: str) -> None:
        """Options that follow from the others (synthetic: enough images for a batch); `task`: search | train."""

    def check_options(self, cfg, task: str) -> None:
        """The options this data set reads, in one sentence each (ConfigError)."""
        check_int("image_size", cfg.image_size, 32)

    def train_args(self, cfg) -> tuple[str, list[str], str]:
        """How `bnas train` reads what a search on this data set read: the training data set's name, its data
        options as command-line words, and a note on a placeholder (the command line's next-step hint)."""
        return self.name, ["--dataset", self.name, *(["--data-dir", str(cfg.data_dir)] if cfg.data_dir else [])], ""

    # --- files
    def missing_hint(self, data_dir: str | None) -> str:
        """What to do when the files are not there, for the directory as the user chose it."""
        where = data_dir or DEFAULT_DIR
        if self.downloadable:
            other = "give the --data-dir that holds its files" if data_dir else "--data-dir DIR where its files are"
            return f"pass --download to fetch it into {where}, or {other}"
        if data_dir:
            return f"download it from the data set's site into {where}"
        return f"download it from the data set's site into {where}, or pass --data-dir DIR where its files are"

    def read_split(self, cfg, train: bool) -> ArrayData:
        """One split from --data-dir as given (or, without one, `data` and then the system's copies)."""
        given = cfg.data_dir is not None
        root = Path(cfg.data_dir if given else DEFAULT_DIR)
        try:
            return self.read(root, train, not given)
        except MissingData as e:
            if not cfg.download:
                raise DataError(f"{e.base} ({self.missing_hint(cfg.data_dir)}).") from None
        except DataError:
            if not cfg.download:
                raise
        download(self.name, root)
        return self.read(root, train, False)

    def open(self, cfg, device: torch.device, meta: dict[str, Any] | None = None) -> DataSource:
        """The run's source; its splits are read on first use, and their files recorded in `info`."""
        info: dict[str, Any] = {"dataset": self.name, "files": {}, "images": {}}

        def reader(split: str) -> ArraySplit:
            data = self.read_split(cfg, split == "train")
            info["files"][split], info["images"][split] = list(data.files), data.images.shape[0]
            return ArraySplit(data.images, data.labels)

        return DataSource(self.name, self.num_classes, self.in_channels, self.size, self.train_augment,
                          self.eval_augment, stem=self.stem, info=info, reader=reader)  # fmt: skip


@dataclass(frozen=True)
class SyntheticEntry(Entry):
    """Seeded CIFAR-shaped images (class templates plus noise) that a network can learn a little: no files. The
    images are one data set whatever the run's --seed (seed 0), sized by --synthetic-size (a quarter for test)."""

    def fit(self, cfg, given: dict[str, Any], task: str) -> None:
        if "synthetic_size" in given:
            return
        # enough images for one batch per torchrun rank: in each search split, or after the held-out --val-split
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if task == "search":
            needed = search_images_needed(cfg.batch_size, cfg.train_portion, world)
        else:
            needed = training_images_needed(cfg.batch_size, cfg.val_split, world)
        cfg.synthetic_size = max(cfg.synthetic_size, needed or 0)

    def check_options(self, cfg, task: str) -> None:
        super().check_options(cfg, task)
        by_subset = cfg.subset is not None and cfg.subset < cfg.synthetic_size
        n, which = (cfg.subset, "--subset") if by_subset else (cfg.synthetic_size, "--synthetic-size")
        if task == "search":
            first, second = search_split(n, cfg.train_portion)
            a, b = first.stop - first.start, second.stop - second.start
            if min(a, b) < cfg.batch_size:
                needed = search_images_needed(cfg.batch_size, cfg.train_portion)
                fix = f"raise {which} to at least {needed} or " if needed else ""
                raise ConfigError(
                    f"{which} {n} gives search splits of {a} and {b} images, fewer than --batch-size "
                    f"{cfg.batch_size}; {fix}lower --batch-size"
                )
            return
        n_val = round(n * cfg.val_split)
        if cfg.val_split > 0 and not 0 < n_val < n:
            raise ConfigError(f"--val-split {cfg.val_split} of {n} training images leaves a split empty; raise {which}")
        if n - n_val < cfg.batch_size:
            needed = training_images_needed(cfg.batch_size, cfg.val_split)
            fix = f"raise {which} to at least {needed} or " if needed else ""
            raise ConfigError(
                f"{which} {n} leaves {n - n_val} training images, fewer than --batch-size {cfg.batch_size}; "
                f"{fix}lower --batch-size"
            )

    def train_args(self, cfg) -> tuple[str, list[str], str]:
        return self.name, ["--dataset", self.name], ""

    def read_split(self, cfg, train: bool) -> ArrayData:
        return _synthetic(train, cfg.synthetic_size if train else max(cfg.synthetic_size // 4, 1))


@dataclass(frozen=True)
class FolderEntry(Entry):
    """Your own images, DIR/CLASS/*.png|jpg|... (userfolder.py): classes, channels, size and statistics come from
    the tree, opened once per run."""

    def check_options(self, cfg, task: str) -> None:
        from .userfolder import check_folder_options

        check_folder_options(cfg)

    def train_args(self, cfg) -> tuple[str, list[str], str]:
        """The same images, size and hold-out split as the search."""
        name, argv, note = super().train_args(cfg)
        argv += ["--image-size", str(cfg.image_size), "--test-split", f"{cfg.test_split:g}"]
        argv += [*(["--cache-dir", str(cfg.cache_dir)] if cfg.cache_dir else []), *(["--skip-bad"] * cfg.skip_bad)]
        return name, argv, note

    def open(self, cfg, device: torch.device, meta: dict[str, Any] | None = None) -> DataSource:
        from .userfolder import open_user_folder

        return open_user_folder(cfg, device, meta)


@dataclass(frozen=True)
class ImageNetEntry(Entry):
    """ImageNet-style trees decoded by workers: DIR/train/CLASS/* and DIR/val/CLASS/* (imagenet), or the subset
    that bnas sample-imagenet draws (imagenet-subset, SPEC §10: its own train and val are the search's two
    halves). The tree decides the classes; without one (a dry run) ImageNet's 1000."""

    subset: bool = False

    def check_options(self, cfg, task: str) -> None:
        super().check_options(cfg, task)
        if task == "search" and not self.subset:
            raise ConfigError(
                "a search reads the ImageNet subset that bnas sample-imagenet draws: use --dataset imagenet-subset"
            )
        if getattr(cfg, "normalize", "auto") != "auto":
            raise ConfigError(
                f"--normalize applies to small data sets; {self.name} always uses the ImageNet mean and std (SPEC §9)"
            )

    def train_args(self, cfg) -> tuple[str, list[str], str]:
        if not self.subset:
            return super().train_args(cfg)
        # the cell found on the subset is trained on the whole of ImageNet
        note = "IMAGENET: the full ImageNet, train/CLASS/*.JPEG and val/CLASS/*.JPEG"
        return "imagenet", ["--dataset", "imagenet", "--data-dir", "IMAGENET"], note

    def missing_hint(self, data_dir: str | None) -> str:
        where = data_dir or DEFAULT_DIR
        return f"give the folder that holds train/ and val/ with --data-dir (now {where})"

    def _list(self, root: Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
        from .imagenet import read_subset

        if self.subset:
            return read_subset(root, split)
        try:
            return formats.read_image_folder(root / split)
        except MissingData as e:
            raise DataError(f"{e.base} ({self.missing_hint(str(root))}).") from None

    def open(self, cfg, device: torch.device, meta: dict[str, Any] | None = None) -> DataSource:
        root = Path(cfg.data_dir or DEFAULT_DIR)
        present = (root / "train").is_dir() or (root / "train.txt").is_file()
        listed: dict[str, tuple[list[tuple[Path, int]], list[str]]] = {}
        if present:  # the tree decides the classes; a dry run without one builds ImageNet's 1000
            listed = {split: self._list(root, split) for split in ("train", "val")}
            if listed["train"][1] != listed["val"][1]:
                if self.subset:
                    raise ConfigError(f"the subset in {root} has different classes in train and val; draw it again")
                raise ConfigError(f"{root}/train and {root}/val hold different classes")
        classes = tuple(listed["train"][1]) if listed else None
        info: dict[str, Any] = {"dataset": self.name, "root": str(root.resolve()), "files": {}, "images": {}}

        def reader(split: str) -> ImageNetSplit:
            own = "train" if split == "train" else "val"
            samples = listed[own][0] if listed else self._list(root, own)[0]
            listing = root / f"{own}.txt"
            info["files"][split] = [str((listing if listing.is_file() else root / own).resolve())]
            info["images"][split] = len(samples)
            return ImageNetSplit(samples, None, int(cfg.workers), size=cfg.image_size, decoder=cfg.decode)

        return DataSource(
            self.name, len(classes) if classes else self.num_classes, 3, cfg.image_size, self.train_augment,
            self.eval_augment, stem="imagenet", classes=classes, info=info, reader=reader, search_on_test=self.subset,
        )  # fmt: skip


def _synthetic(train: bool, size: int, seed: int = 0) -> ArrayData:
    """Seeded CIFAR-shaped data that a network can learn a little: class templates plus noise."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 32, 32, generator=gen) * 255
    gen.manual_seed(seed + (1 if train else 2))
    labels = torch.randint(0, 10, (size,), generator=gen)
    noise = torch.randn(size, 3, 32, 32, generator=gen) * 60
    images = (templates[labels] + noise).clamp_(0, 255).to(torch.uint8)
    return ArrayData(images.contiguous(), labels, 10)


def _resized(data: ArrayData, size: int, chunk: int = 2048) -> ArrayData:
    """Antialiased bilinear resize of uint8 images (smallNORB's 96x96 -> 32x32, as torchvision's Resize)."""
    out = torch.empty(data.images.shape[0], data.images.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, data.images.shape[0], chunk):
        x = data.images[i : i + chunk].float()
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return dataclasses.replace(data, images=out)


_cifar10 = Augment(crop_padding=4, flip=True, mean=CIFAR10_MEAN, std=CIFAR10_STD)
_cifar100 = Augment(crop_padding=4, flip=True, mean=CIFAR100_MEAN, std=CIFAR100_STD)
_plain_flip = Augment(flip=True)  # SPEC §9: flip + to-tensor, no normalisation
# SPEC §9 says smallNORB is normalised without giving values; (0.5, 0.5) is our choice.
_smallnorb = Augment(flip=True, mean=(0.5,), std=(0.5,))
_imagenet = Augment(mean=IMAGENET_MEAN, std=IMAGENET_STD)

DATASETS: dict[str, Entry] = {e.name: e for e in (
    Entry("cifar10", 10, 3, 32, lambda d, t, s: formats.read_cifar(d, "cifar10", t), _cifar10,
          Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD)),
    Entry("cifar100", 100, 3, 32, lambda d, t, s: formats.read_cifar(d, "cifar100", t), _cifar100,
          Augment(mean=CIFAR100_MEAN, std=CIFAR100_STD)),
    Entry("mnist", 10, 1, 28, lambda d, t, s: formats.read_mnist_like(d, "mnist", t), _plain_flip, Augment(),
          train_defaults=_TRANSFER),
    Entry("fashion-mnist", 10, 1, 28, lambda d, t, s: formats.read_mnist_like(d, "fashion-mnist", t, s),
          _plain_flip, Augment(), train_defaults=_TRANSFER),
    Entry("svhn", 10, 3, 32, lambda d, t, s: formats.read_svhn(d, "train" if t else "test"), _plain_flip, Augment(),
          train_defaults=_TRANSFER),
    Entry("smallnorb", 5, 1, 32, lambda d, t, s: _resized(formats.read_smallnorb(d, t), 32), _smallnorb,
          Augment(mean=(0.5,), std=(0.5,)), train_defaults=_TRANSFER),
    SyntheticEntry("synthetic", 10, 3, 32, None, _cifar10, Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD)),
    ImageNetEntry("imagenet", 1000, 3, 224, None, dataclasses.replace(_imagenet, flip=True, jitter=True), _imagenet,
                  stem="imagenet", big_batch_warmup=True, train_defaults=dict(
                      epochs=250, batch_size=256, lr=0.1, weight_decay=3e-5, label_smoothing=0.1, drop_path=0.0,
                      cutout=0, init_channels=44)),
    ImageNetEntry("imagenet-subset", 1000, 3, 224, None, dataclasses.replace(_imagenet, flip=True), _imagenet,
                  stem="imagenet", big_batch_warmup=True, trainable=False, subset=True, search_defaults=dict(
                      partial_k=2, edge_norm=True, batch_size=512, lr=0.2, lr_min=0.0, arch_lr=6e-3,
                      arch_start_epoch=35, arch_grad_clip=5.0, clr_power=0.0, enhance_cells=1)),
    FolderEntry("folder", 0, 3, 0, None, Augment(flip=True), Augment(), train_defaults=dict(_TRANSFER, image_size=0),
                search_defaults=dict(image_size=0)),
)}  # fmt: skip


def names(task: str) -> list[str]:
    """The data set names a command accepts (`task`: search | train)."""
    return [n for n, e in DATASETS.items() if task == "search" or e.trainable]


def get_entry(name: str) -> Entry:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}{did_you_mean(name, DATASETS)}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def find_entry(name: object) -> Entry | None:
    """The entry of a name, or None for anything else (the options' check names the choices)."""
    return DATASETS.get(name) if isinstance(name, str) else None


def open_source(cfg, device: torch.device, meta: dict[str, Any] | None = None) -> DataSource:
    """`cfg.dataset` opened for a run (a SearchConfig or TrainConfig, duck-typed; `meta`: a trained run's own
    input, for eval). Reads no images that the opening can do without: its splits are read on first use."""
    return get_entry(cfg.dataset).open(cfg, device, meta)


def trained_input(name: str, meta: dict[str, Any]) -> DataSource:
    """A checkpoint's input (classes, channels, size, stem, statistics) without its data: what eval, export and
    predict rebuild the network from."""
    e = get_entry(name)
    mean, std = meta.get("mean"), meta.get("std")
    aug = Augment(mean=mean and tuple(mean), std=std and tuple(std))
    return DataSource(
        name, meta["num_classes"], meta.get("in_channels", e.in_channels), meta.get("size", e.size), aug, aug,
        stem=meta.get("stem", e.stem), classes=tuple(meta["classes"]) if meta.get("classes") else None,
    )  # fmt: skip


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def search_data(cfg, device: torch.device, channels_last: bool, load: bool = True) -> SearchData:
    """A search's data (a SearchConfig, duck-typed): its three streams, or (`load=False`, a dry run) only what the
    supernet needs, read without the images."""
    source = open_source(cfg, device)
    if not load:
        return SearchData(None, None, None, source.num_classes, source.in_channels, source.stem, (0, 0), source.info,
                          source.size)  # fmt: skip
    rank, world = dist_rank_world()
    return source.search_loaders(cfg, device, channels_last, rank, world)


def download(name: str, data_dir: str | Path) -> None:
    """Fetch a data set with torchvision where the network allows it; one clear sentence where it does not."""
    import torchvision.datasets as tvd

    root = Path(data_dir)
    try:
        if name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(str(root), split=split, download=True)
        elif name in _TORCHVISION:
            for train in (True, False):
                getattr(tvd, _TORCHVISION[name])(str(root), train=train, download=True)
        else:
            raise DataError(f"{name} cannot be downloaded by bnas; place its files in {root}")
    except DataError:
        raise
    except Exception as e:  # network errors come in many types; the message names the cause
        raise DataError(f"could not download {name} into {root} ({type(e).__name__}: {e})") from None


@dataclass
class _Options:
    data_dir: str | None
    synthetic_size: int = 512
    download: bool = False


def load_split(name: str, data_dir: str | Path | None, train: bool, subset: int | None = None,
               synthetic_size: int = 512, seed: int = 0, allow_download: bool = False) -> ArrayData:  # fmt: skip
    """One split of a data set read by name, as uint8 arrays (scripts and tests); `subset` keeps the first N images.
    `seed`: the synthetic data set's (runs use 0)."""
    entry = get_entry(name)
    if entry.read is None and not isinstance(entry, SyntheticEntry):
        raise DataError(f"{name} is read as image files by a run (open_source), not as arrays")
    opts = _Options(None if data_dir is None else str(data_dir), synthetic_size, allow_download)
    if isinstance(entry, SyntheticEntry):
        data = _synthetic(train, synthetic_size if train else max(synthetic_size // 4, 1), seed)
    else:
        data = entry.read_split(opts, train)
    if subset is not None and subset < data.images.shape[0]:
        data = dataclasses.replace(data, images=data.images[:subset].contiguous(), labels=data.labels[:subset])
    return data
