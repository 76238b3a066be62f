"""The batched-edges autograd functions: all mixed edges leaving one state as one set of calls.

At the few channels of partial-channel edges the fixed cost of a call dominates: `dw_pw_multi` runs the
E edges' depthwise+pointwise pairs as one depthwise and one block-diagonal pointwise convolution,
`batch_stats_multi` their BatchNorm statistics as one, and `mix_bn_multi` the weighted sums of all E edges
in one set of passes. Full precision only, like `functions.mix_bn` (tests/test_fast.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .functions import DwConf, _bc, _DwPw, _recompute_grads, _wanted, batch_stats, is_cl, param

# a block-diagonal dense 1x1 convolution beats a grouped one (groups > 1) for groups this narrow (oneDNN, CPU)
DENSE_POINTWISE_MAX = 4


def dw_pw_multi(
    x: torch.Tensor,
    dws: Sequence[nn.Conv2d],
    pws: Sequence[nn.Conv2d],
    stride: int,
    padding: int,
    norm=None,
    relu: bool = False,
    how: str = "",
) -> torch.Tensor:
    """`dw_pw` of E edges in one call: [pw_e(dw_e(x_e))] stacked along channels, (N, E*c, H', W').

    x is either the one input all edges share (N, c, H, W), repeated E times inside (and not kept), or the
    E inputs stacked along channels (N, E*c, H, W); `norm` then holds the statistics of all E*c channels.
    One depthwise convolution of E*c channels and one block-diagonal pointwise convolution replace 2E
    small calls, whose fixed cost dominates at the few channels of partial-channel edges. With `relu` and
    `how` the shared input is first rectified and resampled (`resample`), inside, so that only x is kept.
    """
    e = len(dws)
    c_in = dws[0].in_channels
    reps = e if x.shape[1] == c_in else 1
    if e == 1:
        w_dw, w_pw, groups = param(dws[0].weight), param(pws[0].weight), 1
    elif c_in <= DENSE_POINTWISE_MAX:
        w_dw, groups = torch.cat([dw.weight for dw in dws]), 1
        w_pw = torch.block_diag(*(pw.weight.flatten(1) for pw in pws))[:, :, None, None]
    else:
        w_dw, w_pw, groups = torch.cat([dw.weight for dw in dws]), torch.cat([pw.weight for pw in pws]), e
    return _DwPw.apply(x, w_dw, w_pw, DwConf(stride, padding, reps, groups, relu, how), norm)


def batch_stats_multi(z: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`batch_stats` of E edges' outputs stacked along channels, z = (N, E*c, H, W): module e normalises
    channels e*c..(e+1)*c and gets the running-statistics update of those channels."""
    if len(bns) == 1:
        return batch_stats(z, bns)
    bn = bns[0]
    with torch.no_grad():
        if bn.training and bn.track_running_stats:
            means, variances = [b.running_mean for b in bns], [b.running_var for b in bns]
            running_mean, running_var = torch.cat(means), torch.cat(variances)
            mean, var = torch.batch_norm_update_stats(z, running_mean, running_var, bn.momentum)
            c = means[0].shape[0]
            torch._foreach_copy_(means, list(running_mean.split(c)))
            torch._foreach_copy_(variances, list(running_var.split(c)))
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
        else:
            mean, var = torch.batch_norm_update_stats(z, None, None, 0.0)
        invstd = torch.rsqrt(var + bn.eps)
    return mean, invstd, bn.eps


