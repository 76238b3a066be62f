"""A latency budget (issue 26 items 3, 4): a latency table's predictions as the cost model's third resource, in the
constrained derivation, the penalty, random cells, the search and the study. The tables here are synthetic (made
up times for every place of the network): nothing is timed."""

from __future__ import annotations

import csv
import itertools
import json
import random

import numpy as np
import pytest
import torch

from bnas.constrained import BudgetError, best_within, derive_within, sample_within, score
from bnas.costs import Budget, CostModel, CostPenalty, NetworkShape, parse_latency, trained_shape
from bnas.errors import ConfigError
from bnas.genotype import Genotype, derive, sample_genotype
from bnas.latency import LatencyTable, _key, cost_model, with_latency
from bnas.ops import PRIMITIVES

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = NetworkShape(channels=8, layers=4, size=16)


def synthetic_table(shape: NetworkShape, seed: int = 0) -> LatencyTable:
    """Made-up times (ms) for every operation at every place of the network, a fixed part and a scale."""
    model = CostModel.build(shape)
    rng = random.Random(seed)
    ops = {}
    for site in model.sites:
        for src in range(model.steps + 1):
            for op in PRIMITIVES[1:]:
                ops.setdefault(_key(op, site.channels, site.stride(src), site.input_size(src)), rng.uniform(0.01, 0.5))
    return LatencyTable(shape, "cpu", 1, 0.7, ops, {"torch_threads": 1}, scale=1.1)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return synthetic_table(SHAPE)


@pytest.fixture(scope="module")
def model(table) -> CostModel:
    return with_latency(CostModel.build(SHAPE), table)


def test_latencies_parse_as_whole_nanoseconds():
    assert parse_latency("5ms") == 5_000_000 and parse_latency("800us") == 800_000 == parse_latency("800 µs")
    assert parse_latency("0.004") == 4_000_000 == parse_latency(0.004) == parse_latency("0.004s")
    assert parse_latency("2.5ms") == 2_500_000
    for bad in ("5 min", "fast", "-1ms", "0"):
        with pytest.raises(ConfigError, match="max_latency must be a"):
            parse_latency(bad)
    assert Budget.parse(max_latency="2ms").describe() == "2 ms latency"
    assert Budget.parse("80K", max_latency="2ms").to_json() == {"params": 80_000, "macs": None, "latency_ms": 2.0}


def test_the_cost_models_latency_is_the_tables_prediction(model, table):
    for g in [sample_genotype("bcnn", s) for s in range(10)]:
        cost = model.cost(g)
        assert cost.latency == pytest.approx(1e6 * table.predict(g), abs=20)  # whole nanoseconds per edge
        assert cost.to_json()["latency_ms"] == pytest.approx(table.predict(g), abs=1e-4)
        assert (cost.params, cost.macs) == (CostModel.build(SHAPE).cost(g).params, CostModel.build(SHAPE).cost(g).macs)
    assert "latency" not in CostModel.build(SHAPE).resources and model.resources == ("params", "macs", "latency")


def test_a_table_of_another_network_or_a_malformed_one_is_one_sentence(table, tmp_path):
    other = NetworkShape(channels=16, layers=4, size=16)
    with pytest.raises(ConfigError, match=r"^latency table .* was measured for another network \(bcnn C=8, .*\) than "
                       r"the one the budget is for \(bcnn C=16, "):  # fmt: skip
        with_latency(CostModel.build(other), table)
    path = tmp_path / "t.json"
    table.save(path)
    obj = json.loads(path.read_text())
    del obj["ops"][next(iter(obj["ops"]))]
    path.write_text(json.dumps(obj))
    with pytest.raises(ConfigError, match=r"^latency table .*t.json has no time for \w+/c\d+/s\d/r\d+; measure it"):
        cost_model(SHAPE, path)
    for broken in ({k: v for k, v in obj.items() if k != "fixed_ms"}, {**obj, "ops": {"x": "slow"}}, {**obj, "ops": 3}):
        path.write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=r"^latency table .*t.json (lacks|holds a malformed)"):
            LatencyTable.load(path)
    path.write_text(json.dumps({**obj, "ops": {"x": -1.0}}))
    with pytest.raises(ConfigError, match="not a finite non-negative number"):
        LatencyTable.load(path)


