"""Your own images as a data set (`--dataset folder`): a tree of CLASS/*.png|jpg|jpeg|bmp|webp folders.

The tree is DIR/CLASS/* or DIR/train/CLASS/* with an optional DIR/test/CLASS/*. Without test/, a seeded,
class-stratified hold-out (a function of each class's file names, never of the run's seed) is the test split;
search and training both see only the rest. Opening a tree:

1. list it: (relative path, size, mtime) of every image file, hashed; a changed tree is a new hash;
2. read the header of every image once (sizes and modes: the default --image-size, gray or RGB by majority,
   files that are no images), cached as `HASH.scan.json`;
3. decode every image once at the chosen size (shorter side resized bilinearly, centre crop, converted to the
   majority mode: `load_image`, which `bnas predict` and the exported model's bnas.json describe too) into a
   uint8 cache, `HASH-Spx-Cch.npy` beside its JSON index (both written atomically, the index last), then keep
   it on the device like CIFAR (TensorLoader); a tree larger than memory streams through decoding workers.

The cache lives in DIR/.bnas-cache (or --cache-dir; a user cache directory where DIR is not writable). The opened
tree is a `source.DataSource` like any other data set's (`open_folder`, the registry's `folder` entry); its
hold-out split is `splits.holdout`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, check_float, check_int, check_not_file
from ..jsonio import atomic_write_bytes, dumps
from .formats import ArrayData
from .loaders import Augment
from .source import DEFAULT_DIR, ArraySplit, DataSource, FileSplit, channel_stats
from .splits import SPLIT_SEED, fixed_order, holdout

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_EXT_TEXT = ".png, .jpg, .jpeg, .bmp or .webp"
CACHE_FORMAT = 1
CIFAR_STEM_MAX = 64  # the CIFAR stem up to 64 px, the ImageNet stem above
MIN_SIZE = 16
STATS_SAMPLE = 2000  # a streamed tree's statistics come from this many training images (seeded)
PREPROCESS = (
    "PIL: convert to mode (L or RGB), resize the shorter side to size (bilinear), centre crop size x size; "
    "then pixels / 255 and (x - mean) / std per channel"
)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _some(names: list[str], limit: int = 5) -> str:
    """'a, b and c' or 'a, b, c, d, e and 7 more'."""
    head = names[:limit]
    rest = len(names) - len(head)
    if rest:
        return f"{', '.join(head)} and {rest} more"
    return head[0] if len(head) == 1 else f"{', '.join(head[:-1])} and {head[-1]}"


def check_folder_options(cfg) -> None:
    """The options only --dataset folder reads (SearchConfig and TrainConfig both have them)."""
    check_int("image_size", cfg.image_size, 0)
    if 0 < cfg.image_size < MIN_SIZE:
        raise ConfigError(f"--image-size must be 0 (from the images) or at least {MIN_SIZE}, got {cfg.image_size}")
    check_float("test_split", cfg.test_split, 0.0, 1.0)
    if cfg.cache_dir is not None:
        check_not_file("cache_dir", cfg.cache_dir, "a directory for the decoded images")


# ------------------------------------------------------------------------------------------- listing


@dataclass
class Listing:
    """Every image file of a tree: relative paths (train tree first, then test/), labels, and the hash."""

    root: Path
    has_test: bool
    classes: list[str]
    rels: list[str]
    labels: list[int]
    in_test: list[bool]
    digest: str


def _images_in(d: Path) -> list[os.DirEntry]:
    with os.scandir(d) as it:
        found = [e for e in it if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in EXTENSIONS]
    return sorted((e for e in found if e.is_file()), key=lambda e: e.name)


def _class_folders(d: Path) -> tuple[list[str], list[list[os.DirEntry]]]:
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = len(_images_in(d))
        if loose:
            raise DataError(
                f"the {_plural(loose, 'image')} directly in {d} need a folder per class: move them to {d}/CLASS/"
            )
        raise DataError(f"{d} holds no class folders: put each class's images ({_EXT_TEXT}) in {d}/CLASS/")
    files = [_images_in(d / c) for c in classes]
    empty = [c for c, f in zip(classes, files, strict=True) if not f]
    if empty:
        them = "them" if len(empty) > 1 else "it"
        raise DataError(
            f"{d} has {_plural(len(empty), 'class folder')} without images ({_some(empty)}): add {_EXT_TEXT} "
            f"images to {them} or remove {them}"
        )
    return classes, files


def list_tree(root: str | Path) -> Listing:
    """The tree's classes and image files, or one sentence saying what is wrong with its layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a directory; give a folder of class folders ({root}/CLASS/*.png)")
    try:
        if (root / "train").is_dir():
            train_root, test = root / "train", None
            classes, files = _class_folders(train_root)
            if (root / "test").is_dir():
                test = _class_folders(root / "test")
        elif (root / "test").is_dir():
            raise DataError(
                f"{root}/test exists but {root}/train does not: put the training images in {root}/train/CLASS/"
            )
        else:
            train_root, test = root, None
            classes, files = _class_folders(root)
        if len(classes) < 2:
            raise DataError(
                f"{train_root} holds one class folder only ({classes[0]}): a classifier needs at least two classes"
            )
        if test is not None:
            extra = sorted(set(test[0]) - set(classes))
            if extra:
                raise DataError(f"{root}/test has classes that {root}/train lacks ({_some(extra)}); give both the same")
        rels, labels, in_test, rows = [], [], [], []
        index = {c: i for i, c in enumerate(classes)}
        trees = [("train/" if test is not None or train_root != root else "", classes, files, False)]
        if test is not None:
            trees.append(("test/", *test, True))
        for prefix, names, entries, is_test in trees:
            for name, class_files in zip(names, entries, strict=True):
                for e in class_files:
                    st = e.stat()
                    rel = f"{prefix}{name}/{e.name}"
                    rels.append(rel)
                    labels.append(index[name])
                    in_test.append(is_test)
                    rows.append((rel, st.st_size, st.st_mtime_ns))
    except OSError as e:
        raise DataError(f"{root} could not be listed ({e.strerror or e}); check that bnas may read it") from None
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, rows]).encode()).hexdigest()
    return Listing(root, test is not None, classes, rels, labels, in_test, digest)


