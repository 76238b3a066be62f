"""Run by tests/test_dist.py under torchrun: one training step per rank, then each rank saves its weights."""

import sys

import torch

from bnas.dist import init_from_env
from bnas.train import TrainConfig, Trainer

OPTIONS = dict(
    genotype="BNASv2_CLR_v1", dataset="synthetic", synthetic_size=16, batch_size=4, init_channels=8, layers=2,
    enhance_cells=1, epochs=1, quiet=True, seed=0, test_subset=8, cutout=8,
)  # fmt: skip

if __name__ == "__main__":
    rank, world = init_from_env()
    out = sys.argv[1]
    trainer = Trainer(TrainConfig.resolve(out=f"{out}/run", **OPTIONS))
    assert len(trainer.loaders["train"]) == 2, "each rank takes two steps of its shard"
    trainer.run_training()
    torch.save({n: p.detach() for n, p in trainer.model.named_parameters()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
