"""Tests of bnas.data.formats: small files written in exactly the official on-disk formats."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnas.data import formats
from bnas.data.formats import (
    ArrayData,
    read_cifar,
    read_idx,
    read_image_folder,
    read_mnist_like,
    read_smallnorb,
    read_svhn,
)
from bnas.errors import DataError

RANDOM_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(data: ArrayData, shape: tuple[int, ...], num_classes: int) -> None:
    assert isinstance(data, ArrayData)
    assert data.images.dtype == torch.uint8 and data.images.is_contiguous()
    assert tuple(data.images.shape) == shape
    assert data.labels.dtype == torch.int64 and tuple(data.labels.shape) == (shape[0],)
    assert data.num_classes == num_classes


def _one_sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message


# ------------------------------------------------------------------------------------------------ CIFAR


def _py2_str(raw: bytes) -> bytes:
    """A Python 2 str in pickle protocol 2 (what the official CIFAR batches contain)."""
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw


def _py2_uint8_array(array: np.ndarray) -> bytes:
    """A uint8 ndarray exactly as numpy under Python 2 pickled it (numpy.core, str payload)."""
    shape = b"".join(b"J" + struct.pack("<i", d) for d in array.shape)
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01("
        + shape
        + b"tcnumpy\ndtype\nU\x02u1K\x00K\x01\x87R("
        + b"K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + _py2_str(array.tobytes())
        + b"tb"
    )


def _py2_batch(images: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    """A CIFAR batch pickled the way the official Python 2 files are: a dict with str keys."""
    label_ops = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + _py2_str(b"batch_label")
        + _py2_str(b"training batch 1 of 5")
        + _py2_str(b"data")
        + _py2_uint8_array(images)
        + _py2_str(label_key)
        + label_ops
        + b"u."
    )


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _write_cifar10(directory: Path, per_batch: int = 3, protocol: int | None = None) -> dict[str, tuple]:
    """Write cifar-10-batches-py content; protocol None means the Python 2 byte layout."""
    directory.mkdir(parents=True, exist_ok=True)
    content = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        images = _cifar_images(per_batch, i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        if protocol is None:
            raw = _py2_batch(images, labels, b"labels")
        else:
            raw = pickle.dumps({b"batch_label": b"x", b"data": images, b"labels": labels}, protocol=protocol)
        (directory / name).write_bytes(raw)
        content[name] = (images, labels)
    return content


@pytest.mark.parametrize("protocol", [None, 2, 5])
@pytest.mark.parametrize("point_at_batches_dir", [False, True])
def test_cifar10_round_trip(tmp_path: Path, protocol: int | None, point_at_batches_dir: bool) -> None:
    content = _write_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    root = tmp_path / "cifar-10-batches-py" if point_at_batches_dir else tmp_path

    train = read_cifar(root, "cifar10", train=True)
    _check(train, (15, 3, 32, 32), 10)
    expected = np.concatenate([content[f"data_batch_{k}"][0] for k in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == [v for k in range(1, 6) for v in content[f"data_batch_{k}"][1]]

    test = read_cifar(str(root), "cifar10", train=False)
    _check(test, (3, 3, 32, 32), 10)
    images, labels = content["test_batch"]
    # Channel-major rows: the first 1024 bytes are the red plane of the first image.
    assert np.array_equal(test.images[0, 0].numpy().reshape(-1), images[0, :1024])
    assert np.array_equal(test.images[2, 2].numpy().reshape(-1), images[2, 2048:])
    assert test.labels.tolist() == labels


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    images = _cifar_images(4, 7)
    batch = {b"data": images, b"fine_labels": [0, 42, 99, 7], b"coarse_labels": [0, 1, 2, 3]}
    (directory / "train").write_bytes(pickle.dumps(batch, protocol=2))
    (directory / "test").write_bytes(_py2_batch(images[:2], [99, 5], b"fine_labels"))

    train = read_cifar(tmp_path, "cifar100", train=True)
    _check(train, (4, 3, 32, 32), 100)
    assert train.labels.tolist() == [0, 42, 99, 7]
    assert np.array_equal(train.images.numpy().reshape(4, -1), images)
    test = read_cifar(directory, "cifar100", train=False)
    assert test.labels.tolist() == [99, 5]


def test_cifar_missing_names_files_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_cifar(tmp_path / "nowhere", "cifar10", train=True)
    message = str(info.value)
    _one_sentence(message)
    assert message.startswith("CIFAR-10 not found")
    assert "data_batch_1" in message and "data_batch_5" in message
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message

    with pytest.raises(DataError, match=r"CIFAR-100 not found: expected test in"):
        read_cifar(tmp_path, "cifar100", train=False)


def test_cifar_incomplete_names_missing_batch(tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "cifar-10-batches-py", protocol=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"CIFAR-10 is incomplete: data_batch_3 is missing in") as info:
        read_cifar(tmp_path, "cifar10", train=True)
    _one_sentence(str(info.value))
    assert read_cifar(tmp_path, "cifar10", train=False).images.shape[0] == 3  # the test split is whole


@pytest.mark.parametrize("cut", [0, 1, 10, 100, -1])
def test_cifar_truncated_batch(tmp_path: Path, cut: int) -> None:
    _write_cifar10(tmp_path, protocol=None)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match=r"CIFAR-10 file .*test_batch is malformed"):
        read_cifar(tmp_path, "cifar10", train=False)


@pytest.mark.parametrize("seed", range(5))
def test_cifar_random_bytes(tmp_path: Path, seed: int) -> None:
    raw = np.random.default_rng(seed).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    (tmp_path / "test").write_bytes(raw if seed else b"\x80\x02" + raw)
    with pytest.raises(DataError, match="CIFAR-100 file"):
        read_cifar(tmp_path, "cifar100", train=False)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_refuses_code_in_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="could not be unpickled"):
        read_cifar(tmp_path, "cifar10", train=False)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        ([1, 2, 3], "instead of a dict"),
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "not a uint8 array"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "instead of \\(N, 3072\\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels range from 0 to 10"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "instead of an integer type"),
    ],
)
def test_cifar_malformed_content(tmp_path: Path, batch: object, reason: str) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=reason) as info:
        read_cifar(tmp_path, "cifar10", train=False)
    _one_sentence(str(info.value))


# -------------------------------------------------------------------------------------------------- IDX


_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX layout: 0x00 0x00, type code, ndim, big-endian uint32 dims, big-endian data."""
    dtype = array.dtype if array.dtype.itemsize == 1 else array.dtype.newbyteorder(">")
    header = bytes([0, 0, _IDX_CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    raw = _idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_and_labels(tmp_path: Path, gz: bool) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    raw_images = _idx_bytes(images)
    assert raw_images[:4] == b"\x00\x00\x08\x03" and raw_images[4:8] == b"\x00\x00\x00\x03"
    got = read_idx(_write_idx(tmp_path / f"img{suffix}", images, gz))
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    got = read_idx(str(_write_idx(tmp_path / f"lbl{suffix}", labels, gz)))
    assert _idx_bytes(labels)[:4] == b"\x00\x00\x08\x01"
    assert np.array_equal(got, labels)


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path: Path) -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "plain-name", array, gz=True)), array)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "fake.gz", array, gz=False)), array)


