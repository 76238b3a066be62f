"""`--dataset folder` for a run: the tree opened as a per-run DatasetSpec (classes, channels, size, statistics,
the two splits) and, for trees too large for memory, loaders that decode in workers.

A later command (bnas study) needs nothing of its own: a SearchConfig or TrainConfig with `dataset="folder"`
and `data_dir=...` goes through `open_user_folder`, which the search and the training both call.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .formats import ArrayData
from .loaders import Augment, augment_batch
from .registry import DatasetSpec
from .userfolder import (
    CIFAR_STEM_MAX,
    PREPROCESS,
    SPLIT_SEED,
    STATS_SAMPLE,
    Listing,
    _arrays,
    _reason,
    _scan,
    _some,
    auto_size,
    cache_dir_for,
    channel_stats,
    holdout,
    list_tree,
    load_image,
    resident_budget,
)


@dataclass
class UserFolder:
    """An opened tree: the readable images' listing positions, split, and (resident) their uint8 pixels."""

    listing: Listing
    size: int
    channels: int
    keep: list[int]  # listing indices of the readable images, in listing order
    train: torch.Tensor  # positions into `keep` (and rows of `images`), in a fixed shuffled order
    test: torch.Tensor
    images: torch.Tensor | None  # None: streamed from the files by decoding workers
    workers: int

    @property
    def streaming(self) -> bool:
        return self.images is None

    def labels(self) -> torch.Tensor:
        return torch.tensor([self.listing.labels[i] for i in self.keep], dtype=torch.int64)

    def samples(self, split: str) -> list[tuple[Path, int]]:
        pos = (self.train if split == "train" else self.test).tolist()
        return [(self.listing.root / self.listing.rels[self.keep[k]], self.listing.labels[self.keep[k]]) for k in pos]

    def read(self, _root: Path, train: bool) -> ArrayData:
        if self.images is None:
            raise DataError("this folder is streamed by decoding workers; it has no arrays")
        pos = self.train if train else self.test
        return ArrayData(self.images[pos].contiguous(), self.labels()[pos], len(self.listing.classes))


def _bad_sentence(root: Path, bad: dict[str, str]) -> str:
    named = [f"{rel} ({why})" for rel, why in sorted(bad.items())]
    return (
        f"{len(bad)} image{'s' if len(bad) > 1 else ''} in {root} cannot be read: {_some(named)}; remove or replace "
        f"{'them' if len(bad) > 1 else 'it'}, or pass --skip-bad to leave {'them' if len(bad) > 1 else 'it'} out "
        "(counted in the run)"
    )


