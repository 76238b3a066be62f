"""Training recipes: what `bnas train` changes of the CIFAR recipe (SPEC §9) for a space and for a short budget.

TrainConfig's defaults are the CIFAR recipe; the data set's own recipe (its registry entry's `train_defaults`,
data/registry.py) overrides them, then --recipe fast and a DARTS-space genotype's, then a --config file, and the
command line overrides everything (`TrainConfig.resolve`).
"""

from __future__ import annotations

from typing import Any

# DARTS' evaluation network (Liu et al. 2019): 20 cells of 36 initial channels, auxiliary weight 0.4.
DARTS_SPACE = dict(init_channels=36, layers=20)

# `--recipe fast`: the CPU recipe, for a short --budget on a small machine (docs/recipes.md: each choice measured
# with its switch-off twin, benchmarks/fashion_mnist.md: the results). Over the data set's recipe; the command
# line still overrides it.
FAST: dict[str, Any] = dict(
    init_channels=16, layers=2, batch_size=64, lr=0.1, lr_min=0.0, weight_decay=5e-4, drop_path=0.0, cutout=0,
    label_smoothing=0.1, crop_padding=0, eval_flip=True, epochs=10,
)  # fmt: skip
