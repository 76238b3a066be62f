"""No hidden modes (DESIGN): what changes a forward is an argument, and the fast backend reads the plain modules
by name. A fixed path is `model(x, path=...)` (random search: tests/test_random_search.py), the auxiliary logits
are returned by the forward, the fast backend's switches are constructor arguments."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas import SpaceConfig, SuperNet, build_network, fast, get_genotype
from bnas.architect import Architect, ArchitectOptions
from bnas.cells import MixedEdge
from bnas.fast import cells as fastcells
from bnas.ops import NamedSequential, ReLUConvBN
from bnas.search import SearchConfig


def _reorder(net: SuperNet) -> None:
    """Every mixed edge's operations in reverse order (a new registry order), names moved with them."""
    for m in net.modules():
        if isinstance(m, MixedEdge):
            m.ops = nn.ModuleList(reversed(list(m.ops)))
            m.op_names = tuple(reversed(m.op_names))


@pytest.mark.parametrize("k", [1, 4])
def test_reordered_operations_compute_the_same_on_both_paths(k):
    """Operations are addressed by name: reordering a mixed edge's operations changes nothing, plain or fast."""
    torch.manual_seed(0)
    cfg = SpaceConfig(channels=8, partial_k=k, edge_norm=k > 1)
    ref = SuperNet(cfg).double()
    with torch.no_grad():
        for a in ref.arch_parameters():
            a.normal_()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = ref(x)
    for backend in (None, fast.BACKEND):
        net = SuperNet(cfg, backend).double()
        net.load_state_dict(ref.state_dict())
        _reorder(net)
        assert torch.allclose(net(x), want, rtol=1e-10, atol=1e-12)


def test_an_operation_the_fast_cells_do_not_compute_is_refused():
    edge = MixedEdge(4, 1)
    edge.op_names = (*edge.op_names[:-1], "new_conv_3x3")  # a new candidate operation in the registry
    with pytest.raises(ValueError, match="new_conv_3x3"):
        fast.BACKEND.supports(SimpleNamespace(edges=[edge]))
    with pytest.raises(KeyError, match="sep_conv_9x9"):
        MixedEdge(4, 1).op("sep_conv_9x9")
    fastcells.check_ops(MixedEdge(4, 1).op_names)  # the SPEC §2 set passes


def test_a_reordered_sequential_fails_at_construction():
    class Swapped(ReLUConvBN):
        def __init__(self):
            NamedSequential.__init__(self, nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))

    with pytest.raises(TypeError, match="conv"):
        Swapped()
    block = ReLUConvBN(4, 4)
    assert (
        block.conv is block[1]
        and block.bn is block[2]
        and list(block.state_dict())
        == list(nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)).state_dict())
    )  # checkpoints keep their keys


def test_the_forward_returns_the_auxiliary_logits():
    torch.manual_seed(0)
    net = build_network(get_genotype("DARTS_V2"), channels=8, layers=6, auxiliary=True).train()
    x = torch.randn(2, 3, 32, 32)
    logits, aux = net(x, with_aux=True)
    assert logits.shape == aux.shape == (2, 10) and not hasattr(net, "aux_logits")
    assert net(x).shape == (2, 10)  # export and evaluation: one tensor
    assert net.eval()(x, with_aux=True)[1] is None  # the head trains only
    broad = build_network(get_genotype("BNASv2_CLR_v1"), channels=8, layers=2, enhance=1).train()
    assert broad(x, with_aux=True)[1] is None


def test_fast_backend_switches_are_per_instance():
    """`bnas bench --no-batch-edges` builds its own backend; the default instance and the module are untouched."""
    torch.manual_seed(0)
    cfg = SpaceConfig(channels=8)
    per_edge = fast.FastBackend(batch_edges=False)
    a, b = SuperNet(cfg, fast.BACKEND).double(), SuperNet(cfg, per_edge).double()
    b.load_state_dict(a.state_dict())
    calls = []
    original = fastcells._mixed_batched
    fastcells._mixed_batched = lambda *args: calls.append(1) or original(*args)
    try:
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        out_b = b(x)
        assert calls == []  # one by one
        assert torch.allclose(a(x), out_b, rtol=1e-10) and calls  # the default batches
    finally:
        fastcells._mixed_batched = original
    assert fast.BACKEND.batch_edges is None and fastcells.BATCH_EDGES


def test_architect_takes_its_own_options():
    cfg = SearchConfig.resolve("pc", order=2, hvp="exact", arch_grad_clip=5.0, fd_eps=0.02)
    opts = ArchitectOptions.from_config(cfg)
    assert opts == ArchitectOptions(6e-4, 1e-3, (0.5, 0.999), 5.0, 0.0, 2, "exact", 0.02)
    model = SuperNet(SpaceConfig(channels=4, num_classes=3))
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(2, 3, 8, 8), torch.arange(2)
    a = Architect(model, ArchitectOptions(lr=0.1, order=1), w_opt)
    assert a.lr == 0.1 and a.optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    grads, loss = a.gradients(x, y, x, y, eta=0.1)
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), model.arch_parameters())
    assert all(torch.allclose(g, r) for g, r in zip(grads, ref, strict=True))
    assert opts.lr_at(0, 10) == 6e-4 and ArchitectOptions(lr=1.0, clr_power=2.0).lr_at(4, 10) == 0.25


@pytest.mark.parametrize("backend", [None, fast.BACKEND], ids=["plain", "fast"])
def test_the_hessian_of_a_fixed_path_matches_the_exact_hessian(backend):
    """Random search's Hessian diagnostic: w.r.t. the selected candidate's op weights, at its one-hot point."""
    import random

    from bnas.diagnostics import alpha_hessian_eigenvalue
    from bnas.genotype import Genotype, sample_cell

    torch.manual_seed(0)
    model = SuperNet(SpaceConfig(channels=4, num_classes=3, steps=1), backend).double()  # 32 op weights
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
    rng = random.Random(3)
    path = {k: v.double() for k, v in model.path_weights(Genotype(sample_cell(rng, 1), sample_cell(rng, 1))).items()}
    shapes = [path[k].shape for k in model.cell_types]

    def loss(flat):
        parts = flat.split([s.numel() for s in shapes])
        return F.cross_entropy(model(x, path={k: p.view(s) for k, p, s in zip(model.cell_types, parts, shapes)}), y)

    flat = torch.cat([path[k].flatten() for k in model.cell_types])
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).max().item()
    got = alpha_hessian_eigenvalue(model, x, y, iters=300, tol=1e-12, generator=torch.Generator().manual_seed(0),
                                   path=path)  # fmt: skip
    assert got == pytest.approx(exact, rel=1e-6)
