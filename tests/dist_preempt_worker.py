"""Run by tests/test_preempt.py under torchrun: rank 1 alone gets SIGUSR1 during the first step; every rank
stops at that step's log point. With "resume", the run is continued to its end."""

import os
import signal
import sys

import torch

from bnas.dist import init_from_env
from bnas.preempt import Preempted
from bnas.search import SearchConfig, Searcher

OPTIONS = dict(dataset="synthetic", synthetic_size=64, batch_size=4, init_channels=4, epochs=2, eval_every=0,
               quiet=True, seed=0, log_every=1)  # fmt: skip

if __name__ == "__main__":
    rank, world = init_from_env()
    out, resume = sys.argv[1], sys.argv[2:] == ["resume"]
    searcher = Searcher(SearchConfig.resolve("clr", out=f"{out}/run", **OPTIONS), resume=resume)
    begin = searcher.begin_epoch

    def begin_epoch(epoch):
        feed = begin(epoch)

        def signalled(i, *args):
            feed(i, *args)
            if rank == 1 and epoch == 0 and i == 0 and not resume:
                os.kill(os.getpid(), signal.SIGUSR1)

        return signalled

    searcher.begin_epoch = begin_epoch
    code = 0
    try:
        searcher.run_search()
    except Preempted as e:
        print(f"rank {rank}: {e}", file=sys.stderr)
        code = Preempted.exit_code
    torch.save({n: p.detach() for n, p in searcher.model.named_parameters()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
    sys.exit(code)