@pytest.mark.parametrize("betas", [False, True])
def test_the_derivation_never_exceeds_a_latency_budget(model, betas):
    gen = torch.Generator().manual_seed(7)
    a = [torch.randn(14, 8, generator=gen) for _ in range(2)]
    b = [torch.randn(14, generator=gen) for _ in range(2)] if betas else None
    free = model.cost(derive(a, b)).latency
    cheapest = model.cost(best_within({k: -model.table(k, "latency") for k in model.kinds}, model,
                                      Budget(latency=10**12))).latency  # fmt: skip
    assert cheapest < free
    for frac in (0.2, 0.5, 0.9):
        budget = Budget(latency=int(cheapest + frac * (free - cheapest)))
        g = derive_within(a, b, model, budget)
        assert model.cost(g).latency <= budget.latency
    assert derive_within(a, b, model, Budget(latency=free)) == derive(a, b)
    with pytest.raises(BudgetError, match=r"^no genotype fits the budget of .* ms latency: the cheapest network"):
        derive_within(a, b, model, Budget(latency=cheapest - 1))


def _brute_force(model: CostModel, scores: dict[str, torch.Tensor], budget: Budget) -> float:
    """The best score over every genotype the finite scores allow, by enumeration."""
    resources = list(budget.limits)
    groups = []
    for kind in model.kinds:
        w = scores[kind].double().numpy()
        for node in range(model.steps):
            opts = []
            for a, b in itertools.combinations(range(node + 2), 2):
                for ca, cb in itertools.product(range(1, len(PRIMITIVES)), repeat=2):
                    ra, rb = model.row(node, a), model.row(node, b)
                    if np.isfinite(w[ra, ca]) and np.isfinite(w[rb, cb]):
                        t = model.tables[kind]
                        opts.append(([t[r][ra][ca] + t[r][rb][cb] for r in resources], w[ra, ca] + w[rb, cb]))
            groups.append(opts)
    costs = np.array([[model.fixed.get(r) for r in resources]], dtype=np.int64)
    total = np.zeros(1)
    for opts in groups:
        c = np.array([o[0] for o in opts], dtype=np.int64)
        costs = (costs[:, None, :] + c[None]).reshape(-1, len(resources))
        total = (total[:, None] + np.array([o[1] for o in opts])[None]).reshape(-1)
    ok = np.all(costs <= np.array([budget.limits[r] for r in resources]), axis=1)
    return float(total[ok].max()) if ok.any() else float("-inf")


