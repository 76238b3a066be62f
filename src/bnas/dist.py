"""torchrun / torch.distributed helpers: one process per device, gloo on CPU, nccl on GPU.

The search averages gradients by hand (the architecture step uses `torch.autograd.grad`, which bypasses
DistributedDataParallel's hooks), so weights and architecture stay identical on every rank; only rank 0
writes the run directory.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return rank_world()


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average tensors across ranks in place, as one flat buffer (one collective instead of hundreds)."""
    _, world = rank_world()
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm running statistics (each rank saw only its shard)."""
    if rank_world()[1] == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, 0)


class NullRun:
    """The run directory of a rank other than 0: accepts every write and keeps nothing."""

    def __init__(self) -> None:
        import tempfile
        from pathlib import Path

        self._tmp = tempfile.TemporaryDirectory(prefix="bnas-rank-")
        self.path = Path(self._tmp.name)
        (self.path / "genotypes").mkdir()

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None
