"""torchrun with gloo on CPU: ranks stay identical and equal one process averaging the shards' gradients."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bnas.data.registry as search_data_module
from bnas.search import SearchConfig, Searcher

sys.path.insert(0, str(Path(__file__).parent))
from dist_search_worker import OPTIONS  # noqa: E402


def _reference(tmp_path, monkeypatch, order: int) -> dict[str, torch.Tensor]:
    """One process: the same init, the batches each rank saw, gradients averaged over the two shards."""
    cfg = SearchConfig.resolve("bnas-d", order=order, out=str(tmp_path / "ref"), **OPTIONS)
    searcher = Searcher(cfg)  # same seed -> same initial supernet as every rank
    model, architect = searcher.model, searcher.architect
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(search_data_module, "dist_rank_world", lambda r=rank: (r, 2))
        data = search_data_module.search_data(cfg, torch.device("cpu"), False)
        shards.append((next(iter(data.train)), next(iter(data.val))))
    monkeypatch.undo()
    model.train()
    eta = 0.025  # the weight lr of epoch 0 of 1
    grads = [architect.gradients(xt, yt, xv, yv, eta)[0] for (xt, yt), (xv, yv) in shards]
    for p, *gs in zip(model.arch_parameters(), *grads, strict=True):
        p.grad = sum(gs) / 2
    architect.optimizer.step()
    weights = model.weight_parameters()
    per_shard = []
    for (xt, yt), _ in shards:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt).backward()
        per_shard.append([p.grad.clone() for p in weights])
    for p, *gs in zip(weights, *per_shard, strict=True):
        p.grad = sum(gs) / 2
    torch.nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
    searcher.w_optimizer.param_groups[0]["lr"] = eta
    searcher.w_optimizer.step()
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_torchrun_search_step_matches_averaged_shards(tmp_path, monkeypatch, order):
    worker = Path(__file__).parent / "dist_search_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*cmd, str(worker), str(tmp_path), str(order)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name  # all-reduce gives every rank the same bits
    assert (tmp_path / "run" / "genotype.json").exists()  # rank 0 wrote the run
    ref = _reference(tmp_path, monkeypatch, order)
    # The reference sums the two shards' gradients in another order than gloo's all-reduce: fp32 rounding of
    # ~1e-7 relative in the gradients, which move the parameters by lr x that. Adam's first step is
    # lr * g / (|g| + eps) ~ lr * sign(g), so it is insensitive to such rounding unless |g| ~ 1e-8.
    for name, p in ref.items():
        assert torch.allclose(r0[name], p, rtol=1e-5, atol=1e-6), name


def _train_reference(tmp_path) -> dict[str, torch.Tensor]:
    """One process: two steps, each averaging the gradients of the two ranks' shards."""
    from dist_train_worker import OPTIONS as TRAIN_OPTIONS

    from bnas.train import TrainConfig, Trainer

    cfg = TrainConfig.resolve(out=str(tmp_path / "ref"), **TRAIN_OPTIONS)
    trainer = Trainer(cfg)  # same seed -> same initial network as every rank
    model = trainer.model
    images, labels = trainer.loaders["train"].images, trainer.loaders["train"].labels
    from bnas.data.loaders import TensorLoader

    base = trainer.loaders["train"]
    shards = [
        list(TensorLoader(images, labels, cfg.batch_size, base.augment, drop_last=True, seed=cfg.seed, rank=r, world=2))
        for r in (0, 1)
    ]
    model.train()
    model.drop_prob = 0.0  # epoch 0 of 1
    params = list(model.parameters())
    for step in range(2):
        per_shard = []
        for r in (0, 1):
            x, y = shards[r][step]
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            per_shard.append([p.grad.clone() for p in params])
        for p, *gs in zip(params, *per_shard, strict=True):
            p.grad = sum(gs) / 2
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        trainer.optimizer.param_groups[0]["lr"] = cfg.lr  # cosine at epoch 0
        trainer.optimizer.step()
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_torchrun_training_matches_averaged_shards(tmp_path):
    worker = Path(__file__).parent / "dist_train_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*cmd, str(worker), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name
    assert (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run1").exists()
    ref = _train_reference(tmp_path)
    # fp32 summation order differs between gloo's all-reduce and the reference (~1e-7 relative in the
    # gradients); two SGD steps at lr 0.025 with momentum keep parameter differences far below 1e-5.
    for name, p in ref.items():
        assert torch.allclose(r0[name], p, rtol=1e-4, atol=1e-5), name


def test_every_tensor_reaching_a_collective_is_on_the_models_device(tmp_path, monkeypatch):
    """nccl takes device tensors only: evaluation once all-reduced a CPU tensor built from Python numbers.
    Here two ranks are pretended and torch's default device is `meta` while the model runs on the CPU, so a
    tensor made without an explicit device would reach the collective on `meta`, not on the model's device."""
    import bnas.dist
    import bnas.runtime
    from bnas.runtime import evaluate
    from bnas.search import SearchConfig, Searcher
    from bnas.train import TrainConfig, Trainer

    seen: list[torch.device] = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: seen.append(t.device))
    monkeypatch.setattr(torch.distributed, "broadcast", lambda t, *a, **k: seen.append(t.device))
    cfg = SearchConfig.resolve(
        "clr", dataset="synthetic", synthetic_size=16, batch_size=4, init_channels=4, epochs=1, eval_every=1,
        log_every=0, out=str(tmp_path / "s"), quiet=True, device="cpu",
    )  # fmt: skip
    searcher = Searcher(cfg)
    trainer = Trainer(TrainConfig.resolve(
        dataset="synthetic", synthetic_size=8, batch_size=4, eval_batch_size=8, init_channels=4, layers=2,
        enhance_cells=1, epochs=1, out=str(tmp_path / "t"), quiet=True, device="cpu",
    ))  # fmt: skip
    for module in (bnas.dist, bnas.runtime):
        monkeypatch.setattr(module, "rank_world", lambda: (0, 2))
    (x, y), (xv, yv) = next(iter(searcher.train_loader)), next(iter(searcher.val_loader))
    from bnas.runtime import Tally
    from bnas.search import SearchStep

    with torch.device("meta"):
        evaluate(trainer.model, trainer.loaders["test"])
        searcher.evaluate()
        searcher.step(x, y, xv, yv, 0.01, Tally(torch.device("cpu"), SearchStep.FIGURES))
        bnas.dist.broadcast_buffers(trainer.model)
    assert len(seen) >= 5 and set(seen) == {torch.device("cpu")}, seen