def open_user_folder(cfg, device: torch.device, meta: dict[str, Any] | None = None) -> DatasetSpec:
    """The run's data set from cfg.data_dir (a SearchConfig or TrainConfig, duck-typed): decoded once into the
    cache, or read from it. `meta`: a trained run's own input (size, channels, classes, mean, std) instead of
    the tree's. The resolved size is written back to cfg.image_size, so the run's config.json records it."""
    root = Path(cfg.data_dir)
    listing = list_tree(root)
    cache = cache_dir_for(root, cfg.cache_dir)
    workers = int(cfg.workers)  # decoding threads (at least one) and, for a streamed tree, DataLoader workers
    scan = _scan(listing, cache, max(workers, 1))
    if meta is not None:
        if meta.get("classes") and list(meta["classes"]) != listing.classes:
            raise DataError(
                f"{root} holds other classes than the run was trained on ({_some(list(meta['classes']))}); "
                "give the run's own data with --data-dir"
            )
        size, channels = int(meta["size"]), int(meta["in_channels"])
    else:
        size = cfg.image_size or auto_size(scan["median_side"])
        channels = 1 if scan["gray"] > scan["rgb"] else 3
    bad = dict(scan["bad"])
    n_ok = len(listing.rels) - len(bad)
    resident = n_ok * channels * size * size <= resident_budget(device)
    images, decoded, cache_file = None, 0, None
    if resident:
        images, decode_bad, decoded, cache_file = _arrays(listing, set(bad), size, channels, cache, max(workers, 1))
        bad.update(decode_bad)
    if bad and not cfg.skip_bad:
        raise DataError(_bad_sentence(root, bad))
    keep = [i for i, rel in enumerate(listing.rels) if rel not in bad]
    left = {listing.labels[i] for i in keep if not listing.in_test[i]}
    lost = [c for i, c in enumerate(listing.classes) if i not in left]
    if lost:
        raise DataError(f"no readable training images are left in class {_some(lost)} of {root}; add some")
    if listing.has_test:
        in_test = [listing.in_test[i] for i in keep]
    elif cfg.test_split == 0:
        raise DataError(
            f"--test-split 0 leaves no test split: {root} has no test/ folder; give a share such as 0.2 or add "
            f"{root}/test/CLASS/"
        )
    else:
        in_test = holdout(listing, keep, cfg.test_split)
    gen = torch.Generator().manual_seed(SPLIT_SEED)  # a fixed mixed order: --subset and the search halves see all
    train_pos = torch.tensor([k for k, t in enumerate(in_test) if not t], dtype=torch.int64)
    test_pos = torch.tensor([k for k, t in enumerate(in_test) if t], dtype=torch.int64)
    train_pos = train_pos[torch.randperm(len(train_pos), generator=gen)]
    test_pos = test_pos[torch.randperm(len(test_pos), generator=gen)]
    source = UserFolder(listing, size, channels, keep, train_pos, test_pos, images, workers)
    if meta is not None:
        mean, std, stats_from = tuple(meta["mean"]), tuple(meta["std"]), "the trained run"
    elif images is not None:
        (mean, std), stats_from = channel_stats(images[train_pos]), "training split"
    else:
        sample = train_pos[torch.randperm(len(train_pos), generator=gen)[:STATS_SAMPLE]]
        x = torch.stack([_decoded(source, int(k)) for k in sample])
        (mean, std), stats_from = channel_stats(x), f"{len(sample)} training images"
    cfg.image_size = size
    test_rels = sorted(listing.rels[keep[k]] for k in test_pos.tolist())
    info = {
        "root": str(root.resolve()), "classes": listing.classes, "channels": channels, "size": size,
        "median_side": scan["median_side"], "stem": "cifar" if size <= CIFAR_STEM_MAX else "imagenet",
        "converted": scan["rgb"] if channels == 1 else scan["gray"],
        "images": {"train": len(train_pos), "test": len(test_pos)},
        "test_split": {"from": "test/"} if listing.has_test else {
            "share": cfg.test_split, "seed": SPLIT_SEED, "stratified": True,
            "files_sha256": hashlib.sha256("\n".join(test_rels).encode()).hexdigest(),
        },
        "skipped": {"count": len(bad), "files": dict(sorted(bad.items())[:100])},
        "mean": list(mean), "std": list(std), "statistics_from": stats_from, "preprocess": PREPROCESS,
        "loader": "device" if resident else "workers", "listing_sha256": listing.digest,
        "cache": str(cache_file) if cache_file else None, "decoded": decoded,
    }  # fmt: skip
    return DatasetSpec(
        "folder", len(listing.classes), channels, size, source.read, Augment(flip=True, mean=mean, std=std),
        Augment(mean=mean, std=std), stem=info["stem"], classes=tuple(listing.classes), info=info, source=source,
    )  # fmt: skip


