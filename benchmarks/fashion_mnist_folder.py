"""Fashion-MNIST as a PNG folder tree, and the check that `--dataset folder` matches `--dataset fashion-mnist`.

    python benchmarks/fashion_mnist_folder.py --out data/fm-folder             # write the tree (70,000 PNGs)
    python benchmarks/fashion_mnist_folder.py --out data/fm-folder --compare   # then train both ways

The tree is OUT/train/CLASS/NNNNN.png and OUT/test/CLASS/NNNNN.png (the official 60,000/10,000 split; the
class folders are numbered, 0_t-shirt ... 9_ankle-boot, so the folder labels are the IDX labels). Writing is
idempotent: a complete tree (OUT/fashion-mnist.json) is left as it is.

--compare trains the same genotype with the same recipe and budget on `--dataset fashion-mnist` and on
`--dataset folder --image-size 28` (the folder run twice: the first decodes the tree into the cache, the
second reads the cache) and prints their final-epoch test accuracy and training speed as a markdown table
(docs/userfolder.md says what to expect). Every run gets the same `--normalize`: data (default; the training
images' mean and std, the folder's own default) or off (pixels / 255, the built-in data set's own, SPEC §9).
`--recipe fast --budget 10m` trains every run with the CPU recipe for a fixed time instead of `--epochs`;
`--skip folder-cached` leaves a run out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def write_tree(out: Path, data_dir: str | None, limit: int | None = None) -> dict:
    from PIL import Image

    from bnas.data.formats import read_mnist_like

    marker = out / "fashion-mnist.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("limit") == limit:
            return done
    counts = {}
    for split, train in (("train", True), ("test", False)):
        data = read_mnist_like(data_dir or "data", "fashion-mnist", train, system_copy=data_dir is None)
        n = data.images.shape[0] if limit is None else min(limit, data.images.shape[0])
        images, labels = data.images[:n, 0].numpy(), data.labels[:n].numpy()
        for k, name in enumerate(CLASSES):
            (out / split / f"{k}_{name}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = out / split / f"{labels[i]}_{CLASSES[labels[i]]}" / f"{i:05d}.png"
            if not path.exists():
                Image.fromarray(np.ascontiguousarray(images[i]), "L").save(path)
        counts[split] = n
    done = {"limit": limit, "images": counts}
    marker.write_text(json.dumps(done) + "\n")
    return done


def _train(args: argparse.Namespace, name: str, extra: list[str]) -> dict:
    out = Path(args.runs) / name
    if args.budget:
        recipe = ["--recipe", args.recipe, "--budget", args.budget]
    else:
        recipe = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--init-channels",
                  str(args.init_channels), "--lr", str(args.lr), "--drop-path", "0"]  # fmt: skip
    cmd = [sys.executable, "-m", "bnas.cli", "train", "--genotype", args.genotype, *recipe, "--seed", str(args.seed),
           "--device", args.device, "--quiet", "--overwrite", "--out", str(out), *extra]  # fmt: skip
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    res = json.loads((out / "results.json").read_text())
    rates = [r["images_per_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r.get("kind") == "epoch"]  # fmt: skip
    return {"run": name, "top1": res["final_epoch"]["test_top1"], "images_per_s": sum(rates) / len(rates),
            "train_s": res["train_s"], "wall_s": wall}  # fmt: skip


def compare(args: argparse.Namespace) -> list[dict]:
    given = ["--data-dir", args.data_dir] if args.data_dir else []  # none: data, then Debian's copy
    builtin = ["--dataset", "fashion-mnist", *given, "--normalize", args.normalize]
    folder = ["--dataset", "folder", "--data-dir", str(args.out), "--image-size", "28", "--normalize", args.normalize]
    runs = [("fashion-mnist", builtin), ("folder-first", folder), ("folder-cached", folder)]
    rows = []
    for name, extra in runs:
        if name in args.skip:
            continue
        if name == "folder-first":  # so that the first folder run decodes the tree into the cache
            shutil.rmtree(args.out / ".bnas-cache", ignore_errors=True)
        rows.append(_train(args, name, extra))
    print("| run | final-epoch test top-1 | training images/s | training s | wall s (with loading) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['top1']:.4f} | {r['images_per_s']:.1f} | {r['train_s']:.1f} | {r['wall_s']:.1f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where to write the PNG tree")
    p.add_argument("--data-dir", help="the IDX files (default: data, then Debian's copy)")
    p.add_argument("--limit", type=int, help="only the first N images of each split (a quick tree)")
    p.add_argument("--compare", action="store_true", help="then train on both and print the table")
    p.add_argument("--runs", default="runs/fm-folder-check", help="run directories of --compare")
    p.add_argument("--genotype", default="BNASv2_CLR_v1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--recipe", default="fast", choices=["fast", "paper"], help="the recipe of --budget runs")
    p.add_argument("--budget", help="train every run for this long with --recipe (instead of --epochs ...)")
    p.add_argument("--normalize", default="data", choices=["data", "off"], help="--normalize of every run")
    p.add_argument("--skip", nargs="*", default=[], choices=["fashion-mnist", "folder-first", "folder-cached"])
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    t0 = time.perf_counter()
    done = write_tree(args.out, args.data_dir, args.limit)
    print(f"{args.out}: {done['images']['train']} train / {done['images']['test']} test PNGs "
          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    if args.compare:
        compare(args)


if __name__ == "__main__":
    main()