# ------------------------------------------------------------------------------------------- images


def _channels(mode: str) -> int:
    return 1 if mode in _GRAY_MODES else 3


def _reason(e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    text = str(e).strip().rstrip(".")
    if "truncated" in text:
        return "truncated"
    return (text or type(e).__name__)[:80]


def load_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """One image as the networks see it, uint8 (C, size, size): converted to L or RGB, the shorter side resized
    to `size` (bilinear), centre cropped. Raises what PIL raises on a bad file."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")  # loads the pixels: a truncated file fails here
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)  # a copy when the size is already right
    left, top = (nw - size) // 2, (nh - size) // 2
    a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """`load_image` as a tensor, or one sentence naming the file."""
    try:
        return torch.from_numpy(np.ascontiguousarray(load_image(path, size, channels)))
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except Exception as e:  # PIL raises many types on bad files
        raise DataError(f"cannot read image {path} ({_reason(e)}); give a {_EXT_TEXT} image") from None


def auto_size(median_side: float) -> int:
    """--image-size 0: the median shorter side rounded to 32, 64 or 96 for small images, else to a multiple of 32
    (at most 224)."""
    if median_side <= 112:
        return min((32, 64, 96), key=lambda s: (abs(s - median_side), -s))
    return int(min(224, 32 * round(median_side / 32)))


def _header(path: Path) -> tuple[int, int] | str:
    """(shorter side, channels) from the file's header, or why it is no image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return min(im.size), _channels(im.mode)
    except Exception as e:
        return _reason(e)


def _pool_map(fn, items, workers: int) -> list:
    if workers <= 1 or len(items) < 64:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while it decodes
        return list(pool.map(fn, items))


# ------------------------------------------------------------------------------------------- cache


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnas" / "folders"


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".probe-"):
            return True
    except OSError:
        return False


