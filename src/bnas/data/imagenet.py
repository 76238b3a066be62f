"""The class-balanced ImageNet subset for proxy-free search (SPEC §10).

Per class, draw `fraction` of the class's training images without replacement, reproducibly from the
seed and the class name (so adding classes does not change the others' draws); `val_share` of each
draw becomes the architecture split, the rest the weight-training split. The subset is written as
symlinks (`DST/train/CLASS/file`, `DST/val/CLASS/file`) or as file lists (`DST/train.txt`,
`DST/val.txt`, one `path<TAB>class` per line), never as 150 GB of copies. A manifest records the
parameters, so a rerun with the same ones completes a partial run and a rerun with others is refused.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DataError
from ..jsonio import dumps
from .formats import read_image_folder

MANIFEST = "subset.json"


@dataclass(frozen=True)
class SubsetPlan:
    src: str
    fraction: float
    val_share: float
    seed: int
    mode: str  # link | list


def draw_class(files: list[Path], class_name: str, fraction: float, val_share: float, seed: int):
    """(train files, val files) of one class: disjoint, without replacement, a function of the seed."""
    files = sorted(files)
    n = len(files)
    n_draw = min(n, max(2, round(fraction * n)))
    n_val = min(n_draw - 1, max(1, round(val_share * n_draw))) if n_draw > 1 else 0
    rng = random.Random(f"bnas-imagenet-subset:{seed}:{class_name}")
    drawn = rng.sample(files, n_draw)
    return drawn[n_val:], drawn[:n_val]


def sample_imagenet(
    src: str | Path,
    dst: str | Path,
    fraction: float = 0.125,
    val_share: float = 0.2,
    seed: int = 0,
    mode: str = "link",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the subset and return a summary: classes and images per split."""
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction must be in (0, 1], got {fraction}")
    if not 0 < val_share < 1:
        raise DataError(f"--val-share must be in (0, 1), got {val_share}")
    if mode not in ("link", "list"):
        raise DataError(f"--mode must be link or list, got {mode!r}")
    src, dst = Path(src).resolve(), Path(dst)
    train_root = src / "train" if (src / "train").is_dir() else src
    samples, classes = read_image_folder(train_root)
    plan = SubsetPlan(str(src), fraction, val_share, seed, mode)
    dst.mkdir(parents=True, exist_ok=True)
    manifest = dst / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            old = None
        if old != asdict(plan):
            raise DataError(
                f"{dst} already holds a subset drawn with other parameters ({manifest}); choose another --dst"
            )
    else:
        manifest.write_text(dumps(asdict(plan), indent=1) + "\n")

    by_class: dict[int, list[Path]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    for i, name in enumerate(classes):
        train, val = draw_class(by_class.get(i, []), name, fraction, val_share, seed)
        for split, files in (("train", train), ("val", val)):
            counts[split] += len(files)
            if mode == "list":
                lists[split] += [f"{p}\t{name}" for p in files]
                continue
            out_dir = dst / split / name
            out_dir.mkdir(parents=True, exist_ok=True)
            for p in files:
                link = out_dir / p.name
                if link.is_symlink() or link.exists():
                    continue  # done by an earlier (perhaps interrupted) run
                tmp = out_dir / f".{p.name}.tmp"
                tmp.unlink(missing_ok=True)
                os.symlink(p, tmp)
                os.replace(tmp, link)
        if progress is not None:
            progress(i + 1, len(classes))
    if mode == "list":
        for split in ("train", "val"):
            (dst / f"{split}.txt").write_text("".join(line + "\n" for line in lists[split]))
    return {"classes": len(classes), "train_images": counts["train"], "val_images": counts["val"], "dst": str(dst)}


def read_subset(root: str | Path, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """The (path, label) pairs of one split of a subset written by `sample_imagenet` (either mode)."""
    root = Path(root)
    listing = root / f"{split}.txt"
    if listing.exists():
        pairs = []
        for n, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                path, name = line.rsplit("\t", 1)
            except ValueError:
                raise DataError(f"{listing} line {n} is not 'path<TAB>class'; draw the subset again") from None
            pairs.append((Path(path), name))
        classes = sorted({name for _, name in pairs})
        index = {c: i for i, c in enumerate(classes)}
        return [(p, index[c]) for p, c in pairs], classes
    if (root / split).is_dir():
        return read_image_folder(root / split)
    raise DataError(
        f"no ImageNet subset in {root}: expected {split}/CLASS/* or {split}.txt "
        "(draw one with bnas sample-imagenet --src IMAGENET --dst DIR)"
    )
