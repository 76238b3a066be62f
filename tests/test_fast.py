"""The fast search path computes the plain path's mathematics: same loss, alpha/beta and weight gradients."""

import pytest
import torch
import torch.nn.functional as F

from bnas.architect import Architect
from bnas.fast import BACKEND, multi, native
from bnas.fast import cells as fastcells
from bnas.fast import functions as fastfn
from bnas.fast.cells import depthwise
from bnas.search import SearchConfig
from bnas.space import SpaceConfig, SuperNet

CL = torch.channels_last


def _pair(space: str, k: int, dtype=torch.float32, cl: bool = False, channels: int = 8):
    """A plain and a fast supernet with the same weights and (non-uniform) architecture parameters."""
    cfg = SpaceConfig(space=space, channels=channels, layers=5, partial_k=k, edge_norm=k > 1)
    torch.manual_seed(0)
    plain = SuperNet(cfg).to(dtype)
    with torch.no_grad():
        for a in plain.arch_parameters():
            a.normal_()
    fast = SuperNet(cfg, BACKEND).to(dtype)
    fast.load_state_dict(plain.state_dict())
    if cl:
        fast = fast.to(memory_format=CL)
    return plain, fast


def _grads(model: SuperNet, x: torch.Tensor, y: torch.Tensor):
    with fastfn.backward_once():  # as the search steps run it (output-saving BatchNorms on)
        loss = F.cross_entropy(model(x), y)
    names = [n for n, _ in model.named_parameters()]
    return loss, dict(zip(names, torch.autograd.grad(loss, list(model.parameters())), strict=True))


def _close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = a[name].abs().max().clamp_min(1e-12)
        err = (a[name] - b[name]).abs().max() / scale
        assert err < rtol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "per-edge"])
@pytest.mark.parametrize("space", ["bcnn", "darts"])
@pytest.mark.parametrize("k", [1, 4])
def test_fast_equals_plain_in_float64(space, k, batch, monkeypatch):
    """Structural equality: in float64 the two paths agree to rounding (the fast one only regroups sums),
    with the edges leaving a state batched into one call per operation or run one by one."""
    monkeypatch.setattr(fastcells, "BATCH_EDGES", batch)
    plain, fast = _pair(space, k, torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(2)
    loss_p, g_p = _grads(plain, x, y)
    loss_f, g_f = _grads(fast, x, y)
    assert torch.allclose(loss_p, loss_f, rtol=1e-12)
    _close(g_p, g_f, 1e-8)
    # the shared pool BatchNorms leave every edge's running statistics as the plain path does
    for (name, b_p), b_f in zip(plain.named_buffers(), fast.buffers(), strict=True):
        assert torch.allclose(b_p.double(), b_f.double(), rtol=1e-12, atol=1e-12), name


@pytest.mark.parametrize(("space", "k", "cl"), [("bcnn", 1, True), ("bcnn", 4, True), ("darts", 1, False)])
def test_fast_equals_plain_at_fp32(space, k, cl):
    """At fp32 with the default switches (channels-last, native depthwise gradients): alpha, beta and weight
    gradients agree to fp32 tolerance."""
    plain, fast = _pair(space, k, torch.float32, cl)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # BatchNorm over >= 16 values
    y = torch.arange(4)
    loss_p, g_p = _grads(plain, x, y)
    loss_f, g_f = _grads(fast, x.contiguous(memory_format=CL) if cl else x, y)
    assert torch.allclose(loss_p, loss_f, rtol=1e-5)
    arch = {n: g for n, g in g_p.items() if n.startswith("arch.")}
    assert arch and all(g.abs().sum() > 0 for g in arch.values())
    _close(arch, {n: g_f[n] for n in arch}, 1e-4)
    _close(g_p, g_f, 1e-3)


@pytest.mark.parametrize("order", [1, 2])
def test_architect_gradients_fast_equal_plain(order):
    """The architecture step's gradients (first order; second order with exact Hessian-vector products,
    which differentiates through the fast path's custom backward) are the same on both paths (float64:
    at fp32 a second-order gradient of a batch of 2 is mostly rounding noise)."""
    cfg = SearchConfig.resolve("pc", order=order, hvp="exact", init_channels=8, batch_size=2)
    plain, fast = _pair("bcnn", 4, torch.float64, cl=True)
    gen = torch.Generator().manual_seed(2)
    xt, xv = (torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    yt, yv = torch.arange(2), torch.arange(2, 4)
    out = []
    for model in (plain, fast):
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9)
        grads, _ = Architect(model, cfg, w_opt).gradients(xt, yt, xv, yv, eta=0.1)
        out.append({str(i): g for i, g in enumerate(grads)})
    _close(out[0], out[1], 1e-8)


@pytest.mark.parametrize("k", [1, 4])
def test_fast_search_step_keeps_far_less_for_backward(k):
    """What autograd keeps for backward in a search step (distinct storages), fast vs plain cells: the memory
    side of issue 7, as a behaviour (measured 0.28x for CLR and 0.29x for PC on this tiny network)."""
    plain, fast = _pair("bcnn", k, torch.float32, cl=True)
    plain = plain.to(memory_format=CL)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=CL)
    kept = []
    for model in (plain, fast):
        storages: dict[int, int] = {}

        def pack(t, s=storages):
            s[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t.detach()  # not t: a node keeping its own output would never be freed

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), fastfn.backward_once():
            model(x)
        kept.append(sum(storages.values()))
    assert kept[1] < 0.4 * kept[0], kept


