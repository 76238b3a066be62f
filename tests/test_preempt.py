"""Preemption-safe runs (issue 27 item 3): SIGTERM or SIGUSR1 stops a search or a training at the next step
boundary with a checkpoint of that point of the epoch and exit code 75; `--resume` continues from that step,
and the finished run equals an uninterrupted one bit for bit on the CPU (records but for wall-clock figures,
alphas, genotype files, final weights, results)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnas.preempt import EXIT_PREEMPTED, Preempted
from bnas.runs import RunDir, load_checkpoint
from bnas.search import SearchConfig, Searcher
from bnas.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TIMES = {"time", "epoch_s", "images_per_s", "hessian_s", "search_s", "train_s"}  # wall-clock: differ between runs


def _search(out, method: str = "clr", resume: bool = False) -> Searcher:
    return Searcher(SearchConfig.resolve(
        method, dataset="synthetic", synthetic_size=64, batch_size=8, init_channels=4, epochs=2, log_every=1,
        random_candidates=2, out=str(out), quiet=True, device="cpu",
    ), resume=resume)  # fmt: skip


def _train(out, resume: bool = False) -> Trainer:
    return Trainer(TrainConfig.resolve(
        dataset="synthetic", synthetic_size=48, batch_size=8, eval_batch_size=16, init_channels=4, layers=2,
        enhance_cells=1, epochs=2, log_every=2, val_split=0.25, cutout=8, out=str(out), quiet=True, device="cpu",
    ), resume=resume)  # fmt: skip


def _signal_after(builder, epoch: int, step: int, signum: int, monkeypatch) -> None:
    """The process sends itself `signum` during step `step` (1-based) of `epoch`, as a scheduler would."""
    begin = builder.begin_epoch

    def begin_epoch(self, e):
        feed = begin(self, e)

        def signalled(i, *args):
            feed(i, *args)
            if e == epoch and i + 1 == step:
                os.kill(os.getpid(), signum)

        return signalled

    monkeypatch.setattr(builder, "begin_epoch", begin_epoch)


def _without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


def assert_same_run(got: Path, want: Path, kind: str) -> None:
    """Bit for bit: the records (wall-clock figures aside), the final weights and optimizer state, and a
    search's alphas and genotype files or a training's results."""
    assert _without_times(RunDir(got).metrics(None)) == _without_times(RunDir(want).metrics(None))
    a, b = (load_checkpoint(d / "checkpoint.pt", kind) for d in (got, want))
    assert a["epoch"] == b["epoch"] and "mid_epoch" not in a
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if kind == "search":
        assert (got / "alphas.jsonl").read_text() == (want / "alphas.jsonl").read_text()
        for name in ["genotype.json", *(f"genotypes/{p.name}" for p in (want / "genotypes").iterdir())]:
            assert (got / name).read_text() == (want / name).read_text(), name
    else:
        res, ref = (json.loads((d / "results.json").read_text()) for d in (got, want))
        assert res["final_epoch"] == ref["final_epoch"]
        assert res["selected_on_val"] == ref["selected_on_val"]


@pytest.mark.parametrize(
    ("kind", "method", "epoch", "step", "signum"),
    [
        ("search", "clr", 0, 2, signal.SIGTERM),  # in the first epoch: its checkpoint is the only one
        ("search", "random", 1, 1, signal.SIGUSR1),  # random search redraws the epoch's paths
        ("train", None, 1, 3, signal.SIGTERM),
    ],
    ids=["search-sigterm", "random-search-sigusr1", "train-sigterm"],
)
def test_signal_mid_epoch_then_resume_equals_uninterrupted(kind, method, epoch, step, signum, tmp_path, monkeypatch):
    make = (lambda out, **kw: _search(out, method, **kw)) if kind == "search" else _train
    full = make(tmp_path / "full")
    full.run_search() if kind == "search" else full.run_training()

    cut = tmp_path / "cut"
    _signal_after(type(full), epoch, step, signum, monkeypatch)
    run = make(cut)
    with pytest.raises(Preempted, match=f"stopped by {signal.Signals(signum).name} after step {step}/"):
        run.run_search() if kind == "search" else run.run_training()
    monkeypatch.undo()
    assert signal.getsignal(signum) is signal.SIG_DFL  # the run's handler is gone with the run
    state = load_checkpoint(cut / "checkpoint.pt", kind)
    assert state["epoch"] == epoch and state["mid_epoch"]["epoch"] == epoch  # finished epochs; the one under way
    assert state["mid_epoch"]["step"] == step  # the signal's own step is the boundary it stops at

    again = make(cut, resume=True)
    again.run_search() if kind == "search" else again.run_training()
    assert again.start_epoch == epoch
    assert_same_run(cut, tmp_path / "full", kind)


def test_signal_in_the_last_step_stops_after_the_epoch(tmp_path, monkeypatch):
    """A signal during an epoch's last step: the epoch's own checkpoint is the stop (no mid-epoch state)."""
    _signal_after(Searcher, 0, 4, signal.SIGTERM, monkeypatch)  # 32 images per split, batch 8: 4 steps
    with pytest.raises(Preempted, match="after epoch 1,"):
        _search(tmp_path / "run").run_search()
    state = load_checkpoint(tmp_path / "run/checkpoint.pt", "search")
    assert state["epoch"] == 1 and "mid_epoch" not in state


def test_truncate_keeps_the_steps_of_a_mid_epoch_checkpoint(tmp_path):
    run = RunDir.create(tmp_path / "run")
    for e in range(3):
        for s in (1, 2, 3):
            run.log({"kind": "step", "epoch": e, "step": s})
        run.log({"kind": "epoch", "epoch": e})
        run.append("alphas.jsonl", {"epoch": e})
    run.truncate_metrics(after_epoch=0, steps_kept=2)  # checkpoint: epoch 0 done, 2 steps of epoch 1
    assert [(r["kind"], r["epoch"], r.get("step")) for r in run.metrics(None)] == [
        ("step", 0, 1), ("step", 0, 2), ("step", 0, 3), ("epoch", 0, None), ("step", 1, 1), ("step", 1, 2),
    ]  # fmt: skip
    assert [r["epoch"] for r in run.records("alphas.jsonl")] == [0]


# ---- real processes: `bnas search|train`, SIGTERM from outside, `--resume`

ARGS = {
    "search": ["--dataset", "synthetic", "--synthetic-size", "96", "--batch-size", "8", "--init-channels", "4",
               "--epochs", "2", "--eval-every", "0"],
    "train": ["--dataset", "synthetic", "--synthetic-size", "64", "--batch-size", "8", "--init-channels", "4",
              "--layers", "2", "--enhance-cells", "1", "--epochs", "2", "--val-split", "0.25"],
}  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def _bnas(kind: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bnas.cli", kind, *args]


def _run(kind: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_bnas(kind, *args), capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("kind", ["search", "train"])
def test_sigterm_to_the_command_then_resume_equals_uninterrupted(kind, tmp_path):
    common = [*ARGS[kind], "--device", "cpu", "--log-every", "1", "--quiet"]
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_bnas(kind, *common, "--out", str(cut)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if any(r["kind"] == "step" for r in RunDir(cut).metrics(None)):  # its first step is done
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    run = {"train": "training"}.get(kind, kind)
    assert f"saved in {cut}; continue the {run} with --resume" in err and "error:" not in err
    state = load_checkpoint(cut / "checkpoint.pt", kind)
    assert "mid_epoch" in state, "the signal should stop the run mid-epoch"
    steps_done = state["mid_epoch"]["step"]
    assert f"stopped by SIGTERM after step {steps_done}/" in err

    done = _run(kind, "--resume", str(cut), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    full = _run(kind, *common, "--out", str(tmp_path / "full"))  # the uninterrupted twin
    assert full.returncode == 0, full.stderr[-2000:]
    assert_same_run(cut, tmp_path / "full", kind)


def _loaders(kind: str):
    from bnas.data.loaders import Augment, TensorLoader
    from bnas.data.streamed import StreamLoader

    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20)
    aug = Augment(crop_padding=2, flip=True, cutout=4)
    if kind == "tensor":
        return TensorLoader(images, labels, 6, aug, seed=3)
    samples = [(Path(str(i)), i) for i in range(20)]
    return StreamLoader(samples, lambda p: images[int(p.name)], 6, aug, torch.device("cpu"), seed=3, workers=0)


@pytest.mark.parametrize("kind", ["tensor", "stream"])
def test_a_loader_continues_a_pass_where_it_stopped(kind):
    """The batches after a stop are the ones an uninterrupted pass yields next, and so is the pass after it."""
    ref = _loaders(kind)
    want, want_next = list(ref), list(ref)
    stopped = _loaders(kind)
    it = iter(stopped)
    next(it), next(it)
    pass_state, state = stopped.pass_state(), stopped.state_dict()
    assert pass_state["position"] == 2

    resumed = _loaders(kind)
    resumed.load_state_dict(state)
    resumed.resume_pass(pass_state)
    got, got_next = list(resumed), list(resumed)
    assert len(got) == len(want) - 2
    for (x, y), (wx, wy) in zip(got + got_next, want[2:] + want_next, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy)


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_at_the_same_step(tmp_path):
    """SIGUSR1 to rank 1 alone: the ranks agree at the next log point, rank 0 saves that step, and a resumed
    torchrun finishes the run with identical ranks."""
    worker = Path(__file__).parent / "dist_preempt_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker)]
    cut = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=600)
    assert cut.returncode != 0
    assert "rank 1: stopped by SIGUSR1 after step 1/" in cut.stderr, cut.stderr[-3000:]
    assert "rank 0: stopped by a signal to another rank after step 1/" in cut.stderr
    state = load_checkpoint(tmp_path / "run/checkpoint.pt", "search")
    assert state["mid_epoch"]["epoch"] == 0 and state["mid_epoch"]["step"] == 1

    done = subprocess.run([*cmd, str(tmp_path), "resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert [r["epoch"] for r in RunDir(tmp_path / "run").metrics("epoch")] == [1, 2]


@pytest.mark.parametrize("kind", ["search", "train"])
def test_help_documents_the_exit_codes(kind, capsys):
    from bnas.cli import main

    with pytest.raises(SystemExit):
        main([kind, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{EXIT_PREEMPTED} stopped by SIGTERM or SIGUSR1 at a step boundary" in text and "130 Ctrl-C" in text


def test_nested_stop_signals_share_what_arrived():
    """A study worker's StopSignal around a run's own: a signal that came while the run was being set up stops
    the run too, and one that came during the run reaches the worker (study_work.py, study_slurm.py)."""
    from bnas.preempt import StopSignal

    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as worker:
        signal.raise_signal(signal.SIGUSR1)  # before the run's block: the worker's flag
        with StopSignal() as run:
            assert run.signal == "SIGUSR1"
    with StopSignal() as worker:
        with StopSignal() as run:
            signal.raise_signal(signal.SIGTERM)
            assert run.signal == "SIGTERM" and worker.signal is None
        assert worker.signal == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers came back
