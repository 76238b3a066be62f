"""Streamed loaders: image files decoded by DataLoader workers each epoch, for trees too large for memory.

`FolderLoader` feeds ImageNet and its search subset (SPEC §9 transforms, in the workers or on the GPU);
`StreamLoader` feeds your own images (`--dataset folder`) decoded at the run's size and augmented on the device
like a device-resident `TensorLoader`. Both have the `loaders.Loader` interface. Each pass draws its order from
(seed, pass number), so a run is reproducible and resumable from the pass counter alone, and every rank of a
torchrun job takes a disjoint shard of the same order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .loaders import Augment, augment_batch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageTransform:
    """SPEC §9 transforms, applicable to PIL images in decoding workers or to decoded uint8 tensors on the GPU.

    Training: random-resized crop, flip and (optionally) colour jitter; evaluation: resize to 256/224 of the size,
    centre crop. Both end normalised with the ImageNet mean and deviation.
    """

    def __init__(self, size: int, train: bool, jitter: bool = True):
        self.size, self.train, self.jitter = size, train, jitter
        self._pil = self._tensor = None

    def _ops(self, T) -> list:
        if self.train:
            ops = [T.RandomResizedCrop(self.size, antialias=True), T.RandomHorizontalFlip()]
            if self.jitter:
                ops.append(T.ColorJitter(0.4, 0.4, 0.4, 0.2))
            return ops
        return [T.Resize(round(self.size * 256 / 224), antialias=True), T.CenterCrop(self.size)]

    def __call__(self, img) -> torch.Tensor:
        """One PIL image -> a normalised float tensor (the decoding-worker path)."""
        if self._pil is None:
            from torchvision import transforms as T

            self._pil = T.Compose([*self._ops(T), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        return self._pil(img)

    def on_tensors(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Decoded uint8 CHW images (any sizes, on any device) -> one normalised float batch on that device."""
        if self._tensor is None:
            from torchvision.transforms import v2 as T

            self._tensor = T.Compose(
                [*self._ops(T), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
            )
        return torch.stack([self._tensor(img) for img in images])


def imagenet_transform(size: int, train: bool, jitter: bool = True) -> ImageTransform:
    """SPEC §9: random-resized crop + flip + colour jitter for training; resize 256/224 then centre crop."""
    return ImageTransform(size, train, jitter)


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


class ImageBytes(Dataset):
    """(file bytes, label, path): workers only read files; decoding happens in the main process, on the GPU."""

    def __init__(self, samples: list[tuple[Path, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from torchvision.io import read_file

        from ..errors import DataError

        path, label = self.samples[i]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
                return read_file(str(path)), label, str(path)
        except (OSError, RuntimeError) as e:
            raise DataError(f"cannot read image {path} ({e}); remove or replace the file") from None


def _collate_bytes(batch):
    return [b for b, _, _ in batch], torch.tensor([label for _, label, _ in batch]), [p for _, _, p in batch]


def decode_images(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> RGB uint8 CHW tensors on `device`: one batched nvJPEG call on a GPU (libjpeg-turbo on CPU).

    A file the batched decoder refuses (a PNG named .JPEG, a CMYK JPEG: ImageNet has a few of each) is decoded
    alone by torchvision's general CPU decoder and moved to the device.
    """
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, which has no batched nvJPEG path yet
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        return _decode(data, paths, device)


def _decode(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    from ..errors import DataError

    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out = []
    for raw, path in zip(data, paths, strict=True):
        try:
            out.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            try:
                out.append(decode_image(raw, mode=ImageReadMode.RGB).to(device))
            except RuntimeError as e:
                raise DataError(f"cannot decode image {path} ({e}); remove or replace the file") from None
    return out


def gpu_decoding(requested: str, device: torch.device) -> torch.device | None:
    """--decode gpu|pil -> the device to decode on, or None for PIL in the workers (the fallback without a GPU)."""
    if requested != "gpu":
        return None
    if device.type != "cuda":
        warnings.warn("--decode gpu needs a CUDA device; decoding with PIL in the workers instead", stacklevel=2)
        return None
    return device


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, seed: int, shuffle: bool, rank: int, world: int, batch_size: int, drop_last: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world = rank, world
        self.batch_size, self.drop_last = batch_size, drop_last
        self.passes = 0
        self.skip = 0  # indices the next pass leaves out at its start (a preempted pass continued)

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
        skip, self.skip = self.skip, 0
        return iter(self.indices()[skip:])

    def __len__(self) -> int:
        return len(self.indices())


def _pass_start(sampler: _EpochSampler, resume: dict | None) -> dict:
    """The latest pass of a streamed loader: its pass number and batches handed out; a resumed pass skips the
    batches the interrupted one had handed out (their files are not read again)."""
    if resume is None:
        return {"passes": sampler.passes, "position": 0}
    sampler.passes, position = int(resume["passes"]), int(resume["position"])
    sampler.skip = position * sampler.batch_size
    return {"passes": sampler.passes, "position": position}


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
        decode_device: torch.device | None = None,
    ):
        self.sampler = _EpochSampler(len(samples), seed, shuffle, rank, world, batch_size, drop_last)
        self.batch_size, self.device, self.channels_last = batch_size, device, channels_last
        self.transform, self.decode_device = transform, decode_device
        if decode_device is None:  # PIL decodes and transforms in the workers
            dataset, collate = ImageList(samples, transform), None
        else:  # the workers read bytes; decoding and transforms run on decode_device in this process
            dataset, collate = ImageBytes(samples), _collate_bytes
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda" and decode_device is None,
            drop_last=drop_last,
            persistent_workers=workers > 0,
            collate_fn=collate,
        )
        self._pass: dict | None = None
        self._resume: dict | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        current = self._pass = _pass_start(self.sampler, self._resume)
        self._resume = None
        try:
            for batch in self.loader:
                if self.decode_device is None:
                    x, y = batch
                else:
                    data, y, paths = batch
                    x = self.transform.on_tensors(decode_images(data, paths, self.decode_device))
                x = x.to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                current["position"] += 1
                yield x, y.to(self.device, non_blocking=True)
        finally:
            self.sampler.passes += 1

    def state_dict(self) -> dict:
        return {"passes": self.sampler.passes}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.passes = int(state["passes"])
        self._resume = None

    def pass_state(self) -> dict | None:
        return dict(self._pass) if self._pass is not None else None

    def resume_pass(self, state: dict) -> None:
        self._resume = state


class _Files(Dataset):
    def __init__(self, samples: list[tuple[Path, int]], decode: Callable[[Path], torch.Tensor]):
        self.samples, self.decode = samples, decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.decode(path), label


class StreamLoader:
    """Like TensorLoader, for files: workers decode (`decode`: a path -> uint8 (C, S, S)), the device augments the
    uint8 batch (augment_batch); `state_dict` holds the pass counter and the augmentation generator."""

    def __init__(self, samples, decode: Callable[[Path], torch.Tensor], batch_size: int, augment: Augment,
                 device: torch.device, train: bool = True, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 workers: int = 2, channels_last: bool = False, rank: int = 0, world: int = 1):  # fmt: skip
        self.sampler = _EpochSampler(len(samples), seed, shuffle, rank, world, batch_size, drop_last)
        self.augment, self.train, self.device, self.channels_last = augment, train, device, channels_last
        self.gen = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(
            _Files(samples, decode), batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            drop_last=drop_last, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        )  # fmt: skip
        self._pass: dict | None = None
        self._resume: dict | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._resume is not None:
            self.gen.set_state(self._resume["gen"])
        current = self._pass = _pass_start(self.sampler, self._resume)
        self._resume = None
        try:
            for x, y in self.loader:
                x = augment_batch(x.to(self.device, non_blocking=True), self.augment, self.gen, self.train)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                current["position"] += 1
                yield x, y.to(self.device, non_blocking=True)
        finally:
            self.sampler.passes += 1

    def state_dict(self) -> dict:
        return {"passes": self.sampler.passes, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.passes = int(state["passes"])
        self.gen.set_state(state["gen"])
        self._resume = None

    def pass_state(self) -> dict | None:
        return {**self._pass, "gen": self.gen.get_state()} if self._pass is not None else None

    def resume_pass(self, state: dict) -> None:
        self._resume = state
