"""Data sets by name: where their files come from, their shape, and their transforms (SPEC §9)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from . import formats
from .formats import ArrayData
from .loaders import Augment

CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class DatasetSpec:
    """What the networks and the loaders need to know about a data set."""

    name: str
    num_classes: int
    in_channels: int
    size: int
    read: Callable[[Path, bool], ArrayData]
    train_augment: Augment
    eval_augment: Augment
    stem: str = "cifar"  # the network's stem: cifar (one 3x3 conv) or imagenet (two stride-2 convs)
    classes: tuple[str, ...] | None = None  # class names where the data set has them (folder)
    info: dict[str, Any] | None = None  # what a run records about its data (folder: tree, split, statistics)
    source: Any = None  # the opened data behind a per-run spec (folder: data.userfolder.UserFolder)


def _synthetic(_: Path, train: bool, size: int = 512, seed: int = 0) -> ArrayData:
    """Seeded CIFAR-shaped data that a network can learn a little: class templates plus noise."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 32, 32, generator=gen) * 255
    gen.manual_seed(seed + (1 if train else 2))
    labels = torch.randint(0, 10, (size,), generator=gen)
    noise = torch.randn(size, 3, 32, 32, generator=gen) * 60
    images = (templates[labels] + noise).clamp_(0, 255).to(torch.uint8)
    return ArrayData(images.contiguous(), labels, 10)


def training_images_needed(batch_size: object, val_split: object, world: int = 1, cap: int = 1 << 22) -> int | None:
    """The fewest training images that, less the held-out `val_split` (at least one image when it is
    positive), still hold one batch per rank; None for invalid inputs or beyond `cap`."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        return None
    if not isinstance(val_split, int | float) or not 0.0 <= val_split < 1.0:
        return None
    per_rank = batch_size * max(world, 1)
    n = max(per_rank, int(per_rank / (1.0 - val_split)) - 2)
    while n <= cap:
        n_val = round(n * val_split)
        if n - n_val >= per_rank and (val_split == 0 or 0 < n_val < n):
            return n
        n += 1
    return None


_cifar10 = Augment(crop_padding=4, flip=True, mean=CIFAR10_MEAN, std=CIFAR10_STD)
_cifar100 = Augment(crop_padding=4, flip=True, mean=CIFAR100_MEAN, std=CIFAR100_STD)
_plain_flip = Augment(flip=True)  # SPEC §9: flip + to-tensor, no normalisation
# SPEC §9 says smallNORB is normalised without giving values; (0.5, 0.5) is our choice.
_smallnorb = Augment(flip=True, mean=(0.5,), std=(0.5,))


def _resized(data: ArrayData, size: int, chunk: int = 2048) -> ArrayData:
    """Antialiased bilinear resize of uint8 images (smallNORB's 96x96 -> 32x32, as torchvision's Resize)."""
    out = torch.empty(data.images.shape[0], data.images.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, data.images.shape[0], chunk):
        x = data.images[i : i + chunk].float()
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return ArrayData(out, data.labels, data.num_classes)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, lambda d, t: formats.read_cifar(d, "cifar10", t), _cifar10,
        Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD),
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, 32, lambda d, t: formats.read_cifar(d, "cifar100", t), _cifar100,
        Augment(mean=CIFAR100_MEAN, std=CIFAR100_STD),
    ),
    "mnist": DatasetSpec(
        "mnist", 10, 1, 28, lambda d, t: formats.read_mnist_like(d, "mnist", t), _plain_flip, Augment()
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", 10, 1, 28, lambda d, t: formats.read_mnist_like(d, "fashion-mnist", t), _plain_flip,
        Augment(),
    ),
    "svhn": DatasetSpec(
        "svhn", 10, 3, 32, lambda d, t: formats.read_svhn(d, "train" if t else "test"), _plain_flip, Augment()
    ),
    "smallnorb": DatasetSpec(
        "smallnorb", 5, 1, 32, lambda d, t: _resized(formats.read_smallnorb(d, t), 32), _smallnorb,
        Augment(mean=(0.5,), std=(0.5,)),
    ),
    "synthetic": DatasetSpec("synthetic", 10, 3, 32, _synthetic, _cifar10, Augment(mean=CIFAR10_MEAN, std=CIFAR10_STD)),
}  # fmt: skip


def _folder_only(root: Path, train: bool) -> ArrayData:
    raise DataError("imagenet is read as image folders by the training loop, not as arrays")


# ImageNet-style trees (root/train/CLASS/*.JPEG, root/val/CLASS/*.JPEG); the class count comes from the tree
DATASETS["imagenet"] = DatasetSpec("imagenet", 1000, 3, 224, _folder_only, Augment(), Augment(), stem="imagenet")


def _opened_per_run(root: Path, train: bool) -> ArrayData:
    raise DataError("--dataset folder is opened per run (data.userfolder.open_user_folder), not by name")


# your own images, CLASS/*.png|jpg|... (data/userfolder.py): classes, channels, size and statistics come from the tree
DATASETS["folder"] = DatasetSpec("folder", 0, 3, 0, _opened_per_run, Augment(flip=True), Augment())


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise DataError(f"unknown data set {name!r}{hint}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


# torchvision classes that can fetch a data set into --data-dir in the official format (--download)
_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


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


def load_split(
    name: str,
    data_dir: str | Path,
    train: bool,
    subset: int | None = None,
    synthetic_size: int = 512,
    seed: int = 0,
    allow_download: bool = False,
    spec: DatasetSpec | None = None,
) -> ArrayData:
    """One split as uint8 arrays; `subset` keeps the first N images (a fixed, reproducible slice). `spec`: a
    per-run spec (--dataset folder) instead of the registry's entry."""
    spec = spec or get_dataset(name)
    if name == "synthetic":
        data = _synthetic(Path(data_dir), train, synthetic_size if train else max(synthetic_size // 4, 1), seed)
    else:
        try:
            data = spec.read(Path(data_dir), train)
        except DataError:
            if not allow_download:
                raise
            download(name, data_dir)
            data = spec.read(Path(data_dir), train)
    if subset is not None and subset < data.images.shape[0]:
        data = ArrayData(data.images[:subset].contiguous(), data.labels[:subset].contiguous(), data.num_classes)
    return data
