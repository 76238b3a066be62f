"""Every split a run cuts from its data, in one place: so the images a training run holds out (--val-split) are the
images `bnas eval --split val` reads, and a search's two halves are cut the same way whatever the source.

- `val_split`: the seeded permutation a training run (and its evaluation) holds out for model selection;
- `search_split`: the weights half and the architecture half of a search (SPEC §7's train_portion);
- `holdout` and `fixed_order`: your own images' test split and the fixed shuffled order of each split
  (a function of the tree's file names, never of the run's seed).
"""

from __future__ import annotations

import random
from typing import Protocol

import torch

from ..errors import ConfigError

SPLIT_SEED = 0  # the hold-out split's seed: fixed, so every search and training run of a tree tests the same images


def val_split(n: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out indices, training indices) of `n` training images: `round(n x share)` drawn by a permutation
    seeded with the run's seed. One sentence when a side would be empty."""
    n_val = round(n * share)
    if not 0 < n_val < n:
        raise ConfigError(f"--val-split {share} of {n} training images leaves a split empty")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_val], perm[n_val:]


def search_split(n: int, portion: float) -> tuple[slice, slice]:
    """The weights half (the first `int(n x portion)` images) and the architecture half (the rest) of a search."""
    cut = int(n * portion)
    return slice(0, cut), slice(cut, n)


def search_images_needed(batch_size: object, train_portion: object, world: int = 1, cap: int = 1 << 22) -> int | None:
    """The fewest training images whose two search splits (as `search_split` cuts them) hold one batch per
    rank each; None when the inputs are not a batch size and a portion in (0, 1), or it would exceed `cap`."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        return None
    if not isinstance(train_portion, int | float) or not 0.0 < train_portion < 1.0:
        return None
    per_split = batch_size * max(world, 1)
    n = max(2 * per_split, int(per_split / min(train_portion, 1.0 - train_portion)) - 2)
    while n <= cap:
        first, second = search_split(n, train_portion)
        if min(first.stop - first.start, second.stop - second.start) >= per_split:
            return n
        n += 1
    return None


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


class _Listing(Protocol):
    classes: list[str]
    labels: list[int]
    in_test: list[bool]


def holdout(listing: _Listing, keep: list[int], share: float) -> list[bool]:
    """Per class, round(share x n) of its (readable) images outside test/ become the test split: at least one,
    never all, drawn by a seed and the class name from the sorted file names."""
    chosen = [False] * len(keep)
    by_class: dict[int, list[int]] = {}
    for k, i in enumerate(keep):
        if not listing.in_test[i]:
            by_class.setdefault(listing.labels[i], []).append(k)
    for label, ks in by_class.items():
        n = len(ks)
        n_test = min(n - 1, max(1, round(share * n))) if n > 1 and share > 0 else 0
        rng = random.Random(f"bnas-folder-split:{SPLIT_SEED}:{listing.classes[label]}")
        for k in rng.sample(ks, n_test):
            chosen[k] = True
    return chosen


def fixed_order(in_test: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """(training positions, test positions), each in one fixed shuffled order, so --subset and the search halves
    see every class; and the generator, which goes on to draw a streamed tree's statistics sample."""
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    train = torch.tensor([k for k, t in enumerate(in_test) if not t], dtype=torch.int64)
    test = torch.tensor([k for k, t in enumerate(in_test) if t], dtype=torch.int64)
    return train[torch.randperm(len(train), generator=gen)], test[torch.randperm(len(test), generator=gen)], gen
