"""The latency table (issue 26 item 2): measured per place, saved and read back, predicting by its sum.
How well it predicts is benchmarks/latency_check.py's business (a benchmark, not a timed test)."""

from __future__ import annotations

import json

import pytest

from bnas.costs import CostModel, NetworkShape
from bnas.errors import ConfigError
from bnas.genotype import get_genotype, sample_genotype
from bnas.latency import LatencyTable, fit_calibration, measure

SHAPE = NetworkShape(channels=4, layers=2, enhance=1, size=8)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return measure(SHAPE, "cpu", batch=1, warmup=1, repeats=1, min_s=0.0)


def test_the_table_covers_every_place_and_round_trips(table, tmp_path):
    model = CostModel.build(SHAPE)
    places = {(s.channels, s.stride(src), s.input_size(src)) for s in model.sites for src in range(model.steps + 1)}
    assert len(table.ops) == 7 * len(places) and all(v > 0 for v in table.ops.values())
    assert table.device == "cpu" and table.batch == 1 and "torch_threads" in table.environment
    path = tmp_path / "latency.json"
    table.save(path)
    back = LatencyTable.load(path)
    assert back.to_json() == json.loads(path.read_text()) == table.to_json()
    for g in (get_genotype("BNASv2_CLR_v1"), sample_genotype("bcnn", 1)):
        assert back.predict(g) == pytest.approx(table.predict(g), rel=1e-12)


def test_the_calibration_fits_one_scale_per_kind_of_operation():
    """fixed + scale x (ops with parameters) + scale_free x (parameter-free ops) is recovered from six networks;
    where the two scales are not determined (every network the same mix) one scale is fitted for both."""
    sums = [(10.0, 0.0), (0.0, 6.0), (0.0, 9.0), (14.0, 0.0), (8.0, 3.0), (2.0, 7.0)]
    times = [2.5 + 1.2 * a + 0.6 * b for a, b in sums]
    fixed, scale, scale_free = fit_calibration(sums, times)
    assert (fixed, scale, scale_free) == pytest.approx((2.5, 1.2, 0.6))
    one = [(a, a / 2) for a in (4.0, 8.0, 12.0, 16.0)]  # sum_free proportional to sum: not separable
    fixed, scale, scale_free = fit_calibration(one, [1.0 + 0.9 * (a + b) for a, b in one])
    assert scale_free is None and (fixed, scale) == pytest.approx((1.0, 0.9))
    table = LatencyTable(SHAPE, "cpu", 1, 1.0, {}, scale=1.2, scale_free=0.6)
    assert table.op_scale("sep_conv_3x3") == 1.2 and table.op_scale("max_pool_3x3") == 0.6


def test_a_file_that_is_not_a_table_is_one_sentence(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="is not a latency table"):
        LatencyTable.load(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        LatencyTable.load(bad)
    with pytest.raises(ConfigError, match="cannot read latency table"):
        LatencyTable.load(tmp_path / "missing.json")


def test_bnas_latency_table_writes_a_table(tmp_path, capsys):
    from bnas.cli import main

    out = tmp_path / "t.json"
    argv = ["latency-table", "--init-channels", "4", "--layers", "2", "--enhance-cells", "1", "--image-size", "8",
            "--repeats", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = LatencyTable.load(out)
    assert table.shape == SHAPE and table.batch == 1 and "wrote" in capsys.readouterr().out
