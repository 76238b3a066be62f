"""A search that decides within a budget (issue 29): the decision figures on hand-made alphas, --arch-lr auto's
arithmetic, and budgeted searches planned and resumed on a fake clock (no timing-sensitive assertion)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bnas import budget, decision
from bnas.architect import auto_arch_lr, confidence_sum, paper_arch_lr_sum, step_confidence_sum
from bnas.errors import ConfigError
from bnas.ops import PRIMITIVES
from bnas.search import METHODS, SearchConfig, Searcher

N_OPS = len(PRIMITIVES)
SEP3, SKIP, MAX = (PRIMITIVES.index(op) for op in ("sep_conv_3x3", "skip_connect", "max_pool_3x3"))


def _decided_cell(margin: float) -> torch.Tensor:
    """Alphas (14 edges x 8 ops) whose softmax gives every edge sep_conv_3x3 `margin` above the others; the
    first two edges of every node get a larger lead than the rest (the edge ranking)."""
    rows = []
    for node in range(4):
        for j in range(node + 2):
            p = torch.full((N_OPS,), 1.0)
            lead = margin * (2.0 if j < 2 else 1.0)
            p[SEP3] += lead * N_OPS / (1 - lead) if lead < 1 else 0.0
            rows.append(torch.log(p / p.sum()))
    return torch.stack(rows)


def test_margins_of_a_hand_made_cell():
    alphas = torch.zeros(14, N_OPS)  # uniform: no op and no edge is preferred
    m = decision.cell_margins(alphas)
    assert len(m["op"]) == 8 and len(m["edge"]) == 3  # kept edges; nodes with a dropped edge
    assert all(abs(v) < 1e-12 for v in m["op"] + m["edge"])
    # edge 0 of node 0: sep 0.5, skip 0.3, rest spread; none's weight never counts
    alphas = torch.zeros(14, N_OPS)
    alphas[0] = torch.log(torch.tensor([0.05, 0.03, 0.03, 0.3, 0.5, 0.03, 0.03, 0.03]))
    alphas[0, PRIMITIVES.index("none")] = math.log(0.9)  # a larger none changes nothing but the softmax's scale
    p = torch.softmax(alphas[0].double(), -1)
    m = decision.cell_margins(alphas)
    assert m["op"][0] == pytest.approx(float(p[SEP3] - p[SKIP]))
    # node 1 (edges 2-4): edge 4 strong, edge 2 medium, edge 3 weak -> margin = medium - weak
    alphas[2, MAX], alphas[3, MAX], alphas[4, MAX] = 1.0, 0.5, 2.0
    w = torch.softmax(alphas[2:5].double(), -1)[:, MAX]
    assert decision.cell_margins(alphas)["edge"][0] == pytest.approx(float(w[0] - w[1]))
    # PC: the betas scale the edges' strengths (edge 3 now wins over edge 2)
    betas = torch.zeros(14)
    betas[3] = 3.0
    b = torch.softmax(betas[2:5].double(), -1)
    s = w * b
    kept = sorted(range(3), key=lambda j: -float(s[j]))[:2]
    dropped = ({0, 1, 2} - set(kept)).pop()
    expected = float(min(s[j] for j in kept) - s[dropped])
    assert decision.cell_margins(alphas, betas)["edge"][0] == pytest.approx(expected)


def test_settled_and_not_settled():
    decided = [_decided_cell(0.2), _decided_cell(0.2)]
    figures = decision.margins(decided, None, ("conv", "enh"))
    assert all(f["op_margin"] > decision.OP_MARGIN for f in figures.values())
    trail = [(s, "a" if s < 50 else "b") for s in range(0, 101, 10)]
    assert decision.stable_share(trail, "b") == 1.0  # the last fifth: steps 80, 90, 100
    assert decision.stable_share(trail, "a") == 0.0
    assert decision.stable_share([(10, "x")], "x", total_steps=1000) == 1.0  # at least the last point counts
    summary = decision.summarise(figures, decision.stable_share(trail, "b"))
    assert summary["settled"] is True and "advice" not in summary
    # a decided margin but a genotype that still changes in the last fifth: not settled
    flip = [(s, "a" if s % 20 else "b") for s in range(0, 101, 10)]
    assert not decision.settled(figures, decision.stable_share(flip, "b"))
    # near-uniform alphas (a short search): not settled, with the one line of advice
    close = [1e-3 * torch.randn(14, N_OPS, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    summary = decision.summarise(decision.margins(close, None, ("conv", "enh")), 1.0)
    assert summary["settled"] is False
    assert "close to a random cell" in summary["advice"] and "--arch-lr auto" in summary["advice"]
    assert "--arch-lr auto" not in decision.summarise(decision.margins(close, None, ("a", "b")), 1.0, True)["advice"]


def test_arch_lr_auto_gives_back_the_paper_rate():
    for method in ("clr", "bnas-d", "pc"):
        m = METHODS[method]
        target = paper_arch_lr_sum(m["arch_lr"], m["batch_size"], m["arch_start_epoch"], m["clr_power"])
        steps = math.ceil(25_000 / m["batch_size"])
        paper = confidence_sum(50, steps, m["arch_start_epoch"], m["clr_power"])
        assert auto_arch_lr(target, paper) == pytest.approx(m["arch_lr"])
        # half the architecture steps: twice the rate
        half = confidence_sum(50, steps, m["arch_start_epoch"], m["clr_power"]) / 2
        assert auto_arch_lr(target, half) == pytest.approx(2 * m["arch_lr"])
    # the figure: CLR's paper search sums to about 0.50 (98 steps x 50 epochs x 3e-4 x mean confidence 0.34)
    assert paper_arch_lr_sum(3e-4, 256, 0, 2.0) == pytest.approx(98 * 3e-4 * 42925 / 2500)
    # by steps and by epochs agree when every epoch is one step
    assert step_confidence_sum(50, 10, 2.0) == pytest.approx(confidence_sum(50, 1, 10, 2.0))
    with pytest.raises(ConfigError, match="arch_lr auto"):
        auto_arch_lr(0.5, 0.0)


def _cfg(tmp_path, method="clr", **kw):
    base = dict(
        dataset="synthetic", synthetic_size=64, batch_size=8, init_channels=4, blocks=2, quiet=True,
        out=str(tmp_path / "s"), device="cpu", log_every=2, eval_every=0,
    )  # fmt: skip
    return SearchConfig.resolve(method, **{**base, **kw})


def test_arch_lr_auto_in_an_epoch_search(tmp_path):
    cfg = _cfg(tmp_path, epochs=2, arch_lr="auto")
    s = Searcher(cfg)
    s.run_search()
    target = paper_arch_lr_sum(3e-4, 256, 0, 2.0)
    base = target / confidence_sum(2, 4, 0, 2.0)  # 64 images, half for the weights, batch 8: 4 steps an epoch
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["arch_lr"] == "auto" and config["arch_lr_auto"]["arch_lr"] == pytest.approx(base)
    assert config["arch_lr_auto"]["sum"] == pytest.approx(target)
    assert [r["arch_lr"] for r in s.history] == pytest.approx([base / 4, base])  # CLR: ((e + 1) / 2) ** 2
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(summary["decision"]) >= {"settled", "cells", "stable", "rule"}
    assert set(s.history[-1]["decision"]) == {"op_margin", "edge_margin", "stable"}
    with pytest.raises(ConfigError, match="arch.lr must be a number or auto"):
        _cfg(tmp_path, arch_lr="fast")


def test_arch_lr_sum_sizes_auto_for_another_sum(tmp_path):
    s = Searcher(_cfg(tmp_path, epochs=2, arch_lr="auto", arch_lr_sum=2.0, arch_start_epoch=1))
    confidence = confidence_sum(2, 4, 1, 2.0)  # the second epoch's 4 steps at confidence 1
    assert confidence == 4.0 and s.arch_base == pytest.approx(2.0 / 4.0)
    s.run_search()
    assert s.history[1]["arch_lr"] == pytest.approx(0.5)
    auto = json.loads((tmp_path / "s" / "config.json").read_text())["arch_lr_auto"]
    assert auto["sum"] == 2.0 and auto["paper_sum"] == pytest.approx(paper_arch_lr_sum(3e-4, 256, 0, 2.0))
    with pytest.raises(ConfigError, match="arch.lr.sum needs arch.lr auto"):
        _cfg(tmp_path, arch_lr=1e-3, arch_lr_sum=2.0)


def test_gradient_consistency_tells_drift_from_noise():
    params = {"alpha_conv": torch.zeros(3, 2), "alpha_enh": torch.zeros(3, 2)}
    stats = decision.GradConsistency(params)
    assert stats.read() is None  # fewer than two steps say nothing
    gen = torch.Generator().manual_seed(0)
    drift = torch.ones(3, 2)
    for _ in range(400):  # conv: a constant gradient plus unit noise; enh: noise only
        noise = torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=gen)
        stats.add([drift + noise[0], noise[1]], torch.tensor(True))
    stats.add([torch.full((3, 2), float("nan")), torch.full((3, 2), float("inf"))], torch.tensor(False))
    got = stats.read()
    # |mean| = sqrt(6), spread = sqrt(6) (unit noise per entry): about 1 with drift, about 0 (1/sqrt(400)) without
    assert got["alpha_conv"] == pytest.approx(1.0, abs=0.1) and got["alpha_enh"] < 0.15
    state = stats.state_dict()
    fresh = decision.GradConsistency(params)
    fresh.load_state_dict(state)
    assert fresh.read() == got
    stats.reset()
    assert stats.read() is None


def test_a_search_records_gradient_consistency_per_epoch(tmp_path):
    s = Searcher(_cfg(tmp_path, epochs=2, arch_start_epoch=1))
    s.run_search()
    first, second = s.history
    assert first["arch_grad_consistency"] is None  # warm-up: no architecture steps
    assert set(second["arch_grad_consistency"]) == {"alpha_conv", "alpha_enh"}
    assert all(v >= 0 for v in second["arch_grad_consistency"].values())


class _FakeTime:
    """The budget clock's time: each search step takes exactly `step_s` (fake) seconds."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 1000.0, step_s

    def perf_counter(self) -> float:
        return self.now


