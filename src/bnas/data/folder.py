"""Loaders for image-folder data sets (ImageNet and its search subset): decoding workers, DDP shards.

Each pass draws its order from (seed, pass number), so a run is reproducible and resumable from the
pass counter alone, and every rank of a torchrun job takes a disjoint shard of the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_transform(size: int, train: bool, jitter: bool = True):
    """SPEC §9: random-resized crop + flip + colour jitter for training; resize 256/224 then centre crop."""
    from torchvision import transforms as T

    if train:
        ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        if jitter:
            ops.append(T.ColorJitter(0.4, 0.4, 0.4, 0.2))
    else:
        ops = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageList(Dataset):
    """(path, label) pairs decoded with PIL; an unreadable image is a clear error naming the file."""

    def __init__(self, samples: list[tuple[Path, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        from ..errors import DataError

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot decode image {path} ({e}); remove or replace the file") from None
        return self.transform(img), label


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, seed: int, shuffle: bool, rank: int, world: int, batch_size: int, drop_last: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world = rank, world
        self.batch_size, self.drop_last = batch_size, drop_last
        self.passes = 0

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.passes)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world if self.drop_last or self.shuffle else -(-self.n // self.world)
        shard = order[self.rank :: self.world][:per_rank]
        if self.drop_last:
            shard = shard[: len(shard) // self.batch_size * self.batch_size]
        return shard

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())


class FolderLoader:
    """A DataLoader over an image list that yields device batches; `state_dict` is the pass counter."""

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        transform,
        batch_size: int,
        device: torch.device,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        workers: int = 2,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
    ):
        self.sampler = _EpochSampler(len(samples), seed, shuffle, rank, world, batch_size, drop_last)
        self.batch_size, self.device, self.channels_last = batch_size, device, channels_last
        self.loader = DataLoader(
            ImageList(samples, transform),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self.loader:
                x = x.to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y.to(self.device, non_blocking=True)
        finally:
            self.sampler.passes += 1

    def state_dict(self) -> dict:
        return {"passes": self.sampler.passes}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.passes = int(state["passes"])