def test_eval_mode_uses_running_statistics_like_plain():
    plain, fast = _pair("bcnn", 1)
    x = torch.randn(2, 3, 8, 8)
    plain(x), fast(x)  # one training forward updates the running statistics on both paths
    plain.eval(), fast.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), fast(x), rtol=1e-5, atol=1e-6)


def test_fast_keeps_parameters_and_state_dict():
    plain, fast = _pair("bcnn", 1)
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in plain.parameters())
    assert all(cell.backend is BACKEND for cell in fast.modules() if hasattr(cell, "out_edges"))
    assert not any(cell.backend for cell in plain.modules() if hasattr(cell, "out_edges"))


@pytest.mark.parametrize(("k", "stride", "size"), [(3, 1, 8), (5, 1, 8), (3, 2, 8), (5, 2, 7), (5, 1, 7)])
def test_dilated_depthwise_as_undilated(k, stride, size):
    """Dilation-2 depthwise convolutions run undilated on polyphase sub-images: same values and gradients."""
    conv = torch.nn.Conv2d(6, 6, k, stride, k - 1, dilation=2, groups=6, bias=False).double()
    for fmt in (torch.contiguous_format, CL):
        x = torch.randn(3, 6, size, size, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
        ref = conv(x)
        out = depthwise(conv, x)
        assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(ref)
        assert torch.allclose(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0], rtol=1e-12)