def test_read_idx_big_endian_types(tmp_path: Path) -> None:
    array = np.array([[-70000, 1, 2**31 - 1]], dtype=np.int32)
    got = read_idx(_write_idx(tmp_path / "a", array))
    assert got.dtype == np.int32 and got.dtype.isnative and np.array_equal(got, array)
    shorts = np.array([-2, 300], dtype=np.int16)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "b", shorts)), shorts)
    assert read_idx(_write_idx(tmp_path / "c", array)).flags.writeable


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "fewer than the 4-byte"),
        (b"\x00\x00\x08", "fewer than the 4-byte"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "not an IDX magic number"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", "header of 16 bytes is truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "declares 3 values \\(3 bytes\\) but 2 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "but 2 bytes follow"),
        (b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff\x00", "4294967295 x 4294967295"),
    ],
)
def test_read_idx_malformed(tmp_path: Path, raw: bytes, reason: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=reason) as info:
        read_idx(path)
    _one_sentence(str(info.value))
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    raw = gzip.compress(_idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_idx(path, dataset="MNIST")


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="IDX file not found: expected nope-idx1-ubyte in"):
        read_idx(tmp_path / "nope-idx1-ubyte")


@RANDOM_SETTINGS
@given(raw=st.binary(max_size=64), gz=st.booleans())
def test_read_idx_random_bytes_only_raise_data_error(tmp_path: Path, raw: bytes, gz: bool) -> None:
    path = tmp_path / "random"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    try:
        array = read_idx(path)
    except DataError as exc:
        _one_sentence(str(exc))
    else:  # the rare random file that happens to be valid must honour its header
        assert array.size * array.dtype.itemsize == len(raw) - 4 - 4 * array.ndim


