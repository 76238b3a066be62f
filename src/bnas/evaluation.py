"""A finished training run, read back: its network rebuilt from a checkpoint, re-evaluated on a split, and
asked for the classes of new images.

Used by `bnas eval`, `bnas export` and `bnas predict`; nothing here trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .data.loaders import TensorLoader
from .data.registry import DatasetSpec, get_dataset, load_split
from .data.userdata import open_user_folder
from .data.userfolder import read_image
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
    model = network_for(cfg, Genotype.from_json(meta["genotype"]), _input_spec(cfg, meta), meta["num_classes"])
    model.load_state_dict(state["model"])
    model.to(pick_device(device)).eval()
    return model, cfg, {**meta, "epoch": state["epoch"]}


def _input_spec(cfg: TrainConfig, meta: dict[str, Any]) -> DatasetSpec:
    """The data set's entry, with the input the run was trained on (a folder's comes from its tree)."""
    spec = get_dataset(cfg.dataset)
    if cfg.dataset != "folder":
        return spec
    return dataclasses.replace(spec, in_channels=meta["in_channels"], size=meta["size"], stem=meta["stem"])


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
    # a folder: the same split of the same tree, fed with the run's own size, channels and statistics
    spec = open_user_folder(cfg, dev, meta) if cfg.dataset == "folder" else get_dataset(cfg.dataset)
    kw = dict(synthetic_size=cfg.synthetic_size, seed=cfg.seed, spec=spec)
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
    # the run's own normalisation (--normalize data|off may differ from the data set's), stored in its meta
    mean, std = meta.get("mean", spec.eval_augment.mean), meta.get("std", spec.eval_augment.std)
    aug = dataclasses.replace(spec.eval_augment, mean=mean and tuple(mean), std=std and tuple(std))
    loader = TensorLoader(x.to(dev), y.to(dev), batch_size, aug, train=False, shuffle=False)
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
