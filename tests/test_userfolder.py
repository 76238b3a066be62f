"""--dataset folder: generated trees (gray and RGB, png and jpg, with and without test/, a corrupt file, an empty
class) searched, trained, evaluated, exported and predicted on; the cache reused and invalidated; a bad tree is one
sentence."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bnas.cli import main
from bnas.data import userfolder
from bnas.data.userfolder import auto_size, list_tree, open_user_folder

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parent.parent / "README.md"
TINY = ["--epochs", "1", "--init-channels", "4", "--device", "cpu", "--quiet", "--log-every", "0"]
TRAIN = [*TINY, "--layers", "2", "--enhance-cells", "1", "--batch-size", "8", "--eval-batch-size", "16"]
SEARCH = [*TINY, "--batch-size", "4", "--eval-every", "0"]


def make_tree(root: Path, counts: dict[str, int], mode: str = "RGB", ext: str = "png", size=(30, 28), seed=0) -> Path:
    """root/CLASS/i.ext: each class a different mean brightness plus noise, so a network can learn a little."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            a = np.clip(rng.normal(40 + 70 * k, 25, shape), 0, 255).astype(np.uint8)
            Image.fromarray(a, mode).save(root / name / f"{i}.{ext}")
    return root


def cfg(data_dir, **kw) -> SimpleNamespace:
    base = dict(data_dir=str(data_dir), image_size=0, cache_dir=None, skip_bad=False, test_split=0.2, workers=0)
    return SimpleNamespace(**{**base, **kw})


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def rgb_tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("rgb") / "photos", {"cat": 12, "dog": 12, "emu": 12})


