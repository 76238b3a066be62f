"""Run files get the permissions the umask gives any new file, so collaborators on a shared machine read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bnas.cli import main
from bnas.jsonio import atomic_write_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8", "--init-channels", "4", "--quiet"]


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> int:
        os.umask(mask)
        return mask

    yield set_mask
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_open_gives(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.json", lambda f: f.write(b"{}"))
    (tmp_path / "b.json").write_bytes(b"{}")  # what open() gives
    assert _modes(tmp_path)["a.json"] == _modes(tmp_path)["b.json"] == 0o666 & ~mask
    atomic_write_bytes(tmp_path / "a.json", lambda f: f.write(b"[]"), mode=0o640)  # a fixed mode still wins
    assert _modes(tmp_path)["a.json"] == 0o640 and (tmp_path / "a.json").read_bytes() == b"[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temp file left


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_of_a_search_a_training_and_an_export_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    search, train = tmp_path / "s", tmp_path / "t"
    assert main(["search", *TINY, "--epochs", "1", "--eval-every", "0", "--out", str(search)]) == 0
    argv = ["train", *TINY, "--genotype", str(search), "--epochs", "1", "--layers", "2", "--enhance-cells", "1"]
    assert main([*argv, "--val-split", "0.25", "--test-subset", "16", "--out", str(train)]) == 0
    assert main(["export", str(train)]) == 0
    assert main(["genotype", "plot", str(search), "-o", str(tmp_path / "cell.png")]) == 0
    modes = {**{f"s/{k}": v for k, v in _modes(search).items()}, **{f"t/{k}": v for k, v in _modes(train).items()}}
    modes["cell.png"] = _modes(tmp_path)["cell.png"]
    expected = {"s/config.json", "s/genotype.json", "s/checkpoint.pt", "s/metrics.jsonl", "s/alphas.jsonl"}
    expected |= {"s/summary.json", "s/genotypes/epoch_001.json", "t/config.json", "t/checkpoint.pt", "t/best.pt"}
    expected |= {"t/results.json", "t/summary.json", "t/metrics.jsonl", "t/model.pt2"}
    assert expected <= set(modes)
    for name, mode in modes.items():
        is_dir = (tmp_path / name).is_dir()
        want = (0o777 if is_dir else 0o666) & ~mask
        assert mode == want, f"{name}: {oct(mode)} under umask {oct(mask)}, want {oct(want)}"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_a_folder_cache_follows_the_umask(tmp_path, umask, mask):
    """The decoded-image cache next to the images is a file like any other: readable by others under 022 only."""
    from PIL import Image

    for c in range(2):
        (tmp_path / "photos" / f"c{c}").mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (32, 32), (20 * i, 100 * c, 50)).save(tmp_path / "photos" / f"c{c}" / f"{i}.png")
    umask(mask)
    argv = ["search", "--dataset", "folder", "--data-dir", str(tmp_path / "photos"), "--dry-run"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    cache = _modes(tmp_path / "photos" / ".bnas-cache")
    assert cache and all(m == (0o666 & ~mask) for m in cache.values()), cache
