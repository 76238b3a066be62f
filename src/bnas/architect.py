"""The architecture step (SPEC §7): first or second order, and CLR's learning-rate schedule.

The step has its own small options (`ArchitectOptions`: learning rate, Adam's betas and weight decay, gradient
clip, CLR power, order, HVP, finite-difference step); it does not know which method preset or which search
configuration chose them. The collapse diagnostics (alpha entropy, the alpha Hessian) are in diagnostics.py.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from . import fast
from .dist import all_reduce_mean
from .errors import ConfigError
from .optim import SGD, adam_like
from .runtime import StepResult, guarded_step, upcast
from .space import SuperNet


def clr_arch_lr(base: float, epoch: int, epochs: int, power: float) -> float:
    """CLR: base x ((epoch + 1) / epochs) ** power (power 0 = constant)."""
    return base * ((epoch + 1) / epochs) ** power if power else base


# --- the summed architecture learning rate: how far a search can move an alpha
#
# Adam moves one alpha by at most its learning rate per step, so a search moves an alpha at most by the sum of
# its steps' rates (CLR's confidence included). `--arch-lr auto` gives a search the sum of its method's paper
# search on CIFAR-10: 50 epochs of ceil(25,000 / batch) steps, the method's warm-up and CLR power.

PAPER_EPOCHS = 50
PAPER_IMAGES = 25_000  # the architecture's half of CIFAR-10's 50,000 training images


def confidence_sum(epochs: int, steps_per_epoch: int, start_epoch: int, power: float) -> float:
    """The summed CLR confidence of a search by epochs: steps_per_epoch x ((e + 1) / epochs) ** power over the
    epochs e from `start_epoch` (the warm-up has no architecture steps)."""
    return steps_per_epoch * sum(clr_arch_lr(1.0, e, epochs, power) for e in range(start_epoch, epochs))


def step_confidence_sum(total_steps: int, start_step: int, power: float) -> float:
    """The summed CLR confidence of a search by steps (a budget's): ((s + 1) / total) ** power over the steps s
    from `start_step`."""
    return sum(((s + 1) / total_steps) ** power if power else 1.0 for s in range(start_step, total_steps))


def paper_arch_lr_sum(arch_lr: float, batch_size: int, start_epoch: int, power: float) -> float:
    """The summed architecture learning rate of a method's paper search on CIFAR-10 (CLR: 0.505)."""
    steps = math.ceil(PAPER_IMAGES / batch_size)
    return arch_lr * confidence_sum(PAPER_EPOCHS, steps, start_epoch, power)


def auto_arch_lr(target_sum: float, confidence: float) -> float:
    """The base architecture learning rate whose summed rate over a search of summed `confidence` is
    `target_sum` (`--arch-lr auto`)."""
    if confidence <= 0:
        raise ConfigError(
            "arch_lr auto needs architecture steps: the search has none (arch_start_epoch too late?)",
            options=("arch_lr", "arch_start_epoch"),
        )
    return target_sum / confidence


@dataclass(frozen=True)
class ArchitectOptions:
    """What the architecture step needs to know (SPEC §7 defaults); a search builds it with `from_config`."""

    lr: float = 3e-4
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    grad_clip: float = 0.0  # 0 = off
    clr_power: float = 0.0  # 0 = constant learning rate (no CLR)
    order: int = 1
    hvp: str = "fd"  # fd (DARTS' finite differences) | exact (double backprop)
    fd_eps: float = 0.01  # finite-difference step: eps = fd_eps / ||v||

    @classmethod
    def from_config(cls, cfg: Any) -> ArchitectOptions:
        """The architecture options of a search configuration (its arch_* fields, order, hvp, fd_eps)."""
        lr = cfg.arch_lr if not isinstance(cfg.arch_lr, str) else cls.lr  # "auto": the search sets it
        return cls(
            lr=lr, weight_decay=cfg.arch_weight_decay, betas=tuple(cfg.arch_betas),
            grad_clip=cfg.arch_grad_clip, clr_power=cfg.clr_power, order=cfg.order, hvp=cfg.hvp, fd_eps=cfg.fd_eps,
        )  # fmt: skip

    def lr_at(self, epoch: int, epochs: int) -> float:
        """The learning rate of an epoch (CLR's confidence schedule, or constant)."""
        return clr_arch_lr(self.lr, epoch, epochs, self.clr_power)


class Architect:
    """Updates the architecture parameters on validation batches (first or second order).

    `options`: an ArchitectOptions (anything else is read with `ArchitectOptions.from_config`, e.g. a
    SearchConfig)."""

    def __init__(
        self, model: SuperNet, options: ArchitectOptions | Any, w_optimizer: SGD, autocast=None, scaler=None,
        penalty: Any = None,
    ):  # fmt: skip
        self.model = model
        self.penalty = penalty  # costs.CostPenalty: a budget's cost term in the architecture loss; or None
        self.grad_stats: Any = None  # decision.GradConsistency: what a search reads per epoch; or None
        opts = options if isinstance(options, ArchitectOptions) else ArchitectOptions.from_config(options)
        self.options = opts
        self.w_optimizer = w_optimizer
        self.autocast = autocast or contextlib.nullcontext
        # fp16: the architecture loss has its own scaler (its gradients' range is not the weights')
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        if self.scaler.is_enabled() and opts.order == 2:
            raise ConfigError("fp16 gives NaNs in the second-order double backward; use --amp bf16 or off")
        self.optimizer = adam_like(  # of the weight optimizer's kind (the run's profile: bnas or fused)
            w_optimizer, model.arch_parameters(), lr=opts.lr, betas=opts.betas, weight_decay=opts.weight_decay
        )

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _loss(self, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None, once=True):
        """The loss of a batch; `once`: it will be differentiated once (lets the fast cells keep less)."""
        with self.autocast(), fast.backward_once() if once else contextlib.nullcontext():
            logits = self.model(x) if params is None else functional_call(self.model, params, (x,))
        return F.cross_entropy(upcast(logits), y)

    def gradients(
        self, x_train, y_train, x_val, y_val, eta: float, scaled: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Architecture gradients (without applying them) and the validation loss (a detached 0-dim tensor: no
        host read); `scaled`: of the loss times the fp16 loss scale (first order; `step` unscales them), else
        the true gradients."""
        arch = self.model.arch_parameters()
        if self.options.order == 1:
            loss = self._loss(x_val, y_val)
            total = self._penalised(loss)
            # alpha gradients only: autograd never computes the weights' gradients here
            target = self.scaler.scale(total) if scaled else total
            return list(torch.autograd.grad(target, arch)), loss.detach()
        grads, loss = self._unrolled(x_train, y_train, x_val, y_val, eta)
        if self.penalty is None:
            return grads, loss
        # chain rule through the penalty: d total/d a = d total/d L * (unrolled dL/da) + its own d/da
        ce = loss.detach().requires_grad_()
        d_ce, *d_own = torch.autograd.grad(self._penalised(ce), [ce, *arch], allow_unused=True)
        return [g * d_ce + (0 if d is None else d) for g, d in zip(grads, d_own, strict=True)], loss

    def _penalised(self, loss: torch.Tensor) -> torch.Tensor:
        """The validation loss with the budget's penalty (the loss itself without a budget)."""
        if self.penalty is None:
            return loss
        kinds = self.model.cell_types
        alphas = [self.model.arch[f"alpha_{k}"] for k in kinds]
        betas = [self.model.arch[f"beta_{k}"] for k in kinds] if self.model.cfg.edge_norm else None
        return self.penalty(loss, alphas, betas)

    def _unrolled(self, x_train, y_train, x_val, y_val, eta: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        """DARTS' second order: grad_a L_val(w', a) - eta * H v, with w' one SGD step ahead of w.

        w' is the step the weight optimizer would take (SPEC §7): w - eta (momentum * buf + g + wd * w) with its
        own momentum, weight decay and momentum buffers (none before its first step). The buffers do not depend
        on a, so dw'/da = -eta d(grad_w L_train)/da and H v is the same with or without them; v = grad_w' L_val.
        """
        model, arch = self.model, self.model.arch_parameters()
        named = [(n, p) for n, p in model.named_parameters() if not n.startswith("arch.")]
        names, weights = [n for n, _ in named], [p for _, p in named]
        grads = torch.autograd.grad(self._loss(x_train, y_train), weights)
        group = self.w_optimizer.param_groups[0]  # the optimizer that takes the real step
        mom, wd = group["momentum"], group["weight_decay"]
        with torch.no_grad():  # w' = w - eta (momentum * buf + g + wd * w), as lists (a few hundred tensors)
            bufs = [self.w_optimizer.state.get(p, {}).get("momentum_buffer") for p in weights]
            step = torch._foreach_add(list(grads), weights, alpha=wd)
            held = [i for i, b in enumerate(bufs) if b is not None]
            if held:
                torch._foreach_add_([step[i] for i in held], [bufs[i] for i in held], alpha=mom)
            w_prime = list(torch._foreach_add(weights, step, alpha=-eta))
        for t in w_prime:
            t.requires_grad_()
        val_loss = self._loss(x_val, y_val, dict(zip(names, w_prime, strict=True)))
        both = torch.autograd.grad(val_loss, arch + w_prime)
        d_arch, v = list(both[: len(arch)]), [t.detach() for t in both[len(arch) :]]
        hv = (
            self._hvp_fd(weights, v, x_train, y_train)
            if self.options.hvp == "fd"
            else self._hvp_exact(weights, v, x_train, y_train)
        )
        return [d - eta * h for d, h in zip(d_arch, hv, strict=True)], val_loss.detach()

    def _hvp_fd(self, weights, v, x, y) -> list[torch.Tensor]:
        """(grad_a L_train(w + eps v) - grad_a L_train(w - eps v)) / 2 eps, eps = fd_eps / ||v||.

        eps stays a tensor on the device (the host never reads ||v||): the perturbations are eps * v."""
        arch = self.model.arch_parameters()
        eps = self.options.fd_eps / torch.cat([t.flatten() for t in v]).norm().clamp_min(1e-12)
        with torch.no_grad():
            saved = torch._foreach_mul(weights, 1.0)  # copies, restored exactly below
            step = torch._foreach_mul(v, eps)
            torch._foreach_add_(weights, step)
        g_plus = torch.autograd.grad(self._loss(x, y), arch)
        with torch.no_grad():
            torch._foreach_add_(weights, step, alpha=-2)
        g_minus = torch.autograd.grad(self._loss(x, y), arch)
        with torch.no_grad():
            torch._foreach_copy_(weights, saved)
        return [(a - b) / (2 * eps) for a, b in zip(g_plus, g_minus, strict=True)]

    def _hvp_exact(self, weights, v, x, y) -> list[torch.Tensor]:
        """d/da (grad_w L_train(w, a) . v) by double backpropagation."""
        arch = self.model.arch_parameters()
        g_w = torch.autograd.grad(self._loss(x, y, once=False), weights, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(g_w, v, strict=True))
        return list(torch.autograd.grad(dot, arch))

    def step(self, x_train, y_train, x_val, y_val, eta: float) -> tuple[torch.Tensor, StepResult]:
        """One architecture update, decided on the device: the validation loss (detached) and what the step did
        (`StepResult`: skipped on a non-finite loss or gradient, with fp16 overflows told apart)."""
        grads, loss = self.gradients(x_train, y_train, x_val, y_val, eta, scaled=True)
        all_reduce_mean(grads)  # torchrun: autograd.grad bypasses DDP's hooks, so average the ranks' gradients
        arch = self.model.arch_parameters()
        for p, g in zip(arch, grads, strict=True):
            p.grad = g
        result = guarded_step(loss, self.optimizer, arch, self.options.grad_clip, self.scaler)
        if self.grad_stats is not None:
            self.grad_stats.add(grads, result.ok)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, result