@pytest.mark.skipif(native.library() is None, reason="no C compiler: the ATen fallback is used")
@pytest.mark.parametrize(("k", "s", "d", "size"), [(5, 1, 1, 8), (5, 2, 1, 9), (3, 1, 2, 6), (5, 2, 1, 4)])
def test_native_depthwise_weight_gradient(k, s, d, size):
    c, p = 5, d * (k - 1) // 2
    x = torch.randn(3, c, size, size).contiguous(memory_format=CL)
    w = torch.randn(c, 1, k, k)
    g = torch.randn_like(F.conv2d(x, w, None, s, p, d, c))
    mask = [False, True, False]
    ref = torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [d, d], False, [0, 0], c, mask)[1]
    out = native.dw_weight_grad(x, g, k, s, d, p)
    assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_mix_bn_matches_batchnorm_and_sum_with_double_backward():
    """fastfn.mix_bn = sum_k w_k BN(z_k) + w_skip skip, first and second derivatives, when the inputs share an
    ancestor (the skip is the state the pools are taken of: partial, not total, derivatives per input)."""
    from torch import nn

    bns = [nn.BatchNorm2d(3, affine=False).double() for _ in range(2)]
    base = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(4, 3, 5, 5, dtype=torch.float64)

    def plain(e):
        return bns[0](base * 2) * w[e, 0] + bns[1](base.sin()) * w[e, 1] + w[e, 2] * base

    def fused(e):
        zs = [base * 2, base.sin()]
        return fastfn.mix_bn(w[e], zs, [fastfn.batch_stats(z, [bn]) for z, bn in zip(zs, bns, strict=True)], base)

    out = []
    for f in (plain, fused):
        loss = (f(0) * f(1)).sum()
        g_base, g_w = torch.autograd.grad(loss, [base, w], create_graph=True)
        hess = torch.autograd.grad((g_base * probe).sum(), [w, base])
        out.append((loss, g_base, g_w, *hess))
    for a, b in zip(*out, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_dw_pw_gradients_and_double_backward():
    from torch import nn

    x = torch.randn(3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    dw = nn.Conv2d(4, 4, 5, 2, 2, groups=4, bias=False).double()
    pw = nn.Conv2d(4, 6, 1, bias=False).double()
    g = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    params = [x, dw.weight, pw.weight]
    for create_graph in (False, True):
        ref = torch.autograd.grad(pw(dw(x)), params, g, create_graph=create_graph)
        got = torch.autograd.grad(fastfn.dw_pw(x, dw, pw, 2, 2), params, g, create_graph=create_graph)
        for a, b in zip(ref, got, strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # only what is asked for: the architecture step's autograd.grad does not want weight gradients
    assert torch.autograd.grad(fastfn.dw_pw(x, dw, pw, 2, 2).sum(), [x])[0].shape == x.shape


def test_dw_pw_with_batchnorm_relu_in_front():
    """dw_pw(z, norm=stats) = pw(dw(relu(BN(z)))) with training-mode BatchNorm, saving z only: first and
    second derivatives (the second through a plain recomputation), and the running statistics."""
    from torch import nn

    z = torch.randn(3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    bn_p, bn_f = (nn.BatchNorm2d(4, affine=False).double() for _ in range(2))
    dw = nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False).double()
    pw = nn.Conv2d(4, 6, 1, bias=False).double()
    g = torch.randn(3, 6, 9, 9, dtype=torch.float64)
    params = [z, dw.weight, pw.weight]
    for create_graph in (False, True):
        ref = torch.autograd.grad(pw(dw(torch.relu(bn_p(z)))), params, g, create_graph=create_graph)
        out = fastfn.dw_pw(z, dw, pw, 1, 1, norm=fastfn.batch_stats(z, [bn_f]))
        got = torch.autograd.grad(out, params, g, create_graph=create_graph)
        for a, b in zip(ref, got, strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        if create_graph:
            hr = torch.autograd.grad((ref[0] * g[:, :4]).sum(), [z, pw.weight])
            hg = torch.autograd.grad((got[0] * g[:, :4]).sum(), [z, pw.weight])
            for a, b in zip(hr, hg, strict=True):
                assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
    assert torch.allclose(bn_p.running_var, bn_f.running_var) and torch.allclose(bn_p.running_mean, bn_f.running_mean)


def test_bn_out_and_max_pool_match_plain_and_keep_less():
    """Inside backward_once, bn_out keeps only its output; max_pool never keeps int64 indices; both give the
    modules' gradients. Outside backward_once bn_out is the module (twice differentiable); inside, a second
    differentiation is refused with one clear sentence."""
    from torch import nn

    z = torch.randn(4, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    bn_p, bn_f = (nn.BatchNorm2d(3, affine=False).double() for _ in range(2))
    pool = nn.MaxPool2d(3, 1, 1)
    g = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    yp = bn_p(z)
    ref = torch.autograd.grad(pool(yp) * yp, z, g)[0]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with fastfn.backward_once():
            y = fastfn.bn_out(z, bn_f)
        out = fastfn.max_pool(y, pool) * y
    got = torch.autograd.grad(out, z, g)[0]
    assert torch.allclose(ref, got, rtol=1e-10, atol=1e-12)
    assert all(t.dtype == torch.float64 for t in saved)  # no indices
    assert not any(t.data_ptr() == z.data_ptr() for t in saved)  # the input z is not kept
    assert torch.allclose(bn_p.running_var, bn_f.running_var, rtol=1e-12)
    with fastfn.backward_once():
        y1 = fastfn.bn_out(z, bn_f)
    with pytest.raises(RuntimeError, match="backward_once"):
        torch.autograd.grad(y1.pow(3).sum(), z, create_graph=True)
    (gz,) = torch.autograd.grad(fastfn.bn_out(z, bn_f).pow(3).sum(), z, create_graph=True)
    (gz_ref,) = torch.autograd.grad(bn_p(z).pow(3).sum(), z, create_graph=True)
    h = torch.autograd.grad(gz.sum(), z)[0]
    assert torch.allclose(h, torch.autograd.grad(gz_ref.sum(), z)[0], rtol=1e-9, atol=1e-11)


def test_factorized_reduce_keeps_only_its_input():
    from bnas.ops import FactorizedReduce

    fr = FactorizedReduce(3, 6, affine=False).double()
    r = torch.randn(2, 3, 6, 6, dtype=torch.float64).relu().requires_grad_()
    g = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    params = [r, fr.conv_1.weight, fr.conv_2.weight]
    saved: list = []
    for create_graph in (False, True):
        ref = torch.autograd.grad(fr.reduce_convs(r), params, g, create_graph=create_graph)
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = fastfn.factorized_reduce(r, fr.conv_1, fr.conv_2)
        assert sum(t.numel() for t in saved if t.dim() == 4 and t.shape[0] == 2) == r.numel()  # r, no copies
        got = torch.autograd.grad(out, params, g, create_graph=create_graph)
        for a, b in zip(ref, got, strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
        if create_graph:
            assert torch.allclose(*(torch.autograd.grad((t[1] ** 2).sum(), r)[0] for t in (ref, got)))


def test_conv_bn_recomputes_its_convolution():
    """conv_bn = bn(conv(r)) (affine BatchNorm, running statistics) keeping r only; double backward works."""
    from torch import nn

    conv = nn.Conv2d(3, 5, 1, bias=False).double()
    bn_p, bn_f = (nn.BatchNorm2d(5).double() for _ in range(2))
    with torch.no_grad():
        for bn in (bn_p, bn_f):
            bn.weight.copy_(torch.linspace(0.5, 2, 5))
            bn.bias.copy_(torch.linspace(-1, 1, 5))
    r = torch.randn(4, 3, 5, 5, dtype=torch.float64).relu().requires_grad_()
    g = torch.randn(4, 5, 5, 5, dtype=torch.float64)
    for create_graph in (False, True):
        outs = []
        for bn in (bn_p, bn_f):
            saved: list = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t) or t, lambda t: t):
                y = bn(conv(r)) if bn is bn_p else fastfn.conv_bn(r, conv, bn)
            if bn is bn_f:
                assert not any(t.shape == (4, 5, 5, 5) for t in saved)  # the convolution output is not kept
            params = [r, conv.weight, bn.weight, bn.bias]
            outs.append(torch.autograd.grad(y, params, g, create_graph=create_graph))
        for a, b in zip(*outs, strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        if create_graph:
            assert torch.allclose(*(torch.autograd.grad((o[1] ** 2).sum(), r)[0] for o in outs))
    assert torch.allclose(bn_p.running_var, bn_f.running_var) and torch.equal(
        bn_p.num_batches_tracked, bn_f.num_batches_tracked
    )


def test_channel_shuffle_keeps_channels_last_and_values():
    from bnas.ops import channel_shuffle

    x = torch.randn(2, 12, 5, 4)
    ref = channel_shuffle(x, 4)
    out = channel_shuffle(x.contiguous(memory_format=torch.channels_last), 4)
    assert torch.equal(out, ref) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ref[:, 1], x[:, 3])  # (groups=4, 3 per group) transposed: channel 1 comes from channel 3


# the fast path's autograd functions, and which of them autocast leaves out (fastfn.fusable: full precision only)
_AUTOCAST_RUNS = ("_DwPw", "_MaxPool")
_FULL_PRECISION_ONLY = ("_MixBNMulti", "_BNOut", "_ConvBN", "_Reduce")  # and _MixBN (edges one by one)


@pytest.mark.parametrize("k", [1, 4])
def test_fast_path_under_bf16_autocast(k, monkeypatch):
    """Mixed precision (the GPU default, --amp bf16 on CPU), counted: the fast cells still run state by state
    (one ReLU, pools and skip per source state), each edge's depthwise+pointwise pairs through `fastfn.dw_pw`
    (computed in bf16, saving only its input) and the max pools through `fastfn.max_pool`; but the
    BatchNorm-folding functions (mix_bn, mix_bn_multi, bn_out, conv_bn), FactorizedReduce's function and the
    batching of a state's edges (dw_pw_multi) are full precision only: under autocast each edge runs
    `fastcells._mixed_unfused` with the BatchNorm modules. Its alpha gradients follow the fp32 ones (bf16 keeps
    8 bits of mantissa: a direction check, not an equality)."""
    counts: dict[str, int] = {}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    for name in _AUTOCAST_RUNS + _FULL_PRECISION_ONLY + ("_MixBN",):
        where = multi if hasattr(multi, name) else fastfn
        monkeypatch.setattr(getattr(where, name), "apply", counting(name, getattr(where, name).apply))
    for name in ("_mixed_batched", "_mixed_unfused"):
        monkeypatch.setattr(fastcells, name, counting(name, getattr(fastcells, name)))
    _, fast = _pair("bcnn", k, channels=4)
    x, y = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])
    with fastfn.backward_once():  # as the search steps run: every fused function is eligible in fp32
        ref = torch.autograd.grad(F.cross_entropy(fast(x), y), fast.arch_parameters())
    assert all(counts.get(name, 0) > 0 for name in _AUTOCAST_RUNS + _FULL_PRECISION_ONLY + ("_mixed_batched",))
    assert "_mixed_unfused" not in counts, counts
    counts.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16), fastfn.backward_once():
        logits = fast(x)
    assert logits.dtype == torch.bfloat16
    assert all(counts.get(name, 0) > 0 for name in _AUTOCAST_RUNS + ("_mixed_unfused",)), counts
    assert not any(name in counts for name in _FULL_PRECISION_ONLY + ("_MixBN", "_mixed_batched")), counts
    loss = F.cross_entropy(logits.float(), y)
    grads = torch.autograd.grad(loss, fast.arch_parameters() + fast.weight_parameters())
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    a, b = torch.cat([g.flatten() for g in ref]), torch.cat([g.flatten() for g in grads[: len(ref)]])
    assert F.cosine_similarity(a, b, dim=0) > 0.9


def _edge_modules(e: int, c: int, k: int, dilation: int = 1, stride: int = 1):
    from torch import nn

    pad = dilation * (k - 1) // 2
    dws = [nn.Conv2d(c, c, k, stride, pad, dilation, groups=c, bias=False).double() for _ in range(e)]
    pws = [nn.Conv2d(c, c, 1, bias=False).double() for _ in range(e)]
    return dws, pws


@pytest.mark.parametrize(
    ("e", "c", "k", "dilation", "stride", "how"),
    [(3, 2, 3, 1, 1, ""), (4, 6, 5, 1, 1, ""), (2, 3, 3, 2, 1, "s2b"), (3, 4, 5, 2, 2, "even"), (1, 3, 3, 1, 2, "")],
)
def test_dw_pw_multi_equals_the_edges_one_by_one(e, c, k, dilation, stride, how):
    """dw_pw_multi of E edges sharing one input (rectified and resampled inside) = the E edges' own
    pw(dw(relu(x))) stacked along channels: values, first and second derivatives (dense block-diagonal
    pointwise for narrow edges, grouped for wider ones)."""
    dws, pws = _edge_modules(e, c, k, dilation, stride)
    x = torch.randn(3, c, 8, 8, dtype=torch.float64, requires_grad=True).contiguous(memory_format=CL)
    params = [x] + [m.weight for m in dws + pws]
    probe = torch.randn(3, e * c, 8 // stride, 8 // stride, dtype=torch.float64)
    _, s, p = fastcells._dw_mode(dws[0], x)
    for create_graph in (False, True):
        ref = torch.cat([pw(dw(torch.relu(x))) for dw, pw in zip(dws, pws, strict=True)], 1)
        got = multi.dw_pw_multi(x, dws, pws, s, p, relu=True, how=how)
        got = fastcells._batch_to_space(got) if how == "s2b" else got
        assert torch.allclose(ref, got, rtol=1e-12, atol=1e-12)
        g_ref = torch.autograd.grad(ref, params, probe, create_graph=create_graph)
        g_got = torch.autograd.grad(got, params, probe, create_graph=create_graph)
        for a, b in zip(g_ref, g_got, strict=True):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        if create_graph:
            h = [torch.autograd.grad((g[0] * x.detach().cos()).sum(), pws[0].weight) for g in (g_ref, g_got)]
            assert torch.allclose(h[0][0], h[1][0], rtol=1e-9, atol=1e-11)
    # the architecture step wants the input's gradient only: no weight gradient is computed for it
    assert torch.autograd.grad(multi.dw_pw_multi(x, dws, pws, s, p, relu=True, how=how).sum(), [x])[0].shape == x.shape


def test_dw_pw_multi_on_stacked_inputs_with_batchnorm_relu():
    """A SepConv's second half for E edges at once: inputs stacked along channels, each edge's BatchNorm
    (statistics and running statistics per channel) and ReLU in front."""
    from torch import nn

    e, c = 3, 4
    dws, pws = _edge_modules(e, c, 3)
    bns_p = [nn.BatchNorm2d(c, affine=False).double() for _ in range(e)]
    bns_f = [nn.BatchNorm2d(c, affine=False).double() for _ in range(e)]
    z = torch.randn(4, e * c, 6, 6, dtype=torch.float64, requires_grad=True)
    params = [z] + [m.weight for m in dws + pws]
    probe = torch.randn(4, e * c, 6, 6, dtype=torch.float64)
    parts = z.split(c, 1)
    ref = torch.cat([pw(dw(torch.relu(bn(p)))) for dw, pw, bn, p in zip(dws, pws, bns_p, parts, strict=True)], 1)
    got = multi.dw_pw_multi(z, dws, pws, 1, 1, norm=multi.batch_stats_multi(z, bns_f))
    for a, b in zip(torch.autograd.grad(ref, params, probe), torch.autograd.grad(got, params, probe), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    for bp, bf in zip(bns_p, bns_f, strict=True):
        assert torch.allclose(bp.running_mean, bf.running_mean) and torch.allclose(bp.running_var, bf.running_var)
        assert bp.num_batches_tracked == bf.num_batches_tracked == 1


@pytest.mark.parametrize("skip", [True, False])
def test_mix_bn_multi_equals_mix_bn_per_edge(skip):
    """mix_bn_multi over E edges (shared pools/skip, per-edge stacked convolution outputs) = mix_bn edge by
    edge: the E outputs, first and second derivatives (inputs sharing an ancestor, as a state and its pools)."""
    from torch import nn

    e, c = 3, 2
    base = torch.randn(4, c, 5, 5, dtype=torch.float64, requires_grad=True)
    stacked = torch.randn(4, e * c, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(e, 3 + skip, dtype=torch.float64, requires_grad=True)
    bns = [nn.BatchNorm2d(c, affine=False).double() for _ in range(2 + e)]
    probe = [torch.randn(4, c, 5, 5, dtype=torch.float64) for _ in range(e)]

    def per_edge():
        zs = [base * 2, base.sin()]
        pools = [fastfn.batch_stats(z, [bn]) for z, bn in zip(zs, bns[:2], strict=True)]
        outs = []
        for i, part in enumerate((stacked * base.repeat(1, e, 1, 1)).split(c, 1)):
            stats = [*pools, fastfn.batch_stats(part, [bns[2 + i]])]
            outs.append(fastfn.mix_bn(w[i], [*zs, part], stats, base if skip else None))
        return outs

    def batched():
        zs = [base * 2, base.sin(), stacked * base.repeat(1, e, 1, 1)]
        stats = [fastfn.batch_stats(z, [bn]) for z, bn in zip(zs[:2], bns[:2], strict=True)]
        stats.append(multi.batch_stats_multi(zs[2], bns[2:]))
        return multi.mix_bn_multi(w, zs, stats, [True, True, False], base if skip else None)

    results = []
    for f in (per_edge, batched):
        outs = f()
        loss = sum((o * p).sum() for o, p in zip(outs, probe, strict=True)) + (outs[0] * outs[-1]).sum()
        g = torch.autograd.grad(loss, [base, stacked, w], create_graph=True)
        hess = torch.autograd.grad((g[0] * probe[0]).sum() + (g[2] ** 2).sum(), [w, base, stacked])
        results.append((*outs, loss, *g, *hess))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_relu_of_cell_outputs_is_recomputed_not_kept_and_nothing_leaks(monkeypatch):
    """Inside backward_once a cell output's ReLU (read by the next cells' and the taps' 1x1 convolutions) is
    recomputed from the node states in backward instead of kept; gradients are unchanged, and once backward
    is done the forward's tensors are freed (the saved-tensor hooks must not keep the graph alive)."""
    import gc
    import weakref

    from bnas.fast import sharing as ops

    outputs = []
    register = ops.register_parts

    def spy(s, parts):
        outputs.append(weakref.ref(s))
        register(s, parts)

    monkeypatch.setattr(fastcells, "register_parts", spy)
    plain, fast = _pair("bcnn", 4, torch.float64, cl=True)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(4)
    _, g_p = _grads(plain, x, y)
    recipes = []
    pack = ops._Sharing.pack
    monkeypatch.setattr(ops._Sharing, "pack", lambda self, t: recipes.append(pack(self, t)) or recipes[-1])
    loss, g_f = _grads(fast, x.contiguous(memory_format=CL), y)
    _close(g_p, g_f, 1e-8)
    assert outputs and sum(isinstance(r, ops._Recipe) for r in recipes) >= 2 * len(outputs)
    recipes.clear()
    # as the architecture step: backward runs only the part of the graph that leads to the alphas
    with fastfn.backward_once():
        loss = F.cross_entropy(fast(x.contiguous(memory_format=CL)), y)
    torch.autograd.grad(loss, fast.arch_parameters())
    del loss
    recipes.clear()
    gc.collect()
    assert all(ref() is None for ref in outputs)
    assert not [o for o in gc.get_objects() if isinstance(o, ops._Sharing)]  # no graph kept by its hooks