def cache_dir_for(root: Path, cache_dir: str | None) -> Path | None:
    """--cache-dir, else DIR/.bnas-cache, else the user's cache directory; None where nothing is writable."""
    if cache_dir:
        if not _writable(Path(cache_dir)):
            raise DataError(f"--cache-dir {cache_dir} is not writable; give a directory bnas can write to")
        return Path(cache_dir)
    return next((d for d in (root / ".bnas-cache", _user_cache()) if _writable(d)), None)


def _read_record(path: Path, digest: str) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(rec, dict) and rec.get("format") == CACHE_FORMAT and rec.get("digest") == digest
    return rec if ok else None


def _write_record(path: Path, rec: dict) -> None:
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
        atomic_write_bytes(path, lambda f: f.write(dumps(rec).encode()))  # umask, as any file


def _drop_stale(cache: Path, root: str, digest: str) -> None:
    """Remove the entries of this tree's earlier listings (a changed tree leaves no stale gigabytes behind)."""
    for index in cache.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            rec = json.loads(index.read_text())
            if rec.get("root") == root and rec.get("digest") != digest:
                if rec.get("file"):
                    (cache / rec["file"]).unlink(missing_ok=True)
                index.unlink(missing_ok=True)


def _scan(listing: Listing, cache: Path | None, workers: int) -> dict:
    """Header statistics of every image (from the cache, or read once): median shorter side, modes, bad files."""
    path = cache / f"{listing.digest[:24]}.scan.json" if cache else None
    rec = _read_record(path, listing.digest) if path else None
    if rec is not None:
        return rec
    heads = _pool_map(lambda rel: _header(listing.root / rel), listing.rels, workers)
    good = [h for h in heads if not isinstance(h, str)]
    bad = {rel: h for rel, h in zip(listing.rels, heads, strict=True) if isinstance(h, str)}
    rec = {
        "format": CACHE_FORMAT, "digest": listing.digest, "root": str(listing.root.resolve()),
        "median_side": statistics.median([s for s, _ in good]) if good else 0,
        "gray": sum(c == 1 for _, c in good), "rgb": sum(c == 3 for _, c in good), "bad": bad,
    }  # fmt: skip
    if cache is not None:
        _drop_stale(cache, rec["root"], listing.digest)
        _write_record(path, rec)
    return rec


def _arrays(listing: Listing, skip: set[str], size: int, channels: int, cache: Path | None, workers: int):
    """(uint8 images of the listing less `skip` and the files that fail to decode, those failures, images decoded
    now, the cache file or None): read from the cache where its index matches, else decoded and cached."""
    name = f"{listing.digest[:24]}-{size}px-{channels}ch"
    index = cache / f"{name}.json" if cache else None
    rec = _read_record(index, listing.digest) if index else None
    if rec is not None and (rec.get("size"), rec.get("channels")) == (size, channels):
        with contextlib.suppress(OSError, ValueError):
            arr = np.load(cache / rec["file"], mmap_mode="r")
            if arr.shape == (rec["count"], channels, size, size) and arr.dtype == np.uint8:
                return torch.from_numpy(np.array(arr)), rec["bad"], 0, cache / rec["file"]
    todo = [i for i, rel in enumerate(listing.rels) if rel not in skip]
    out = np.empty((len(todo), channels, size, size), dtype=np.uint8)

    def decode(k: int) -> str | None:
        try:
            out[k] = load_image(listing.root / listing.rels[todo[k]], size, channels)
        except Exception as e:  # PIL raises many types on bad files
            return _reason(e)
        return None

    reasons = _pool_map(decode, list(range(len(todo))), workers)
    bad = {listing.rels[todo[k]]: r for k, r in enumerate(reasons) if r is not None}
    if bad:
        out = out[[k for k, r in enumerate(reasons) if r is None]]
    if cache is None:
        return torch.from_numpy(out), bad, len(todo), None
    npy = cache / f"{name}.npy"
    try:
        atomic_write_bytes(npy, lambda f: np.save(f, out))
    except OSError:
        return torch.from_numpy(out), bad, len(todo), None
    root = str(listing.root.resolve())
    _write_record(index, {"format": CACHE_FORMAT, "digest": listing.digest, "root": root, "file": npy.name,
                          "size": size, "channels": channels, "count": out.shape[0], "bad": bad})  # fmt: skip
    return torch.from_numpy(out), bad, len(todo), npy


