"""Run by tests/test_dist.py under torchrun: one search step per rank, then each rank saves its parameters."""

import sys

import torch

from bnas.dist import init_from_env
from bnas.search import SearchConfig, Searcher

OPTIONS = dict(
    dataset="synthetic", synthetic_size=16, batch_size=4, init_channels=4, epochs=1, eval_every=0, quiet=True, seed=0
)

if __name__ == "__main__":
    rank, world = init_from_env()
    out = sys.argv[1]
    order = int(sys.argv[2])
    searcher = Searcher(SearchConfig.resolve("bnas-d", order=order, out=f"{out}/run", **OPTIONS))
    assert len(searcher.train_loader) == 1, "each rank takes one step of its shard"
    searcher.run_search()
    torch.save({n: p.detach() for n, p in searcher.model.named_parameters()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
