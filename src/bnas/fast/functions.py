"""Autograd functions of the fast search path (`fast.cells`): the same mathematics, less time and memory.

* `dw_pw`: a depthwise then a pointwise convolution that saves only its input; the depthwise output is
  recomputed in backward, and only when the pointwise weight's gradient is wanted (never in a first-order
  architecture step). The depthwise weight gradient of 5x5 kernels comes from `native` on the CPU.
* `mix_bn`: the end of a mixed edge, sum_k w_k * BN(z_k) (+ w_skip * skip), with the affine-free
  training-mode BatchNorms folded in: it saves the BatchNorm inputs only, where the plain path also keeps
  every normalised output for the weights' gradients, and runs fewer passes over memory.

Weights enter as views so that backward can ask the autograd engine whether their gradients are wanted
at all (`autograd.grad(loss, alphas)` does not want them). Under `create_graph` (exact second order,
Hessian eigenvalues) backward differentiates a plain recomputation instead, so double backward works.

Under autocast (bf16, fp16) only `dw_pw` (computed in autocast's dtype) and `max_pool` run as these
functions; `mix_bn`, the batched functions of `multi`, `bn_out`, `conv_bn` and `factorized_reduce` are full
precision only (`fusable`, and the checks in the last two): the modules run instead (tests/test_fast.py
counts the calls).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import native

_ATEN_CONV_BWD = torch.ops.aten.convolution_backward


def param(w: torch.Tensor) -> torch.Tensor:
    """A view of a parameter whose grad_fn lets backward ask whether the parameter's gradient is wanted."""
    return w.view_as(w) if w.requires_grad and torch.is_grad_enabled() else w


def _wanted(node) -> bool:
    return node is None or torch._C._will_engine_execute_node(node)


def _dw_weight_grad(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    k = w.shape[-1]
    out = native.dw_weight_grad(x, g, k, stride, 1, padding) if k > 3 else None
    if out is None:
        args = (g, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], x.shape[1])
        out = _ATEN_CONV_BWD(*args, [False, True, False])[1]
    return out


def _dw_input_grad(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    if stride == 1 and 2 * padding == w.shape[-1] - 1 and g.shape == x.shape:
        # a "same" depthwise convolution's input gradient is the forward convolution with the kernel rotated by
        # 180 degrees: oneDNN then reuses the forward's primitive (fewer JIT-compiled kernels kept in memory)
        return F.conv2d(g, w.flip(-1, -2), None, 1, padding, 1, g.shape[1])
    args = (g, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], x.shape[1])
    return _ATEN_CONV_BWD(*args, [True, False, False])[0]


def _recompute_grads(ctx, fn, inputs: Sequence, grad_out) -> list:
    """Gradients by differentiating a recomputation (keeps a graph: used under create_graph)."""
    need = [ctx.needs_input_grad[i] and isinstance(t, torch.Tensor) for i, t in enumerate(inputs)]
    with torch.enable_grad():
        # fresh aliases: an input may also be an ancestor of another input (a skip and a pool of the same
        # state), and this function's gradient is the partial derivative by each input, not the total one
        inputs = [t.view_as(t) if n else t for t, n in zip(inputs, need, strict=True)]
        out = fn(*inputs)
    wanted = [t for t, n in zip(inputs, need, strict=True) if n]
    if isinstance(out, tuple):  # a function of several outputs
        out, grad_out = list(out), list(grad_out)
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(grads) if n else None for n in need]


def _normalise(z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor) -> torch.Tensor:
    """(z - mean) * invstd per channel in one pass: an affine-free BatchNorm with given statistics."""
    return torch.addcmul(_bc(-mean * invstd), z, _bc(invstd))


def _normalise_relu(z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor) -> torch.Tensor:
    return _normalise(z, mean, invstd).relu_()


