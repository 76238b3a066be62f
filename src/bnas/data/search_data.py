"""The three data streams of a search: weights (train half), architecture (other half), evaluation.

Small data sets become device-resident TensorLoaders split by `train_portion` (SPEC §7); the ImageNet
subset (SPEC §10) is read from its two folders or lists with decoding workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .folder import FolderLoader, gpu_decoding, imagenet_transform
from .imagenet import read_subset
from .loaders import TensorLoader
from .registry import get_dataset, load_split
from .userdata import open_user_folder, stream_search_loaders


@dataclass
class SearchData:
    train: Any
    val: Any
    eval: Any
    num_classes: int
    in_channels: int
    stem: str
    split_sizes: tuple[int, int]
    info: dict[str, Any] | None = None  # --dataset folder: what the run records about the tree


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def search_images_needed(batch_size: object, train_portion: object, world: int = 1, cap: int = 1 << 22) -> int | None:
    """The fewest training images whose two search splits (as `search_data` cuts them) hold one batch per
    rank each; None when the inputs are not a batch size and a portion in (0, 1), or it would exceed `cap`."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        return None
    if not isinstance(train_portion, int | float) or not 0.0 < train_portion < 1.0:
        return None
    per_split = batch_size * max(world, 1)
    n = max(2 * per_split, int(per_split / min(train_portion, 1.0 - train_portion)) - 2)
    while n <= cap:
        split = int(n * train_portion)
        if min(split, n - split) >= per_split:
            return n
        n += 1
    return None


def search_data(cfg, device: torch.device, channels_last: bool) -> SearchData:
    """Build the streams for a SearchConfig (duck-typed to keep the data layer below the search layer)."""
    rank, world = dist_rank_world()
    if cfg.dataset == "imagenet-subset":
        train, classes = read_subset(cfg.data_dir, "train")
        val, val_classes = read_subset(cfg.data_dir, "val")
        if classes != val_classes:
            raise ConfigError(f"the subset in {cfg.data_dir} has different classes in train and val; draw it again")
        if cfg.subset is not None:
            train, val = train[: cfg.subset], val[: max(cfg.subset // 4, 1)]
        kw = dict(device=device, workers=cfg.workers, rank=rank, world=world, channels_last=channels_last,
                  decode_device=gpu_decoding(cfg.decode, device))  # fmt: skip
        t_train = imagenet_transform(cfg.image_size, train=True, jitter=False)
        return SearchData(
            FolderLoader(train, t_train, cfg.batch_size, seed=cfg.seed, **kw),
            FolderLoader(val, t_train, cfg.batch_size, seed=cfg.seed + 1, **kw),
            FolderLoader(val, imagenet_transform(cfg.image_size, train=False), cfg.batch_size, shuffle=False,
                         drop_last=False, **kw),
            len(classes), 3, "imagenet", (len(train), len(val)),
        )  # fmt: skip
    spec = open_user_folder(cfg, device) if cfg.dataset == "folder" else get_dataset(cfg.dataset)
    if getattr(spec.source, "streaming", False):  # a folder too large for memory: decoding workers
        *streams, sizes = stream_search_loaders(spec, cfg, device, channels_last, rank, world)
        return SearchData(*streams, spec.num_classes, spec.in_channels, spec.stem, sizes, spec.info)
    data = load_split(cfg.dataset, cfg.data_dir, True, cfg.subset, cfg.synthetic_size, allow_download=cfg.download,
                      spec=spec)  # fmt: skip
    n = data.images.shape[0]
    split = int(n * cfg.train_portion)
    imgs, labels = data.images.to(device), data.labels.to(device)
    aug = spec.train_augment
    kw = dict(channels_last=channels_last, rank=rank, world=world)
    return SearchData(
        TensorLoader(imgs[:split], labels[:split], cfg.batch_size, aug, drop_last=True, seed=cfg.seed, **kw),
        TensorLoader(imgs[split:], labels[split:], cfg.batch_size, aug, drop_last=True, seed=cfg.seed + 1, **kw),
        TensorLoader(imgs[split:], labels[split:], cfg.batch_size, spec.eval_augment, train=False, shuffle=False,
                     **kw),
        data.num_classes, data.images.shape[1], spec.stem, (split // world, (n - split) // world), spec.info,
    )  # fmt: skip
