"""Random search with weight sharing (Li & Talwalkar 2019), `bnas search --method random`: the baseline a
gradient-based search has to beat, on the same supernet, data and budget.

Each weight step trains one architecture drawn uniformly from what derivation can produce (its cells as
one-hot op weights on the supernet, `SuperNet.path_weights`); there is no architecture step. At each epoch's
end a fixed set of `random_candidates` sampled cells is scored on the architecture split with the shared
weights and the best one is the epoch's genotype (the last epoch scores on the whole split, earlier ones on
its first batches). Selection never looks at the test set. That selected candidate is what the run reports:
its genotype, its evaluation (`SuperNet.fixed`) and its Hessian diagnostic. Paths are arguments of the
forward (`model(x, path=...)`), never left set on the supernet.
"""

from __future__ import annotations

import random

import torch

from .genotype import Genotype, sample_cell, sample_genotype
from .space import SuperNet


def epoch_paths(model: SuperNet, rng: random.Random, steps: int) -> list[dict[str, torch.Tensor]]:
    """One uniformly drawn architecture per step of an epoch, copied to the device once for the whole epoch."""
    drawn = [model.path_weights(Genotype(sample_cell(rng), sample_cell(rng), model.cfg.space)) for _ in range(steps)]
    if not drawn:
        return []
    stacked = {k: torch.stack([d[k] for d in drawn]).cpu() for k in model.cell_types}
    device = model.arch[f"alpha_{model.cell_types[0]}"].device
    on_device = {k: v.to(device, non_blocking=True) for k, v in stacked.items()}
    return [{k: on_device[k][i] for k in model.cell_types} for i in range(steps)]


def candidates(space: str, seed: int, count: int) -> list[Genotype]:
    """The fixed candidate set of a run: `count` sampled genotypes (their seeds follow the run's)."""
    return [sample_genotype(space, seed * 100_003 + i) for i in range(count)]


@torch.no_grad()
def select(model: SuperNet, loader, cands: list[Genotype], autocast, max_batches: int | None = None):
    """Score each candidate on the architecture split with the shared weights (batch statistics in the
    BatchNorms, as in training; the supernet's buffers are restored) -> (best genotype, accuracies)."""
    saved = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    scores = []
    try:
        for g in cands:
            path = model.path_weights(g)
            right = torch.zeros((), device=next(model.parameters()).device)
            n = 0
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                with autocast():
                    right += (model(x, path=path).argmax(1) == y).sum()
                n += y.shape[0]
            scores.append(right.item() / max(n, 1))
    finally:
        for b, s in zip(model.buffers(), saved, strict=True):
            b.copy_(s)
        model.train(was_training)
    best = max(range(len(cands)), key=lambda i: scores[i])
    return cands[best], scores