def test_the_derivation_equals_brute_force_under_a_latency_budget(model):
    gen = torch.Generator().manual_seed(3)
    conv = torch.full((14, 8), -torch.inf)  # two ops on every edge of one cell, one edge pair per node of the other
    conv[:, [PRIMITIVES.index("sep_conv_5x5"), PRIMITIVES.index("max_pool_3x3")]] = torch.rand(14, 2, generator=gen)
    enh = torch.full((14, 8), -torch.inf)
    for node in range(4):
        r = model.row(node, 0)
        enh[r : r + 2, PRIMITIVES.index("dil_conv_3x3")] = torch.rand(2, generator=gen)
    scores = {"conv": conv, "enh": enh}
    top = model.cost(best_within(scores, model, Budget(latency=10**12)))
    low = model.cost(best_within({k: torch.where(v.isfinite(), -model.table(k, "latency"), v) for k, v in
                                  scores.items()}, model, Budget(latency=10**12)))  # fmt: skip
    assert low.latency < top.latency
    for budget in (
        Budget(latency=(low.latency + top.latency) // 2),
        Budget(latency=low.latency + (top.latency - low.latency) // 5),
        Budget(params=(low.params + 2 * top.params) // 3, latency=(2 * low.latency + top.latency) // 3),
        Budget((low.params + 2 * top.params) // 3, (low.macs + 2 * top.macs) // 3, (low.latency + top.latency) // 2),
        Budget((2 * low.params + top.params) // 3, (low.macs + top.macs) // 2, (low.latency + 2 * top.latency) // 3),
    ):
        g = best_within(scores, model, budget)
        assert budget.fits(model.cost(g))
        assert score(g, scores, model) == pytest.approx(_brute_force(model, scores, budget), abs=1e-12)


@pytest.mark.parametrize("form", ["two-sided", "mul-log", "add-linear"])
def test_the_latency_penalty_gradient_matches_finite_differences(model, form):
    gen = torch.Generator().manual_seed(1)
    alphas = [torch.randn(14, 8, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
    betas = [torch.randn(14, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
    target = int(0.9 * model.cost(derive(alphas, betas)).latency)
    pen = CostPenalty(model, "latency", target, form)
    assert "ms latency" in pen.describe()
    ce = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, *ab: pen(c, ab[:2], ab[2:]), (ce, *alphas, *betas), eps=1e-6,
                                    atol=1e-6, rtol=1e-4)  # fmt: skip
    # one-hot weights: the expected latency is the genotype's predicted latency
    g = sample_genotype("bcnn", 4)
    a, b = [], []
    for kind in model.kinds:
        x, y = torch.full((14, 8), -40.0), torch.full((14,), -40.0)
        for i, (op, src) in enumerate(g.cell(kind).edges):
            x[model.row(i // 2, src), PRIMITIVES.index(op)], y[model.row(i // 2, src)] = 40.0, 0.0
        a.append(x)
        b.append(y)
    assert pen.expected(a, b).item() == pytest.approx(model.cost(g).latency, rel=1e-9)
    with pytest.raises(ConfigError, match="give latency_table"):
        CostPenalty(CostModel.build(SHAPE), "latency", target)


def test_random_cells_under_a_latency_budget_fit(model):
    lat = sorted(model.cost(sample_genotype("bcnn", s)).latency for s in range(100))
    budget = Budget(latency=lat[30])
    drawn = [sample_within(model, budget, s) for s in range(15)]
    assert all(model.cost(g).latency <= budget.latency for g in drawn) and len(set(drawn)) == 15


def test_bnas_genotype_sample_under_a_latency_budget(tmp_path, capsys):
    from bnas.cli import main

    shape = trained_shape("bcnn", "cifar10", channels=8, layers=4, size=16)
    table = synthetic_table(shape)
    table.save(tmp_path / "t.json")
    m = with_latency(CostModel.build(shape), table)
    budget = sorted(m.cost(sample_genotype("bcnn", s)).latency for s in range(50))[20] / 1e9  # seconds
    base = ["genotype", "sample", "--init-channels", "8", "--layers", "4", "--image-size", "16", "--seed", "2"]
    with_table = [*base, "--latency-table", str(tmp_path / "t.json")]
    assert main([*with_table, "--max-latency", f"{budget:.9f}", "-o", str(tmp_path / "g.json")]) == 0
    assert "ms predicted latency" in capsys.readouterr().out
    assert m.cost(Genotype.load(tmp_path / "g.json")).latency <= round(budget * 1e9)
    assert main([*base, "--max-latency", "5ms"]) == 2  # a budget without its table
    assert "--latency-table" in capsys.readouterr().err
    assert main([*with_table, "--image-size", "32", "--max-latency", "5ms"]) == 2  # a table of another network
    assert "was measured for another network" in capsys.readouterr().err


def test_a_search_under_a_latency_budget(tmp_path, capsys):
    from bnas.search import SearchConfig, Searcher

    shape = trained_shape("bcnn", "synthetic", channels=8, layers=4)
    table = synthetic_table(shape, seed=1)
    table.save(tmp_path / "t.json")
    m = with_latency(CostModel.build(shape), table)
    budget_ms = sorted(m.cost(sample_genotype("bcnn", s)).latency for s in range(50))[10] / 1e6
    opts = dict(dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=1, eval_every=0,
                quiet=True, max_latency=f"{budget_ms}ms", latency_table=str(tmp_path / "t.json"), cost_channels=8,
                cost_layers=4, out=str(tmp_path / "run"))  # fmt: skip
    g = Searcher(SearchConfig.resolve("clr", **opts)).run_search()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    saved = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert Genotype.from_json(saved) == g and saved["cost"] == summary["cost"]
    assert summary["cost"]["latency_ms"] == pytest.approx(m.cost(g).latency / 1e6)
    assert summary["cost"]["latency_ms"] <= summary["cost_budget"]["latency_ms"] == pytest.approx(budget_ms)
    assert summary["cost_latency_table"]["file"] == str(tmp_path / "t.json")
    assert "ms predicted latency; budget " in capsys.readouterr().out
    from bnas.report import write_report

    page = write_report(tmp_path / "run").html.read_text()
    assert f"predicted latency {summary['cost']['latency_ms']:.3g} ms (at most {budget_ms:.3g} ms)" in page
    with pytest.raises(ConfigError, match="max_latency needs the latency table"):
        SearchConfig.resolve("clr", **{**opts, "latency_table": None})
    with pytest.raises(ConfigError, match="was measured for another network"):
        Searcher(SearchConfig.resolve("clr", **{**opts, "cost_channels": 16, "out": str(tmp_path / "r2")}))


def test_a_study_compares_a_latency_budgeted_search_with_random_cells_of_its_budget(tmp_path, capsys):
    from bnas.cli import main
    from bnas.study import StudySpec

    train = dict(epochs=1, init_channels=4, synthetic_size=32, batch_size=8, eval_batch_size=16, layers=2,
                 enhance_cells=1, quiet=True, device="cpu", log_every=0)  # fmt: skip
    shape = trained_shape("bcnn", "synthetic", channels=4, layers=2, enhance=1)  # the network the study trains
    table = synthetic_table(shape, seed=2)
    table.save(tmp_path / "t.json")
    m = with_latency(CostModel.build(shape), table)
    budget_ms = sorted(m.cost(sample_genotype("bcnn", s)).latency for s in range(50))[25] / 1e6
    method = {
        "name": "clr-fast",
        "method": "clr",
        "max_latency": f"{budget_ms}ms",
        "latency_table": str(tmp_path / "t.json"),
    }
    config = {"dataset": "synthetic", "methods": [method], "seeds": [0],
              "random_cells": [{"name": "random-fast", "count": 2, "like": "clr-fast"}],
              "search": dict(epochs=1, init_channels=4, synthetic_size=32, batch_size=8, eval_every=0, quiet=True,
                             device="cpu", log_every=0),
              "train": train}  # fmt: skip
    spec = StudySpec.from_json(config)
    cfg = spec.search_config(spec.methods[0], 0, tmp_path)
    assert (cfg.cost_channels, cfg.cost_layers, cfg.cost_enhance) == (4, 2, 1)  # the trained network's size
    path = tmp_path / "study.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "s"
    assert main(["study", "--config", str(path), "--out", str(out)]) == 0
    with open(out / "results.csv") as f:
        rows = {r["candidate"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["clr-fast-s0", "random-fast-0", "random-fast-1"]
    for r in rows.values():
        assert r["budget"] == f"{budget_ms:.3g} ms latency" and float(r["latency_ms"]) <= budget_ms + 1e-9
    for i in range(2):
        cell = json.loads((out / "genotypes" / f"random-fast-{i}.json").read_text())
        assert m.cost(Genotype.from_json(cell)).latency == round(cell["cost"]["latency_ms"] * 1e6)
    with open(out / "summary.csv") as f:
        summary = {r["group"]: r for r in csv.DictReader(f)}
    assert summary["clr-fast"]["baseline"] == "random-fast" and summary["clr-fast"]["diff"] != ""
    md = (out / "results.md").read_text()
    assert "| predicted latency | budget |" in md and "vs random-fast" in md
    for png in ("accuracy_vs_macs", "accuracy_vs_latency"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
    # a budget nothing fits is one sentence before any run
    tight = {**config, "random_cells": [{"name": "r", "count": 1, "max_params": "1K"}]}
    with pytest.raises(ConfigError, match=r"random cells r: no genotype fits the budget of 1K params"):
        StudySpec.from_json(tight)
    with pytest.raises(ConfigError, match="like 'clr-slow' is not a method"):
        StudySpec.from_json({**config, "random_cells": [{"name": "r", "count": 1, "like": "clr-slow"}]})


def test_the_pareto_front_of_three_resources_is_the_undominated_points():
    from bnas.constrained import _pareto, _pareto_any

    rng = np.random.default_rng(0)
    costs, scores = rng.integers(0, 6, (300, 3)), rng.integers(0, 5, 300).astype(float)
    costs[7], scores[7] = costs[3], scores[3]  # an equal pair: the first is kept

    def dominates(j: int, i: int) -> bool:  # no worse everywhere, and better somewhere or equal and earlier
        better = (costs[j] < costs[i]).any() or scores[j] > scores[i] or j < i
        return bool((costs[j] <= costs[i]).all() and scores[j] >= scores[i] and better)

    want = [i for i in range(300) if not any(dominates(j, i) for j in range(300) if j != i)]
    assert _pareto(costs, scores).tolist() == want == _pareto_any(costs, scores, block=16).tolist()


def test_the_hardware_study_plans_budgeted_searches_and_random_cells_of_each_budget(tmp_path, capsys):
    """configs/study-hardware.json (docs/hardware-aware.md), with a synthetic latency table in place of the CPU's."""
    from pathlib import Path

    from bnas.cli import main
    from bnas.study import StudySpec

    config = json.loads((Path(__file__).parent.parent / "configs" / "study-hardware.json").read_text())
    shape = trained_shape("bcnn", "fashion-mnist", channels=16, layers=2)  # the fast recipe's network
    table = synthetic_table(shape, seed=3)
    table.save(tmp_path / "t.json")
    m = with_latency(CostModel.build(shape), table)
    quartile = sorted(m.cost(sample_genotype("bcnn", s)).latency for s in range(100))[25] / 1e6
    for method in config["methods"]:
        if isinstance(method, dict) and "latency_table" in method:
            method.update(latency_table=str(tmp_path / "t.json"), max_latency=f"{quartile}ms")
    path = tmp_path / "study.json"
    path.write_text(json.dumps(config))
    assert main(["study", "--config", str(path), "--out", str(tmp_path / "hw"), "--dry-run"]) == 0
    names = [line.split(" (")[0].split("] ")[1] for line in capsys.readouterr().out.splitlines()]
    assert len([n for n in names if n.startswith("search ")]) == 5
    assert len([n for n in names if n.startswith("train ")]) == 5 + 5 * 3
    assert {"train random-cell-2", "train random-22M-2", "train random-cpu-0"} <= set(names)
    spec = StudySpec.load(path)
    assert spec.train["epochs"] == 5 and "budget" not in spec.train and "budget" not in spec.search  # fixed epochs
    cfg = spec.search_config(spec.methods[1], 0, tmp_path)
    assert (cfg.max_macs, cfg.cost_channels, cfg.cost_layers) == ("22M", 16, 2)
    assert spec.group("random-22M").budget["max_macs"] == "22M"


def test_the_next_step_after_a_budgeted_search_trains_the_network_the_budget_is_on():
    from bnas.commands._hints import train_command
    from bnas.search import SearchConfig

    cfg = SearchConfig.resolve("clr", dataset="synthetic", max_params="300K", cost_channels=16, cost_layers=2,
                               out="runs/s")  # fmt: skip
    assert train_command(cfg, "cpu").endswith(
        "--recipe fast --budget 10m --init-channels 16 --layers 2 --enhance-cells 2 --out runs/s-train"
    )
    plain = SearchConfig.resolve("clr", dataset="synthetic", out="runs/s")
    assert "--init-channels" not in train_command(plain, "cpu")
    darts = SearchConfig.resolve("clr", dataset="fashion-mnist", space="darts", max_macs="400M", out="runs/d")
    assert "--init-channels 36 --layers 20 --out" in train_command(darts, "cpu")
