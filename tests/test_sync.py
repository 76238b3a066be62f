"""Host reads per step, counted: a search step and a training step read nothing back from the device between
log points (each read is a device sync on a GPU), so the reads of an epoch do not grow with its steps."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from bnas.search import SearchConfig, Searcher
from bnas.train import TrainConfig, Trainer

# every Python-level way of turning a tensor's value into a host value
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "__format__")


@contextmanager
def counting_reads():
    counts: Counter[str] = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name, original):
        def read(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        yield counts
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


class _Progress:
    def update(self, **stats) -> None:
        pass


def test_the_counter_sees_reads():
    with counting_reads() as counts:
        t = torch.ones(3)
        t.sum().item(), bool(t.all()), float(t[0]), t.tolist(), f"{t[0]:.2f}"
    assert counts == Counter(item=2, __bool__=1, __float__=1, tolist=1, __format__=1)  # format reads by item()


def _search_reads(tmp_path, images: int, **kw) -> tuple[int, Counter]:
    cfg = SearchConfig.resolve(
        kw.pop("method", "clr"), dataset="synthetic", synthetic_size=images, batch_size=4, init_channels=4,
        epochs=3, log_every=0, eval_every=0, out=str(tmp_path / f"s{images}"), quiet=True, device="cpu", **kw,
    )  # fmt: skip
    searcher = Searcher(cfg)
    searcher.open_run()
    searcher.train_epoch(0, _Progress())  # first use: lazy state (optimizer moments, caches) is made here
    with counting_reads() as counts:
        searcher.train_epoch(1, _Progress())
    return len(searcher.train_loader), counts


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="clr", order=1),
        dict(method="clr", order=2),
        dict(method="clr", order=2, hvp="exact"),
        dict(method="pc", order=1),
        dict(method="bnas-d", order=1),
        dict(method="random"),
        dict(method="clr", order=1, amp="fp16"),
        dict(method="clr", order=1, fast=False),
        dict(method="clr", order=1, arch_grad_clip=1.0),
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_search_steps_read_nothing_back(tmp_path, kw):
    short_steps, short = _search_reads(tmp_path, 16, **dict(kw))
    long_steps, long = _search_reads(tmp_path, 40, **dict(kw))
    assert long_steps >= short_steps + 3
    assert long == short, f"{long_steps} steps read {dict(long)}, {short_steps} steps {dict(short)}"
    assert sum(short.values()) <= 4  # the epoch's end: one read of the tally (and the fp16 scales)


def _train_reads(tmp_path, images: int, **kw) -> tuple[int, Counter]:
    cfg = TrainConfig.resolve(
        dataset="synthetic", synthetic_size=images, batch_size=4, eval_batch_size=8, init_channels=4, layers=2,
        enhance_cells=1, epochs=3, log_every=0, out=str(tmp_path / f"t{images}"), quiet=True, device="cpu", **kw,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.open_run()
    trainer.train_epoch(0, _Progress())
    with counting_reads() as counts:
        trainer.train_epoch(1, _Progress())
    return len(trainer.loaders["train"]), counts


@pytest.mark.parametrize("kw", [{}, dict(amp="fp16"), dict(grad_clip=0.0)], ids=["fp32", "fp16", "no-clip"])
def test_training_steps_read_nothing_back(tmp_path, kw):
    short_steps, short = _train_reads(tmp_path, 8, **kw)
    long_steps, long = _train_reads(tmp_path, 24, **kw)
    assert long_steps >= short_steps + 3
    assert long == short, f"{long_steps} steps read {dict(long)}, {short_steps} steps {dict(short)}"
    assert sum(short.values()) <= 3


def test_log_points_read_once_each(tmp_path):
    """With --log-every k an epoch reads once per log point: the reads grow with steps / k, not with steps."""
    cfg = TrainConfig.resolve(
        dataset="synthetic", synthetic_size=24, batch_size=4, eval_batch_size=8, init_channels=4, layers=2,
        enhance_cells=1, epochs=2, log_every=2, out=str(tmp_path / "t"), quiet=True, device="cpu",
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.open_run()
    trainer.train_epoch(0, _Progress())
    with counting_reads() as counts:
        trainer.train_epoch(1, _Progress())
    steps = len(trainer.loaders["train"])
    assert counts["tolist"] == steps // 2 + 1  # every second step, and the epoch's end
