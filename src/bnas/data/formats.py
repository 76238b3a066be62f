"""Readers of the official on-disk formats of the data sets BNAS searches and trains on.

The readers parse the files as the data sets' authors distribute them, without torchvision's
dataset classes and without network access, so a run never downloads anything behind the
user's back. Every problem with the files (missing, incomplete, truncated, malformed) becomes a
:class:`~bnas.errors.DataError` whose message is one sentence naming the data set, the expected
files and the directory, which the CLI prints without a traceback.
"""

import codecs
import gzip
import io
import math
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bnas.errors import DataError

__all__ = [
    "FASHION_MNIST_SYSTEM_DIR",
    "IMAGE_EXTENSIONS",
    "ArrayData",
    "MissingData",
    "read_cifar",
    "read_idx",
    "read_image_folder",
    "read_mnist_like",
    "read_smallnorb",
    "read_svhn",
]

#: Where Debian's ``fashion-mnist`` package installs the data set; read_mnist_like falls back to it
#: so Fashion-MNIST works out of the box on such machines (tests monkeypatch this constant).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Suffixes (compared case-insensitively) that read_image_folder accepts as images.
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})

_DOWNLOAD_HINT = "download {} from the dataset's site or pass --data-dir"
_REDOWNLOAD_HINT = "re-download it from the dataset's site"
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIMS = 32  # numpy refuses more dimensions; no real file comes close


@dataclass
class ArrayData:
    """A whole split held in memory: what every array-format reader returns.

    images: uint8, shape (N, C, H, W), contiguous; labels: int64, shape (N,), in [0, num_classes).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    files: tuple[str, ...] = ()  # the files read (absolute paths): what a run records in config.json "data"


class MissingData(DataError):
    """A data set's files are not there (or only some are): `base` says what is missing where, without the advice,
    so that a caller who knows how the directory was chosen (registry) can give its own."""

    def __init__(self, base: str, hint: str):
        super().__init__(f"{base} ({hint}).")
        self.base = base


class _Malformed(Exception):
    """A low-level parser's complaint, turned into a DataError naming the data set and the file."""


# --------------------------------------------------------------------------------------------- helpers


def _join(items: Sequence[str], last: str = "and") -> str:
    """English enumeration, so the messages read as one sentence: 'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


def _malformed(dataset: str, path: Path, reason: str) -> DataError:
    return DataError(f"{dataset} file {path} is malformed: {reason} ({_REDOWNLOAD_HINT}).")


def _read_bytes(path: Path, dataset: str) -> bytes:
    """Whole file content, gunzipped when it starts with the gzip magic bytes (whatever its name)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        hint = _DOWNLOAD_HINT.format("it")
        raise MissingData(f"{dataset} file not found: expected {path.name} in {path.parent}", hint) from exc
    except OSError as exc:
        raise DataError(f"{dataset} file {path} could not be read ({exc.strerror or type(exc).__name__}).") from exc
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            raise _malformed(dataset, path, "it is a truncated or corrupt gzip file") from exc
    return data


def _locate(dataset: str, candidates: Sequence[Path], groups: Sequence[Sequence[str]]) -> list[Path]:
    """Find the first candidate directory holding one file of every group of alternative names.

    Each group lists the accepted names of one required file, preferred first (e.g. the plain and
    the gzipped name). When no directory is complete, one holding only some of the files is reported
    as incomplete rather than as missing, because that is almost always a half-finished download.
    """
    partial: tuple[Path, list[str]] | None = None
    for directory in dict.fromkeys(candidates):  # de-duplicated, order kept
        found: list[Path] = []
        missing: list[str] = []
        for group in groups:
            path = next((directory / name for name in group if (directory / name).is_file()), None)
            if path is None:
                missing.append(_describe_group(group))
            else:
                found.append(path)
        if not missing:
            return found
        if found and partial is None:
            partial = (directory, missing)
    if partial is not None:
        directory, missing = partial
        verb, pronoun = ("are", "them") if len(missing) > 1 else ("is", "it")
        hint = _DOWNLOAD_HINT.format(pronoun)
        raise MissingData(f"{dataset} is incomplete: {_join(missing)} {verb} missing in {directory}", hint)
    expected = _join([_describe_group(group) for group in groups])
    where = _join([str(d) for d in dict.fromkeys(candidates)], last="or")
    hint = _DOWNLOAD_HINT.format("them" if len(groups) > 1 else "it")
    raise MissingData(f"{dataset} not found: expected {expected} in {where}", hint)


