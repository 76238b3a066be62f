"""The cost model of the trained network (issue 26): fixed part + per-position op costs, exactly the built network's
parameters and MACs; the best genotype under a budget; the expected-cost penalty; sampling under a budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bnas.constrained import BudgetError, best_within, derive_within, score
from bnas.costs import PENALTIES, Budget, Cost, CostModel, CostPenalty, NetworkShape, format_count, parse_count
from bnas.errors import ConfigError, GenotypeError
from bnas.genotype import ZOO, CellGenotype, Genotype, derive, edge_op_scores, get_genotype, sample_genotype
from bnas.ops import PRIMITIVES
from bnas.space import count_macs, count_parameters

SHAPES = [
    NetworkShape(channels=8, layers=4, size=16),  # bcnn, one deep cell per block
    NetworkShape(channels=8, layers=6, enhance=3, in_channels=1, size=28, num_classes=5),  # odd 7x7 maps
    NetworkShape(channels=8, layers=4, stem="imagenet", size=64),  # first cell after a reduction
    NetworkShape(space="darts", channels=8, layers=5, size=16),
    NetworkShape(space="darts", channels=6, layers=4, size=12, auxiliary=True),
]


def _measured(shape: NetworkShape, g: Genotype) -> Cost:
    net = shape.build(g)
    return Cost(count_parameters(net), count_macs(net, shape.in_channels, shape.size))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.space}-{s.stem}-{s.size}")
def test_cost_equals_the_built_network(shape):
    model = CostModel.build(shape)
    bundled = [e.genotype for e in ZOO.values() if e.genotype.space == shape.space]
    randoms = [sample_genotype(shape.space, seed) for seed in range(12)]
    for g in bundled + randoms:
        assert model.cost(g) == _measured(shape, g), g


def test_cost_of_the_papers_network_matches_its_published_count():
    model = CostModel.build(NetworkShape())
    assert model.cost(get_genotype("BNASv2_CLR_v1")).params == 3_338_074
    assert model.cost(get_genotype("BNASv2_PC_cifar_v1")).params == 3_678_682


def test_same_op_same_position_same_cost_and_none_is_free():
    model = CostModel.build(SHAPES[0])
    for kind in model.kinds:
        t = model.table(kind, "params")
        assert t.shape == (14, 8) and (t[:, 0] == 0).all()  # none
        assert (model.table(kind, "macs")[:, 1:] >= 0).all()


def test_the_cost_model_refuses_what_it_does_not_describe():
    model = CostModel.build(SHAPES[0])
    with pytest.raises(GenotypeError, match="darts genotype cannot be costed on the bcnn"):
        model.cost(get_genotype("DARTS_V2"))
    g = get_genotype("BNASv2_CLR_v1")
    odd = Genotype(CellGenotype(g.first.edges, (2, 3)), g.second)
    with pytest.raises(GenotypeError, match="concat"):
        model.cost(odd)


def test_counts_parse_with_suffixes():
    assert parse_count("3.5M") == 3_500_000 and parse_count("600k") == 600_000 and parse_count(1000) == 1000
    assert parse_count("1G") == 10**9 and parse_count("2e6") == 2_000_000
    for bad in ("3.5X", "-1", "0", "M"):
        with pytest.raises(ConfigError, match="max_params"):
            parse_count(bad)
    b = Budget.parse(max_macs="1M")
    assert b.limits == {"macs": 1_000_000} and b and not Budget()
    assert b.fits(Cost(10**9, 10**6)) and not b.fits(Cost(0, 10**6 + 1))
    assert format_count(3_338_074) == "3.34M"


# ------------------------------------------------------------------------------ the best genotype under a budget


@pytest.fixture(scope="module")
def small_model() -> CostModel:
    return CostModel.build(SHAPES[0])


def _cheapest(model: CostModel, resource: str = "params") -> Cost:
    """The cost of the cheapest genotype (the best score when the score is minus the cost)."""
    scores = {k: -model.table(k, resource) for k in model.kinds}
    return model.cost(best_within(scores, model, Budget(params=10**12)))


def _alphas(seed: int, betas: bool):
    gen = torch.Generator().manual_seed(seed)
    a = [torch.randn(14, 8, generator=gen) for _ in range(2)]
    b = [torch.randn(14, generator=gen) for _ in range(2)] if betas else None
    return a, b


@pytest.mark.parametrize("betas", [False, True])
def test_without_a_binding_budget_the_derivation_is_derive(small_model, betas):
    for seed in range(3):
        a, b = _alphas(seed, betas)
        g = derive(a, b)
        assert derive_within(a, b, small_model, Budget()) == g
        loose = Budget(params=small_model.cost(g).params, macs=small_model.cost(g).macs)
        assert derive_within(a, b, small_model, loose) == g
        # the exact search itself, asked with a budget every genotype meets, finds derive's genotype
        scores = {k: edge_op_scores(x, None if b is None else b[i]) for i, (k, x) in enumerate(zip(("conv", "enh"), a))}
        assert best_within(scores, small_model, Budget(params=10**12)) == g


@pytest.mark.parametrize("betas", [False, True])
def test_the_derivation_never_exceeds_a_feasible_budget(small_model, betas):
    a, b = _alphas(7, betas)
    unconstrained = small_model.cost(derive(a, b))
    cheapest = _cheapest(small_model)
    for frac in (0.2, 0.5, 0.8):
        budget = Budget(params=int(cheapest.params + frac * (unconstrained.params - cheapest.params)))
        g = derive_within(a, b, small_model, budget)
        real = _measured(small_model.shape, g)
        assert real.params <= budget.params and real == small_model.cost(g)
    with pytest.raises(BudgetError, match=r"^no genotype fits the budget of .* the cheapest network of this space"):
        derive_within(a, b, small_model, Budget(params=cheapest.params - 1))


def _brute_force(model: CostModel, scores: dict[str, torch.Tensor], budget: Budget) -> float:
    """The best score over every genotype the scores allow (finite entries), by enumeration."""
    per_kind = []
    for kind in model.kinds:
        w = scores[kind].double().numpy()
        node_options = []
        for node in range(model.steps):
            opts = []
            for a, b in itertools.combinations(range(node + 2), 2):
                for ca, cb in itertools.product(range(1, len(PRIMITIVES)), repeat=2):
                    ra, rb = model.row(node, a), model.row(node, b)
                    if np.isfinite(w[ra, ca]) and np.isfinite(w[rb, cb]):
                        cost = [
                            model.tables[kind][r][ra][ca] + model.tables[kind][r][rb][cb] for r in ("params", "macs")
                        ]
                        opts.append((cost, w[ra, ca] + w[rb, cb]))
            node_options.append(opts)
        per_kind.append(node_options)
    groups = per_kind[0] + per_kind[1]
    costs = np.zeros((1, 2), dtype=np.int64) + [model.fixed.params, model.fixed.macs]
    total = np.zeros(1)
    for opts in groups:  # every combination (the test keeps it to ~10^5)
        c = np.array([o[0] for o in opts], dtype=np.int64)
        s = np.array([o[1] for o in opts])
        costs = (costs[:, None, :] + c[None]).reshape(-1, 2)
        total = (total[:, None] + s[None]).reshape(-1)
    ok = np.ones(len(total), dtype=bool)
    for k, r in enumerate(("params", "macs")):
        if getattr(budget, r) is not None:
            ok &= costs[:, k] <= getattr(budget, r)
    return float(total[ok].max()) if ok.any() else float("-inf")


@pytest.mark.parametrize("seed", [0, 1])
def test_the_derivation_equals_brute_force_on_a_small_space(small_model, seed):
    gen = torch.Generator().manual_seed(seed)
    # conv cell: two ops on every edge; enhancement cell: three allowed edges ops (node 0: one choice left)
    conv = torch.full((14, 8), -torch.inf)
    conv[:, [PRIMITIVES.index("sep_conv_5x5"), PRIMITIVES.index("skip_connect")]] = torch.rand(14, 2, generator=gen)
    enh = torch.full((14, 8), -torch.inf)
    for node in range(4):
        r = small_model.row(node, 0)
        enh[r : r + 2, PRIMITIVES.index("dil_conv_3x3")] = torch.rand(2, generator=gen)
    enh[small_model.row(3, 4), PRIMITIVES.index("avg_pool_3x3")] = 0.5
    scores = {"conv": conv, "enh": enh}
    free = _brute_force(small_model, scores, Budget(params=10**12))
    top = small_model.cost(best_within(scores, small_model, Budget(params=10**12)))
    low = small_model.cost(best_within({k: -small_model.table(k, "params") + 0 * v for k, v in scores.items()},
                                       small_model, Budget(params=10**12)))  # fmt: skip
    assert free > 0
    for budget in (
        Budget(params=(low.params + top.params) // 2),
        Budget(params=low.params + (top.params - low.params) // 5),
        Budget(macs=(low.macs + top.macs) // 2),
        Budget(params=(low.params + 2 * top.params) // 3, macs=(2 * low.macs + top.macs) // 3),
    ):
        want = _brute_force(small_model, scores, budget)
        g = best_within(scores, small_model, budget)
        assert budget.fits(small_model.cost(g))
        assert score(g, scores, small_model) == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------------------------------------ the penalty


@pytest.mark.parametrize("form", list(PENALTIES))
@pytest.mark.parametrize("betas", [False, True])
def test_the_penalty_gradient_matches_finite_differences(small_model, form, betas):
    a, b = _alphas(3, betas)
    alphas = [x.double().requires_grad_() for x in a]
    bs = [x.double().requires_grad_() for x in b] if betas else None
    target = int(small_model.cost(derive(a, b)).params * 0.9)
    pen = CostPenalty(small_model, "params", target, form)
    loss = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    inputs = (loss, *alphas, *(bs or []))

    def f(ce, *ab):
        return pen(ce, ab[:2], ab[2:] if betas else None)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_the_expected_cost_is_the_genotypes_cost_at_one_hot_weights(small_model):
    g = sample_genotype("bcnn", 5)
    alphas, betas = [], []
    for kind in small_model.kinds:
        a, b = torch.full((14, 8), -40.0), torch.full((14,), -40.0)
        for i, (op, src) in enumerate(g.cell(kind).edges):
            r = small_model.row(i // 2, src)
            a[r, PRIMITIVES.index(op)] = 40.0
            b[r] = 0.0
        alphas.append(a)
        betas.append(b)
    for resource in ("params", "macs"):
        pen = CostPenalty(small_model, resource, 10**6)
        assert pen.expected(alphas, betas).item() == pytest.approx(small_model.cost(g).get(resource), rel=1e-9)
    # the forms at the target: no pull for the additive forms' value, factor 1 for mul-log
    e = CostPenalty(small_model, "params", 10**6).expected(alphas, betas).item()
    ce = torch.tensor(1.5)
    assert CostPenalty(small_model, "params", round(e), "two-sided")(ce, alphas, betas).item() == pytest.approx(1.5)
    assert CostPenalty(small_model, "params", round(e), "mul-log")(ce, alphas, betas).item() == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="cost_penalty must be one of"):
        CostPenalty(small_model, "params", 10, "square")


@pytest.mark.parametrize(("order", "edge_norm"), [(1, False), (1, True), (2, True)])
def test_the_architecture_step_adds_the_penalty_by_the_chain_rule(small_model, order, edge_norm):
    from bnas.architect import Architect, ArchitectOptions
    from bnas.optim import SGD
    from bnas.space import SpaceConfig, SuperNet

    torch.manual_seed(0)
    k = 4 if edge_norm else 1
    model = SuperNet(SpaceConfig(channels=4, num_classes=3, partial_k=k, edge_norm=edge_norm)).double()
    w_opt = SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(1)
    xt, xv = (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    yt, yv = (torch.randint(0, 3, (4,), generator=g) for _ in range(2))
    opts = ArchitectOptions(order=order, hvp="exact")
    plain, ce = Architect(model, opts, w_opt).gradients(xt, yt, xv, yv, eta=0.1)
    kinds = model.cell_types
    arch = model.arch_parameters()
    for form in ("add-linear", "mul-log"):
        pen = CostPenalty(small_model, "params", 90_000, form, weight=0.5)
        with_pen, ce2 = Architect(model, opts, w_opt, penalty=pen).gradients(xt, yt, xv, yv, eta=0.1)
        assert torch.allclose(ce, ce2)
        c = ce.detach().requires_grad_()
        alphas = [model.arch[f"alpha_{k}"] for k in kinds]
        betas = [model.arch[f"beta_{k}"] for k in kinds] if edge_norm else None
        d_ce, *d_own = torch.autograd.grad(pen(c, alphas, betas), [c, *arch])
        for p_, w_, own in zip(plain, with_pen, d_own, strict=True):
            assert torch.allclose(w_, d_ce * p_ + own, atol=1e-10)
        assert not torch.allclose(with_pen[0], plain[0])


# ------------------------------------------------------------------------------------ random cells under a budget


def test_sampling_under_a_budget_draws_uniformly_among_the_genotypes_that_fit(small_model):
    from bnas.constrained import sample_within

    # without a budget (or a loose one): exactly sample_genotype's draw
    for seed in range(3):
        assert sample_within(small_model, Budget(), seed) == sample_genotype("bcnn", seed)
        assert sample_within(small_model, Budget(params=10**9), seed) == sample_genotype("bcnn", seed)
    costs = sorted(small_model.cost(sample_genotype("bcnn", s)).params for s in range(200))
    median = Budget(params=costs[100])
    drawn = [sample_within(small_model, median, seed) for seed in range(40)]
    assert all(median.fits(small_model.cost(g)) for g in drawn)
    assert len(set(drawn)) == 40  # distinct draws, reproducible by seed
    assert sample_within(small_model, median, 3) == drawn[3]
    # uniform among those that fit: the draws that fit at once are sample_genotype's own
    first_fit = [s for s in range(40) if median.fits(small_model.cost(sample_genotype("bcnn", s)))]
    assert all(drawn[s] == sample_genotype("bcnn", s) for s in first_fit)
    # nothing fits: the exact minimum says so; fits, but too rarely to draw: says that
    cheapest = _cheapest(small_model)
    with pytest.raises(BudgetError, match="no genotype fits the budget"):
        sample_within(small_model, Budget(params=cheapest.params - 1))
    with pytest.raises(BudgetError, match="none of 50 random genotypes fits"):
        sample_within(small_model, Budget(params=cheapest.params), tries=50)


def test_the_trained_shape_is_the_training_recipes_network():
    from bnas.costs import trained_shape

    assert trained_shape("bcnn") == NetworkShape()
    darts = trained_shape("darts", "fashion-mnist")
    assert (darts.channels, darts.layers, darts.in_channels, darts.size) == (36, 20, 1, 28)
    assert trained_shape("bcnn", "cifar10", channels=16, layers=2).channels == 16
    with pytest.raises(ConfigError, match="give image_size"):
        trained_shape("bcnn", "folder")


def test_a_budget_penalty_applies_one_term_per_limit(small_model):
    from bnas.costs import BudgetPenalty

    a, b = _alphas(0, True)
    both = BudgetPenalty(small_model, Budget(params=90_000, macs=3_000_000), "add-linear", 0.5)
    ce = torch.tensor(1.0)
    e = both.expected(a, b)
    want = 1.0 + 0.5 * (e["params"] - 90_000) / 90_000 + 0.5 * (e["macs"] - 3_000_000) / 3_000_000
    assert both(ce, a, b).item() == pytest.approx(want, rel=1e-6)


def test_bnas_genotype_sample_under_a_budget(tmp_path, capsys):
    from bnas.cli import main

    out = tmp_path / "g.json"
    argv = ["genotype", "sample", "--max-params", "80K", "--init-channels", "8", "--layers", "4", "--seed", "1"]
    assert main([*argv, "-o", str(out)]) == 0
    assert "fit 80K params, seed 1:" in capsys.readouterr().out
    g = Genotype.load(out)
    shape = NetworkShape(channels=8, layers=4)
    assert count_parameters(shape.build(g)) <= 80_000
    assert main([*argv[:3], "60K", *argv[4:]]) == 2
    assert "no genotype fits the budget of 60K params" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ a search under a budget


@pytest.mark.parametrize("method", ["clr", "random"])
def test_a_search_under_a_budget_derives_a_genotype_that_fits(tmp_path, method, capsys):
    import json

    from bnas.report import write_report
    from bnas.search import SearchConfig, Searcher

    cfg = SearchConfig.resolve(
        method, dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=1, eval_every=0,
        out=str(tmp_path / "run"), quiet=True, max_params="80K", cost_channels=8, cost_layers=4,
        random_candidates=2,
    )  # fmt: skip
    searcher = Searcher(cfg)
    assert (searcher.architect.penalty is not None) == (method == "clr")
    g = searcher.run_search()
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    saved = json.loads((run / "genotype.json").read_text())
    assert Genotype.from_json(saved) == g
    assert summary["cost"] == saved["cost"] and summary["cost_budget"] == {"params": 80_000, "macs": None}
    shape = NetworkShape(**summary["cost_network"])
    assert (shape.channels, shape.layers) == (8, 4)
    assert summary["cost"]["params"] == count_parameters(shape.build(g)) <= 80_000
    assert "trained network (C=8, 4 cells): " in capsys.readouterr().out
    if method == "clr":
        page = write_report(run).html.read_text()
        assert f"params {summary['cost']['params']:,} (at most 80,000)" in page


def test_a_search_under_a_budget_nothing_fits_refuses_before_it_starts(tmp_path):
    from bnas.search import SearchConfig, Searcher

    cfg = SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=1,
        out=str(tmp_path / "run"), quiet=True, max_macs="1M", cost_channels=8, cost_layers=4,
    )  # fmt: skip
    with pytest.raises(BudgetError, match="no genotype fits the budget of 1M macs"):
        Searcher(cfg)
    assert not (tmp_path / "run").exists()