@pytest.fixture(scope="module")
def trained(rgb_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "t"
    assert main(["train", "--dataset", "folder", "--data-dir", str(rgb_tree), *TRAIN, "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------------------------- runs


def test_train_records_the_tree_and_its_statistics(trained, rgb_tree):
    config = json.loads((trained / "config.json").read_text())
    data = config["data"]
    assert config["image_size"] == 32 == data["size"]  # median side 28 -> 32, written back into the config
    assert data["classes"] == ["cat", "dog", "emu"] and data["channels"] == 3 and data["stem"] == "cifar"
    assert data["images"] == {"train": 30, "test": 6}  # 2 of each class's 12 held out
    assert data["test_split"]["share"] == 0.2 and data["test_split"]["stratified"]
    assert len(data["mean"]) == len(data["std"]) == 3 and all(0 < s < 1 for s in data["std"])
    results = json.loads((trained / "results.json").read_text())
    assert results["images"] == {"train": 30, "test": 6}
    state = torch.load(trained / "checkpoint.pt", weights_only=False)
    assert state["meta"]["classes"] == ["cat", "dog", "emu"] and state["meta"]["mean"] == tuple(data["mean"])


def test_eval_reads_the_same_split(trained, capsys):
    code, out, _ = run_cli(["eval", str(trained), "--json", "--device", "cpu"], capsys)
    assert code == 0 and json.loads(out)["images"] == 6


def test_search_on_a_gray_jpg_tree_with_test(tmp_path, capsys):
    root = tmp_path / "digits"
    make_tree(root / "train", {"one": 10, "two": 10}, mode="L", ext="jpg")
    make_tree(root / "test", {"one": 3, "two": 2}, mode="L", ext="jpg", seed=1)
    make_tree(root / "train", {"one": 1}, mode="RGB", ext="jpg", seed=2)  # overwrites one.0: one RGB image
    out = tmp_path / "s"
    code, _, err = run_cli(
        ["search", "--dataset", "folder", "--data-dir", str(root), *SEARCH, "--out", str(out)], capsys
    )
    assert code == 0, err
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["channels"] == 1 and data["converted"] == 1  # the majority is gray; the RGB image converted
    assert data["test_split"] == {"from": "test/"} and data["images"] == {"train": 20, "test": 5}
    out_t = tmp_path / "t"
    argv = ["train", "--dataset", "folder", "--data-dir", str(root), *TRAIN, "--out", str(out_t)]
    assert main([*argv, "--genotype", str(out / "genotype.json"), "--batch-size", "4"]) == 0
    assert json.loads((out_t / "results.json").read_text())["images"] == {"train": 20, "test": 5}


def test_search_leaves_the_held_out_images_out(rgb_tree, tmp_path):
    from bnas.search import SearchConfig, Searcher

    c = SearchConfig.resolve("clr", dataset="folder", data_dir=str(rgb_tree), epochs=1, init_channels=4, batch_size=4,
                             device="cpu", quiet=True, out=str(tmp_path / "s"))  # fmt: skip
    s = Searcher(c)
    assert sum(s._split_sizes) == 30 and c.image_size == 32


def test_export_and_predict_agree_with_onnxruntime_alone(trained, rgb_tree, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "model.onnx"
    assert main(["export", str(trained), "--format", "onnx", "--out", str(model)]) == 0
    image = tmp_path / "new.png"
    from PIL import Image

    Image.open(rgb_tree / "dog" / "3.png").resize((45, 40)).save(image)  # another size: resize and crop
    capsys.readouterr()
    code, out, _ = run_cli(["predict", str(trained), str(image), "--json"], capsys)
    assert code == 0
    (ours,) = json.loads(out)
    assert len(ours["top"]) == 3 and {t["class"] for t in ours["top"]} == {"cat", "dog", "emu"}
    snippet = re.search(r"## Your own images.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    snippet = re.sub(r"runs/[\w.-]+/model\.onnx", str(model), snippet).replace("new.jpg", str(image))
    done = subprocess.run([sys.executable, "-c", "import sys\nsys.modules['bnas'] = None\n" + snippet],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = [line.split() for line in done.stdout.splitlines()]
    assert [name for name, _ in theirs] == [t["class"] for t in ours["top"]]
    assert [float(p) for _, p in theirs] == pytest.approx([t["p"] for t in ours["top"]], abs=2e-3)
    info = json.loads(__import__("onnx").load(str(model)).metadata_props[0].value)
    assert info["classes"] == ["cat", "dog", "emu"] and info["size"] == 32 and info["mode"] == "RGB"


def test_a_tree_too_large_for_memory_streams_through_workers(rgb_tree, tmp_path, monkeypatch):
    from bnas.train import TrainConfig, Trainer

    monkeypatch.setattr(userfolder, "resident_budget", lambda device: 0)
    c = TrainConfig.resolve(dataset="folder", data_dir=str(rgb_tree), epochs=1, init_channels=4, layers=2,
                            enhance_cells=1, batch_size=8, eval_batch_size=16, device="cpu", quiet=True, log_every=0,
                            workers=0, out=str(tmp_path / "t"))  # fmt: skip
    trainer = Trainer(c)
    assert trainer.spec.info["loader"] == "workers" and trainer.sizes == {"train": 30, "test": 6}
    results = trainer.run_training()
    assert results["images"] == {"train": 30, "test": 6}
    from bnas.evaluation import evaluate_checkpoint  # eval streams the same test split (data/source.py)

    assert evaluate_checkpoint(tmp_path / "t", device="cpu")["top1"] == results["final_epoch"]["test_top1"]
    from bnas.search import SearchConfig, Searcher

    sc = SearchConfig.resolve("clr", dataset="folder", data_dir=str(rgb_tree), epochs=1, init_channels=4, batch_size=4,
                              device="cpu", quiet=True, log_every=0, workers=0, out=str(tmp_path / "s"))  # fmt: skip
    searcher = Searcher(sc)
    assert searcher.data_info["loader"] == "workers" and searcher._split_sizes == (15, 15)
    searcher.run_search()


def test_a_folder_run_resumes(rgb_tree, tmp_path, capsys):
    out = tmp_path / "t"
    argv = ["train", "--dataset", "folder", "--data-dir", str(rgb_tree), *TRAIN, "--out", str(out)]
    assert main(argv) == 0
    code, _, err = run_cli(["train", "--resume", str(out), "--extend-epochs", "1", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["epochs"] == 2


# ------------------------------------------------------------------------------------------- the cache


def test_the_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "tree", {"a": 6, "b": 6})
    counts = {"decode": 0, "header": 0}
    real_load, real_header = userfolder.load_image, userfolder._header

    def counting_load(*a):
        counts["decode"] += 1
        return real_load(*a)

    def counting_header(*a):
        counts["header"] += 1
        return real_header(*a)

    monkeypatch.setattr(userfolder, "load_image", counting_load)
    monkeypatch.setattr(userfolder, "_header", counting_header)
    first = open_user_folder(cfg(root), torch.device("cpu"))
    assert counts == {"decode": 12, "header": 12} and first.info["decoded"] == 12
    cache = root / ".bnas-cache"
    assert len(list(cache.glob("*.npy"))) == 1
    second = open_user_folder(cfg(root), torch.device("cpu"))
    assert counts == {"decode": 12, "header": 12} and second.info["decoded"] == 0  # nothing decoded again
    assert torch.equal(first.read("train").images, second.read("train").images)
    assert second.info["mean"] == first.info["mean"]
    open_user_folder(cfg(root, image_size=48), torch.device("cpu"))  # another size: another entry
    assert counts["decode"] == 24 and counts["header"] == 12
    make_tree(root, {"a": 1}, seed=5)  # a.0 rewritten: the tree's listing changes
    st = (root / "a" / "0.png").stat()
    os.utime(root / "a" / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = open_user_folder(cfg(root), torch.device("cpu"))
    assert counts["decode"] == 36 and third.info["decoded"] == 12
    assert len(list(cache.glob("*.npy"))) == 1  # the old listing's entries are gone
    (root / "b" / "6.png").write_bytes((root / "b" / "0.png").read_bytes())  # a new file: decoded again
    fourth = open_user_folder(cfg(root), torch.device("cpu"))
    assert fourth.info["decoded"] == 13 and sum(fourth.info["images"].values()) == 13


def test_a_corrupt_cache_is_rebuilt_and_cache_dir_is_used(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "tree", {"a": 4, "b": 4})
    elsewhere = tmp_path / "cache"
    spec = open_user_folder(cfg(root, cache_dir=str(elsewhere)), torch.device("cpu"))
    assert Path(spec.info["cache"]).parent == elsewhere and not (root / ".bnas-cache").exists()
    npy = Path(spec.info["cache"])
    npy.write_bytes(npy.read_bytes()[:100])  # truncated by a crash of something else
    again = open_user_folder(cfg(root, cache_dir=str(elsewhere)), torch.device("cpu"))
    assert again.info["decoded"] == 8 and torch.equal(again.read("train").images, spec.read("train").images)
    # the data directory not writable: the user's cache directory
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real = userfolder._writable
    monkeypatch.setattr(userfolder, "_writable", lambda d: d.parent != root and real(d))
    spec = open_user_folder(cfg(root), torch.device("cpu"))
    assert Path(spec.info["cache"]).is_relative_to(tmp_path / "xdg" / "bnas" / "folders")


# ------------------------------------------------------------------------------------------- the tree


def test_sizes_stems_and_the_split():
    assert [auto_size(s) for s in (20, 28, 47, 50, 80, 100, 112, 150, 500)] == [32, 32, 32, 64, 96, 96, 96, 160, 224]


def test_the_held_out_split_is_stratified_and_fixed(tmp_path):
    root = make_tree(tmp_path / "tree", {"a": 10, "b": 5, "c": 2})
    spec = open_user_folder(cfg(root, test_split=0.3, image_size=16), torch.device("cpu"))
    test = spec.read("test").labels.tolist()
    assert sorted(test) == [0, 0, 0, 1, 1, 2]  # round(0.3 n), at least one, never a whole class
    again = open_user_folder(cfg(root, test_split=0.3, image_size=16), torch.device("cpu"))
    assert again.info["test_split"]["files_sha256"] == spec.info["test_split"]["files_sha256"]
    big = open_user_folder(cfg(root, image_size=96), torch.device("cpu"))
    assert big.stem == "imagenet" and big.in_channels == 3 and big.size == 96


def test_skip_bad_leaves_unreadable_images_out_and_counts_them(tmp_path, capsys):
    root = make_tree(tmp_path / "tree", {"a": 9, "b": 9})
    (root / "a" / "junk.png").write_bytes(b"not an image at all")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    argv = ["train", "--dataset", "folder", "--data-dir", str(root), *TRAIN, "--out", str(tmp_path / "t")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "2 images in" in err and "a/junk.png (not an image)" in err and "b/cut.png (truncated)" in err
    assert "--skip-bad" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--skip-bad"]) == 0
    data = json.loads((tmp_path / "t" / "config.json").read_text())["data"]
    assert data["skipped"]["count"] == 2 and set(data["skipped"]["files"]) == {"a/junk.png", "b/cut.png"}


def _tree_without_images(tmp: Path) -> Path:
    (tmp / "t").mkdir()
    return tmp / "t"


def _loose_images(tmp: Path) -> Path:
    make_tree(tmp / "x", {"a": 3})
    for p in (tmp / "x" / "a").iterdir():
        p.rename(tmp / "x" / p.name)
    (tmp / "x" / "a").rmdir()
    return tmp / "x"


def _empty_class(tmp: Path) -> Path:
    make_tree(tmp / "t", {"a": 3, "b": 3})
    (tmp / "t" / "c").mkdir()
    return tmp / "t"


def _one_class(tmp: Path) -> Path:
    return make_tree(tmp / "t", {"a": 5})


def _test_only(tmp: Path) -> Path:
    make_tree(tmp / "t" / "test", {"a": 2, "b": 2})
    return tmp / "t"


def _test_has_other_classes(tmp: Path) -> Path:
    make_tree(tmp / "t" / "train", {"a": 4, "b": 4})
    make_tree(tmp / "t" / "test", {"a": 1, "zebra": 1})
    return tmp / "t"


def _all_bad_in_a_class(tmp: Path) -> Path:
    make_tree(tmp / "t", {"a": 4})
    (tmp / "t" / "b").mkdir()
    (tmp / "t" / "b" / "x.jpg").write_bytes(b"garbage")
    return tmp / "t"


BAD_TREES = {
    "missing": (lambda tmp: tmp / "nowhere", [], "is not a directory"),
    "no class folders": (_tree_without_images, [], "holds no class folders"),
    "images but no class folders": (_loose_images, [], "need a folder per class"),
    "empty class": (_empty_class, [], "1 class folder without images (c)"),
    "one class": (_one_class, [], "one class folder only (a)"),
    "test without train": (_test_only, [], "train does not"),
    "test has other classes": (_test_has_other_classes, [], "classes that"),
    "a class of bad images": (_all_bad_in_a_class, ["--skip-bad"], "no readable training images are left in class b"),
    "fewer images than a batch": (lambda tmp: make_tree(tmp / "t", {"a": 3, "b": 3}), [], "larger than the 4"),
    "image size": (lambda tmp: make_tree(tmp / "t", {"a": 5, "b": 5}), ["--image-size", "8"], "at least 16"),
}


@pytest.mark.parametrize("command", ["train", "search"])
@pytest.mark.parametrize("case", list(BAD_TREES))
def test_every_bad_tree_is_one_sentence(case, command, tmp_path, capsys):
    make, extra, words = BAD_TREES[case]
    root = make(tmp_path)
    opts = TRAIN if command == "train" else [*SEARCH, "--batch-size", "8"]
    argv = [command, "--dataset", "folder", "--data-dir", str(root), *opts, *extra, "--out", str(tmp_path / "r")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnas: error: ") and "Traceback" not in err, err
    if case == "fewer images than a batch" and command == "search":
        words = "larger than the 2 images of a search split"
    assert words in lines[0], lines[0]


def test_listing_order_and_layouts(tmp_path):
    make_tree(tmp_path / "t" / "train", {"b": 2, "a": 2}, ext="jpg")
    listing = list_tree(tmp_path / "t")
    assert listing.classes == ["a", "b"] and listing.rels[0] == "train/a/0.jpg" and not listing.has_test


def test_a_study_on_a_folder_searches_and_trains_every_candidate(rgb_tree, tmp_path, capsys):
    """`bnas study` with "dataset": "folder": the tree reaches the searches and the trainings alike."""
    tiny = {"epochs": 1, "init_channels": 4, "device": "cpu", "log_every": 0, "data_dir": str(rgb_tree)}
    study = {
        "dataset": "folder", "methods": ["clr"], "seeds": [0], "random_cells": 1,
        "search": {**tiny, "batch_size": 4, "eval_every": 0},
        "train": {**tiny, "layers": 2, "enhance_cells": 1, "batch_size": 8, "eval_batch_size": 16},
    }  # fmt: skip
    config = tmp_path / "study.json"
    config.write_text(json.dumps(study))
    out = tmp_path / "study"
    code, _, err = run_cli(["study", "--config", str(config), "--out", str(out)], capsys)
    assert code == 0, err
    for run in ("train/clr-s0", "train/random-cell-0"):
        results = json.loads((out / run / "results.json").read_text())
        assert results["dataset"] == "folder" and results["images"]["train"] + results["images"]["test"] == 36
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # the header, the searched cell and the random cell