def _describe_group(group: Sequence[str]) -> str:
    """'name' or 'name[.gz]' for a group of alternative names of one file."""
    if len(group) == 2 and group[1] == group[0] + ".gz":
        return f"{group[0]}[.gz]"
    return _join(list(group), last="or")


def _with_gz(name: str) -> tuple[str, str]:
    return (name, name + ".gz")


def _to_array_data(images: np.ndarray, labels: np.ndarray, num_classes: int, files: Sequence[Path]) -> ArrayData:
    """Wrap validated numpy arrays as tensors, copying only when they are read-only or not contiguous."""
    if not images.flags.c_contiguous or not images.flags.writeable:
        images = images.copy(order="C")
    return ArrayData(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()),
        num_classes=num_classes,
        files=tuple(str(Path(f).resolve()) for f in files),
    )


def _check_labels(labels: Any, count: int, low: int, high: int) -> np.ndarray:
    """Labels as a 1-d integer array of length count with values in [low, high], or _Malformed."""
    try:
        array = np.asarray(labels)
    except Exception as exc:  # ragged or exotic objects
        raise _Malformed(f"the labels are not an array of integers ({type(exc).__name__})") from exc
    if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise _Malformed(f"the labels have dtype {array.dtype} instead of an integer type")
    array = array.reshape(-1) if array.ndim == 2 and 1 in array.shape else array
    if array.ndim != 1 or array.shape[0] != count:
        raise _Malformed(f"there are {array.size} labels of shape {array.shape} for {count} images")
    if array.size and (array.min() < low or array.max() > high):
        raise _Malformed(f"labels range from {array.min()} to {array.max()} instead of {low} to {high}")
    return array.astype(np.int64)


# ------------------------------------------------------------------------------------------------ CIFAR


