"""One data set opened for a run: `DataSource`. Every data set name opens from its registry entry into one
(registry.open_source): what the network needs (classes, channels, size, stem), the statistics its input is
normalised with, what the run records (`info`, config.json "data": the files actually read), and its two splits,
read on first use (a dry run reads none). The loaders of a search, a training run and an evaluation are built
here, once, from any source: its splits are device-resident arrays (`ArraySplit`) or files that workers decode
(`FileSplit`, `ImageNetSplit`), and every split makes a loader with one signature (`loaders.Loader`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .loaders import Augment, Loader, TensorLoader
from .splits import search_split, val_split
from .streamed import FolderLoader, StreamLoader, gpu_decoding, imagenet_transform

Index = slice | torch.Tensor | Sequence[int]
DEFAULT_DIR = "data"  # where a data set is looked for when no --data-dir is given (then the system's copies)


@dataclass
class ArraySplit:
    """A split held as uint8 (N, C, H, W) images and int64 labels: it lives on the device (TensorLoader)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, index: Index) -> ArraySplit:
        if isinstance(index, slice):
            return ArraySplit(self.images[index], self.labels[index])
        index = torch.as_tensor(index, dtype=torch.int64)
        return ArraySplit(self.images[index.to(self.images.device)], self.labels[index.to(self.labels.device)])

    def to(self, device: torch.device) -> ArraySplit:
        return ArraySplit(self.images.to(device), self.labels.to(device))

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return channel_stats(self.images)

    def loader(self, batch_size: int, augment: Augment, *, train: bool, shuffle: bool, drop_last: bool, seed: int,
               device: torch.device, channels_last: bool, rank: int, world: int) -> Loader:  # fmt: skip
        split = self.to(device)
        return TensorLoader(
            split.images, split.labels, batch_size, augment, train=train, shuffle=shuffle, drop_last=drop_last,
            seed=seed, channels_last=channels_last, rank=rank, world=world,
        )  # fmt: skip


@dataclass
class FileSplit:
    """A split as (path, label) files that workers decode each epoch (`decode`: a path -> uint8 (C, S, S)), then
    augmented on the device like an ArraySplit (your own images, too large for memory)."""

    samples: list[tuple[Path, int]]
    decode: Callable[[Path], torch.Tensor] | None = None
    workers: int = 4

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, index: Index) -> FileSplit:
        picked = self.samples[index] if isinstance(index, slice) else [self.samples[int(i)] for i in index]
        return dataclasses.replace(self, samples=picked)

    def to(self, device: torch.device) -> FileSplit:
        return self

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return None  # a streamed source's statistics are its own already (drawn from its training split)

    def loader(self, batch_size: int, augment: Augment, *, train: bool, shuffle: bool, drop_last: bool, seed: int,
               device: torch.device, channels_last: bool, rank: int, world: int) -> Loader:  # fmt: skip
        return StreamLoader(self.samples, self.decode, batch_size, augment, device, train=train, shuffle=shuffle,
                            drop_last=drop_last, seed=seed, workers=self.workers, channels_last=channels_last,
                            rank=rank, world=world)  # fmt: skip


@dataclass
class ImageNetSplit(FileSplit):
    """ImageNet's files (and its search subset's): decoded by PIL in the workers or by nvJPEG on the GPU (`decode`
    pil|gpu), SPEC §9's random-resized crop, flip and (augment.jitter) colour jitter, or resize and centre crop."""

    size: int = 224
    decoder: str = "pil"

    def loader(self, batch_size: int, augment: Augment, *, train: bool, shuffle: bool, drop_last: bool, seed: int,
               device: torch.device, channels_last: bool, rank: int, world: int) -> Loader:  # fmt: skip
        return FolderLoader(
            self.samples, imagenet_transform(self.size, train=train, jitter=augment.jitter), batch_size, device,
            shuffle=shuffle, drop_last=drop_last, seed=seed, workers=self.workers, rank=rank, world=world,
            channels_last=channels_last, decode_device=gpu_decoding(self.decoder, device),
        )  # fmt: skip


