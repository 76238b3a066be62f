"""The architecture step (SPEC §7): first or second order, CLR's learning-rate schedule, and the Hessian
of the loss with respect to the alphas (RobustDARTS' collapse indicator).

The step is configured by the search's config (order, HVP, finite-difference step, CLR power); it does not
know which method preset chose them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call

from . import fast
from .dist import all_reduce_mean
from .errors import ConfigError
from .ops import PRIMITIVES
from .optim import SGD, adam_like
from .runtime import StepResult, guarded_step, upcast
from .space import SuperNet

if TYPE_CHECKING:
    from .search import SearchConfig


def clr_arch_lr(base: float, epoch: int, epochs: int, power: float) -> float:
    """CLR: base x ((epoch + 1) / epochs) ** power (power 0 = constant)."""
    return base * ((epoch + 1) / epochs) ** power if power else base


class Architect:
    """Updates the architecture parameters on validation batches (first or second order)."""

    def __init__(self, model: SuperNet, cfg: SearchConfig, w_optimizer: SGD, autocast=None, scaler=None):
        self.model = model
        self.cfg = cfg
        self.w_optimizer = w_optimizer
        self.autocast = autocast or contextlib.nullcontext
        # fp16: the architecture loss has its own scaler (its gradients' range is not the weights')
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        if self.scaler.is_enabled() and cfg.order == 2:
            raise ConfigError("fp16 gives NaNs in the second-order double backward; use --amp bf16 or off")
        self.optimizer = adam_like(  # of the weight optimizer's kind (the run's profile: bnas or fused)
            w_optimizer,
            model.arch_parameters(),
            lr=cfg.arch_lr,
            betas=cfg.arch_betas,
            weight_decay=cfg.arch_weight_decay,
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
        if self.cfg.order == 1:
            loss = self._loss(x_val, y_val)
            # alpha gradients only: autograd never computes the weights' gradients here
            target = self.scaler.scale(loss) if scaled else loss
            return list(torch.autograd.grad(target, arch)), loss.detach()
        return self._unrolled(x_train, y_train, x_val, y_val, eta)

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
        group = self.w_optimizer.param_groups[0]  # the optimizer that takes the real step (= cfg in a search)
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
            if self.cfg.hvp == "fd"
            else self._hvp_exact(weights, v, x_train, y_train)
        )
        return [d - eta * h for d, h in zip(d_arch, hv, strict=True)], val_loss.detach()

    def _hvp_fd(self, weights, v, x, y) -> list[torch.Tensor]:
        """(grad_a L_train(w + eps v) - grad_a L_train(w - eps v)) / 2 eps, eps = fd_eps / ||v||.

        eps stays a tensor on the device (the host never reads ||v||): the perturbations are eps * v."""
        arch = self.model.arch_parameters()
        eps = self.cfg.fd_eps / torch.cat([t.flatten() for t in v]).norm().clamp_min(1e-12)
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
        result = guarded_step(loss, self.optimizer, arch, self.cfg.arch_grad_clip, self.scaler)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, result


def dominant_eigenvalue(
    hvp: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    like: Sequence[torch.Tensor],
    iters: int = 20,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> float:
    """The largest eigenvalue of a symmetric operator known by its products (RobustDARTS' lambda_max).

    Power iteration finds the eigenvalue of largest magnitude; when that one is negative it is the smallest,
    and a second power iteration on H - lambda I (all eigenvalues >= 0) finds the largest. Each stops once
    two successive Rayleigh quotients agree to `tol` (relative); `generator` draws the start vector so that
    the global random state (and with it a resumed run) is left untouched.
    """
    v0 = [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in like]
    lam = _power_iteration(hvp, v0, iters, tol)
    if lam < 0:
        low = lam

        def shifted(v: list[torch.Tensor]) -> list[torch.Tensor]:
            return [h - low * t for h, t in zip(hvp(v), v, strict=True)]

        lam = low + _power_iteration(shifted, v0, iters, tol)
    return lam


def _power_iteration(hvp, v: list[torch.Tensor], iters: int, tol: float) -> float:
    eig: float | None = None
    for _ in range(iters):
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        if norm == 0:
            return 0.0
        v = [t / norm for t in v]
        hv = [h.detach() for h in hvp(v)]
        new = float(sum((h * t).sum() for h, t in zip(hv, v, strict=True)))
        settled = eig is not None and abs(new - eig) <= tol * max(abs(new), 1e-12)
        eig, v = new, hv
        if settled:
            break
    return float(eig or 0.0)


def alpha_hessian_eigenvalue(
    model: SuperNet, x: torch.Tensor, y: torch.Tensor, iters: int = 20, tol: float = 1e-3, generator=None
) -> float:
    """RobustDARTS' collapse indicator: the dominant eigenvalue of the Hessian of the loss on (x, y) w.r.t.
    the alphas (power iteration, each product by double backprop), in full precision. The model is used as
    the architecture step uses it (train mode: BatchNorm on batch statistics); its buffers are restored."""
    alphas = [model.arch[f"alpha_{k}"] for k in model.cell_types]
    saved = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        loss = F.cross_entropy(upcast(model(x)), y)
        grads = torch.autograd.grad(loss, alphas, create_graph=True)

        def hvp(v: list[torch.Tensor]) -> Sequence[torch.Tensor]:
            return torch.autograd.grad(grads, alphas, grad_outputs=v, retain_graph=True)

        return dominant_eigenvalue(hvp, alphas, iters, tol, generator)
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved, strict=True):
                b.copy_(s)
        model.train(was_training)


def alpha_record(model: SuperNet, epoch: int) -> dict:
    """The softmaxed op weights of every edge (and PC's normalised edge weights): alphas.jsonl, whose
    lines the report plots as the alpha evolution per edge."""
    rec: dict = {"epoch": epoch, "ops": list(PRIMITIVES), "alphas": {}}
    for kind in model.cell_types:
        p = torch.softmax(model.arch[f"alpha_{kind}"].detach().float(), dim=-1)
        rec["alphas"][kind] = [[round(v, 5) for v in row] for row in p.tolist()]
        if model.cfg.edge_norm:
            b = model.edge_weights(model.arch[f"beta_{kind}"].detach().float())
            rec.setdefault("betas", {})[kind] = [round(v, 5) for v in b.tolist()]
    return rec


def alpha_entropy(model: SuperNet) -> dict[str, float]:
    """Mean entropy of the op distribution per edge, per cell type (low = confident, maybe collapsed)."""
    out = {}
    for kind in model.cell_types:
        # float64: early in a search float32 rounds ln 8 - entropy to multiples of ~2e-7
        p = torch.softmax(model.arch[f"alpha_{kind}"].detach().double(), dim=-1)
        out[kind] = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
    return out