_CIFAR_SPECS = {
    # variant: (display name, directory, train files, test files, label key, classes)
    "cifar10": (
        "CIFAR-10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        10,
    ),
    "cifar100": ("CIFAR-100", "cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle needs: numpy's array and dtype reconstructors.

    Everything else (os.system, builtins.eval, ...) is refused, so a tampered file cannot run code.
    Old pickles name numpy.core, new ones numpy._core; both map to the functions numpy uses today.
    """
    reconstruct = np.ndarray(0).__reduce__()[0]
    scalar = np.uint8(0).__reduce__()[0]
    frombuffer = np.arange(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes written by Python 3
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        if callable(frombuffer):
            allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler restricted to the numpy globals listed by _safe_globals."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _SafeUnpickler._allowed is None:
            _SafeUnpickler._allowed = _safe_globals()
        try:
            return _SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a data file")


def _dict_get(obj: dict, key: bytes) -> Any:
    """Value under a bytes key (Python 2 pickles) or its str twin (files re-pickled by Python 3)."""
    if key in obj:
        return obj[key]
    text = key.decode("ascii")
    if text in obj:
        return obj[text]
    raise _Malformed(f"the batch has no {text!r} entry")


def _load_cifar_batch(path: Path, dataset: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    data = _read_bytes(path, dataset)
    try:
        batch = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # truncated, random or tampered bytes raise almost anything
        raise _malformed(dataset, path, f"it could not be unpickled ({type(exc).__name__})") from exc
    try:
        if not isinstance(batch, dict):
            raise _Malformed(f"it holds a {type(batch).__name__} instead of a dict")
        images = _dict_get(batch, b"data")
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise _Malformed("its data entry is not a uint8 array")
        if images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
            raise _Malformed(f"its data entry has shape {images.shape} instead of (N, 3072)")
        labels = _check_labels(_dict_get(batch, label_key), images.shape[0], 0, num_classes - 1)
    except _Malformed as exc:
        raise _malformed(dataset, path, str(exc)) from exc
    return images.reshape(-1, 3, 32, 32), labels


def read_cifar(root: str | Path, variant: Literal["cifar10", "cifar100"], train: bool) -> ArrayData:
    """Read CIFAR-10/100 from the official python pickle batches (cifar-10-python.tar.gz unpacked).

    root may be the directory holding cifar-10-batches-py (cifar-100-python) or that directory
    itself, so both torchvision's layout and a bare extraction work. CIFAR-100 uses the 100 fine labels.
    """
    if variant not in _CIFAR_SPECS:
        raise DataError(f"Unknown CIFAR variant {variant!r}: expected 'cifar10' or 'cifar100'.")
    dataset, subdir, train_files, test_files, label_key, num_classes = _CIFAR_SPECS[variant]
    root = Path(root)
    names = train_files if train else test_files
    paths = _locate(dataset, [root / subdir, root], [(name,) for name in names])
    parts = [_load_cifar_batch(path, dataset, label_key, num_classes) for path in paths]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    return _to_array_data(images, labels, num_classes, paths)


# -------------------------------------------------------------------------------------------------- IDX


_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _parse_idx(data: bytes) -> np.ndarray:
    """IDX content (already gunzipped) as a native-endian writable array, or _Malformed."""
    if len(data) < 4:
        raise _Malformed(f"it holds {len(data)} bytes, fewer than the 4-byte IDX magic number")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise _Malformed(f"0x{data[:4].hex()} is not an IDX magic number (0x00000803 images, 0x00000801 labels)")
    ndim = data[3]
    if not 1 <= ndim <= _MAX_DIMS:
        raise _Malformed(f"the header declares {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _Malformed(f"the header of {header} bytes is truncated to {len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = math.prod(dims)
    if len(data) - header != count * dtype.itemsize:
        shape = " x ".join(map(str, dims))
        raise _Malformed(
            f"the header declares {shape} values ({count * dtype.itemsize} bytes) "
            f"but {len(data) - header} bytes follow it"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header) if count else np.empty(0, dtype)
    try:
        array = array.reshape(dims)
    except ValueError:  # an empty array whose other dimensions numpy cannot hold (found by hypothesis)
        shape = " x ".join(map(str, dims))
        raise _Malformed(f"the header declares dimensions {shape} that numpy cannot hold") from None
    return array.astype(dtype.newbyteorder("="))  # astype copies: writable, native order


def read_idx(path: str | Path, *, dataset: str = "IDX") -> np.ndarray:
    """Read one IDX file (the MNIST family's format), gzipped or not, as a native-endian numpy array.

    Compression is detected from the gzip magic bytes rather than the name, since downloads are
    often renamed or transparently decompressed. The data size must match the header exactly, which
    catches truncated downloads. dataset only names the data set in error messages.
    """
    path = Path(path)
    data = _read_bytes(path, dataset)
    try:
        return _parse_idx(data)
    except _Malformed as exc:
        raise _malformed(dataset, path, str(exc)) from exc


# ---------------------------------------------------------------------------------------- MNIST family


_MNIST_NAMES = {"mnist": ("MNIST", "MNIST"), "fashion-mnist": ("Fashion-MNIST", "FashionMNIST")}


def read_mnist_like(
    root: str | Path, name: Literal["mnist", "fashion-mnist"], train: bool, system_copy: bool = True
) -> ArrayData:
    """Read MNIST or Fashion-MNIST from the official IDX files as (N, 1, 28, 28) images.

    Looks in root, root/<name> and root/<MNIST|FashionMNIST>/raw (torchvision's layout); for
    Fashion-MNIST it finally falls back to FASHION_MNIST_SYSTEM_DIR (Debian's copy), so the data
    set works offline without a --data-dir; `system_copy=False` (a --data-dir the user named) never does.
    """
    if name not in _MNIST_NAMES:
        raise DataError(f"Unknown MNIST-like data set {name!r}: expected 'mnist' or 'fashion-mnist'.")
    dataset, torchvision_dir = _MNIST_NAMES[name]
    root = Path(root)
    prefix = "train" if train else "t10k"
    groups = [_with_gz(f"{prefix}-images-idx3-ubyte"), _with_gz(f"{prefix}-labels-idx1-ubyte")]
    candidates = [root, root / name, root / torchvision_dir / "raw"]
    if name == "fashion-mnist" and system_copy:
        candidates.append(Path(FASHION_MNIST_SYSTEM_DIR))
    image_path, label_path = _locate(dataset, candidates, groups)

    images = read_idx(image_path, dataset=dataset)
    labels = read_idx(label_path, dataset=dataset)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise _malformed(
            dataset,
            image_path,
            f"it holds {images.dtype} values of shape {images.shape} instead of uint8 (N, 28, 28)",
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise _malformed(
            dataset,
            label_path,
            f"it holds {labels.dtype} values of shape {labels.shape} instead of uint8 (N,)",
        )
    try:
        labels = _check_labels(labels, images.shape[0], 0, 9)
    except _Malformed as exc:
        raise _malformed(dataset, label_path, str(exc)) from exc
    return _to_array_data(images.reshape(-1, 1, 28, 28), labels, 10, (image_path, label_path))


# ------------------------------------------------------------------------------------------------- SVHN


def read_svhn(root: str | Path, split: Literal["train", "test", "extra"]) -> ArrayData:
    """Read SVHN's cropped digits from the official MATLAB v5 file {split}_32x32.mat.

    The file stores X as (32, 32, 3, N) and labels 1..10 with 10 meaning the digit 0; both are
    converted to the (N, 3, 32, 32) / 0..9 convention every other reader uses.
    """
    if split not in ("train", "test", "extra"):
        raise DataError(f"Unknown SVHN split {split!r}: expected 'train', 'test' or 'extra'.")
    root = Path(root)
    (path,) = _locate("SVHN", [root, root / "svhn"], [(f"{split}_32x32.mat",)])
    try:
        import scipy.io
    except ImportError as exc:
        raise DataError("Reading SVHN needs scipy, which is not installed (pip install scipy).") from exc
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # scipy raises many types (ValueError, TypeError, MatReadError, ...)
        raise _malformed("SVHN", path, f"it is not a readable MATLAB v5 file ({type(exc).__name__})") from exc
    try:
        if "X" not in mat or "y" not in mat:
            raise _Malformed("it lacks the X or y variable")
        images, labels = mat["X"], mat["y"]
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise _Malformed("X is not a uint8 array")
        if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
            raise _Malformed(f"X has shape {images.shape} instead of (32, 32, 3, N)")
        labels = _check_labels(labels, images.shape[3], 0, 10)
    except _Malformed as exc:
        raise _malformed("SVHN", path, str(exc)) from exc
    # (H, W, C, N) -> (N, C, H, W); the label 10 stands for the digit 0.
    return _to_array_data(images.transpose(3, 2, 0, 1), labels % 10, 10, (path,))


# -------------------------------------------------------------------------------------------- smallNORB


_NORB_TYPES = {0x1E3D4C51: "<f4", 0x1E3D4C53: "<f8", 0x1E3D4C54: "<i4", 0x1E3D4C55: "u1", 0x1E3D4C56: "<i2"}
_NORB_FILES = {
    True: (
        "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat",
        "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat",
    ),
    False: (
        "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat",
        "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat",
    ),
}


def _parse_norb(data: bytes) -> np.ndarray:
    """NORB binary matrix content (already gunzipped) as a read-only native array, or _Malformed.

    Layout: int32 magic, int32 ndim, max(3, ndim) int32 dims (unused ones are 1), then the data,
    all little-endian.
    """
    if len(data) < 8:
        raise _Malformed(f"it holds {len(data)} bytes, fewer than the 8-byte header start")
    magic, ndim = struct.unpack("<Ii", data[:8])
    if magic not in _NORB_TYPES:
        raise _Malformed(f"0x{magic:08X} is not a NORB magic number (0x1E3D4C55 bytes, 0x1E3D4C54 int32)")
    if not 1 <= ndim <= _MAX_DIMS:
        raise _Malformed(f"the header declares {ndim} dimensions")
    header = 8 + 4 * max(3, ndim)
    if len(data) < header:
        raise _Malformed(f"the header of {header} bytes is truncated to {len(data)} bytes")
    dims = struct.unpack(f"<{ndim}i", data[8 : 8 + 4 * ndim])
    if min(dims) < 0:
        raise _Malformed(f"the header declares negative dimensions {dims}")
    dtype = np.dtype(_NORB_TYPES[magic])
    count = math.prod(dims)
    if len(data) - header != count * dtype.itemsize:
        shape = " x ".join(map(str, dims))
        raise _Malformed(
            f"the header declares {shape} values ({count * dtype.itemsize} bytes) "
            f"but {len(data) - header} bytes follow it"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header) if count else np.empty(0, dtype)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _read_norb(path: Path) -> np.ndarray:
    data = _read_bytes(path, "smallNORB")
    try:
        return _parse_norb(data)
    except _Malformed as exc:
        raise _malformed("smallNORB", path, str(exc)) from exc


def read_smallnorb(root: str | Path, train: bool, stereo: bool = False) -> ArrayData:
    """Read smallNORB from the official binary matrix files (plain or .gz), 5 object categories.

    Each sample is a stereo pair of 96x96 images; stereo=False keeps the first camera only, giving
    the single-channel input the BNAS-v2 experiments use, while stereo=True returns both as channels.
    """
    root = Path(root)
    dat_name, cat_name = _NORB_FILES[bool(train)]
    dat_path, cat_path = _locate("smallNORB", [root, root / "smallnorb"], [_with_gz(dat_name), _with_gz(cat_name)])
    images = _read_norb(dat_path)
    labels = _read_norb(cat_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (2, 96, 96):
        raise _malformed(
            "smallNORB",
            dat_path,
            f"it holds {images.dtype} values of shape {images.shape} instead of uint8 (N, 2, 96, 96)",
        )
    if labels.dtype != np.int32 or labels.ndim != 1:
        raise _malformed(
            "smallNORB",
            cat_path,
            f"it holds {labels.dtype} values of shape {labels.shape} instead of int32 (N,)",
        )
    try:
        labels = _check_labels(labels, images.shape[0], 0, 4)
    except _Malformed as exc:
        raise _malformed("smallNORB", cat_path, str(exc)) from exc
    return _to_array_data(images if stereo else images[:, :1], labels, 5, (dat_path, cat_path))


# ------------------------------------------------------------------------------------------ image folder


def read_image_folder(root: str | Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """List an ImageNet-style tree root/CLASS/*.JPEG|jpg|png as (path, label) samples and class names.

    Classes are sorted by name so labels are stable across machines (and match torchvision's
    ImageFolder); an empty class folder is an error because it would silently shift the labels.
    """
    root = Path(root)
    expected = f"one sub-directory of .JPEG, .jpg or .png images per class in {root}"
    if not root.is_dir():
        raise MissingData(f"Image folder not found: expected {expected}", _DOWNLOAD_HINT.format("them"))
    try:
        class_dirs = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
        )
        samples: list[tuple[Path, int]] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not files:
                raise DataError(
                    f"Image folder class {class_dir.name} is empty: expected .JPEG, .jpg or .png images "
                    f"in {class_dir} ({_DOWNLOAD_HINT.format('them')})."
                )
            samples.extend((path, label) for path in files)
    except OSError as exc:
        raise DataError(f"Image folder {root} could not be listed ({exc.strerror or type(exc).__name__}).") from exc
    if not class_dirs:
        raise DataError(f"Image folder is empty: expected {expected} ({_DOWNLOAD_HINT.format('them')}).")
    return samples, [p.name for p in class_dirs]
