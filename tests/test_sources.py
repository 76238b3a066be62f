"""Data sources (data/registry.py, data/source.py, data/splits.py): a run reads the data it was told to read or
says in one sentence that it is not there; config.json records the files read; evaluation reads the split the
training held out; a dry run builds its network without the data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bnas.cli import main
from bnas.data import formats
from bnas.data.registry import DATASETS, get_entry, names, open_source
from bnas.data.splits import val_split
from bnas.errors import DataError
from bnas.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
SEARCH = ["--epochs", "1", "--batch-size", "8", "--init-channels", "4", "--eval-every", "0", "--device", "cpu",
          "--quiet", "--log-every", "0"]  # fmt: skip


def _idx(path: Path, array: np.ndarray) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    path.write_bytes(bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def _fashion(root: Path, n_train: int = 64, n_test: int = 16) -> Path:
    """A tiny Fashion-MNIST in the official IDX format."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(root / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.fixture
def system_copy(tmp_path, monkeypatch) -> Path:
    """A system copy of Fashion-MNIST, and a working directory without `data`."""
    system = _fashion(tmp_path / "system")
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIR", system)
    monkeypatch.chdir(tmp_path)
    return system


def test_every_name_opens_from_its_entry_without_reading(tmp_path):
    """Every data set name opens into one source that knows its network's input without reading a file."""
    assert set(names("search")) == set(DATASETS) and "imagenet-subset" not in names("train")
    for name in DATASETS:
        if name == "folder":  # its classes are the tree's folders: nothing to know without one
            continue
        cfg = TrainConfig(dataset=name, data_dir=str(tmp_path / "nothing-here"), image_size=64)
        source = open_source(cfg, torch.device("cpu"))
        assert source.num_classes >= 5 and source.in_channels in (1, 3) and source.stem in ("cifar", "imagenet")
        assert source.info["dataset"] == name and not source.info["files"]  # nothing read yet


