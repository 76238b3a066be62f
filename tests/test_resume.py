"""Resumable searches (issue 5): a resumed run equals an uninterrupted one, and a SIGKILL loses no epoch."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bnas.errors import CheckpointError
from bnas.progress import Reporter
from bnas.runs import RunDir, load_checkpoint
from bnas.search import SearchConfig, Searcher

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out, order: int, **kw) -> SearchConfig:
    return SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=3, order=order,
        out=str(out), quiet=True, log_every=1, **kw,
    )  # fmt: skip


class _SnapshotAfter(Reporter):
    """Copies the run directory when epoch `n` has finished: what a kill right then leaves on disk."""

    def __init__(self, src, dst, n: int):
        super().__init__(quiet=True, out=io.StringIO())
        self.src, self.dst, self.n = src, dst, n

    def epoch_done(self, rec, genotype) -> None:
        if rec["epoch"] == self.n:
            shutil.copytree(self.src, self.dst)


@pytest.mark.parametrize(
    ("order", "extra"),
    [(1, {"hessian_every": 2, "hessian_iters": 3}), (2, {})],
    ids=["first-order+hessian", "second-order"],
)
def test_resumed_search_equals_uninterrupted(order, extra, tmp_path):
    # one uninterrupted 3-epoch run; its directory as it stood after epoch 2 is resumed by a fresh Searcher
    full, cut = tmp_path / "full", tmp_path / "cut"
    a = Searcher(_cfg(full, order, **extra))
    a.run_search(_SnapshotAfter(full, cut, n=2))  # epochs are numbered from 1
    at_cut = load_checkpoint(cut / "checkpoint.pt", "search")
    assert at_cut["epoch"] == 2

    b = Searcher(_cfg(cut, order, **extra), resume=True)
    b.open_run()
    assert b.start_epoch == 2
    b.run_search(Reporter(quiet=True, out=io.StringIO()))

    # the resumed epoch moved the alphas (so the comparison below means something) ...
    moved = [p.detach() - at_cut["model"][f"arch.{k}"] for k, p in b.model.arch.items()]
    assert max(m.abs().max().item() for m in moved) > 1e-6
    # ... exactly as the uninterrupted run moved them: alphas, Adam state, weights, BN statistics
    for name, p in a.model.arch.items():
        torch.testing.assert_close(b.model.arch[name], p, rtol=1e-6, atol=1e-9)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-7)
    ra, rb = a.history[-1], b.history[-1]
    for key in ("train_loss", "arch_loss", "valid_loss", "lr", "arch_lr", *(["hessian_eig"] if extra else [])):
        assert rb[key] == pytest.approx(ra[key], rel=1e-5), key
    assert rb["genotype"] == ra["genotype"]
    # the records of the resumed directory read as one run
    assert [r["epoch"] for r in RunDir(cut).metrics("epoch")] == [1, 2, 3]
    assert [r["epoch"] for r in RunDir(cut).records("alphas.jsonl")] == [0, 1, 2, 3]


def test_truncate_drops_later_records_cut_lines_and_temp_files(tmp_path):
    run = RunDir.create(tmp_path / "run")
    for e in range(3):
        run.log({"kind": "step", "epoch": e, "step": 1})
        run.log({"kind": "epoch", "epoch": e})
        run.append("alphas.jsonl", {"epoch": e})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "epoch": 3, "st')  # a line cut by a kill
    (run.path / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")
    run.truncate_metrics(after_epoch=1)
    assert [(r["kind"], r["epoch"]) for r in run.metrics(None)] == [
        ("step", 0),
        ("epoch", 0),
        ("step", 1),
        ("epoch", 1),
    ]
    assert [r["epoch"] for r in run.records("alphas.jsonl")] == [0, 1]
    assert not list(run.path.glob(".*.tmp"))


def test_resume_refuses_a_partial_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "checkpoint.pt", "search")


def _bnas(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnas.cli", "search", *args]


def test_sigkill_mid_epoch_then_resume_loses_no_epoch(tmp_path):
    out = tmp_path / "run"
    steps = 4  # 64 synthetic images, half for the weights, batch 8
    args = ["--dataset", "synthetic", "--synthetic-size", "64", "--batch-size", "8", "--init-channels", "4"]
    args += ["--epochs", "3", "--log-every", "1", "--eval-every", "0", "--device", "cpu", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_bnas(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    loads, killed_in = 0, None
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "checkpoint.pt").exists():
                load_checkpoint(out / "checkpoint.pt", "search")  # raises if a reader ever sees a partial file
                loads += 1
            records = RunDir(out).metrics(None)
            finished = {r["epoch"] for r in records if r["kind"] == "epoch"}
            started = [r for r in records if r["kind"] == "step" and r["epoch"] >= 2 and r["epoch"] not in finished]
            if started:  # at least one complete epoch, and the next one under way: kill it now
                os.kill(proc.pid, signal.SIGKILL)
                killed_in = started[-1]["epoch"]
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_in is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert killed_in is not None, f"the search ended before it could be killed mid-epoch: {err.decode()[-500:]}"
    assert proc.returncode == -signal.SIGKILL
    assert loads > 0  # the checkpoint was read while the search was writing it

    # every epoch finished before the kill is on disk, in the checkpoint and in the records
    state = load_checkpoint(out / "checkpoint.pt", "search")
    assert state["epoch"] == killed_in - 1
    assert [r["epoch"] for r in RunDir(out).metrics("epoch")] == list(range(1, killed_in))

    done = subprocess.run(
        _bnas("--resume", str(out), "--quiet"), capture_output=True, text=True, env=env, timeout=300
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at epoch {killed_in}/3" in done.stdout
    records = RunDir(out).metrics(None)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
    step_ids = [(r["epoch"], r["step"]) for r in records if r["kind"] == "step"]
    assert step_ids == [(e, s) for e in range(1, 4) for s in range(1, steps + 1)]  # none lost, none twice
    assert [r["epoch"] for r in RunDir(out).records("alphas.jsonl")] == [0, 1, 2, 3]
    assert sorted(p.name for p in (out / "genotypes").iterdir()) == [f"epoch_{e:03d}.json" for e in range(1, 4)]
    assert load_checkpoint(out / "checkpoint.pt", "search")["epoch"] == 3
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
    assert not list(out.glob(".*.tmp"))