@RANDOM_SETTINGS
@given(
    code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
    tail=st.binary(max_size=32),
)
def test_read_idx_random_headers(tmp_path: Path, code: int, dims: list[int], tail: bytes) -> None:
    path = tmp_path / "random-header"
    path.write_bytes(bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + tail)
    try:
        array = read_idx(path)
    except DataError as exc:
        assert "is malformed" in str(exc)
    else:
        assert list(array.shape) == dims


# ---------------------------------------------------------------------------------------- MNIST family


def _mnist_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_mnist(directory: Path, gz: bool, n_train: int = 5, n_test: int = 3) -> dict[str, tuple]:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    content = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _mnist_split(n, len(prefix))
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        content[prefix] = (images, labels)
    return content


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("mnist", "."),
        ("mnist", "mnist"),
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "."),
        ("fashion-mnist", "fashion-mnist"),
        ("fashion-mnist", "FashionMNIST/raw"),
    ],
)
def test_mnist_like_layouts(tmp_path: Path, monkeypatch, name: str, layout: str, gz: bool) -> None:
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    content = _write_mnist(tmp_path / layout, gz)
    for train, key, n in ((True, "train", 5), (False, "t10k", 3)):
        data = read_mnist_like(tmp_path, name, train=train)
        _check(data, (n, 1, 28, 28), 10)
        assert np.array_equal(data.images[:, 0].numpy(), content[key][0])
        assert data.labels.tolist() == content[key][1].tolist()


def test_mnist_missing_names_files_and_directories(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_mnist_like(tmp_path, "mnist", train=False)
    message = str(info.value)
    _one_sentence(message)
    assert message.startswith("MNIST not found: expected t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]")
    assert str(tmp_path / "MNIST" / "raw") in message and "--data-dir" in message


def test_fashion_mnist_falls_back_to_system_copy(tmp_path: Path, monkeypatch) -> None:
    system = tmp_path / "system"
    content = _write_mnist(system, gz=True)
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIR", system)
    data = read_mnist_like(tmp_path / "empty-root", "fashion-mnist", train=False)
    assert data.labels.tolist() == content["t10k"][1].tolist()
    with pytest.raises(DataError, match="MNIST not found"):  # plain MNIST has no system copy
        read_mnist_like(tmp_path / "empty-root", "mnist", train=False)

    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="Fashion-MNIST not found") as info:
        read_mnist_like(tmp_path / "empty-root", "fashion-mnist", train=True)
    assert str(tmp_path / "absent") in str(info.value)


def test_mnist_incomplete(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"MNIST is incomplete: train-labels-idx1-ubyte\[\.gz\] is missing in"):
        read_mnist_like(tmp_path, "mnist", train=True)