def is_cl(x: torch.Tensor) -> bool:
    """Channels-last (and not also contiguous, as 1x1 maps are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def space_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (4N, C, H/2, W/2): the four pixel phases as separate images (memory format kept)."""
    n, c, h, w = x.shape
    if is_cl(x):
        t = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c).permute(2, 4, 0, 1, 3, 5)
        return t.reshape(4 * n, h // 2, w // 2, c).permute(0, 3, 1, 2)
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(3, 5, 0, 1, 2, 4).reshape(4 * n, c, h // 2, w // 2)


def batch_to_space(y: torch.Tensor) -> torch.Tensor:
    """Inverse of `space_to_batch`."""
    n4, c, h, w = y.shape
    n = n4 // 4
    if is_cl(y):
        t = y.permute(0, 2, 3, 1).reshape(2, 2, n, h, w, c).permute(2, 3, 0, 4, 1, 5)
        return t.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    return y.reshape(2, 2, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, 2 * h, 2 * w)


def resample(x: torch.Tensor, how: str) -> torch.Tensor:
    """x as is (""), its even pixels ("even", memory format kept) or its four phases in the batch ("s2b")."""
    if how == "even":
        return x[:, :, ::2, ::2].contiguous(memory_format=_format(x))
    return space_to_batch(x) if how == "s2b" else x


def _resample_adjoint(g: torch.Tensor, x: torch.Tensor, how: str) -> torch.Tensor:
    """The gradient by x of `resample(x, how)`, given the gradient g by its result."""
    if how == "even":
        full = torch.empty(x.shape, dtype=g.dtype, device=g.device, memory_format=_format(g)).zero_()
        full[:, :, ::2, ::2] = g
        return full
    return batch_to_space(g) if how == "s2b" else g


def repeat_channels(x: torch.Tensor, reps: int) -> torch.Tensor:
    """(N, c, H, W) -> (N, reps*c, H, W), copy r of x in channels r*c..(r+1)*c; the memory format is kept."""
    if reps == 1:
        return x
    if is_cl(x):
        n, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1).unsqueeze(3).expand(n, h, w, reps, c)
        return t.reshape(n, h, w, reps * c).permute(0, 3, 1, 2)
    return x.repeat(1, reps, 1, 1)


def _sum_repeats(g: torch.Tensor, reps: int) -> torch.Tensor:
    """The adjoint of `repeat_channels`: the sum of the reps channel blocks, in g's memory format."""
    if reps == 1:
        return g
    n, c, h, w = g.shape
    out = torch.empty((n, c // reps, h, w), dtype=g.dtype, device=g.device, memory_format=_format(g))
    return torch.sum(g.unflatten(1, (reps, c // reps)), 1, out=out)


def _format(x: torch.Tensor) -> torch.memory_format:
    """The memory format x is laid out in, also for a channel slice (a partial-channel edge's input)."""
    cl = x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1 and x.shape[-1] * x.shape[-2] > 1
    return torch.channels_last if cl else torch.contiguous_format


class DwConf(NamedTuple):
    """How `_DwPw` runs: a depthwise (stride, padding) convolution of its input after the optional ReLU and
    `resample`, repeated `reps` times along channels, then a 1x1 convolution in `pw_groups` groups."""

    stride: int
    padding: int
    reps: int = 1
    pw_groups: int = 1
    relu: bool = False
    how: str = ""


def _prepare(x: torch.Tensor, conf: DwConf, norm) -> torch.Tensor:
    """The depthwise convolution's input (before the repeat) from the function's input x."""
    if norm is not None:  # x is the input of an affine-free training-mode BatchNorm followed by a ReLU
        x = _normalise_relu(x, *norm[:2])
    elif conf.relu:
        x = torch.relu(x)
    return resample(x, conf.how)


def _dw_pw_forward(x, w_dw, w_pw, conf: DwConf, eps=None):
    """The plain formula (differentiated under create_graph)."""
    if eps is not None:
        x = torch.relu(F.batch_norm(x, None, None, None, None, True, 0.0, eps))
    elif conf.relu:
        x = torch.relu(x)
    x = repeat_channels(resample(x, conf.how), conf.reps)
    t = F.conv2d(x, w_dw, None, conf.stride, conf.padding, 1, x.shape[1])
    del x  # the repeated input goes before the pointwise convolution
    return F.conv2d(t, w_pw, None, 1, 0, 1, conf.pw_groups)


def _pw_input_grad(g: torch.Tensor, w_pw: torch.Tensor, groups: int) -> torch.Tensor:
    """A (grouped) 1x1 convolution's input gradient, as a 1x1 convolution with the transposed weights."""
    if groups == 1:
        return F.conv2d(g, w_pw.transpose(0, 1))
    o, i = w_pw.shape[:2]
    w_t = w_pw.reshape(groups, o // groups, i).transpose(1, 2).reshape(groups * i, o // groups, 1, 1)
    return F.conv2d(g, w_t, None, 1, 0, 1, groups)


class _DwPw(torch.autograd.Function):
    """pw(dw(prepare(x))) saving x only: whatever the depthwise convolution reads (the rectified, resampled,
    repeated or normalised input) is recomputed in backward, where it is needed at all."""

    @staticmethod
    def forward(ctx, x, w_dw, w_pw, conf: DwConf, norm):
        ctx.conf, ctx.norm = conf, norm
        ctx.nodes = (w_dw.grad_fn, w_pw.grad_fn)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # compute (and differentiate) in autocast's dtype throughout
            dtype = torch.get_autocast_dtype(device)
            x, w_dw, w_pw = x.to(dtype), w_dw.to(dtype), w_pw.to(dtype)
        ctx.save_for_backward(x, w_dw, w_pw)
        return _dw_pw_forward(_prepare(x, conf, norm), w_dw, w_pw, conf._replace(relu=False, how=""))

    @staticmethod
    def backward(ctx, g):
        x, w_dw, w_pw = ctx.saved_tensors
        conf, norm = ctx.conf, ctx.norm
        node_dw, node_pw = ctx.nodes
        g = g.to(x.dtype)  # the autograd engine casts each returned gradient to its input's dtype
        if torch.is_grad_enabled():
            eps = None if norm is None else norm[2]
            fn = lambda a, b, c: _dw_pw_forward(a, b, c, conf, eps)  # noqa: E731
            return (*_recompute_grads(ctx, fn, (x, w_dw, w_pw), g), None, None)
        need_x, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and _wanted(node_dw)
        need_pw = ctx.needs_input_grad[2] and _wanted(node_pw)
        g_x = g_dw = g_pw = None
        stride, padding, reps, pw_groups = conf.stride, conf.padding, conf.reps, conf.pw_groups
        a = _prepare(x, conf, norm) if need_x or need_dw or need_pw else x
        a_rep = repeat_channels(a, reps) if need_pw or need_dw else None
        # the intermediates are dropped as soon as they are used: backward's transient memory is what raises
        # the peak above what forward keeps
        if need_pw:
            t = F.conv2d(a_rep, w_dw, None, stride, padding, 1, a_rep.shape[1])
            args = (g, t, w_pw, None, [1, 1], [0, 0], [1, 1], False, [0, 0], pw_groups, [False, True, False])
            g_pw = _ATEN_CONV_BWD(*args)[1]
            del t, args
        if need_x or need_dw:
            g_t = _pw_input_grad(g, w_pw, pw_groups)
            if need_dw:
                g_dw = _dw_weight_grad(a_rep, g_t, w_dw, stride, padding)
            a_rep = None
            if need_x:
                n, c, h, w = a.shape  # a convolution's input gradient reads the input's shape only
                fmt = _format(a)
                shape = (
                    a
                    if reps == 1
                    else torch.empty((n, reps * c, h, w), dtype=a.dtype, device=a.device, memory_format=fmt)
                )
                g_x = _sum_repeats(_dw_input_grad(shape, g_t, w_dw, stride, padding), reps)
                del g_t, shape
                g_x = _resample_adjoint(g_x, x, conf.how)
                if norm is not None:  # through the ReLU, then the BatchNorm (batch statistics depend on x)
                    g_x = torch.ops.aten.threshold_backward(g_x, a, 0)
                    mean, invstd, eps = norm
                    args = (g_x, x, None, None, None, mean, invstd, True, eps, [True, False, False])
                    g_x = torch.ops.aten.native_batch_norm_backward(*args)[0]
                elif conf.relu:
                    g_x = torch.ops.aten.threshold_backward(g_x, x, 0)
        return g_x, g_dw, g_pw, None, None


def dw_pw(x: torch.Tensor, dw: nn.Conv2d, pw: nn.Conv2d, stride: int, padding: int, norm=None) -> torch.Tensor:
    """pw(dw(x)) for an undilated depthwise `dw` run with (stride, padding) and a 1x1 `pw`; saves only x.

    With `norm` = (mean, invstd, eps) from `batch_stats`, x is first normalised by that affine-free
    training-mode BatchNorm and rectified (a SepConv's middle), and still only x is saved.
    """
    return _DwPw.apply(x, param(dw.weight), param(pw.weight), DwConf(stride, padding), norm)


# --- FactorizedReduce's two convolutions, keeping only their (shared, already kept) input


def _phases(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return r[:, :, ::2, ::2], r[:, :, 1::2, 1::2]


def _reduce_forward(r, w1, w2) -> torch.Tensor:
    even, odd = _phases(r)
    return torch.cat([F.conv2d(even, w1), F.conv2d(odd, w2)], dim=1)


class _Reduce(torch.autograd.Function):
    """cat(conv_1(even pixels), conv_2(odd pixels)) of a rectified state: saves the state only (which its
    mixed edges keep anyway), not the two sub-sampled copies the convolutions would keep."""

    @staticmethod
    def forward(ctx, r, w1, w2):
        ctx.save_for_backward(r, w1, w2)
        ctx.nodes = (w1.grad_fn, w2.grad_fn)
        fmt = torch.channels_last if r.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        even, odd = (t.contiguous(memory_format=fmt) for t in _phases(r))
        return torch.cat([torch.einsum("nchw,oc->nohw", t, w[:, :, 0, 0]) for t, w in ((even, w1), (odd, w2))], 1)

    @staticmethod
    def backward(ctx, g):
        r, w1, w2 = ctx.saved_tensors
        if torch.is_grad_enabled():
            return tuple(_recompute_grads(ctx, _reduce_forward, (r, w1, w2), g))
        half = w1.shape[0]
        g1, g2 = g[:, :half], g[:, half:]
        grads = [None, None, None]
        if ctx.needs_input_grad[0]:
            g_r = torch.zeros_like(r)
            for phase, g_k, w in zip(_phases(g_r), (g1, g2), (w1, w2), strict=True):
                phase.copy_(torch.einsum("nohw,oc->nchw", g_k, w[:, :, 0, 0]))
            grads[0] = g_r
        for k, (x_k, g_k, w, node) in enumerate(zip(_phases(r), (g1, g2), (w1, w2), ctx.nodes, strict=True)):
            if ctx.needs_input_grad[1 + k] and _wanted(node):
                grads[1 + k] = torch.einsum("nohw,nchw->oc", g_k, x_k).view_as(w)
        return tuple(grads)


def factorized_reduce(r: torch.Tensor, conv_1: nn.Conv2d, conv_2: nn.Conv2d) -> torch.Tensor | None:
    """`FactorizedReduce.reduce_convs(r)` keeping only r for backward; None for odd sizes or under autocast
    (then use the module)."""
    if r.shape[-1] % 2 or r.shape[-2] % 2 or torch.is_autocast_enabled(r.device.type):
        return None
    return _Reduce.apply(r, param(conv_1.weight), param(conv_2.weight))


# --- max pooling that keeps no indices


class _MaxPool(torch.autograd.Function):
    """Max pooling that saves only its input (usually kept anyway) and recomputes the argmax in backward,
    instead of keeping an int64 index per output (twice the output's own size at fp32)."""

    @staticmethod
    def forward(ctx, x, k: int, s: int, p: int):
        ctx.conf = (k, s, p)
        ctx.save_for_backward(x)
        return F.max_pool2d(x, k, s, p)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        k, s, p = ctx.conf
        if torch.is_grad_enabled():
            return (*_recompute_grads(ctx, lambda a: F.max_pool2d(a, k, s, p), (x,), g), None, None, None)
        _, idx = torch.ops.aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p])
        return (
            torch.ops.aten.max_pool2d_with_indices_backward(g, x, [k, k], [s, s], [p, p], [1, 1], False, idx),
            None,
            None,
            None,
        )


def max_pool(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """`pool(x)` for a square, undilated, floor-mode `nn.MaxPool2d` (anything else runs the module)."""
    k, s, p = pool.kernel_size, pool.stride, pool.padding
    square = all(isinstance(v, int) for v in (k, s, p)) and pool.dilation == 1
    if not square or pool.ceil_mode or pool.return_indices or not torch.is_grad_enabled():
        return pool(x)
    return _MaxPool.apply(x, k, s, p)


# --- BatchNorm statistics and the fused end of a mixed edge


def batch_stats(z: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Batch mean, 1/std (and eps) of z per channel, as training-mode BatchNorm computes them; every module
    in `bns` (all normalise z) gets the running-statistics update it would have made itself."""
    bn = bns[0]
    with torch.no_grad():
        if bn.training and bn.track_running_stats:
            # ATen's BatchNorm statistics kernel (torch.var_mean is ~10x slower on channels-last tensors)
            mean, var = torch.batch_norm_update_stats(z, bn.running_mean, bn.running_var, bn.momentum)
            for b in bns:
                if b is not bn:
                    b.running_mean.copy_(bn.running_mean)  # equal inputs, equal updates
                    b.running_var.copy_(bn.running_var)
                b.num_batches_tracked.add_(1)
        else:
            mean, var = torch.batch_norm_update_stats(z, None, None, 0.0)
        invstd = torch.rsqrt(var + bn.eps)
    return mean, invstd, bn.eps


def fusable_bn(bn: nn.Module) -> bool:
    """mix_bn folds affine-free training-mode BatchNorms with a fixed momentum (the supernet's)."""
    return isinstance(bn, nn.BatchNorm2d) and not bn.affine and bn.training and bn.momentum is not None


def fusable(x: torch.Tensor, bn: nn.Module) -> bool:
    """The fused BatchNorm functions run in full precision only (under autocast the modules keep their own)."""
    return x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled() and fusable_bn(bn)


def _mix_forward(w, eps, skip, *zs):
    """The plain formula, statistics included (differentiated under create_graph)."""
    out = None
    for k, z in enumerate(zs):
        y = F.batch_norm(z, None, None, None, None, True, 0.0, eps[k]) * w[k]
        out = y if out is None else out + y
    return out if skip is None else out + w[len(zs)] * skip


def _bc(t: torch.Tensor) -> torch.Tensor:
    return t[:, None, None]


class _MixBN(torch.autograd.Function):
    # the per-channel coefficients of all K BatchNorms are computed as (K, C) tables in a few operations;
    # the passes over full tensors are one per input in forward and three per input in backward

    @staticmethod
    def forward(ctx, w, stats, skip, *zs):
        k = len(zs)
        means = torch.stack([st[0] for st in stats])
        invs = torch.stack([st[1] for st in stats])
        ctx.eps = [st[2] for st in stats]
        a = w[:k, None] * invs
        shift = (means * a).sum(0).neg_()
        out = torch.addcmul(_bc(shift), zs[0], _bc(a[0]))
        for z, a_k in zip(zs[1:], a[1:], strict=True):
            out.addcmul_(z, _bc(a_k))
        if skip is not None:
            out.addcmul_(skip, w[k])
        ctx.save_for_backward(w, skip, *zs)
        ctx.tables = (means, invs)
        ctx.nodes = [z.grad_fn for z in zs] + [None if skip is None else skip.grad_fn]
        return out

    @staticmethod
    def backward(ctx, g):
        w, skip, *zs = ctx.saved_tensors
        if torch.is_grad_enabled():
            g_w, _, g_skip, *g_zs = _recompute_grads(ctx, _mix_forward, (w, ctx.eps, skip, *zs), g)
            return (g_w, None, g_skip, *g_zs)
        means, invs = ctx.tables
        k = len(zs)
        dims = (0, 2, 3)
        m = g.numel() // g.shape[1]
        g_sum = g.sum(dims)
        # d[k] = sum over the batch of g * xhat_k, per channel
        d = torch.stack([(g * z).sum(dims) for z in zs]).sub_(means * g_sum).mul_(invs)
        g_w = torch.empty_like(w)
        g_w[:k] = d.sum(1)
        g_zs: list = [None] * k
        # an architecture step does not backpropagate into the first cell's edges from its two inputs
        wanted = [i for i in range(k) if ctx.needs_input_grad[3 + i] and _wanted(ctx.nodes[i])]
        if wanted:
            a = w[:k, None] * invs
            beta = (a * invs * d).mul_(-1.0 / m)
            gamma = (a * g_sum).mul_(-1.0 / m).sub_(beta * means)
            for i in wanted:
                g_zs[i] = torch.addcmul(_bc(gamma[i]), g, _bc(a[i])).addcmul_(zs[i], _bc(beta[i]))
        g_skip = None
        if skip is not None:
            g_w[k] = (g * skip).sum()
            g_skip = g * w[k] if ctx.needs_input_grad[2] and _wanted(ctx.nodes[k]) else None
        return (g_w if ctx.needs_input_grad[0] else None, None, g_skip, *g_zs)


_ONCE: ContextVar[bool] = ContextVar("bnas_backward_once", default=False)


@contextmanager
def backward_once() -> Iterator[None]:
    """Declares that forwards run in this block are differentiated once, never twice (the search's weight
    and architecture steps; not Hessian-vector products): `bn_out` may then keep its output only."""
    token = _ONCE.set(True)
    try:
        yield
    finally:
        _ONCE.reset(token)


def once() -> bool:
    """Inside `backward_once`."""
    return _ONCE.get()


class _BNOut(torch.autograd.Function):
    """Affine-free training-mode BatchNorm that saves its output, not its input: with no affine the output
    is the normalised input itself, and a cell's preprocessed state is kept for backward anyway (by the
    pools and the skip of its mixed edges), so this BatchNorm costs no memory of its own."""

    @staticmethod
    def forward(ctx, z, mean, invstd):
        y = _normalise(z, mean, invstd)
        ctx.save_for_backward(y, invstd)
        return y

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "bnas: a forward run inside bnas.fast.backward_once() was differentiated twice; "
                "run it outside that block"
            )
        y, invstd = ctx.saved_tensors
        zero, one = torch.zeros_like(invstd), torch.ones_like(invstd)
        # BatchNorm's input gradient in terms of xhat = y (mean 0, invstd 1), then the 1/std of the chain rule
        g_z = torch.ops.aten.native_batch_norm_backward(
            g, y, None, None, None, zero, one, True, 0.0, [True, False, False]
        )
        return g_z[0].mul_(_bc(invstd)), None, None


def bn_out(z: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """`bn(z)` for an affine-free training-mode BatchNorm; inside `backward_once` it keeps only its output for
    backward (differentiating that twice would need z), elsewhere it is the module itself."""
    if not fusable(z, bn) or not _ONCE.get() or not torch.is_grad_enabled():
        return bn(z)
    mean, invstd, _ = batch_stats(z, [bn])
    return _BNOut.apply(z, mean, invstd)


def _conv_bn_forward(r, w, gamma, beta, conv: tuple, eps: float) -> torch.Tensor:
    return F.batch_norm(F.conv2d(r, w, None, *conv), None, None, gamma, beta, True, 0.0, eps)


class _ConvBN(torch.autograd.Function):
    """A convolution then training-mode BatchNorm that keeps only the convolution's input: backward
    recomputes the convolution output (the ReLUConvBN taps: a 1x1 convolution, cheap to recompute)."""

    @staticmethod
    def forward(ctx, r, w, gamma, beta, conv: tuple, bn: nn.BatchNorm2d):
        z = F.conv2d(r, w, None, *conv)
        mean, invstd, eps = ctx.stats = batch_stats(z, [bn])
        ctx.conf = conv
        ctx.save_for_backward(r, w, gamma, beta)
        a = invstd if gamma is None else gamma * invstd
        shift = -mean * a if beta is None else beta - mean * a
        return torch.addcmul(_bc(shift), z, _bc(a))

    @staticmethod
    def backward(ctx, g):
        r, w, gamma, beta = ctx.saved_tensors
        conv, (mean, invstd, eps) = ctx.conf, ctx.stats
        if torch.is_grad_enabled():
            fn = lambda a, b, c, d: _conv_bn_forward(a, b, c, d, conv, eps)  # noqa: E731
            return (*_recompute_grads(ctx, fn, (r, w, gamma, beta), g), None, None)
        need = ctx.needs_input_grad
        z = F.conv2d(r, w, None, *conv)
        mask = [need[0] or need[1], need[2], need[3]]
        g_z, g_gamma, g_beta = torch.ops.aten.native_batch_norm_backward(
            g, z, gamma, None, None, mean, invstd, True, eps, mask
        )
        g_r = g_w = None
        if need[0] or need[1]:
            stride, padding, dilation, groups = conv
            args = (g_z, r, w, None, stride, padding, dilation, False, [0, 0], groups, [need[0], need[1], False])
            g_r, g_w = _ATEN_CONV_BWD(*args)[:2]
        return g_r, g_w, g_gamma if need[2] else None, g_beta if need[3] else None, None, None


def conv_bn(r: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """`bn(conv(r))` in training mode keeping only r for backward (see `_ConvBN`); the module pair elsewhere."""
    plain = conv.bias is not None or not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros"
    plain = plain or not (bn.training and bn.track_running_stats and bn.momentum is not None)
    plain = plain or r.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(r.device.type)
    if plain or not torch.is_grad_enabled():
        return bn(conv(r))
    gamma, beta = (bn.weight, bn.bias) if bn.affine else (None, None)
    return _ConvBN.apply(r, conv.weight, gamma, beta, (conv.stride, conv.padding, conv.dilation, conv.groups), bn)


def mix_bn(w: torch.Tensor, zs: Sequence[torch.Tensor], stats: Sequence, skip: torch.Tensor | None = None):
    """sum_k w[k] * (zs[k] - mean_k) * invstd_k (+ w[-1] * skip) with stats = [(mean_k, invstd_k, eps_k)] from
    `batch_stats`; gradients are those of training-mode BatchNorm (statistics depend on z) and the sum."""
    return _MixBN.apply(w, list(stats), skip, *zs)