def describe(info: dict[str, Any]) -> str:
    """One line about an opened folder for the command line."""
    n = info["images"]
    where = "test/" if "from" in info["test_split"] else f"held out, {info['test_split']['share']:g} per class"
    parts = [
        f"folder {info['root']}: {len(info['classes'])} classes, {info['channels']}x{info['size']}x{info['size']} "
        f"(median side {info['median_side']:g}, {info['stem']} stem), {n['train']} train / {n['test']} test ({where})"
    ]
    if info["converted"]:
        parts.append(f"{info['converted']} images converted to {'gray' if info['channels'] == 1 else 'RGB'}")
    if info["skipped"]["count"]:
        parts.append(f"{info['skipped']['count']} unreadable images skipped")
    if info["loader"] == "workers":
        parts.append("too large for memory: decoded by workers each epoch")
    elif info["decoded"]:
        parts.append(f"decoded {info['decoded']} images" + (f", cached in {info['cache']}" if info["cache"] else ""))
    else:
        parts.append(f"read from the cache {info['cache']}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------- streamed trees


def _decoded(source: UserFolder, k: int) -> torch.Tensor:
    i = source.keep[k]
    path = source.listing.root / source.listing.rels[i]
    try:
        return torch.from_numpy(load_image(path, source.size, source.channels).copy())
    except Exception as e:  # PIL raises many types on bad files
        raise DataError(f"cannot read image {path} ({_reason(e)}); remove it or pass --skip-bad") from None


class _Files(Dataset):
    def __init__(self, samples: list[tuple[Path, int]], size: int, channels: int):
        self.samples, self.size, self.channels = samples, size, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            return torch.from_numpy(load_image(path, self.size, self.channels).copy()), label
        except Exception as e:
            raise DataError(f"cannot read image {path} ({_reason(e)}); remove it or pass --skip-bad") from None


class StreamLoader:
    """Like TensorLoader, for files: workers decode (load_image), the device augments the uint8 batch
    (augment_batch); `state_dict` holds the pass counter and the augmentation generator."""

    def __init__(self, samples, size: int, channels: int, batch_size: int, augment: Augment, device: torch.device,
                 train: bool = True, shuffle: bool = True, drop_last: bool = False, seed: int = 0, workers: int = 2,
                 channels_last: bool = False, rank: int = 0, world: int = 1):  # fmt: skip
        from .folder import _EpochSampler

        self.sampler = _EpochSampler(len(samples), seed, shuffle, rank, world, batch_size, drop_last)
        self.augment, self.train, self.device, self.channels_last = augment, train, device, channels_last
        self.gen = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(
            _Files(samples, size, channels), batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            drop_last=drop_last, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self.loader:
                x = augment_batch(x.to(self.device, non_blocking=True), self.augment, self.gen, self.train)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y.to(self.device, non_blocking=True)
        finally:
            self.sampler.passes += 1

    def state_dict(self) -> dict:
        return {"passes": self.sampler.passes, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.passes = int(state["passes"])
        self.gen.set_state(state["gen"])


def stream_train_loaders(spec: DatasetSpec, cfg, device, channels_last: bool, rank: int, world: int):
    """(loaders, sizes) of a training run on a streamed tree: train (less --val-split), val, test."""
    src: UserFolder = spec.source
    train, test = src.samples("train"), src.samples("test")
    if cfg.subset is not None:
        train = train[: cfg.subset]
    if cfg.test_subset is not None:
        test = test[: cfg.test_subset]
    splits = {"test": test}
    if cfg.val_split > 0:
        n_val = round(len(train) * cfg.val_split)
        if not 0 < n_val < len(train):
            raise DataError(f"--val-split {cfg.val_split} of {len(train)} training images leaves a split empty")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        splits["val"] = [train[i] for i in perm[:n_val]]
        train = [train[i] for i in perm[n_val:]]
    if len(train) < cfg.batch_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images; "
            "lower --batch-size or use more data"
        )
    kw = dict(device=device, workers=src.workers, channels_last=channels_last, rank=rank, world=world)
    aug = dataclasses.replace(spec.train_augment, cutout=cfg.cutout)
    if cfg.crop_padding is not None:  # the recipe's random crop instead of the data set's own
        aug = dataclasses.replace(aug, crop_padding=cfg.crop_padding)
    loaders = {"train": StreamLoader(train, src.size, src.channels, cfg.batch_size, aug, drop_last=True,
                                     seed=cfg.seed, **kw)}  # fmt: skip
    for name, samples in splits.items():
        loaders[name] = StreamLoader(samples, src.size, src.channels, cfg.eval_batch_size, spec.eval_augment,
                                     train=False, shuffle=False, **kw)  # fmt: skip
    return loaders, {"train": len(train), **{k: len(v) for k, v in splits.items()}}


def stream_search_loaders(spec: DatasetSpec, cfg, device, channels_last: bool, rank: int, world: int):
    """The three search streams (weights, architecture, evaluation) of a streamed tree, and their sizes."""
    src: UserFolder = spec.source
    train = src.samples("train")[: cfg.subset] if cfg.subset is not None else src.samples("train")
    split = int(len(train) * cfg.train_portion)
    kw = dict(device=device, workers=src.workers, channels_last=channels_last, rank=rank, world=world)
    a, b = train[:split], train[split:]
    return (
        StreamLoader(a, src.size, src.channels, cfg.batch_size, spec.train_augment, drop_last=True, seed=cfg.seed,
                     **kw),
        StreamLoader(b, src.size, src.channels, cfg.batch_size, spec.train_augment, drop_last=True,
                     seed=cfg.seed + 1, **kw),
        StreamLoader(b, src.size, src.channels, cfg.batch_size, spec.eval_augment, train=False, shuffle=False, **kw),
        (split // world, (len(train) - split) // world),
    )  # fmt: skip