Split = ArraySplit | FileSplit


@dataclass
class SearchData:
    """A search's three streams (weights, architecture, evaluation; None in a dry run) and what the supernet needs."""

    train: Any
    val: Any
    eval: Any
    num_classes: int
    in_channels: int
    stem: str
    split_sizes: tuple[int, int]
    info: dict[str, Any] | None = None  # config.json "data": the source's record of what it read
    size: int = 0  # the network's input resolution (a budget's cost model of the trained network reads it)


@dataclass
class DataSource:
    """A data set opened for a run. `reader("train" | "test")` reads a split (once; `read` caches it and
    records its files in `info`); None where there is nothing to read (a source rebuilt from a checkpoint)."""

    name: str
    num_classes: int
    in_channels: int
    size: int
    train_augment: Augment
    eval_augment: Augment
    stem: str = "cifar"  # the network's stem: cifar (one 3x3 conv) or imagenet (two stride-2 convs)
    classes: tuple[str, ...] | None = None  # class names where the data set has them (folder, imagenet)
    info: dict[str, Any] = field(default_factory=dict)  # what a run records about its data (config.json "data")
    reader: Callable[[str], Split] | None = None
    search_on_test: bool = False  # imagenet-subset: its own val split is the search's architecture split
    source: Any = None  # what the opening kept (folder: userfolder.UserFolder)
    _splits: dict[str, Split] = field(default_factory=dict, repr=False)

    def read(self, split: str) -> Split:
        """The "train" or "test" split, read on first use."""
        if split not in self._splits:
            if self.reader is None:
                raise ConfigError(f"{self.name} was not opened for reading here")
            self._splits[split] = self.reader(split)
        return self._splits[split]

    def with_statistics(self, mode: str, train: Split | None = None) -> DataSource:
        """The source with --normalize applied to both augmentations: the data set's own (auto), the training
        images' per-channel statistics (data: exact sums over `train`; a streamed source's are already its
        training split's), or none (off, pixels / 255)."""
        if mode == "auto":
            return self
        if mode == "data":
            stats = train.stats() if train is not None else None
            if stats is None:
                return self
            mean, std = stats
        else:
            mean = std = None
        return dataclasses.replace(
            self,
            train_augment=dataclasses.replace(self.train_augment, mean=mean, std=std),
            eval_augment=dataclasses.replace(self.eval_augment, mean=mean, std=std),
        )

    # ------------------------------------------------------------------------------------- the run's splits

    def training_split(self, cfg) -> tuple[Split, Split | None]:
        """(the images a training run trains on, the --val-split it holds out or None): the first --subset
        training images, then `splits.val_split`. `bnas eval --split val|train` reads the same."""
        train = self.read("train")
        if cfg.subset is not None:
            train = train.select(slice(0, cfg.subset))
        if cfg.val_split <= 0:
            return train, None
        held, kept = val_split(len(train), cfg.val_split, cfg.seed)
        return train.select(kept), train.select(held)

    def test_split(self, subset: int | None) -> Split:
        test = self.read("test")
        return test.select(slice(0, subset)) if subset is not None else test

    # ------------------------------------------------------------------------------------- loaders

    def train_loaders(self, cfg, device: torch.device, channels_last: bool, rank: int, world: int):
        """`cfg` (a TrainConfig, duck-typed) -> ({"train", "test"[, "val"]: loader}, their sizes in images, the
        source with the run's normalisation: what eval and export must feed the network). Under torchrun every
        rank takes a disjoint shard of each pass."""
        train, val = self.training_split(cfg)
        test = self.test_split(cfg.test_subset)
        if len(train) < cfg.batch_size:
            raise ConfigError(
                f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images; "
                "lower --batch-size or use more data"
            )
        source = self.with_statistics(cfg.normalize, train)
        aug = dataclasses.replace(source.train_augment, cutout=cfg.cutout)
        if cfg.crop_padding is not None:  # the recipe's random crop instead of the data set's own
            aug = dataclasses.replace(aug, crop_padding=cfg.crop_padding)
        kw = dict(device=device, channels_last=channels_last, rank=rank, world=world)
        loaders = {"train": train.loader(cfg.batch_size, aug, train=True, shuffle=True, drop_last=True,
                                         seed=cfg.seed, **kw)}  # fmt: skip
        parts = {"test": test, **({"val": val} if val is not None else {})}
        for name, part in parts.items():
            loaders[name] = part.loader(cfg.eval_batch_size, source.eval_augment, train=False, shuffle=False,
                                        drop_last=False, seed=0, **kw)  # fmt: skip
        sizes = {"train": len(train), **{k: len(v) for k, v in parts.items()}}
        return loaders, sizes, dataclasses.replace(source, _splits={})  # the loaders hold the images now

    def search_loaders(self, cfg, device: torch.device, channels_last: bool, rank: int, world: int) -> SearchData:
        """The three streams of a search (a SearchConfig, duck-typed): weights and architecture halves of the
        training split (`splits.search_split`; imagenet-subset: its own train and val), and the evaluation of the
        architecture half. A search never sees the test split."""
        train = self.read("train").to(device)
        if self.search_on_test:
            arch = self.read("test").to(device)
            if cfg.subset is not None:
                train, arch = train.select(slice(0, cfg.subset)), arch.select(slice(0, max(cfg.subset // 4, 1)))
        else:
            if cfg.subset is not None:
                train = train.select(slice(0, cfg.subset))
            first, second = search_split(len(train), cfg.train_portion)
            train, arch = train.select(first), train.select(second)
        kw = dict(device=device, channels_last=channels_last, rank=rank, world=world)
        aug = self.train_augment
        return SearchData(
            train.loader(cfg.batch_size, aug, train=True, shuffle=True, drop_last=True, seed=cfg.seed, **kw),
            arch.loader(cfg.batch_size, aug, train=True, shuffle=True, drop_last=True, seed=cfg.seed + 1, **kw),
            arch.loader(cfg.batch_size, self.eval_augment, train=False, shuffle=False, drop_last=False, seed=0, **kw),
            self.num_classes, self.in_channels, self.stem, (len(train) // world, len(arch) // world), self.info,
            self.size,
        )  # fmt: skip

    def eval_loader(self, cfg, split: str, device: torch.device, batch_size: int, subset: int | None,
                    meta: dict[str, Any]) -> Loader:  # fmt: skip
        """A trained run's `split` (test, or the val/train parts its training cut: `training_split`), fed as the
        run fed it (its stored mean and std)."""
        if split == "test":
            part = self.test_split(subset)
        elif split in ("train", "val"):
            train, val = self.training_split(cfg)
            if split == "val" and val is None:
                raise ConfigError("this run was trained without --val-split, so it has no validation split")
            part = val if split == "val" else train
            if subset is not None:
                part = part.select(slice(0, subset))
        else:
            raise ConfigError(f"--split must be test, val or train, got {split!r}")
        # the run's own normalisation (--normalize data|off may differ from the data set's), stored in its meta
        mean, std = meta.get("mean", self.eval_augment.mean), meta.get("std", self.eval_augment.std)
        aug = dataclasses.replace(self.eval_augment, mean=mean and tuple(mean), std=std and tuple(std))
        return part.loader(batch_size, aug, train=False, shuffle=False, drop_last=False, seed=0, device=device,
                           channels_last=False, rank=0, world=1)  # fmt: skip


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images in [0, 1] (exact integer sums)."""
    n, c, h, w = images.shape
    chunk = max(1, (1 << 24) // max(c * h * w, 1))
    s = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].to(torch.int64)
        s += x.sum((0, 2, 3)).double().cpu()
        sq += (x * x).sum((0, 2, 3)).double().cpu()
    count = max(n * h * w, 1)
    mean = s / count / 255.0
    std = (sq / count / 255.0**2 - mean**2).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())
