"""`--recipe fast` and its parts: the preset resolves under the command line, the random crop reaches the
training loader, and flip evaluation averages the logits of an image and its mirror image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas.cli import main
from bnas.errors import ConfigError
from bnas.recipes import FAST
from bnas.runtime import evaluate
from bnas.train import TrainConfig, Trainer

TINY = dict(
    dataset="synthetic", synthetic_size=32, batch_size=8, eval_batch_size=16, init_channels=4, layers=2,
    enhance_cells=1, quiet=True, log_every=0,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fast_recipe_is_the_preset_over_the_data_sets_recipe_and_under_the_command_line():
    paper = TrainConfig.resolve(dataset="fashion-mnist")
    fast = TrainConfig.resolve(dataset="fashion-mnist", recipe="fast")
    for name, value in FAST.items():
        assert getattr(fast, name) == value, name
    assert (paper.init_channels, paper.layers, paper.eval_flip, paper.crop_padding) == (48, 6, False, None)
    mine = TrainConfig.resolve(dataset="fashion-mnist", recipe="fast", init_channels=8, eval_flip=False)
    assert (mine.init_channels, mine.eval_flip, mine.label_smoothing) == (8, False, FAST["label_smoothing"])
    with pytest.raises(ConfigError, match="recipe"):
        TrainConfig.resolve(recipe="quick")


def test_fast_recipe_with_a_budget_sizes_its_own_epochs():
    cfg = TrainConfig.resolve(dataset="fashion-mnist", recipe="fast", budget="10m")
    assert cfg.budget == "10m"  # FAST's epochs are a default for runs without a budget, never a conflict


def test_crop_padding_reaches_the_training_loader_only(tmp_path):
    cfg = TrainConfig.resolve(**TINY, epochs=1, crop_padding=3, out=str(tmp_path / "r"))
    trainer = Trainer(cfg)
    assert trainer.loaders["train"].augment.crop_padding == 3
    assert trainer.loaders["test"].augment.crop_padding == 0
    default = Trainer(TrainConfig.resolve(**TINY, epochs=1, out=str(tmp_path / "d")))
    assert default.loaders["train"].augment.crop_padding == 4  # synthetic is CIFAR-like: its own crop of 4


class _Asymmetric(nn.Module):
    """Logits that depend on which side of the image is bright: a flip changes them."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 8)[None] * torch.tensor([[1.0], [-2.0], [0.5]]))

    def forward(self, x):
        return x.mean(dim=(1, 2)) @ self.w.T


def test_eval_flip_averages_the_logits_of_each_image_and_its_mirror_image():
    torch.manual_seed(0)
    model = _Asymmetric()
    batches = [(torch.rand(5, 1, 4, 8), torch.randint(0, 3, (5,))) for _ in range(2)]
    plain, flipped = evaluate(model, batches), evaluate(model, batches, flip=True)
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        logits = 0.5 * (model(x) + model(x.flip(3)))
    assert flipped["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert flipped["loss"] != pytest.approx(plain["loss"], rel=1e-3)


def test_fast_recipe_trains_end_to_end_and_records_itself(tmp_path: Path, capsys):
    out = tmp_path / "fast"
    args = ["train", "--recipe", "fast", "--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8"]
    args += ["--init-channels", "4", "--layers", "2", "--enhance-cells", "1", "--epochs", "1", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["recipe"] == "fast" if "config" in config else config["recipe"] == "fast"
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["final_epoch"]["test_top1"] <= 1.0


def test_normalize_data_uses_the_training_splits_statistics_and_eval_feeds_the_same(tmp_path: Path):
    from bnas.data.registry import load_split
    from bnas.data.source import channel_stats
    from bnas.evaluation import evaluate_checkpoint

    cfg = TrainConfig.resolve(**TINY, epochs=1, normalize="data", out=str(tmp_path / "data"))
    trainer = Trainer(cfg)
    images = load_split("synthetic", cfg.data_dir, train=True, synthetic_size=32, seed=cfg.seed).images
    mean, std = channel_stats(images)
    for split in ("train", "test"):
        aug = trainer.loaders[split].augment
        assert (aug.mean, aug.std) == (mean, std)
    assert trainer.meta()["mean"] == mean
    result = trainer.run_training()
    again = evaluate_checkpoint(tmp_path / "data", device="cpu")
    assert again["top1"] == pytest.approx(result["final_epoch"]["test_top1"])
    # with the data set's own (CIFAR) statistics instead, the same weights score differently
    off = Trainer(TrainConfig.resolve(**TINY, epochs=1, normalize="off", out=str(tmp_path / "off")))
    assert (off.loaders["test"].augment.mean, off.meta()["std"]) == (None, None)
    auto = Trainer(TrainConfig.resolve(**TINY, epochs=1, out=str(tmp_path / "auto")))
    assert auto.loaders["test"].augment.mean not in (None, mean)


def test_normalize_rejects_imagenet_and_unknown_modes():
    with pytest.raises(ConfigError, match="normalize"):
        TrainConfig.resolve(dataset="imagenet", normalize="data")
    with pytest.raises(ConfigError, match="normalize"):
        TrainConfig.resolve(normalize="yes")
