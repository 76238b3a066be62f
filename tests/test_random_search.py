"""`bnas search --method random`: random search with weight sharing, the strong baseline of a NAS study."""

from __future__ import annotations

import json
import math

import torch

from bnas.cli import main
from bnas.genotype import get_genotype, sample_genotype
from bnas.search import SearchConfig, Searcher
from bnas.space import SpaceConfig, SuperNet

KW = dict(dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, eval_every=0, quiet=True,
          device="cpu", random_candidates=3)  # fmt: skip


def test_path_weights_are_the_genotypes_edges():
    net = SuperNet(SpaceConfig(channels=4))
    g = sample_genotype("bcnn", 5)
    path = net.path_weights(g)
    for kind, cell in zip(net.cell_types, (g.first, g.second), strict=True):
        w = path[kind]
        assert w.shape == net.arch[f"alpha_{kind}"].shape and w.sum() == 8 and set(w.unique().tolist()) == {0.0, 1.0}
        rows = (w.sum(1) > 0).nonzero().flatten().tolist()
        starts = [0, 2, 5, 9]
        assert sorted(rows) == sorted(starts[n] + s for n, s in cell.node_edges())
    x = torch.randn(2, 3, 16, 16)
    before = net(x, path=path)
    relaxed = net(x)  # the path is an argument, never left set: without it the alphas decide again
    assert not torch.allclose(before, relaxed)
    with torch.no_grad():  # the alphas no longer matter: the path decides
        for a in net.arch_parameters():
            a.normal_()
    assert torch.allclose(before, net(x, path=path)) and torch.allclose(before, net.fixed(g)(x))
    assert not torch.allclose(relaxed, net(x))


def test_random_search_trains_weights_only_and_picks_a_candidate(tmp_path):
    searcher = Searcher(SearchConfig.resolve("random", epochs=2, out=str(tmp_path / "r"), **KW))
    alphas = [a.detach().clone() for a in searcher.model.arch_parameters()]
    weights = [w.detach().clone() for w in searcher.model.weight_parameters()]
    g = searcher.run_search()
    assert all(torch.equal(a, b) for a, b in zip(alphas, searcher.model.arch_parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights, searcher.model.weight_parameters(), strict=True))
    assert g in searcher._candidates and get_genotype(str(tmp_path / "r" / "genotype.json")) == g
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    assert len(epochs) == 2 and all(len(r["candidate_acc"]) == 3 for r in epochs)
    assert epochs[-1]["arch_loss"] is None and not hasattr(searcher.model, "path")


def test_random_search_reports_the_selected_candidate_with_the_hessian_on(tmp_path):
    """`--method random --hessian-every 1` runs clean (it once died: the last sampled path was left set on the
    supernet, so the alphas' Hessian had no graph), and the run's evaluation, Hessian diagnostic and genotype
    all read the selected candidate (the best scored one), not the last path a weight step trained."""
    from bnas.diagnostics import alpha_hessian_eigenvalue
    from bnas.runtime import evaluate

    cfg = SearchConfig.resolve("random", epochs=1, out=str(tmp_path / "r"), **{**KW, "eval_every": 1},
                               hessian_every=1, hessian_iters=3)  # fmt: skip
    searcher = Searcher(cfg)
    g = searcher.run_search()
    record = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][-1]
    scores = record["candidate_acc"]
    assert g == searcher._candidates[scores.index(max(scores))] and record["genotype"] == g.to_json()
    model = searcher.model
    selected, relaxed = evaluate(model.fixed(g), searcher.eval_loader), evaluate(model, searcher.eval_loader)
    assert (record["valid_acc"], record["valid_loss"]) == (selected["top1"], selected["loss"])
    assert record["valid_loss"] != relaxed["loss"]  # not the relaxed supernet's (nor a sampled path's)
    x, y = next(iter(searcher.eval_loader))
    gen = torch.Generator().manual_seed(cfg.seed * 100_003)
    hess = alpha_hessian_eigenvalue(model, x, y, 3, generator=gen, path=model.path_weights(g))
    assert math.isfinite(record["hessian_eig"]) and record["hessian_eig"] == hess


def test_random_search_resumes_exactly(tmp_path):
    straight = Searcher(SearchConfig.resolve("random", epochs=2, out=str(tmp_path / "a"), **KW))
    straight.run_search()
    first = Searcher(SearchConfig.resolve("random", epochs=1, out=str(tmp_path / "b"), **KW))
    first.run_search()
    # as a 2-epoch run killed after its first epoch (its lr at epoch 0 is the same): a resume keeps the epochs
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    assert main(["search", "--resume", str(tmp_path / "b"), "--quiet"]) == 0
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, state["model"][k]), k
