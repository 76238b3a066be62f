"""Device-resident loaders for small data sets: uint8 images on the device, augmentation as batched ops.

No DataLoader, no per-image Python in the hot loop (DESIGN "fast by construction"). Randomness comes from
a CPU `torch.Generator` owned by the loader, so a run is reproducible on any device and its position can
be checkpointed and restored exactly (`state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of SPEC §9, as switches."""

    crop_padding: int = 0  # random crop of the original size after zero padding
    flip: bool = False
    cutout: int = 0  # side of the zeroed square (0 = off)
    mean: tuple[float, ...] | None = None  # normalisation; None = just scale to [0, 1]
    std: tuple[float, ...] | None = None


def _normalise(x: torch.Tensor, aug: Augment, dtype: torch.dtype) -> torch.Tensor:
    x = x.to(dtype).div_(255.0)
    if aug.mean is not None and aug.std is not None:
        mean = torch.tensor(aug.mean, device=x.device, dtype=dtype).view(1, -1, 1, 1)
        std = torch.tensor(aug.std, device=x.device, dtype=dtype).view(1, -1, 1, 1)
        x = x.sub_(mean).div_(std)
    return x


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator, train: bool) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float (N,C,H,W): crop, flip, normalise and cutout for the whole batch at once."""
    n, c, h, w = x.shape
    if train and aug.crop_padding > 0:
        p = aug.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if train and aug.flip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    out = _normalise(x, aug, torch.float32)
    if train and aug.cutout > 0:
        half = aug.cutout // 2
        cy = torch.randint(0, h, (n,), generator=gen).to(x.device)
        cx = torch.randint(0, w, (n,), generator=gen).to(x.device)
        ys = torch.arange(h, device=x.device)[None, :]
        xs = torch.arange(w, device=x.device)[None, :]
        in_y = ((ys >= (cy - half)[:, None]) & (ys < (cy + half)[:, None]))[:, :, None]
        in_x = ((xs >= (cx - half)[:, None]) & (xs < (cx + half)[:, None]))[:, None, :]
        out = out * (~(in_y & in_x))[:, None].to(out.dtype)
    return out


class TensorLoader:
    """Batches from tensors already on the device; one pass = one epoch, reshuffled each pass."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        augment: Augment,
        train: bool = True,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("TensorLoader expects uint8 images of shape (N, C, H, W)")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.augment, self.train, self.shuffle, self.drop_last = augment, train, shuffle, drop_last
        self.channels_last = channels_last
        self.rank, self.world = rank, world  # torchrun: every rank takes a disjoint shard of each pass
        self.gen = torch.Generator().manual_seed(seed)

    def _shard_size(self) -> int:
        n = self.images.shape[0]
        return n // self.world if self.world > 1 else n

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.images.shape[0]
        order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
        if self.world > 1:
            order = order[self.rank :: self.world][: self._shard_size()]
        order = order.to(self.images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = augment_batch(self.images[idx], self.augment, self.gen, self.train)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
