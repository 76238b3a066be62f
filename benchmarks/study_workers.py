"""The 2-worker target of issue 27: the same study of 8 small synthetic runs (4 CLR searches, then their 4 cells
trained) run with `bnas study --workers 1` and `--workers 2` into fresh directories; checks that both give the
same results (every candidate's test accuracy and parameters, every search's genotype) and prints the wall
times and their ratio as JSON. The target: the 2-worker study in at most 0.65x the 1-worker wall time.

Every run gets one thread either way (`OMP_NUM_THREADS=N` for N workers: each worker gets its share, 1), so
that the two studies compute the same numbers. Run it alone on an idle machine (each worker needs a core):

    python benchmarks/study_workers.py --rounds 2 --out benchmarks/results/study_workers.json

`--quick` shrinks the runs to seconds to check the script, not to time anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.65


def study_config(args: argparse.Namespace) -> dict:
    """4 searches + 4 trainings, sized for about 20-40 s per run alone on one core of the 2-core dev machine
    (estimated from the --quick runs' times on a loaded machine: a training epoch costs about 1/7 of a search
    epoch at the same size, so the trainings get more epochs and channels). `run_times` in the output says."""
    images, epochs, channels, t_epochs, t_channels = (args.images, args.epochs, args.channels, args.train_epochs,
                                                      args.train_channels)  # fmt: skip
    if args.quick:
        images, epochs, channels, t_epochs, t_channels = 32, 1, 4, 1, 4
    common = {"synthetic_size": images, "batch_size": 8, "quiet": True, "device": "cpu", "log_every": 0}
    search = {**common, "epochs": epochs, "init_channels": channels, "eval_every": 0}
    train = {**common, "epochs": t_epochs, "init_channels": t_channels, "layers": 2, "enhance_cells": 1,
             "eval_batch_size": 32}  # fmt: skip
    return {"dataset": "synthetic", "methods": ["clr"], "seeds": [0, 1, 2, 3], "search": search, "train": train}


def run_study(config_file: Path, out: Path, workers: int, threads: int = 0) -> float:
    """Wall time of `bnas study --workers N` (a fresh directory), each worker with one thread (`threads`: the
    whole study's thread budget instead, e.g. 2 for one worker using both cores)."""
    budget = str(threads or workers)
    env = {**os.environ, "OMP_NUM_THREADS": budget, "MKL_NUM_THREADS": budget}
    argv = [sys.executable, "-m", "bnas.cli", "study", "--config", str(config_file), "--out", str(out),
            "--workers", str(workers)]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"bnas study --workers {workers} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def outcome(out: Path) -> dict:
    """What must not depend on the number of workers: per candidate its accuracy, size and searched genotype."""
    with open(out / "results.csv") as f:
        rows = {r["candidate"]: {k: r[k] for k in ("test_acc", "parameters", "param_free")} for r in csv.DictReader(f)}
    for search in sorted((out / "search").iterdir()):
        rows[search.name]["genotype"] = json.loads((search / "genotype.json").read_text())
    return rows


def run_times(out: Path) -> dict:
    with open(out / "results.csv") as f:
        return {r["candidate"]: {"search_s": r["search_s"], "train_s": r["train_s"]} for r in csv.DictReader(f)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny runs: checks the script, times nothing")
    p.add_argument("--rounds", type=int, default=1, help="pairs of studies, alternating which goes first")
    p.add_argument("--images", type=int, default=192, help="synthetic images of each run")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each search")
    p.add_argument("--channels", type=int, default=6, help="initial channels of each search")
    p.add_argument("--train-epochs", type=int, default=8, help="epochs of each training")
    p.add_argument("--train-channels", type=int, default=8, help="initial channels of each training")
    p.add_argument(
        "--two-thread-baseline",
        action="store_true",
        help="also time, each round, the 1-worker study "
        "with 2 threads (what `--workers 1` uses on a 2-core machine by default; its results may differ "
        "in the last digits, so they are not compared)",
    )
    p.add_argument("--keep", type=Path, help="keep the study directories here (default: a temporary directory)")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bnas-study-workers-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        config = study_config(args)
        config_file = root / "study.json"
        config_file.write_text(json.dumps(config, indent=1))
        load = os.getloadavg()
        walls: dict[int, list[float]] = {1: [], 2: []}
        outcomes, times = {}, {}
        two_threads: list[float] = []
        for r in range(args.rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                out = root / f"round{r}-w{workers}"
                if out.exists():
                    sys.exit(f"{out} exists: give --keep an empty directory")
                walls[workers].append(run_study(config_file, out, workers))
                outcomes[(r, workers)] = outcome(out)
                times[f"round{r}-w{workers}"] = run_times(out)
                print(f"round {r + 1}: {workers} worker(s) {walls[workers][-1]:.1f} s", file=sys.stderr)
            if args.two_thread_baseline:
                out = root / f"round{r}-w1-2threads"
                two_threads.append(run_study(config_file, out, 1, threads=2))
                times[out.name] = run_times(out)
                print(f"round {r + 1}: 1 worker, 2 threads {two_threads[-1]:.1f} s", file=sys.stderr)
        identical = all(o == outcomes[(0, 1)] for o in outcomes.values())
        best = {w: min(v) for w, v in walls.items()}
        ratio = best[2] / best[1]
        result = {
            "runs": 8, "workers_1_s": walls[1], "workers_2_s": walls[2], "ratio_best": round(ratio, 3),
            "target": TARGET, "met": ratio <= TARGET and identical, "identical_results": identical,
            "workers_1_two_threads_s": two_threads or None,
            "ratio_vs_two_threads": round(best[2] / min(two_threads), 3) if two_threads else None,
            "quick": args.quick, "config": config, "run_times": times, "load_average_before": load,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        }  # fmt: skip
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if not identical:
        sys.exit("the studies with 1 and 2 workers gave different results")


if __name__ == "__main__":
    main()