class _TimedStep:
    """A search step that advances the fake clock; `die_at`: the global step that raises KeyboardInterrupt."""

    def __init__(self, step, clock: _FakeTime, die_at: int | None = None):
        self.inner, self.clock, self.die_at, self.n = step, clock, die_at, 0
        self.FIGURES, self.FAULTS = step.FIGURES, step.FAULTS

    def __call__(self, *args, **kw):
        if self.die_at is not None and self.n == self.die_at:
            raise KeyboardInterrupt
        self.inner(*args, **kw)
        self.n += 1
        self.clock.now += self.clock.step_s


def _timed(searcher: Searcher, fake: _FakeTime, die_at: int | None = None) -> Searcher:
    searcher.step = _TimedStep(searcher.step, fake, die_at)
    return searcher


# budget 2.5 s at 0.125 s a step (binary-exact), a 1 s reserve: the probe plans 12 steps = 3 epochs of 4
PLANNED = 12


def test_a_budgeted_search_is_planned_by_its_step_time(tmp_path, monkeypatch):
    fake = _FakeTime(0.125)
    monkeypatch.setattr(budget, "time", fake)
    s = _timed(Searcher(_cfg(tmp_path, "pc", budget="2.5s", arch_lr="auto")), fake)
    s.run_search()
    plan = s.clock.plan
    assert plan.total_steps == PLANNED and len(s.history) == PLANNED // 4 == 3
    assert s.history[-1]["budget_progress"] == pytest.approx(1.0) and s.history[-1]["lr"] == pytest.approx(0.0)
    # PC's warm-up of 15 of its 50 epochs: no architecture step before 30% of the search (steps 0..3 of 12)
    assert [r["arch_loss"] is None for r in s.history] == [True, False, False]
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["budget"] == "2.5s" and config["epochs"] == 3 and config["budget_plan"]["total_steps"] == PLANNED
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["budget"]["epochs"] == pytest.approx(3.0)
    # --arch-lr auto sized by the plan: PC's paper sum over its 12 - ceil(0.3 x 12) = 8 architecture steps
    pc = METHODS["pc"]
    target = paper_arch_lr_sum(pc["arch_lr"], pc["batch_size"], pc["arch_start_epoch"], pc["clr_power"])
    assert summary["arch_lr_auto"]["arch_lr"] == pytest.approx(target / 8)
    assert config["arch_lr_auto"] == summary["arch_lr_auto"]