def resident_budget(device: torch.device) -> int:
    """Bytes of uint8 images a tree may take to live in memory (and on the device): half of what is free."""
    avail = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if not avail:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    budget = avail // 2 if avail else 4 << 30
    if device.type == "cuda":
        budget = min(budget, torch.cuda.mem_get_info(device)[0] // 2)
    return budget


# ------------------------------------------------------------------------------------------- the opened tree


def decode_file(path: Path, size: int, channels: int) -> torch.Tensor:
    """`load_image` for a run's loader, or one sentence naming the file."""
    try:
        return torch.from_numpy(load_image(path, size, channels).copy())
    except Exception as e:  # PIL raises many types on bad files
        raise DataError(f"cannot read image {path} ({_reason(e)}); remove it or pass --skip-bad") from None


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

    def split(self, name: str) -> ArraySplit | FileSplit:
        """The run's "train" or "test" split: on the device where the tree fits in memory, else files."""
        if self.images is None:
            decode = functools.partial(decode_file, size=self.size, channels=self.channels)
            return FileSplit(self.samples(name), decode, self.workers)
        data = self.read(self.listing.root, name == "train")
        return ArraySplit(data.images, data.labels)


def _bad_sentence(root: Path, bad: dict[str, str]) -> str:
    named = [f"{rel} ({why})" for rel, why in sorted(bad.items())]
    return (
        f"{len(bad)} image{'s' if len(bad) > 1 else ''} in {root} cannot be read: {_some(named)}; remove or replace "
        f"{'them' if len(bad) > 1 else 'it'}, or pass --skip-bad to leave {'them' if len(bad) > 1 else 'it'} out "
        "(counted in the run)"
    )


def open_user_folder(cfg, device: torch.device, meta: dict[str, Any] | None = None) -> DataSource:
    """The run's data set from the tree at cfg.data_dir (a SearchConfig or TrainConfig, duck-typed; without one,
    `data`): decoded once into the cache, or read from it. `meta`: a trained run's own input (size, channels,
    classes, mean, std) instead of the tree's. The resolved size is written back to cfg.image_size, so the run's
    config.json records it."""
    root = Path(cfg.data_dir or DEFAULT_DIR)
    if cfg.data_dir is None and not root.is_dir():
        raise DataError(
            f"--dataset folder reads your images from --data-dir DIR (DIR/CLASS/*.png); none was given, and "
            f"{DEFAULT_DIR}, the default, is not a directory"
        )
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
    train_pos, test_pos, gen = fixed_order(in_test)  # --subset and the search halves see every class
    tree = UserFolder(listing, size, channels, keep, train_pos, test_pos, images, workers)
    if meta is not None:
        mean, std, stats_from = tuple(meta["mean"]), tuple(meta["std"]), "the trained run"
    elif images is not None:
        (mean, std), stats_from = channel_stats(images[train_pos]), "training split"
    else:
        sample = train_pos[torch.randperm(len(train_pos), generator=gen)[:STATS_SAMPLE]]
        x = torch.stack([decode_file(tree.listing.root / tree.listing.rels[tree.keep[int(k)]], size, channels)
                         for k in sample])  # fmt: skip
        (mean, std), stats_from = channel_stats(x), f"{len(sample)} training images"
    cfg.image_size = size
    test_rels = sorted(listing.rels[keep[k]] for k in test_pos.tolist())
    info = {
        "dataset": "folder", "root": str(root.resolve()), "classes": listing.classes, "channels": channels,
        "size": size, "median_side": scan["median_side"], "stem": "cifar" if size <= CIFAR_STEM_MAX else "imagenet",
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
    return DataSource(
        "folder", len(listing.classes), channels, size, Augment(flip=True, mean=mean, std=std),
        Augment(mean=mean, std=std), stem=info["stem"], classes=tuple(listing.classes), info=info,
        reader=tree.split, source=tree,
    )  # fmt: skip


def describe(info: dict[str, Any] | None) -> str | None:
    """One line about an opened folder for the command line (None for the other data sets: their name says it)."""
    if not info or info.get("dataset") != "folder":
        return None
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