def _edges_view(z: torch.Tensor, e: int, shared: bool) -> torch.Tensor:
    """(N, E*c, H, W) -> (N, E, c, H, W), or a shared (N, c, H, W) -> (N, 1, c, H, W); views, no copies."""
    return z.unsqueeze(1) if shared else z.unflatten(1, (e, z.shape[1] // e))


def _edge_table(t: torch.Tensor, e: int, shared: bool) -> torch.Tensor:
    """Per-channel statistics as an (E, c) table."""
    return t.expand(e, t.shape[0]) if shared else t.view(e, -1)


def _b5(t: torch.Tensor) -> torch.Tensor:
    """An (E, c) table broadcast against (N, E, c, H, W)."""
    return t[None, :, :, None, None]


def _edges_buffer(like: torch.Tensor, e: int, c: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An (N, E, c, H, W) view over E separate (N, c, H, W) tensors with like's batch, size and memory format."""
    n, _, h, w = like.shape
    if is_cl(like):
        buf = torch.empty((e, n, h, w, c), dtype=like.dtype, device=like.device).permute(1, 0, 4, 2, 3)
    else:
        buf = torch.empty((e, n, c, h, w), dtype=like.dtype, device=like.device).transpose(0, 1)
    return buf, list(buf.unbind(1))


def _mix_multi_forward(w, eps, shared, skip, *zs):
    """The plain formula of `mix_bn_multi` (differentiated under create_graph)."""
    e, k = w.shape[0], len(zs)
    out = None
    for i, z in enumerate(zs):
        y = _edges_view(F.batch_norm(z, None, None, None, None, True, 0.0, eps[i]), e, shared[i])
        y = y * w[:, i][None, :, None, None, None]
        out = y if out is None else out + y
    if skip is not None:
        out = out + skip.unsqueeze(1) * w[:, k][None, :, None, None, None]
    return tuple(out.unbind(1))


class _MixBNMulti(torch.autograd.Function):
    """`_MixBN` for the E mixed edges leaving one state, in one set of passes: inputs are either shared by all
    edges (the pools, the identity skip: (N, c, H, W)) or the E edges' own stacked along channels
    (N, E*c, H, W); the E outputs are returned separately."""

    @staticmethod
    def forward(ctx, w, stats, shared, skip, *zs):
        e, k = w.shape[0], len(zs)
        c = next(z.shape[1] // (1 if sh else e) for z, sh in zip(zs, shared, strict=True))
        means = torch.stack([_edge_table(st[0], e, sh) for st, sh in zip(stats, shared, strict=True)])
        invs = torch.stack([_edge_table(st[1], e, sh) for st, sh in zip(stats, shared, strict=True)])
        ctx.eps = [st[2] for st in stats]
        ctx.shared = list(shared)
        a = w[:, :k].t()[:, :, None] * invs  # (K, E, c)
        shift = (means * a).sum(0).neg_()
        out, outs = _edges_buffer(zs[0], e, c)
        views = [_edges_view(z, e, sh) for z, sh in zip(zs, shared, strict=True)]
        torch.addcmul(_b5(shift), views[0], _b5(a[0]), out=out)
        for v, a_k in zip(views[1:], a[1:], strict=True):
            out.addcmul_(v, _b5(a_k))
        if skip is not None:
            out.addcmul_(skip.unsqueeze(1), _b5(w[:, k : k + 1]))
        ctx.save_for_backward(w, skip, *zs)
        ctx.tables = (means, invs)
        ctx.nodes = [z.grad_fn for z in zs] + [None if skip is None else skip.grad_fn]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *gs):
        w, skip, *zs = ctx.saved_tensors
        shared = ctx.shared
        if torch.is_grad_enabled():
            g_w, _, _, g_skip, *g_zs = _recompute_grads(ctx, _mix_multi_forward, (w, ctx.eps, shared, skip, *zs), gs)
            return (g_w, None, None, g_skip, *g_zs)
        means, invs = ctx.tables
        e, k = w.shape[0], len(zs)
        c = means.shape[2]
        g, g_parts = _edges_buffer(gs[0], e, c)
        for part, g_e in zip(g_parts, gs, strict=True):
            part.copy_(g_e)
        dims = (0, 3, 4)
        m = g.numel() // (e * c)
        g_sum = g.sum(dims)  # (E, c)
        views = [_edges_view(z, e, sh) for z, sh in zip(zs, shared, strict=True)]
        # d[k] = sum over the batch of g * xhat_k, per edge and channel
        d = torch.stack([(g * v).sum(dims) for v in views]).sub_(means * g_sum).mul_(invs)
        g_w = torch.empty_like(w)
        g_w[:, :k] = d.sum(2).t()
        g_zs: list = [None] * k
        wanted = [i for i in range(k) if ctx.needs_input_grad[4 + i] and _wanted(ctx.nodes[i])]
        if wanted:
            a = w[:, :k].t()[:, :, None] * invs
            beta = (a * invs * d).mul_(-1.0 / m)
            gamma = (a * g_sum).mul_(-1.0 / m).sub_(beta * means)
            for i in wanted:
                z = zs[i]
                g_z = torch.empty_like(z)
                if shared[i]:  # the sum over the edges of each edge's gradient
                    torch.sum(g * _b5(a[i]), 1, out=g_z)
                    g_z.addcmul_(z, _bc(beta[i].sum(0))).add_(_bc(gamma[i].sum(0)))
                else:
                    torch.addcmul(_b5(gamma[i]), g, _b5(a[i]), out=_edges_view(g_z, e, False))
                    _edges_view(g_z, e, False).addcmul_(views[i], _b5(beta[i]))
                g_zs[i] = g_z
        g_skip = None
        if skip is not None:
            s5 = skip.unsqueeze(1)
            g_w[:, k] = (g * s5).sum((0, 2, 3, 4))
            if ctx.needs_input_grad[3] and _wanted(ctx.nodes[k]):
                g_skip = torch.empty_like(skip)
                torch.sum(g * _b5(w[:, k : k + 1]), 1, out=g_skip)
        return (g_w if ctx.needs_input_grad[0] else None, None, None, g_skip, *g_zs)


def mix_bn_multi(w: torch.Tensor, zs: Sequence[torch.Tensor], stats: Sequence, shared: Sequence[bool], skip=None):
    """`mix_bn` of the E mixed edges leaving one state, w: (E, K[+1]); zs[k] is shared by all edges (shared[k],
    (N, c, H, W), stats of c channels) or the edges' own stacked along channels ((N, E*c, H, W), stats of
    E*c channels from `batch_stats_multi`). Returns the E edge outputs."""
    return _MixBNMulti.apply(w, list(stats), list(shared), skip, *zs)