@pytest.mark.parametrize(
    ("which", "array", "reason"),
    [
        ("images", np.zeros((3, 28, 27), np.uint8), "instead of uint8 \\(N, 28, 28\\)"),
        ("images", np.zeros((3, 28, 28), np.int32), "instead of uint8 \\(N, 28, 28\\)"),
        ("labels", np.zeros((3, 1), np.uint8), "instead of uint8 \\(N,\\)"),
        ("labels", np.zeros(4, np.uint8), "4 labels"),
        ("labels", np.array([0, 1, 10], np.uint8), "labels range from 0 to 10"),
    ],
)
def test_mnist_inconsistent_files(tmp_path: Path, which: str, array: np.ndarray, reason: str) -> None:
    _write_mnist(tmp_path, gz=False)
    name = "t10k-images-idx3-ubyte" if which == "images" else "t10k-labels-idx1-ubyte"
    _write_idx(tmp_path / name, array)
    with pytest.raises(DataError, match=reason) as info:
        read_mnist_like(tmp_path, "mnist", train=False)
    assert str(info.value).startswith(f"MNIST file {tmp_path / name} is malformed")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated_file(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path, gz=gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"Fashion-MNIST file .* is malformed"):
        read_mnist_like(tmp_path, "fashion-mnist", train=False)


@pytest.mark.skipif(
    not (formats.FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's fashion-mnist package is not installed",
)
def test_real_fashion_mnist_test_split(tmp_path: Path) -> None:
    data = read_mnist_like(tmp_path, "fashion-mnist", train=False)
    _check(data, (10000, 1, 28, 28), 10)
    assert torch.bincount(data.labels, minlength=10).tolist() == [1000] * 10
    assert data.images.max().item() == 255 and data.images.float().mean().item() > 10


# ------------------------------------------------------------------------------------------------- SVHN


def _write_svhn(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # labels 1..10, 10 is the digit 0
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, {"X": x, "y": y}, format="5")
    return x, y


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_svhn_round_trip(tmp_path: Path, split: str) -> None:
    x, y = _write_svhn(tmp_path / f"{split}_32x32.mat", 12)
    data = read_svhn(tmp_path, split)
    _check(data, (12, 3, 32, 32), 10)
    assert data.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert data.labels.tolist() == (y[:, 0] % 10).tolist()
    for n, c, h, w in [(0, 0, 0, 0), (5, 2, 31, 7), (11, 1, 3, 30)]:
        assert data.images[n, c, h, w].item() == x[h, w, c, n]


def test_svhn_float_labels(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    x = np.zeros((32, 32, 3, 3), np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10.0], [1.0], [3.0]])})
    assert read_svhn(tmp_path, "test").labels.tolist() == [0, 1, 3]


def test_svhn_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_svhn(tmp_path, "train")
    message = str(info.value)
    _one_sentence(message)
    assert message.startswith("SVHN not found: expected train_32x32.mat in")
    assert str(tmp_path) in message


@pytest.mark.parametrize("cut", [0, 50, 128, 300, -100])
def test_svhn_truncated(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "test_32x32.mat"
    _write_svhn(path, 4)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match=r"SVHN file .*test_32x32\.mat is malformed"):
        read_svhn(tmp_path, "test")


@pytest.mark.parametrize("seed", range(5))
def test_svhn_random_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "test_32x32.mat"
    _write_svhn(path, 2)
    header = path.read_bytes()[:128]  # a genuine v5 header followed by garbage
    raw = np.random.default_rng(seed).integers(0, 256, size=2000, dtype=np.uint8).tobytes()
    path.write_bytes(header + raw if seed % 2 else raw)
    with pytest.raises(DataError, match="SVHN file"):
        read_svhn(tmp_path, "test")


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "lacks the X or y"),
        ({"X": np.zeros((32, 32, 2), np.uint8), "y": np.ones((2, 1))}, "instead of \\(32, 32, 3, N\\)"),
        ({"X": np.zeros((32, 32, 3, 2), np.float64), "y": np.ones((2, 1))}, "X is not a uint8 array"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])}, "labels range from 1 to 11"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.5], [2]])}, "integer type"),
    ],
)
def test_svhn_malformed_content(tmp_path: Path, variables: dict, reason: str) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "train_32x32.mat", variables)
    with pytest.raises(DataError, match=reason):
        read_svhn(tmp_path, "train")


