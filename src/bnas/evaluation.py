"""A finished training run, read back: its network rebuilt from a checkpoint, and re-evaluated on a split.

Used by `bnas eval` and `bnas export`; nothing here trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .data.loaders import TensorLoader
from .data.registry import get_dataset, load_split
from .errors import CheckpointError, ConfigError
from .genotype import Genotype
from .runs import load_checkpoint
from .runtime import evaluate, pick_device
from .space import TrainedNet
from .train import TrainConfig, network_for


def _checkpoint_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: give a training run directory, its checkpoint.pt or its best.pt")
    return p / "checkpoint.pt" if p.is_dir() else p


def load_trained(path: str | Path, device: str = "cpu") -> tuple[TrainedNet, TrainConfig, dict[str, Any]]:
    """Rebuild a trained network from a run directory, its checkpoint.pt or its best.pt (eval mode)."""
    state = load_checkpoint(_checkpoint_path(path), "train")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in fields})
    meta = state["meta"]
    model = network_for(cfg, Genotype.from_json(meta["genotype"]), get_dataset(cfg.dataset), meta["num_classes"])
    model.load_state_dict(state["model"])
    model.to(pick_device(device)).eval()
    return model, cfg, {**meta, "epoch": state["epoch"]}


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    subset: int | None = None,
) -> dict[str, Any]:
    """Re-evaluate a trained model on a split of its data set (val = the run's own held-out split)."""
    model, cfg, meta = load_trained(path, device)
    if data_dir is not None:
        cfg.data_dir = data_dir
    spec = get_dataset(cfg.dataset)
    dev = next(model.parameters()).device
    kw = dict(synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    if split == "test":
        data = load_split(cfg.dataset, cfg.data_dir, train=False, subset=subset, **kw)
        x, y = data.images, data.labels
    elif split in ("train", "val"):
        data = load_split(cfg.dataset, cfg.data_dir, train=True, subset=cfg.subset, **kw)
        x, y = data.images, data.labels
        if cfg.val_split > 0:
            n_val = round(x.shape[0] * cfg.val_split)
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
            idx = perm[:n_val] if split == "val" else perm[n_val:]
            x, y = x[idx], y[idx]
        elif split == "val":
            raise ConfigError("this run was trained without --val-split, so it has no validation split")
        if subset is not None:
            x, y = x[:subset], y[:subset]
    else:
        raise ConfigError(f"--split must be test, val or train, got {split!r}")
    loader = TensorLoader(x.to(dev), y.to(dev), batch_size, spec.eval_augment, train=False, shuffle=False)
    return {
        "checkpoint": str(_checkpoint_path(path)),
        "epoch": meta["epoch"],
        "split": split,
        **evaluate(model, loader),
    }
