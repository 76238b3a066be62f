"""The run core (runcore.py) that search and training share: an epoch's records are written before its
checkpoint, so a kill between the two loses nothing and a resume writes no epoch twice; Ctrl-C says what is
on disk."""

from __future__ import annotations

import json

import pytest

from bnas.cli import main
from bnas.runs import RunDir, load_checkpoint
from bnas.search import SearchConfig, Searcher
from bnas.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TIMES = {"time", "epoch_s", "images_per_s", "hessian_s"}  # wall-clock figures: differ between any two runs


def _search(out) -> Searcher:
    return Searcher(SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=3, log_every=1,
        out=str(out), quiet=True, device="cpu",
    ))  # fmt: skip


def _train(out, resume: bool = False) -> Trainer:
    return Trainer(TrainConfig.resolve(
        dataset="synthetic", synthetic_size=32, batch_size=8, eval_batch_size=16, init_channels=4, layers=2,
        enhance_cells=1, epochs=3, log_every=2, val_split=0.25, cutout=8, out=str(out), quiet=True, device="cpu",
    ), resume=resume)  # fmt: skip


def _kill_after_the_first_write_of(epoch: int, monkeypatch) -> None:
    """A kill right after the first of an epoch's two writes (its metrics record, its checkpoint), whichever
    the loop makes first: what a SIGKILL between them leaves on disk."""
    log, save = RunDir.log, RunDir.save_checkpoint

    def log_then_die(self, record):
        log(self, record)
        if record.get("kind") == "epoch" and record["epoch"] == epoch:
            raise KeyboardInterrupt

    def save_then_die(self, state):
        save(self, state)
        if state["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "log", log_then_die)
    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)


def _same_records(got: list[dict], want: list[dict]) -> None:
    """The same records in the same order (kind, epoch, step, keys), the numbers equal but for wall-clock."""
    assert [(r["kind"], r["epoch"], r.get("step")) for r in got] == [
        (r["kind"], r["epoch"], r.get("step")) for r in want
    ]
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - TIMES:
            if isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), (a["epoch"], key)
            else:
                assert a[key] == b[key], (a["epoch"], key)


@pytest.mark.parametrize("kind", ["search", "train"])
def test_a_kill_between_record_and_checkpoint_loses_no_epoch(kind, tmp_path, monkeypatch):
    make = _search if kind == "search" else _train
    full = make(tmp_path / "full")
    full.run_search() if kind == "search" else full.run_training()

    cut = tmp_path / "cut"
    _kill_after_the_first_write_of(2, monkeypatch)  # epochs are numbered from 1
    with pytest.raises(KeyboardInterrupt):
        run = make(cut)
        run.run_search() if kind == "search" else run.run_training()
    monkeypatch.undo()
    # records first: epoch 2's record is on disk, its checkpoint is not (the one of epoch 1 is kept)
    assert [r["epoch"] for r in RunDir(cut).metrics("epoch")] == [1, 2]
    assert load_checkpoint(cut / "checkpoint.pt", kind)["epoch"] == 1

    if kind == "search":
        again = Searcher(SearchConfig(**{**full.cfg.to_json(), "out": str(cut)}), resume=True)
        again.run_search()
    else:
        again = _train(cut, resume=True)
        again.run_training()
    assert again.start_epoch == 1  # epoch 2 (index 1) is computed again ...
    # ... and the finished run's records are an uninterrupted run's: no epoch lost, none twice
    _same_records(RunDir(cut).metrics(None), RunDir(tmp_path / "full").metrics(None))
    assert [r["epoch"] for r in again.history] == [1, 2, 3]
    assert load_checkpoint(cut / "checkpoint.pt", kind)["epoch"] == 3
    if kind == "search":
        assert [r["epoch"] for r in RunDir(cut).records("alphas.jsonl")] == [0, 1, 2, 3]
        assert sorted(p.name for p in (cut / "genotypes").iterdir()) == [f"epoch_{e:03d}.json" for e in range(1, 4)]
        assert json.loads((cut / "genotype.json").read_text()) == json.loads(
            (tmp_path / "full/genotype.json").read_text()
        )
    else:
        res, want = (json.loads((d / "results.json").read_text()) for d in (cut, tmp_path / "full"))
        assert res["final_epoch"] == pytest.approx(want["final_epoch"])
        assert res["selected_on_val"] == pytest.approx(want["selected_on_val"])


TINY_ARGS = {
    "search": ["--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8", "--init-channels", "4",
               "--epochs", "2", "--eval-every", "0"],
    "train": ["--dataset", "synthetic", "--synthetic-size", "16", "--batch-size", "8", "--init-channels", "4",
              "--layers", "2", "--enhance-cells", "1", "--epochs", "2"],
}  # fmt: skip


@pytest.mark.parametrize("kind", ["search", "train"])
def test_ctrl_c_says_what_is_on_disk(kind, tmp_path, monkeypatch, capsys):
    """Before the first epoch finished nothing is saved: the message says how to start again, and that works;
    after it, the message says how to continue, and that works too."""
    builder = Searcher if kind == "search" else Trainer
    begin = builder.begin_epoch
    stop = {"at": 0}

    def interrupted(self, epoch):
        if epoch == stop["at"]:
            raise KeyboardInterrupt
        return begin(self, epoch)

    monkeypatch.setattr(builder, "begin_epoch", interrupted)
    out = tmp_path / "run"
    argv = [kind, *TINY_ARGS[kind], "--out", str(out), "--quiet"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "--overwrite" in err and "--resume" not in err
    assert not (out / "checkpoint.pt").exists()

    stop["at"] = 1  # start again as told; this time Ctrl-C comes in the second epoch
    assert main([*argv, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert f"finished epochs are saved; continue with bnas {kind} --resume {out}" in err
    stop["at"] = -1
    assert main([kind, "--resume", str(out), "--quiet"]) == 0
    assert [r["epoch"] for r in RunDir(out).metrics("epoch")] == [1, 2]
