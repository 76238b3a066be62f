"""Search strategies (SPEC §4, §6, §7): partial channels, edge norm, derivation, second order, CLR."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bnas import SpaceConfig, SuperNet
from bnas.cells import PartialEdge
from bnas.genotype import derive_cell
from bnas.ops import PRIMITIVES, channel_shuffle
from bnas.search import Architect, SearchConfig, Searcher, clr_arch_lr


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_edge_shapes_and_bypass(stride):
    c, k = 16, 4
    edge = PartialEdge(c, stride, k)
    seen = []
    edge.mixed.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    x = torch.randn(2, c, 8, 8)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    out = edge(x, w)
    assert out.shape == (2, c, 8 // stride, 8 // stride)
    assert seen == [c // k]  # only C/K channels reach the operations
    if stride == 1:
        # the bypassed channels come out unchanged, at their shuffled positions
        unshuffled = channel_shuffle(out, c // k)  # shuffling with C/K groups inverts a K-group shuffle
        assert torch.equal(unshuffled[:, c // k :], x[:, c // k :])


def test_channel_shuffle_is_a_permutation():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    y = channel_shuffle(x, 4).flatten()
    assert sorted(y.tolist()) == x.flatten().tolist() and not torch.equal(y, x.flatten())
    assert y[:4].tolist() == [0.0, 3.0, 6.0, 9.0]


def test_edge_normalisation_is_a_softmax_per_node():
    model = SuperNet(SpaceConfig(channels=8, partial_k=4, edge_norm=True))
    betas = torch.randn(14)
    w = model.edge_weights(betas)
    start = 0
    for node in range(4):
        n = node + 2
        assert torch.allclose(w[start : start + n], torch.softmax(betas[start : start + n], 0))
        assert torch.isclose(w[start : start + n].sum(), torch.tensor(1.0))
        start += n


def _alphas_with(entries: dict[tuple[int, str], float]) -> torch.Tensor:
    a = torch.zeros(14, len(PRIMITIVES))
    for (row, op), v in entries.items():
        a[row, PRIMITIVES.index(op)] = v
    return a


def test_derivation_never_picks_none_and_keeps_top2():
    # node 0 = rows 0,1; node 1 = rows 2,3,4
    a = _alphas_with(
        {
            (0, "none"): 9.0,
            (0, "sep_conv_3x3"): 1.0,
            (1, "max_pool_3x3"): 2.0,
            (2, "none"): 9.0,
            (3, "dil_conv_5x5"): 3.0,
            (4, "skip_connect"): 2.5,
            (2, "avg_pool_3x3"): 0.5,
        }
    )
    cell = derive_cell(a)
    assert all(op != "none" for op, _ in cell.edges)
    assert cell.edges[0:2] == (("max_pool_3x3", 1), ("sep_conv_3x3", 0))
    assert cell.edges[2:4] == (("dil_conv_5x5", 1), ("skip_connect", 2))  # row 2 only wins with none


def test_derivation_pc_multiplies_by_edge_weights():
    a = _alphas_with({(2, "sep_conv_3x3"): 2.0, (3, "sep_conv_5x5"): 1.9, (4, "dil_conv_3x3"): 1.8})
    betas = torch.zeros(14)
    assert {src for _, src in derive_cell(a).edges[2:4]} == {0, 1}
    betas[2] = -3.0  # edge 0 -> node 1 gets a small normalised weight: edges 1 and 2 win
    got = derive_cell(a, betas).edges[2:4]
    assert got == (("sep_conv_5x5", 1), ("dil_conv_3x3", 2))


def _tiny(order: int, hvp: str, **kw) -> tuple[SuperNet, Architect, SearchConfig]:
    torch.manual_seed(0)
    cfg = SearchConfig.resolve(
        "clr", init_channels=4, order=order, hvp=hvp, epochs=2, batch_size=4, weight_decay=3e-4, **kw
    )
    model = SuperNet(SpaceConfig(channels=4, num_classes=3)).double()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(0, 0.5)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    return model, Architect(model, cfg, w_opt), cfg


def _batches():
    g = torch.Generator().manual_seed(1)
    xt, xv = (torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    yt, yv = (torch.randint(0, 3, (8,), generator=g) for _ in range(2))
    return xt, yt, xv, yv


def _exact_unrolled_gradient(model: SuperNet, xt, yt, xv, yv, eta: float, wd: float) -> list[torch.Tensor]:
    """d/da L_val(w - eta (grad_w L_train(w, a) + wd w), a) by autograd through the unrolled step."""
    arch = model.arch_parameters()
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("arch.")]
    weights = [p for _, p in named]
    g = torch.autograd.grad(F.cross_entropy(model(xt), yt), weights, create_graph=True)
    w_prime = {n: p - eta * (gi + wd * p) for (n, p), gi in zip(named, g, strict=True)}
    loss = F.cross_entropy(functional_call(model, w_prime, (xv,)), yv)
    return list(torch.autograd.grad(loss, arch))


@pytest.mark.parametrize("hvp", ["exact", "fd"])
def test_second_order_matches_autograd_through_the_unrolled_step(hvp):
    # fd_eps: DARTS' step eps = 0.01/||v|| perturbs the weights by a norm of 0.01, which on a net this
    # small crosses ReLU/max-pool kinks and BatchNorms of near-constant channels, so the central difference
    # leaves its linear regime (measured: 80-490% error at 0.01, down to 5.6e-10 at 1e-6). We test the
    # formula where it is linear: eps = 1e-6/||v|| in float64 gives truncation O(eps^2) and rounding
    # O(1e-16/eps) ~ 1e-10 relative; 1e-6 leaves margin while a precedence or sign bug in the finite
    # difference (e.g. dividing by eps instead of 2 eps) is off by ~eta*||Hv||, many orders larger.
    model, architect, cfg = _tiny(2, hvp, fd_eps=1e-6)
    xt, yt, xv, yv = _batches()
    eta = 0.1
    ref = _exact_unrolled_gradient(model, xt, yt, xv, yv, eta, cfg.weight_decay)
    got, _ = architect.gradients(xt, yt, xv, yv, eta)
    ref_v, got_v = torch.cat([t.flatten() for t in ref]), torch.cat([t.flatten() for t in got])
    # exact: the same mathematics in float64, only the summation order differs -> 1e-12
    tol = 1e-12 if hvp == "exact" else 1e-6
    assert (got_v - ref_v).norm() <= tol * ref_v.norm()
    # and the implicit term matters: first order differs clearly from it
    first, _ = Architect(model, SearchConfig.resolve("clr", init_channels=4), architect.w_optimizer).gradients(
        xt, yt, xv, yv, eta
    )
    assert (torch.cat([t.flatten() for t in first]) - ref_v).norm() > 1e-3 * ref_v.norm()


def test_clr_schedule_formula():
    assert clr_arch_lr(3e-4, 0, 50, 2.0) == pytest.approx(3e-4 * (1 / 50) ** 2)
    assert clr_arch_lr(3e-4, 49, 50, 2.0) == pytest.approx(3e-4)
    assert clr_arch_lr(6e-4, 7, 50, 0.0) == 6e-4


@pytest.mark.parametrize("order", [1, 2])
def test_clr_sets_the_arch_learning_rate_each_epoch(order, tmp_path, monkeypatch):
    cfg = SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4, epochs=3, order=order,
        clr_power=1.5, out=str(tmp_path / "run"), quiet=True, eval_every=0,
    )  # fmt: skip
    searcher = Searcher(cfg)
    seen: list[float] = []
    original = Architect.step

    def spy(self, *args):
        seen.append(self.optimizer.param_groups[0]["lr"])
        return original(self, *args)

    monkeypatch.setattr(Architect, "step", spy)
    searcher.run_search()
    steps = len(searcher.train_loader)
    expected = [3e-4 * ((e + 1) / 3) ** 1.5 for e in range(3) for _ in range(steps)]
    assert seen == pytest.approx(expected)
    assert [r["arch_lr"] for r in searcher.history] == pytest.approx(expected[::steps])


def test_warmup_keeps_alphas_fixed(tmp_path):
    cfg = SearchConfig.resolve(
        "pc", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=8, epochs=2,
        arch_start_epoch=1, out=str(tmp_path / "run"), quiet=True, eval_every=0,
    )  # fmt: skip
    searcher = Searcher(cfg)
    before = [p.detach().clone() for p in searcher.model.arch_parameters()]
    searcher.open_run()
    stats = searcher.train_epoch(0, _NoBar())
    assert stats["arch_loss"] is None
    assert all(torch.equal(a, b) for a, b in zip(before, searcher.model.arch_parameters(), strict=True))
    searcher.train_epoch(1, _NoBar())
    assert not all(torch.equal(a, b) for a, b in zip(before, searcher.model.arch_parameters(), strict=True))


class _NoBar:
    def update(self, **_):
        pass


def test_search_on_missing_cifar_is_one_clear_sentence(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bnas.cli", "search", "--dataset", "cifar10", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "cifar-10-batches-py" in err and str(tmp_path) in err
