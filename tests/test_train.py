"""Training from scratch (SPEC §8-9): recipes, dry-run counts, run directory, resume, eval, export, data sets."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas import build_network, count_parameters, get_genotype
from bnas.cli import main
from bnas.data.registry import load_split
from bnas.errors import ConfigError
from bnas.evaluation import evaluate_checkpoint
from bnas.space import count_macs
from bnas.train import TrainConfig, Trainer

# the smallest network the broad wiring allows: C=4, one cell per block, one enhancement cell
TINY = dict(
    dataset="synthetic", synthetic_size=32, batch_size=8, eval_batch_size=16, init_channels=4, layers=2,
    enhance_cells=1, quiet=True, log_every=0,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig.resolve(**{**TINY, "epochs": 2, "out": str(tmp_path / name), **kw})


# ------------------------------------------------------------------------------------ recipes and counts


def test_recipes_follow_the_published_code():
    cifar = TrainConfig.resolve(dataset="cifar10")
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.weight_decay, cifar.momentum) == (
        600,
        128,
        0.025,
        3e-4,
        0.9,
    )
    assert (cifar.cutout, cifar.drop_path, cifar.grad_clip, cifar.init_channels, cifar.layers) == (16, 0.3, 5.0, 48, 6)
    fm = TrainConfig.resolve(dataset="fashion-mnist")
    assert fm.cutout == 0 and fm.lr == 0.025 and fm.epochs == 600  # transfer: same optimiser, no cutout
    darts = TrainConfig.resolve(genotype="DARTS_V2")
    assert (darts.init_channels, darts.layers) == (36, 20)  # DARTS' evaluation network
    assert TrainConfig.resolve(dataset="fashion-mnist", cutout=8, init_channels=16).cutout == 8  # the user wins
    with pytest.raises(ConfigError, match="auxiliary"):
        Trainer(TrainConfig.resolve(auxiliary=True), load_data=False)  # the broad network has no auxiliary head


@pytest.mark.parametrize(
    ("name", "dataset", "expected"),
    [
        ("BNASv2_CLR_v1", "cifar10", 3_338_074),
        ("BNASv2_PC_cifar_v1", "cifar10", 3_678_682),
        ("BNASv2_CLR_v1", "fashion-mnist", 3_335_482),  # 1-channel stem
    ],
)
def test_dry_run_prints_published_parameter_counts(name, dataset, expected, capsys):
    assert main(["train", "--genotype", name, "--dataset", dataset, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f": {expected} parameters, " in out
    macs = int(out.split(" parameters, ")[1].split(" multiply-accumulates")[0])
    assert 3e8 < macs < 6e8  # ~0.5 G multiply-accumulates for a 3.3 M-parameter CIFAR network


def test_macs_are_half_the_flops_of_convolutions_and_matmuls():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    assert count_macs(net, 3, 16) == 8 * 3 * 9 * 16 * 16 + 8 * 16 * 16 * 10
    assert net.training  # counting does not leave the model in eval mode


@pytest.mark.parametrize(("genotype", "kw"), [("BNASv2_PC_cifar_v1", dict(layers=2, enhance=1)), ("DARTS_V2", {})])
def test_macs_agree_with_torch_flop_counter(genotype, kw):
    from torch.utils.flop_counter import FlopCounterMode

    g = get_genotype(genotype)
    net = build_network(g, 8, **kw) if g.space == "bcnn" else build_network(g, 8, 5)
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, 32, 32))
    assert count_macs(net, 3, 32) == counter.get_total_flops() // 2


# --------------------------------------------------------------------------------------- a whole run


def test_train_eval_export_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8", "--epochs", "2"]
    args += ["--init-channels", "4", "--layers", "2", "--enhance-cells", "1", "--val-split", "0.25"]
    args += ["--drop-path", "0.3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "final epoch: test top-1" in printed
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "results.json", "summary.json"):
        assert (out / name).exists(), name
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]  # numbered from 1
    assert [r["drop_prob"] for r in epochs] == pytest.approx([0.0, 0.15])  # 0.3 x epoch / epochs
    assert [r["lr"] for r in epochs] == pytest.approx([0.025, 0.0125])  # cosine over the epochs
    res = json.loads((out / "results.json").read_text())
    assert res["images"] == {"train": 24, "val": 8, "test": 8}  # 32 synthetic images, a quarter held out
    assert res["parameters"] == count_parameters(build_network(get_genotype("BNASv2_CLR_v1"), 4, 2, 1))
    assert res["macs_per_image"] > 0 and res["epochs"] == 2
    assert res["selected_on_val"]["epoch"] in (1, 2)
    # results.json is the final epoch: re-evaluating checkpoint.pt gives exactly its numbers
    again = evaluate_checkpoint(out, device="cpu")
    assert again["epoch"] == 2 and again["images"] == 8
    assert again["top1"] == res["final_epoch"]["test_top1"] and again["top5"] == res["final_epoch"]["test_top5"]
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert val["images"] == 8 and val["top1"] == pytest.approx(res["final_epoch"]["val_top1"])
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_val_split_is_disjoint_and_reproducible(tmp_path):
    t1 = Trainer(_tiny(tmp_path, val_split=0.25))
    t2 = Trainer(_tiny(tmp_path, val_split=0.25))
    train, val = t1.loaders["train"].images, t1.loaders["val"].images
    assert train.shape[0] == 24 and val.shape[0] == 8
    rows = {tuple(x.flatten().tolist()) for x in train}
    assert not any(tuple(x.flatten().tolist()) in rows for x in val)
    assert torch.equal(val, t2.loaders["val"].images)


class _Interrupt(Trainer):
    """A run killed during epoch `stop_at`: the checkpoint of the previous epoch is on disk."""

    stop_at = 2

    def begin_epoch(self, epoch):
        if epoch == self.stop_at:
            raise KeyboardInterrupt
        return super().begin_epoch(epoch)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    kw = dict(epochs=3, drop_path=0.3, cutout=8)  # drop-path and cutout draw random numbers every step
    full = Trainer(_tiny(tmp_path, "full", **kw))
    full_res = full.run_training()
    cut = _Interrupt(_tiny(tmp_path, "cut", **kw))
    with pytest.raises(KeyboardInterrupt):
        cut.run_training()
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 2  # the second epoch finished (numbered from 1)
    torch.manual_seed(1234)  # the resumed run must not depend on the state of the process it starts in
    resumed = Trainer(_tiny(tmp_path, "cut", **kw), resume=True)
    res = resumed.run_training()
    assert resumed.start_epoch == 2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert res["final_epoch"]["test_top1"] == full_res["final_epoch"]["test_top1"]
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3]  # no epoch logged twice


def test_resume_from_the_command_line(tmp_path, capsys):
    args = ["train", "--dataset", "synthetic", "--synthetic-size", "16", "--batch-size", "8", "--epochs", "1"]
    args += ["--init-channels", "4", "--layers", "2", "--enhance-cells", "1", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(args) == 0
    assert main(args) == 2  # the run exists: one clear sentence, not an overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "r"), "--extend-epochs", "1", "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "results.json").read_text())["epochs"] == 2


def test_auxiliary_head_trains_darts_genotypes_only_through_its_weight(tmp_path):
    def aux_change(weight: float) -> float:
        cfg = _tiny(tmp_path, f"aux{weight}", genotype="DARTS_V1", layers=3, auxiliary=True, auxiliary_weight=weight)
        cfg.epochs = 1
        t = Trainer(cfg)
        before = [p.detach().clone() for p in t.model.net.auxiliary.parameters()]
        t.run_training()
        after = list(t.model.net.auxiliary.parameters())
        return max((a - b).abs().max().item() for a, b in zip(after, before))

    assert aux_change(0.0) == 0.0  # weight decay acts only on parameters with gradients
    assert aux_change(0.4) > 0.0


# ----------------------------------------------------------------------------------- mixed precision


def test_fp16_gradients_that_would_underflow_train_with_loss_scaling():
    """fp16 flushes values below 6e-8 to zero: a loss whose gradients are that small learns nothing under fp16
    autocast unscaled, while the scaled weight step (the one `bnas search` and `bnas train` take) recovers the
    fp32 gradients and steps."""
    from bnas.optim import SGD
    from bnas.runtime import grad_scaler, upcast, weight_step

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    params = list(net.parameters())
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])

    def loss(amp: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            logits = net(x)
        return 1e-8 * F.cross_entropy(upcast(logits), y)  # gradients by the logits of ~2e-9

    ref = torch.cat([g.flatten() for g in torch.autograd.grad(loss(False), params)])  # fp32
    assert all(torch.count_nonzero(g) == 0 for g in torch.autograd.grad(loss(True), params))  # all underflow
    start = [p.detach().clone() for p in params]
    for amp_mode in ("off", "fp16"):  # "off": a disabled scaler, as bf16 and fp32 runs get
        scaler = grad_scaler(amp_mode, torch.device("cpu"))
        opt = SGD(params, lr=1e6)  # a step that makes gradients of 1e-9 visible
        opt.zero_grad()
        result = weight_step(loss(True), opt, params, 5.0, scaler)
        assert bool(result.ok) and not bool(result.overflow)
        grads = torch.cat([p.grad.flatten() for p in params])
        moved = max((p - s).abs().max().item() for p, s in zip(params, start, strict=True))
        if amp_mode == "off":
            assert torch.count_nonzero(grads) == 0 and moved == 0.0
        else:
            assert scaler.get_scale() == 2.0**16 and F.cosine_similarity(grads, ref, dim=0) > 0.999
            assert (grads - ref).norm() < 0.01 * ref.norm() and moved > 1e-4
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)


def test_fp16_training_scales_the_loss_counts_overflows_and_checkpoints_the_scaler(tmp_path):
    """--amp fp16 (CPU autocast works in torch 2.14) trains with a GradScaler: an overflow skips the step,
    lowers the scale and is counted in skipped_steps (amp_skipped_steps: the scaler's share) without stopping
    the run; the scaler's state is in the checkpoint and comes back on resume. bf16 and fp32 use none."""
    assert not Trainer(_tiny(tmp_path, "bf16", amp="bf16"), load_data=False).scaler.is_enabled()
    trainer = Trainer(_tiny(tmp_path, amp="fp16", device="cpu"))
    assert trainer.scaler.is_enabled()
    # a first scale that overflows fp16 (largest value 65504); one back-off brings it to the usual 2**16
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 2.0**40, "backoff_factor": 2.0**-24})
    trainer.run_training()
    h = trainer.history
    assert [r["amp_skipped_steps"] for r in h] == [r["skipped_steps"] for r in h] == [1, 0]
    assert [r["loss_scale"] for r in h] == [2.0**16, 2.0**16]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    steps = len(trainer.loaders["train"])
    assert saved["scaler"]["scale"] == 2.0**16 and saved["scaler"]["backoff_factor"] == 2.0**-24
    assert saved["scaler"]["_growth_tracker"] == 2 * steps - 1  # clean steps since the overflow
    resumed = Trainer(_tiny(tmp_path, amp="fp16", device="cpu"), resume=True)
    resumed.open_run()
    assert resumed.scaler.state_dict() == saved["scaler"]


