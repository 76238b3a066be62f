"""The loader interface (`Loader`), and the device-resident loader of small data sets: uint8 images on the
device, augmentation as batched ops. (The streamed loaders, decoding files in workers, are in streamed.py.)

No DataLoader, no per-image Python in the hot loop (DESIGN "fast by construction"), and nothing copied from
the host per batch: the random numbers of shuffling and augmentation come from a `torch.Generator` on the
images' device owned by the loader, and the normalisation constants are made once. The generator is seeded
afresh at the start of every pass from the loader's seed and the pass's number, so a loader's state is those
two numbers: a checkpoint written on one device resumes on another (a generator's own state is
device-specific: a CPU's does not load into a GPU's). A CPU run and a GPU run of one seed draw different
numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of SPEC §9, as switches."""

    crop_padding: int = 0  # random crop of the original size after zero padding
    flip: bool = False
    cutout: int = 0  # side of the zeroed square (0 = off)
    mean: tuple[float, ...] | None = None  # normalisation; None = just scale to [0, 1]
    std: tuple[float, ...] | None = None
    jitter: bool = False  # colour jitter: ImageNet training's random-resized crop path only (streamed.ImageTransform)


class Loader(Protocol):
    """What every loader of a run is (TensorLoader here, FolderLoader and StreamLoader in streamed.py): one pass
    is one epoch of device batches, and `state_dict` is enough to resume the order where it stopped.

    A preempted run stops mid-pass: `pass_state` is where the latest pass stands (which pass, how many batches
    it has handed out, its augmentation generator), and `resume_pass` makes the next pass continue it there,
    with the batches the interrupted pass would have yielded next (no batch is decoded or augmented twice)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def pass_state(self) -> dict | None: ...

    def resume_pass(self, state: dict) -> None: ...


@functools.lru_cache(maxsize=32)
def _constants(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (1, C, 1, 1) tensor of per-channel constants, copied to the device once per process."""
    return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)


def _normalise(x: torch.Tensor, aug: Augment, dtype: torch.dtype) -> torch.Tensor:
    x = x.to(dtype).div_(255.0)
    if aug.mean is not None and aug.std is not None:
        x = x.sub_(_constants(aug.mean, x.device, dtype)).div_(_constants(aug.std, x.device, dtype))
    return x


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator, train: bool) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float (N,C,H,W): crop, flip, normalise and cutout for the whole batch at once."""
    n, c, h, w = x.shape
    if train and aug.crop_padding > 0:
        p = aug.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=gen.device).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=gen.device).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if train and aug.flip:
        flip = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    out = _normalise(x, aug, torch.float32)
    if train and aug.cutout > 0:
        half = aug.cutout // 2
        cy = torch.randint(0, h, (n,), generator=gen, device=gen.device).to(x.device)
        cx = torch.randint(0, w, (n,), generator=gen, device=gen.device).to(x.device)
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
        self.seed, self.passes = seed, 0  # the state: the next pass draws from (seed, passes) alone
        self.gen = torch.Generator(device=images.device)
        self._pass: dict | None = None  # the latest pass: its number and the batches it has handed out
        self._resume: dict | None = None  # a preempted pass that the next one continues (`resume_pass`)

    def _shard_size(self) -> int:
        n = self.images.shape[0]
        return n // self.world if self.world > 1 else n

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.images.shape[0]
        dev = self.gen.device
        resume, self._resume = self._resume, None
        if resume is not None:  # the interrupted pass: its order, then its generator where it stopped
            self.passes = int(resume["passes"])
        current = self._pass = {"passes": self.passes, "position": 0}
        self.gen.manual_seed(self.seed * 100_003 + self.passes)  # (as data/streamed.py's passes)
        self.passes += 1
        order = torch.randperm(n, generator=self.gen, device=dev) if self.shuffle else torch.arange(n, device=dev)
        if self.world > 1:
            order = order[self.rank :: self.world][: self._shard_size()]
        order = order.to(self.images.device)
        if resume is not None:
            self.gen.set_state(resume["gen"])
            current["position"] = int(resume["position"])
        for i in range(current["position"], len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = augment_batch(self.images[idx], self.augment, self.gen, self.train)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            current["position"] = i + 1
            yield x, self.labels[idx]

    def state_dict(self) -> dict:
        """Device-agnostic: the seed and the passes begun (a pass left unfinished at a checkpoint is not
        resumed: the next `iter` starts the next pass, with or without a resume)."""
        return {"seed": self.seed, "passes": self.passes}

    def load_state_dict(self, state: dict) -> None:
        # (an older checkpoint holds a generator's state instead: its passes are unknown, the next starts at 0)
        self.seed, self.passes = int(state.get("seed", self.seed)), int(state.get("passes", 0))
        self._resume = None

    def pass_state(self) -> dict | None:
        """(The generator's state is the device's: a pass continues on the kind of device it began on.)"""
        return {**self._pass, "gen": self.gen.get_state()} if self._pass is not None else None

    def resume_pass(self, state: dict) -> None:
        self._resume = state
