"""Collapse diagnostics of a search: what the alphas say about how a search is going, never used to update them.

* `alpha_entropy`: the mean entropy of each edge's op distribution (low = confident, maybe collapsed);
* `alpha_record`: the softmaxed op weights (and PC's edge weights) of one epoch, a line of alphas.jsonl;
* `alpha_hessian_eigenvalue`: RobustDARTS' indicator, the dominant eigenvalue of the Hessian of the loss
  with respect to the architecture (the alphas, or a fixed path's op weights), by power iteration.

(The collapse symptom itself, how many edges carry a parameter-free operation, is `Genotype.parameter_free`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .ops import PRIMITIVES
from .runtime import upcast
from .space import PathWeights, SuperNet


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
    model: SuperNet,
    x: torch.Tensor,
    y: torch.Tensor,
    iters: int = 20,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    path: PathWeights | None = None,
) -> float:
    """RobustDARTS' collapse indicator: the dominant eigenvalue of the Hessian of the loss on (x, y) w.r.t.
    the alphas (power iteration, each product by double backprop), in full precision. The model is used as
    the architecture step uses it (train mode: BatchNorm on batch statistics); its buffers are restored.

    With `path` (a fixed architecture's one-hot op weights, `SuperNet.path_weights`: random search's selected
    candidate) the Hessian is w.r.t. those op weights at that point: the curvature of the loss around the
    architecture the run reports, where the alphas play no part."""
    if path is None:
        variables = [model.arch[f"alpha_{k}"] for k in model.cell_types]
    else:
        variables = [path[k].detach().clone().requires_grad_() for k in model.cell_types]
    saved = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        fixed = None if path is None else dict(zip(model.cell_types, variables, strict=True))
        loss = F.cross_entropy(upcast(model(x, path=fixed)), y)
        grads = torch.autograd.grad(loss, variables, create_graph=True)

        def hvp(v: list[torch.Tensor]) -> Sequence[torch.Tensor]:
            return torch.autograd.grad(grads, variables, grad_outputs=v, retain_graph=True)

        return dominant_eigenvalue(hvp, variables, iters, tol, generator)
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
