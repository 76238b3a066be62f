"""`bnas genotype sample`: random baselines drawn from what derivation can produce, reproducible by seed."""

from __future__ import annotations

import json
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from bnas import build_network, count_parameters, get_genotype
from bnas.cli import main
from bnas.genotype import Genotype, sample_cell, sample_genotype
from bnas.ops import PRIMITIVES


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), space=st.sampled_from(["bcnn", "darts"]))
def test_sampled_cells_are_what_derivation_can_produce(seed, space):
    g = sample_genotype(space, seed)
    assert g.space == space and g == sample_genotype(space, seed)  # reproducible by seed
    for cell in (g.first, g.second):
        assert cell.concat == (2, 3, 4, 5)
        for node in range(4):
            (op_a, a), (op_b, b) = cell.edges[2 * node : 2 * node + 2]
            assert a != b and 0 <= a < node + 2 and 0 <= b < node + 2  # two distinct earlier states
            assert op_a != "none" and op_b != "none" and {op_a, op_b} <= set(PRIMITIVES)
    assert Genotype.from_json(json.loads(json.dumps(g.to_json()))) == g


def test_sampling_is_uniform_over_inputs_and_operations():
    rng = random.Random(0)
    cells = [sample_cell(rng) for _ in range(4000)]
    ops = Counter(op for c in cells for op, _ in c.edges)
    assert set(ops) == set(PRIMITIVES) - {"none"}
    assert max(ops.values()) / min(ops.values()) < 1.1  # 7 operations, ~4,570 draws each
    last_node = Counter(tuple(src for _, src in c.edges[6:8]) for c in cells)  # 5 x 4 ordered input pairs
    assert len(last_node) == 20 and max(last_node.values()) / min(last_node.values()) < 1.5


def test_seeds_differ_and_the_global_random_state_is_untouched():
    import torch

    state = torch.get_rng_state()
    drawn = {json.dumps(sample_genotype("bcnn", s).to_json()) for s in range(20)}
    assert len(drawn) == 20 and torch.equal(state, torch.get_rng_state())


def test_cli_sample_writes_a_trainable_genotype(tmp_path, capsys):
    out = tmp_path / "random.json"
    assert main(["genotype", "sample", "--space", "bcnn", "--seed", "7", "-o", str(out)]) == 0
    assert "parameter-free ops" in capsys.readouterr().out
    g = get_genotype(str(out))
    assert g == sample_genotype("bcnn", 7)
    assert count_parameters(build_network(g, 8, 2, 1)) > 0
    assert main(["genotype", "sample", "--seed", "-1"]) == 2
