"""The loaders of a training run: train, test and an optional held-out validation split (SPEC §9).

Small data sets live on the device as uint8 (`TensorLoader`, batched augmentation); ImageNet-style trees
are decoded by workers (`FolderLoader`). Under torchrun every rank gets a disjoint shard of each pass.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from .folder import FolderLoader, gpu_decoding, imagenet_transform
from .loaders import TensorLoader
from .registry import DatasetSpec, load_split
from .userdata import stream_train_loaders
from .userfolder import channel_stats


def normalised(spec: DatasetSpec, mode: str, images: torch.Tensor | None = None) -> DatasetSpec:
    """The spec with --normalize applied to both augmentations: the data set's own (auto), the training
    images' per-channel statistics (data: exact sums over `images`), or none (off, pixels / 255)."""
    if mode == "auto":
        return spec
    if mode == "data":
        if images is None:  # a streamed folder: its statistics are already the training split's
            return spec
        mean, std = channel_stats(images)
    else:
        mean = std = None
    return dataclasses.replace(
        spec,
        train_augment=dataclasses.replace(spec.train_augment, mean=mean, std=std),
        eval_augment=dataclasses.replace(spec.eval_augment, mean=mean, std=std),
    )


def train_loaders(cfg, spec: DatasetSpec, device: torch.device, channels_last: bool, rank: int, world: int,
                  folders: dict | None = None) -> tuple[dict, dict[str, int], DatasetSpec]:  # fmt: skip
    """`cfg` (a TrainConfig) -> ({"train", "test"[, "val"]: loader}, their sizes in images, the spec with the
    run's normalisation: what eval and export must feed the network)."""
    if folders is not None:
        return (*_folder_loaders(cfg, device, channels_last, rank, world, folders), spec)
    if getattr(spec.source, "streaming", False):  # a folder too large for memory: decoding workers
        spec = normalised(spec, cfg.normalize)
        return (*stream_train_loaders(spec, cfg, device, channels_last, rank, world), spec)
    kw = dict(synthetic_size=cfg.synthetic_size, seed=cfg.seed, allow_download=cfg.download, spec=spec)
    train = load_split(cfg.dataset, cfg.data_dir, train=True, subset=cfg.subset, **kw)
    test = load_split(cfg.dataset, cfg.data_dir, train=False, subset=cfg.test_subset, **kw)
    images, labels = train.images, train.labels
    splits = {"test": (test.images, test.labels)}
    if cfg.val_split > 0:
        n_val = round(images.shape[0] * cfg.val_split)
        if not 0 < n_val < images.shape[0]:
            raise ConfigError(f"--val-split {cfg.val_split} of {images.shape[0]} training images leaves a split empty")
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
        splits["val"] = (images[perm[:n_val]], labels[perm[:n_val]])
        images, labels = images[perm[n_val:]], labels[perm[n_val:]]
    if images.shape[0] < cfg.batch_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the {images.shape[0]} training images; "
            "lower --batch-size or use more data"
        )
    sizes = {"train": images.shape[0], **{k: v[0].shape[0] for k, v in splits.items()}}
    spec = normalised(spec, cfg.normalize, images)
    aug = dataclasses.replace(spec.train_augment, cutout=cfg.cutout)
    if cfg.crop_padding is not None:  # the recipe's random crop instead of the data set's own
        aug = dataclasses.replace(aug, crop_padding=cfg.crop_padding)
    shard = dict(rank=rank, world=world)  # torchrun: every rank a disjoint shard of each pass
    loaders = {"train": TensorLoader(
        images.to(device), labels.to(device), cfg.batch_size, aug, drop_last=True, seed=cfg.seed,
        channels_last=channels_last, **shard,
    )}  # fmt: skip
    for name, (x, y) in splits.items():
        loaders[name] = TensorLoader(
            x.to(device), y.to(device), cfg.eval_batch_size, spec.eval_augment, train=False, shuffle=False,
            channels_last=channels_last, **shard,
        )  # fmt: skip
    return loaders, sizes, spec


def _folder_loaders(cfg, device, channels_last: bool, rank: int, world: int, folders: dict):
    """ImageNet: decoding workers, SPEC §9 transforms, a disjoint shard per torchrun rank."""
    (train, _), (val, _) = folders["train"], folders["val"]
    if cfg.subset is not None:
        train = train[: cfg.subset]
    if cfg.test_subset is not None:
        val = val[: cfg.test_subset]
    kw = dict(device=device, workers=cfg.workers, rank=rank, world=world, channels_last=channels_last,
              decode_device=gpu_decoding(cfg.decode, device))  # fmt: skip
    loaders = {
        "train": FolderLoader(train, imagenet_transform(cfg.image_size, train=True), cfg.batch_size,
                              seed=cfg.seed, **kw),
        "test": FolderLoader(val, imagenet_transform(cfg.image_size, train=False), cfg.eval_batch_size,
                             shuffle=False, drop_last=False, **kw),
    }  # fmt: skip
    if len(loaders["train"]) == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images")
    return loaders, {"train": len(train), "test": len(val)}