def test_a_budgeted_search_resumes_with_the_time_it_had_spent(tmp_path, monkeypatch):
    fake = _FakeTime(0.125)
    monkeypatch.setattr(budget, "time", fake)
    first = _timed(Searcher(_cfg(tmp_path, budget="2.5s")), fake, die_at=9)  # in the 3rd epoch
    with pytest.raises(KeyboardInterrupt):
        first.run_search()
    saved = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 2 and saved["budget"]["total_steps"] == PLANNED
    assert saved["budget"]["spent_s"] == pytest.approx(8 * 0.125)
    fake.now += 500.0  # the time between the two processes is not the search's
    again = _timed(Searcher(_cfg(tmp_path, budget="2.5s"), resume=True), fake)
    again.open_run()
    assert again.clock.plan.spent_s == pytest.approx(saved["budget"]["spent_s"]) and again.start_epoch == 2
    again.run_search()
    assert again.clock.plan.total_steps == PLANNED and again.step.n == PLANNED - 8
    assert again.history[-1]["budget_progress"] == pytest.approx(1.0)
    # CLR's confidence follows progress per step: 1 at the last step, the paper's base rate
    assert again.history[-1]["arch_lr"] == pytest.approx(3e-4)
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["budget"]["wall_s"] == pytest.approx(PLANNED * 0.125)
    # the decision trail goes on from the checkpoint's: points of both processes, the last at the last step
    assert summary["decision"]["stable"] > 0 and again._trail[0][0] < 8 and again._trail[-1][0] == PLANNED


def test_budget_and_epochs_together_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="budget and (--)?epochs cannot be given together"):
        _cfg(tmp_path, budget="1m", epochs=3)
    with pytest.raises(ConfigError, match="budget must be a duration"):
        _cfg(tmp_path, budget="soon")


def test_the_study_table_says_which_searches_settled():
    from bnas.study_report import StudyResults

    row = dict(candidate="clr-s0", group="clr", seed=0, parameters=10, macs=20, param_free="1/2", search_s=60.0,
               train_s=60.0, test_acc=0.8)  # fmt: skip
    rows = [{**row, "settled": False}, {**row, "candidate": "random-cell-0", "settled": None, "search_s": None}]
    text = StudyResults(rows, []).markdown()
    assert "| settled |" in text and "| no |" in text
    assert "architecture not settled (close to a random cell of the space): clr-s0;" in text
    assert "every search's architecture settled" in StudyResults([{**row, "settled": True}], []).markdown()