# -------------------------------------------------------------------------------------------- smallNORB


_NORB_MAGIC = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype("<i4"): 0x1E3D4C54}
_TRAIN_DAT, _TRAIN_CAT = (
    "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat",
    "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat",
)
_TEST_DAT, _TEST_CAT = (
    "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat",
    "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat",
)


def _norb_bytes(array: np.ndarray) -> bytes:
    """NORB binary matrix: int32 magic, int32 ndim, max(3, ndim) int32 dims padded with 1, data (LE)."""
    dims = list(array.shape) + [1] * (3 - array.ndim)
    header = struct.pack(f"<ii{len(dims)}i", _NORB_MAGIC[array.dtype], array.ndim, *dims)
    return header + array.astype(array.dtype.newbyteorder("<")).tobytes()


def _write_norb(directory: Path, train: bool, n: int, gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(train))
    dat = rng.integers(0, 256, (n, 2, 96, 96), dtype=np.uint8)
    cat = (np.arange(n) % 5).astype(np.int32)
    suffix = ".gz" if gz else ""
    for name, array in ((_TRAIN_DAT if train else _TEST_DAT, dat), (_TRAIN_CAT if train else _TEST_CAT, cat)):
        raw = _norb_bytes(array)
        (directory / (name + suffix)).write_bytes(gzip.compress(raw) if gz else raw)
    return dat, cat


def test_norb_header_layout() -> None:
    cat = _norb_bytes(np.array([4, 0, 2], np.int32))
    # ndim 1, but three dims are stored, the extra ones being 1.
    assert struct.unpack("<5i", cat[:20]) == (0x1E3D4C54, 1, 3, 1, 1)
    assert len(cat) == 20 + 12
    dat = _norb_bytes(np.zeros((1, 2, 96, 96), np.uint8))
    assert struct.unpack("<Ii4i", dat[:24]) == (0x1E3D4C55, 4, 1, 2, 96, 96) and len(dat) == 24 + 2 * 96 * 96


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_smallnorb_round_trip(tmp_path: Path, train: bool, gz: bool) -> None:
    dat, cat = _write_norb(tmp_path, train, 7, gz)
    mono = read_smallnorb(tmp_path, train=train)
    _check(mono, (7, 1, 96, 96), 5)
    assert np.array_equal(mono.images[:, 0].numpy(), dat[:, 0])
    assert mono.labels.tolist() == [0, 1, 2, 3, 4, 0, 1] == cat.tolist()
    both = read_smallnorb(str(tmp_path), train=train, stereo=True)
    _check(both, (7, 2, 96, 96), 5)
    assert np.array_equal(both.images.numpy(), dat)


def test_smallnorb_subdirectory(tmp_path: Path) -> None:
    _write_norb(tmp_path / "smallnorb", False, 2)
    assert read_smallnorb(tmp_path, train=False).images.shape == (2, 1, 96, 96)


def test_smallnorb_missing_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_smallnorb(tmp_path, train=True)
    message = str(info.value)
    _one_sentence(message)
    assert message.startswith(f"smallNORB not found: expected {_TRAIN_DAT}[.gz] and {_TRAIN_CAT}[.gz] in {tmp_path}")

    _write_norb(tmp_path, False, 2)
    (tmp_path / _TEST_CAT).unlink()
    with pytest.raises(DataError, match=rf"smallNORB is incomplete: {_TEST_CAT}\[\.gz\] is missing"):
        read_smallnorb(tmp_path, train=False)


@pytest.mark.parametrize("cut", [0, 5, 12, 23, 1000, -1])
def test_smallnorb_truncated(tmp_path: Path, cut: int) -> None:
    _write_norb(tmp_path, True, 2)
    path = tmp_path / _TRAIN_DAT
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match=f"smallNORB file .*{_TRAIN_DAT} is malformed") as info:
        read_smallnorb(tmp_path, train=True)
    _one_sentence(str(info.value))