# --------------------------------------------------------------------------------------- export


# --------------------------------------------------------------------------------------- data sets


def test_missing_svhn_is_one_sentence_naming_the_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--dataset", "svhn", "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "train_32x32.mat" in err and str(empty) in err


def _norb(array: np.ndarray) -> bytes:
    magic = 0x1E3D4C55 if array.dtype == np.uint8 else 0x1E3D4C54
    dims = list(array.shape) + [1] * (3 - array.ndim)
    return struct.pack(f"<ii{len(dims)}i", magic, array.ndim, *dims) + array.tobytes()


def test_smallnorb_is_resized_to_32_with_one_camera(tmp_path):
    n = 6
    images = np.zeros((n, 2, 96, 96), np.uint8)
    images[:, 0] = (np.arange(n) * 40)[:, None, None]  # a flat grey level per image on camera 0
    images[:, 1] = 255
    labels = (np.arange(n) % 5).astype(np.int32)
    for split in ("5x46789x9x18x6x2x96x96-training", "5x01235x9x18x6x2x96x96-testing"):
        (tmp_path / f"smallnorb-{split}-dat.mat").write_bytes(_norb(images))
        (tmp_path / f"smallnorb-{split}-cat.mat").write_bytes(_norb(labels))
    data = load_split("smallnorb", tmp_path, train=True)
    assert data.images.shape == (n, 1, 32, 32) and data.images.dtype == torch.uint8 and data.num_classes == 5
    assert torch.equal(data.images[:, 0, 5, 7], torch.arange(n, dtype=torch.uint8) * 40)  # camera 0, levels kept
    assert data.labels.tolist() == labels.tolist()
    cfg = TrainConfig.resolve(dataset="smallnorb", data_dir=str(tmp_path), init_channels=4, layers=2, enhance_cells=1)
    cfg.batch_size, cfg.out = 4, str(tmp_path / "run")
    t = Trainer(cfg)
    assert t.sizes == {"train": n, "test": n} and t.model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)


# --------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_fashion_mnist_subset_reaches_a_real_accuracy(tmp_path):
    from bnas.data.formats import FASHION_MNIST_SYSTEM_DIR

    if not (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    # BNASv2_CLR_v1 cells in a reduced broad network (C=8, one cell per block, one enhancement cell: 73,058
    # parameters), 2 epochs on the first 10,000 training images; ~90 s of CPU time with one thread.
    cfg = TrainConfig.resolve(
        dataset="fashion-mnist", subset=10_000, test_subset=2000, epochs=2,
        batch_size=32, init_channels=8, layers=2, enhance_cells=1, lr=0.1, drop_path=0.0,
        out=str(tmp_path / "fm"), quiet=True, channels_last="on",  # safe from C=8 on (see Trainer), 1.3x faster
    )  # fmt: skip
    res = Trainer(cfg).run_training()
    acc = res["final_epoch"]["test_top1"]
    # measured: 0.8435 (final epoch, first 2,000 test images, seed 0); chance and an untrained network: ~0.10
    assert acc >= 0.80, acc
    assert res["parameters"] == 73_058
