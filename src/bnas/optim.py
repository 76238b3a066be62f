"""SGD and Adam with torch.optim's update rules and state-dict format, without torch.optim's import cost.

Every `torch.optim.Optimizer` imports `torch._dynamo` (and with it sympy and mpmath) on first use, for graph
breaks that only matter under `torch.compile`: about 150 MB of resident memory and a second of start-up in
every process, a quarter of a small search's peak memory on a CPU. These two classes do the same
arithmetic in the same order as torch's single-tensor (CPU) implementations, so results are bit-identical
(tests/test_optim.py), and their state dicts load into torch.optim and back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class _Optimizer:
    """The parts of torch.optim.Optimizer bnas uses: param_groups, per-parameter state, zero_grad, state dicts."""

    def __init__(self, params: Iterable[torch.Tensor], defaults: dict[str, Any]):
        self.defaults = defaults
        self.param_groups = [{"params": list(params), **defaults}]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: state keyed by the parameter's position, groups list positions."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(s["params"]) for g, s in zip(self.param_groups, groups, strict=True)
        ):
            raise ValueError("the optimizer state holds a different number of parameters")
        by_index = {
            i: p
            for g, s in zip(self.param_groups, groups, strict=True)
            for i, p in zip(s["params"], g["params"], strict=True)
        }
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {  # the step count on the CPU, as torch's non-fused optimizers keep it
                k: (v.to(device=p.device, dtype=p.dtype) if k != "step" else v.detach().to("cpu"))
                if torch.is_tensor(v)
                else v
                for k, v in s.items()
            }
        for group, saved in zip(self.param_groups, groups, strict=True):  # a fused optimizer's flags are not ours
            group.update({k: v for k, v in saved.items() if k in self.defaults})


def _masked_copy_(dst: list[torch.Tensor], new: list[torch.Tensor], mask: torch.Tensor) -> None:
    """dst <- new where mask (a 0-dim bool tensor), else unchanged: no host read, and NaN-safe (a select)."""
    for d, n in zip(dst, new, strict=True):
        torch.where(mask, n, d, out=d)


class SGD(_Optimizer):
    """torch.optim.SGD with momentum and L2 weight decay (no dampening, no Nesterov: what DARTS-style code uses)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=0, weight_decay=weight_decay,
                                      nesterov=False, maximize=False))  # fmt: skip

    @torch.no_grad()
    def step(self, mask: torch.Tensor | None = None) -> None:
        """One update of every parameter with a gradient. `mask` (a 0-dim bool tensor on the parameters'
        device) decides on the device whether the update happens: where it is False parameters and momentum
        buffers keep their values, so a step with non-finite gradients is skipped without the host reading
        anything. Lists of tensors go through torch's foreach kernels, in torch.optim's order of operations
        (the same bits); a missing momentum buffer starts at zero, which makes the first step's
        momentum * 0 + d_p exactly torch's clone of d_p."""
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            d_p = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads
            if momentum != 0:
                bufs = []
                for p in params:
                    state = self.state.setdefault(p, {})
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    bufs.append(state["momentum_buffer"])
                if mask is None:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, d_p)
                else:
                    new = torch._foreach_mul(bufs, momentum)
                    torch._foreach_add_(new, d_p)
                    _masked_copy_(bufs, new, mask)
                d_p = bufs
            if mask is None:
                torch._foreach_add_(params, d_p, alpha=-lr)
            else:
                _masked_copy_(params, torch._foreach_add(params, d_p, alpha=-lr), mask)


class Adam(_Optimizer):
    """torch.optim.Adam with L2 weight decay (not AdamW), no amsgrad.

    The step count of each parameter lives in its state as a CPU tensor (torch.optim's format) and, for the
    bias corrections, as a Python number, so a step reads nothing back from any tensor. A masked step
    (`step(mask)`, see SGD) leaves parameters and moments unchanged but still counts: the host cannot
    know it was skipped without reading the mask (a skipped step is a rare NaN or fp16 overflow)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=False, maximize=False))  # fmt: skip
        self._steps: dict[torch.Tensor, float] = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._steps = {p: float(s["step"]) for p, s in self.state.items() if "step" in s}

    @torch.no_grad()
    def step(self, mask: torch.Tensor | None = None) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = self._steps[p] = self._steps.get(p, 0.0) + 1.0
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if mask is not None:
                    old = (exp_avg.clone(), exp_avg_sq.clone(), p.clone())
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if mask is not None:  # where the mask is False, back to the values before the step
                    for now, before in zip((exp_avg, exp_avg_sq, p), old, strict=True):
                        torch.where(mask, now, before, out=now)


_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")  # how torch.optim computes, not what


def _own_flags(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict from any SGD/Adam (bnas.optim's, torch.optim's fused or not) made loadable here: torch.optim
    takes the saved groups' flags as its own (a bnas checkpoint would silently turn `fused` off) and keeps
    the step count where the saved flags say, so this optimizer's flags go into the groups first."""
    groups = [
        {**saved, **{k: group[k] for k in _IMPLEMENTATION if k in group}}
        for saved, group in zip(state_dict["param_groups"], optimizer.param_groups, strict=False)
    ]
    return {**state_dict, "param_groups": groups}


class FusedSGD(torch.optim.SGD):
    """torch.optim.SGD(fused=True) (the CUDA profile): one kernel for all parameters, skipped on the device
    through `found_inf` (`masked_step`), and loading the state of a run under the other profile."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)

    @torch.no_grad()
    def step(self, closure=None):
        # torch's fused SGD makes missing momentum buffers with empty_like and fills them in its kernel: a
        # first step skipped through found_inf would leave them uninitialised. Zeros give the same first step
        # (momentum * 0 + d_p), as bnas.optim.SGD starts.
        for group in self.param_groups:
            if group["momentum"] != 0:
                for p in group["params"]:
                    if p.grad is not None and self.state[p].get("momentum_buffer") is None:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return super().step(closure)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(_own_flags(self, state_dict))


class FusedAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) (the CUDA profile); a skipped step (found_inf) is not counted."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(_own_flags(self, state_dict))


def adam_like(optimizer, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float], weight_decay: float):
    """An Adam of the same kind as `optimizer` (the run's weight SGD, chosen by its runtime profile): fused
    with a fused one, bnas.optim's otherwise."""
    if isinstance(optimizer, torch.optim.Optimizer) and optimizer.param_groups[0].get("fused"):
        return FusedAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def masked_step(optimizer, mask: torch.Tensor) -> None:
    """optimizer.step() where the 0-dim bool `mask` is True, decided on the device where possible: bnas'
    optimizers mask their update; torch.optim's fused ones (the CUDA profile) skip through their `found_inf`
    input, as under a GradScaler; torch.optim's others cannot be masked, and cost one host read (bench
    --torch-optim)."""
    if isinstance(optimizer, _Optimizer):
        optimizer.step(mask=mask)
    elif all(g.get("fused") for g in optimizer.param_groups):
        optimizer.found_inf = (~mask).to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(mask):
        optimizer.step()