@pytest.mark.parametrize(
    ("cat", "reason"),
    [
        (np.array([0, 5], np.int32), "labels range from 0 to 5"),
        (np.array([0, 1, 2], np.int32), "3 labels"),
        (np.array([0, 1], np.uint8), "instead of int32 \\(N,\\)"),
    ],
)
def test_smallnorb_bad_labels(tmp_path: Path, cat: np.ndarray, reason: str) -> None:
    _write_norb(tmp_path, False, 2)
    (tmp_path / _TEST_CAT).write_bytes(_norb_bytes(cat))
    with pytest.raises(DataError, match=reason):
        read_smallnorb(tmp_path, train=False)


def test_smallnorb_wrong_image_shape(tmp_path: Path) -> None:
    _write_norb(tmp_path, False, 2)
    (tmp_path / _TEST_DAT).write_bytes(_norb_bytes(np.zeros((2, 1, 96, 96), np.uint8)))
    with pytest.raises(DataError, match="instead of uint8 \\(N, 2, 96, 96\\)"):
        read_smallnorb(tmp_path, train=False)


@RANDOM_SETTINGS
@given(
    magic=st.sampled_from([0x1E3D4C51, 0x1E3D4C53, 0x1E3D4C54, 0x1E3D4C55, 0x1E3D4C56, 0, 0xFFFFFFFF]),
    ndim=st.integers(-(2**31), 2**31 - 1) | st.integers(0, 6),
    dims=st.lists(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 4), max_size=6),
    tail=st.binary(max_size=48),
)
def test_smallnorb_random_headers(tmp_path: Path, magic: int, ndim: int, dims: list[int], tail: bytes) -> None:
    path = tmp_path / _TEST_CAT
    path.write_bytes(struct.pack(f"<Ii{len(dims)}i", magic, ndim, *dims) + tail)
    (tmp_path / _TEST_DAT).write_bytes(_norb_bytes(np.zeros((1, 2, 96, 96), np.uint8)))
    try:
        data = read_smallnorb(tmp_path, train=False)
    except DataError as exc:
        _one_sentence(str(exc))
    else:
        assert data.labels.tolist() == [0]


@RANDOM_SETTINGS
@given(raw=st.binary(max_size=80))
def test_smallnorb_random_bytes(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / _TEST_DAT).write_bytes(raw)
    (tmp_path / _TEST_CAT).write_bytes(_norb_bytes(np.array([1], np.int32)))
    with pytest.raises(DataError, match="smallNORB file"):
        read_smallnorb(tmp_path, train=False)


# ------------------------------------------------------------------------------------------ image folder


def test_image_folder(tmp_path: Path) -> None:
    for cls, names in {"n02": ["b.JPEG", "a.jpg"], "n01": ["z.png", "notes.txt"], "n10": ["x.PNG"]}.items():
        (tmp_path / cls).mkdir()
        for name in names:
            (tmp_path / cls / name).write_bytes(b"img")
    (tmp_path / ".cache").mkdir()
    (tmp_path / "README").write_text("not a class")
    samples, classes = read_image_folder(str(tmp_path))
    assert classes == ["n01", "n02", "n10"]
    assert samples == [
        (tmp_path / "n01" / "z.png", 0),
        (tmp_path / "n02" / "a.jpg", 1),
        (tmp_path / "n02" / "b.JPEG", 1),
        (tmp_path / "n10" / "x.PNG", 2),
    ]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Image folder not found") as info:
        read_image_folder(tmp_path / "missing")
    _one_sentence(str(info.value))
    assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(DataError, match="Image folder is empty"):
        read_image_folder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "a.gif").write_bytes(b"x")
    with pytest.raises(DataError, match="Image folder class dog is empty"):
        read_image_folder(tmp_path)
