"""Studies that leave one process (issue 27 items 1 and 4): workers share a study directory and claim its runs
through their locks, a killed worker's run is taken over and finishes exactly once, a failing run is retried
then reported while the others finish, and the exit code says whether every run finished."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnas.cli import main
from bnas.runs import LOCK_FILE, RunDir
from bnas.study import StudySpec, run_study

pytestmark = pytest.mark.usefixtures("one_thread")

SEARCH = dict(synthetic_size=32, batch_size=8, eval_every=0, quiet=True, device="cpu", epochs=1, init_channels=4,
              log_every=0)  # fmt: skip
TRAIN = dict(synthetic_size=32, batch_size=8, eval_batch_size=16, layers=2, enhance_cells=1, quiet=True, device="cpu",
             epochs=1, init_channels=4, log_every=0)  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def _study(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(config))
    return path


def _bnas(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnas.cli", "study", *args]


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "results.csv") as f:
        return {r["candidate"]: r for r in csv.DictReader(f)}


def test_two_worker_processes_finish_a_study_as_one_process_does(tmp_path):
    config = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0, 1], "random_cells": 1, "search": SEARCH,
              "train": TRAIN}  # fmt: skip
    file = _study(tmp_path, config)
    done = subprocess.run(_bnas("--config", str(file), "--out", str(tmp_path / "two"), "--workers", "2"),
                          capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "2"}, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "started 2 workers" in done.stdout
    run_study(StudySpec.from_json(config), tmp_path / "one", print_fn=lambda *a: None)  # one thread, as each worker

    two, one = _rows(tmp_path / "two"), _rows(tmp_path / "one")
    assert list(two) == list(one) == ["clr-s0", "clr-s1", "random-cell-0"]
    for name in one:  # identical results: every run's numbers, whichever worker ran it
        assert two[name]["test_acc"] == one[name]["test_acc"] and two[name]["param_free"] == one[name]["param_free"]
    pids = {json.loads(p.read_text())[0]["pid"] for p in (tmp_path / "two").rglob("failures.json")}
    assert not pids  # nothing failed
    assert not list((tmp_path / "two").rglob(LOCK_FILE))  # every claim was given back
    assert (tmp_path / "two/report.html").exists()


def test_a_killed_workers_run_is_taken_over_and_finishes_once(tmp_path):
    search = {**SEARCH, "synthetic_size": 64, "epochs": 2, "log_every": 1}
    config = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "search": search, "train": TRAIN}
    out = tmp_path / "s"
    assert main(["study", "--config", str(_study(tmp_path, config)), "--out", str(out), "--workers", "0"]) == 0
    run = out / "search" / "clr-s0"
    first = subprocess.Popen(_bnas("--worker", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline:
            steps = [r for r in RunDir(run).metrics(None) if r["kind"] == "step" and r["epoch"] == 2]
            if steps and (run / "checkpoint.pt").exists():  # mid-run: an epoch saved, the next under way
                os.kill(first.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid  # its claim is left behind

    second = subprocess.run(_bnas("--worker", str(out)), capture_output=True, text=True, env=ENV, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "search clr-s0 (method clr, seed 0): resuming from its checkpoint" in second.stdout
    records = RunDir(run).metrics(None)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]  # exactly once
    steps = [(r["epoch"], r["step"]) for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and len(steps) == 8
    assert list(_rows(out)) == ["clr-s0"]
    assert not list(out.rglob(LOCK_FILE))


def test_a_failing_run_is_retried_then_reported_while_the_others_finish(tmp_path, capsys):
    config = {"dataset": "synthetic", "seeds": [0], "published": ["BNASv2_CLR_v1"], "search": SEARCH, "train": TRAIN,
              "methods": ["clr", {"name": "boom", "method": "clr", "lr": 1e30}]}  # fmt: skip
    out = tmp_path / "s"
    assert main(["study", "--config", str(_study(tmp_path, config)), "--out", str(out), "--retries", "1"]) == 1
    printed = capsys.readouterr().out
    assert "attempt 2 of 2" in printed
    tries = json.loads((out / "search/boom-s0/failures.json").read_text())
    assert len(tries) == 2 and all("NaN or infinite" in t["error"] for t in tries)
    assert list(_rows(out)) == ["clr-s0", "BNASv2_CLR_v1-s0"]  # the others finished
    failed = json.loads((out / "results.json").read_text())["failed"]
    assert [(f["run"], f["attempts"]) for f in failed] == [("search/boom-s0", 2), ("train/boom-s0", 0)]
    assert failed[1]["error"] == "its search boom-s0 failed"
    for name in ("results.md", "report.html"):
        assert "search/boom-s0" in (out / name).read_text() and "NaN or infinite" in (out / name).read_text()

    (out / "results.json").unlink()
    assert main(["study", str(out), "--report"]) == 1  # every run has ended: the results again
    assert json.loads((out / "results.json").read_text())["failed"] == failed
    capsys.readouterr()


def test_report_of_an_unfinished_study_and_worker_misuse_are_one_sentence(tmp_path, capsys):
    config = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "search": SEARCH, "train": TRAIN}
    out = tmp_path / "s"
    assert main(["study", "--config", str(_study(tmp_path, config)), "--out", str(out), "--workers", "0"]) == 0
    assert main(["study", str(out), "--report"]) == 2
    assert "2 of the study's 2 runs have not ended (the first: search clr-s0)" in capsys.readouterr().err
    assert main(["study", "--worker", str(out), "--config", "x.json"]) == 2
    assert "--worker takes no --config" in capsys.readouterr().err
    assert main(["study", "--worker", str(tmp_path / "none")]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_sigterm_to_a_worker_saves_its_run_mid_epoch_and_the_next_worker_continues_it(tmp_path):
    search = {**SEARCH, "synthetic_size": 96, "epochs": 1, "log_every": 1}
    config = {"dataset": "synthetic", "methods": ["clr"], "seeds": [0], "search": search, "train": TRAIN}
    out = tmp_path / "s"
    assert main(["study", "--config", str(_study(tmp_path, config)), "--out", str(out), "--workers", "0"]) == 0
    run = out / "search" / "clr-s0"
    first = subprocess.Popen(_bnas("--worker", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline:
            if any(r["kind"] == "step" for r in RunDir(run).metrics(None)):
                first.send_signal(signal.SIGTERM)
                break
            time.sleep(0.01)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 75, err[-2000:]
    assert f"saved; continue with bnas study --worker {out}" in err
    assert not (run / LOCK_FILE).exists()  # a stopped worker gives its claim back at once
    second = subprocess.run(_bnas("--worker", str(out)), capture_output=True, text=True, env=ENV, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    steps = [(r["epoch"], r["step"]) for r in RunDir(run).metrics(None) if r["kind"] == "step"]
    assert steps == [(1, s) for s in range(1, 7)]  # 48 images per search split, batch 8: none lost, none twice
