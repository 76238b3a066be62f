"""The cost model of the trained network (issue 26): fixed part + per-position op costs, exactly the built network's
parameters and MACs; the best genotype under a budget; the expected-cost penalty; sampling under a budget."""

from __future__ import annotations

import pytest

from bnas.costs import Budget, Cost, CostModel, NetworkShape, format_count, parse_count
from bnas.errors import ConfigError, GenotypeError
from bnas.genotype import ZOO, CellGenotype, Genotype, get_genotype, sample_genotype
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
        with pytest.raises(ConfigError, match="--max-params"):
            parse_count(bad)
    b = Budget.parse(max_macs="1M")
    assert b.limits == {"macs": 1_000_000} and b and not Budget()
    assert b.fits(Cost(10**9, 10**6)) and not b.fits(Cost(0, 10**6 + 1))
    assert format_count(3_338_074) == "3.34M"