def test_a_named_data_dir_is_read_or_refused_in_one_sentence(system_copy, tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    argv = ["search", "--dataset", "fashion-mnist", *SEARCH]
    assert main([*argv, "--data-dir", str(missing), "--out", str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and str(system_copy) not in err
    assert f"pass --download to fetch it into {missing}, or give the --data-dir that holds its files" in err
    assert not (tmp_path / "s1" / "config.json").exists()
    # without --data-dir: data (absent here), then the system copy, and config.json says which files were read
    assert main([*argv, "--out", str(tmp_path / "s2")]) == 0
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert config["data_dir"] is None
    files = config["data"]["files"]["train"]
    assert files == [str(system_copy / "train-images-idx3-ubyte"), str(system_copy / "train-labels-idx1-ubyte")]
    assert "test" not in config["data"]["files"]  # a search never reads the test split
    # a named directory that holds the files is read, and only it
    mine = _fashion(tmp_path / "mine", n_train=48)
    assert main([*argv, "--data-dir", str(mine), "--out", str(tmp_path / "s3")]) == 0
    data = json.loads((tmp_path / "s3" / "config.json").read_text())["data"]
    assert data["files"]["train"][0] == str(mine / "train-images-idx3-ubyte") and data["images"]["train"] == 48
    # config.json stays resumable: no --data-dir resumes as no --data-dir
    from bnas.search import Searcher, resume_config

    cfg = resume_config(tmp_path / "s2")
    assert cfg.data_dir is None
    Searcher(cfg, resume=True).open_run()


def test_the_missing_data_sentence_fits_the_case(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.chdir(tmp_path)
    named = str(tmp_path / "here")

    def message(name: str, data_dir: str | None) -> str:
        cfg = TrainConfig(dataset=name, data_dir=data_dir)
        with pytest.raises(DataError) as info:
            open_source(cfg, torch.device("cpu")).read("train")
        text = str(info.value)
        assert len(text.splitlines()) == 1 and text.endswith(").")
        return text

    text = message("cifar10", None)  # downloadable, no --data-dir: where it looked and both ways out
    assert "in data/cifar-10-batches-py or data" in text
    assert "pass --download to fetch it into data, or --data-dir DIR where its files are" in text
    text = message("mnist", named)  # downloadable, a named directory: no "pass --data-dir"
    assert "pass --download to fetch it into " + named in text and "pass --data-dir" not in text
    text = message("smallnorb", named)  # not downloadable by torchvision: no --download
    assert "--download" not in text and f"download it from the data set's site into {named})." in text
    text = message("smallnorb", None)
    assert "--download" not in text and "or pass --data-dir DIR where its files are" in text
    assert "--download" not in message("imagenet", named)
    with pytest.raises(DataError, match="^--dataset folder reads your images from --data-dir DIR .* none was given"):
        open_source(TrainConfig(dataset="folder"), torch.device("cpu"))


def test_eval_val_reads_the_images_training_held_out(tmp_path):
    cfg = TrainConfig.resolve(
        dataset="synthetic", synthetic_size=64, val_split=0.25, batch_size=8, eval_batch_size=16, init_channels=4,
        layers=2, enhance_cells=1, epochs=1, quiet=True, log_every=0, seed=3, out=str(tmp_path / "t"),
    )  # fmt: skip
    trainer = Trainer(cfg)
    held = trainer.loaders["val"]
    source = open_source(cfg, torch.device("cpu"))
    held_idx, kept_idx = val_split(64, 0.25, 3)  # the one permutation (splits.py)
    everything = source.read("train")
    assert torch.equal(held.images, everything.images[held_idx]) and held.images.shape[0] == 16
    assert torch.equal(trainer.loaders["train"].images, everything.images[kept_idx])
    result = trainer.run_training()
    from bnas.evaluation import evaluate_checkpoint, load_trained

    _, saved, meta = load_trained(tmp_path / "t")
    loader = open_source(saved, torch.device("cpu"), meta).eval_loader(
        saved, "val", torch.device("cpu"), 16, None, meta
    )
    assert torch.equal(loader.images, held.images) and torch.equal(loader.labels, held.labels)
    again = evaluate_checkpoint(tmp_path / "t", split="val", device="cpu")
    assert again["top1"] == pytest.approx(result["final_epoch"]["val_top1"])


def test_a_dry_run_reads_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data here
    argv = ["search", "--method", "pc", "--dataset", "imagenet-subset", "--image-size", "64", "--dry-run"]
    assert main([*argv, "--data-dir", str(tmp_path / "no-subset")]) == 0
    out = capsys.readouterr().out
    assert "supernet (pc, bcnn, imagenet-subset):" in out and "architecture parameters" in out
    assert main(["search", "--dataset", "cifar10", "--dry-run"]) == 0  # no CIFAR-10 anywhere
    assert "supernet (clr, bcnn, cifar10)" in capsys.readouterr().out
    assert main(["search", "--dataset", "cifar10", *SEARCH]) == 2  # the run itself needs the data
    assert "pass --download" in capsys.readouterr().err


def test_a_subset_search_reads_its_own_two_splits(tmp_path):
    """imagenet-subset: the subset's train is the weights split and its val the architecture split (SPEC §10)."""
    from PIL import Image

    root = tmp_path / "subset"
    for split, n in (("train", 6), ("val", 3)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 36), (60 * i, 100, 20)).save(root / split / c / f"{i}.JPEG")
    from bnas.search import SearchConfig, Searcher

    cfg = SearchConfig.resolve(
        "pc",
        dataset="imagenet-subset",
        data_dir=str(root),
        image_size=32,
        batch_size=2,
        init_channels=4,
        epochs=1,
        workers=0,
        device="cpu",
        quiet=True,
        out=str(tmp_path / "s"),
    )
    searcher = Searcher(cfg)
    assert searcher._split_sizes == (12, 6) and searcher.model.cfg.num_classes == 2
    assert get_entry("imagenet-subset").search_defaults["partial_k"] == cfg.partial_k == 2
