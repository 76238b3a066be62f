"""A finished training run, read back: its network rebuilt from a checkpoint, re-evaluated on a split, and
asked for the classes of new images.

Used by `bnas eval`, `bnas export` and `bnas predict`; nothing here trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .data.registry import open_source, trained_input
from .data.userfolder import read_image
from .errors import CheckpointError
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
    genotype = Genotype.from_json(meta["genotype"])
    model = network_for(cfg, genotype, trained_input(cfg.dataset, meta), meta["num_classes"])
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
    dev = next(model.parameters()).device
    # the same split of the same data the run trained on (splits.py), fed with the run's own input and statistics
    loader = open_source(cfg, dev, meta).eval_loader(cfg, split, dev, batch_size, subset, meta)
    return {
        "checkpoint": str(_checkpoint_path(path)),
        "epoch": meta["epoch"],
        "split": split,
        **evaluate(model, loader, flip=cfg.eval_flip),
    }


@torch.no_grad()
def predict(path: str | Path, images: list[str | Path], device: str = "cpu", top: int = 5) -> list[dict[str, Any]]:
    """The `top` most likely classes of each image (names where the run has them, else class numbers), preprocessed
    as the run's training images were (data.userfolder.load_image, then its mean and std)."""
    model, _, meta = load_trained(path, device)
    dev = next(model.parameters()).device
    size, channels = meta["size"], meta["in_channels"]
    x = torch.stack([read_image(p, size, channels) for p in images]).to(dev, torch.float32).div_(255.0)
    if meta.get("mean") is not None and meta.get("std") is not None:
        mean = torch.tensor(meta["mean"], device=dev).view(1, -1, 1, 1)
        x = (x - mean) / torch.tensor(meta["std"], device=dev).view(1, -1, 1, 1)
    probs = torch.softmax(model(x).float(), dim=1)
    classes = meta.get("classes") or [str(i) for i in range(meta["num_classes"])]
    p, idx = probs.topk(min(top, probs.shape[1]), dim=1)
    return [
        {"image": str(img), "top": [{"class": classes[j], "p": round(q, 6)} for q, j in zip(pr.tolist(), ix.tolist())]}
        for img, pr, ix in zip(images, p, idx, strict=True)
    ]
