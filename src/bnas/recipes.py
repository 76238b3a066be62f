"""Training recipes: what `bnas train` changes of the CIFAR recipe (SPEC §9) for each data set and space.

TrainConfig's defaults are the CIFAR recipe; a data set's entry overrides them, a --config file overrides
that, and the command line overrides everything (`TrainConfig.resolve`).
"""

from __future__ import annotations

from typing import Any

_TRANSFER = dict(cutout=0)  # SPEC §9: MNIST, Fashion-MNIST, SVHN, smallNORB: flip (+ resize), no cutout
# Per data set overrides of the CIFAR recipe (SPEC §9).
RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": {},
    "cifar100": {},
    "synthetic": {},
    "mnist": _TRANSFER,
    "fashion-mnist": _TRANSFER,
    "svhn": _TRANSFER,
    "smallnorb": _TRANSFER,
    "folder": dict(_TRANSFER, image_size=0),  # your own images (data/userfolder.py): flip, the tree's statistics
    "imagenet": dict(
        epochs=250, batch_size=256, lr=0.1, weight_decay=3e-5, label_smoothing=0.1, drop_path=0.0, cutout=0,
        init_channels=44,
    ),
}  # fmt: skip
# DARTS' evaluation network (Liu et al. 2019): 20 cells of 36 initial channels, auxiliary weight 0.4.
DARTS_SPACE = dict(init_channels=36, layers=20)

# `--recipe fast`: the CPU recipe, for a short --budget on a small machine (docs/recipes.md: each choice measured
# with its switch-off twin, benchmarks/fashion_mnist.md: the results). Over the data set's recipe; the command
# line still overrides it.
FAST: dict[str, Any] = dict(
    init_channels=16, layers=2, batch_size=64, lr=0.1, lr_min=0.0, weight_decay=5e-4, drop_path=0.0, cutout=0,
    label_smoothing=0.1, crop_padding=0, eval_flip=True, epochs=10,
)  # fmt: skip
