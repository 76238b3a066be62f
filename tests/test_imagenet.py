"""ImageNet subset sampling (SPEC §10) and the ImageNet-stem search on a tiny tree of real JPEG files."""

import os

import pytest
import torch

from bnas.cli import main
from bnas.data.imagenet import read_subset, sample_imagenet
from bnas.errors import DataError

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["n01440764", "n01443537", "n01484850"]):
        d = root / "train" / name
        d.mkdir(parents=True)
        (root / "val" / name).mkdir(parents=True)
        for i in range(16 + 4 * c):
            d = root / "val" / name if i < 3 else root / "train" / name
            h, w = 40 + 7 * i % 30, 50 + 11 * i % 40  # varied sizes
            arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
            arr[..., c] = 255  # a class-dependent colour: learnable
            PIL.fromarray(arr).save(d / f"{name}_{i}.JPEG", quality=90)
    return root


def _listing(dst, split):
    pairs, classes = read_subset(dst, split)
    return sorted((os.path.basename(p), classes[label]) for p, label in pairs)


@pytest.mark.parametrize("mode", ["link", "list"])
def test_subset_is_balanced_disjoint_and_reproducible(imagenet_tree, tmp_path, mode):
    s = sample_imagenet(imagenet_tree, tmp_path / "a", fraction=0.5, val_share=0.25, seed=3, mode=mode)
    assert s["classes"] == 3
    train, val = _listing(tmp_path / "a", "train"), _listing(tmp_path / "a", "val")
    assert not set(train) & set(val)  # disjoint
    assert len(set(train)) == len(train) and len(set(val)) == len(val)  # no file drawn twice
    per_class = {c: sum(1 for _, k in train + val if k == c) for c in {k for _, k in train}}
    sizes = {"n01440764": 13, "n01443537": 17, "n01484850": 21}
    assert per_class == {c: round(0.5 * n) for c, n in sizes.items()}  # balanced: the same share per class
    assert sum(1 for _, k in val if k == "n01440764") == 2  # a quarter of the 6.5 -> 6 drawn
    sample_imagenet(imagenet_tree, tmp_path / "b", fraction=0.5, val_share=0.25, seed=3, mode=mode)
    assert _listing(tmp_path / "b", "train") == train and _listing(tmp_path / "b", "val") == val
    sample_imagenet(imagenet_tree, tmp_path / "c", fraction=0.5, val_share=0.25, seed=4, mode=mode)
    assert _listing(tmp_path / "c", "train") != train


def test_partial_run_is_completed_not_duplicated(imagenet_tree, tmp_path):
    dst = tmp_path / "s"
    sample_imagenet(imagenet_tree, dst, fraction=0.5, seed=1)
    full = _listing(dst, "train")
    victims = sorted((dst / "train" / "n01443537").iterdir())[:3]
    for v in victims:
        v.unlink()  # as if the first run was killed
    sample_imagenet(imagenet_tree, dst, fraction=0.5, seed=1)
    assert _listing(dst, "train") == full
    with pytest.raises(DataError, match="other parameters"):
        sample_imagenet(imagenet_tree, dst, fraction=0.25, seed=1)


def test_cli_sample_and_search_one_epoch(imagenet_tree, tmp_path, capsys):
    dst = tmp_path / "subset"
    args = ["sample-imagenet", "--src", str(imagenet_tree), "--dst", str(dst), "--fraction", "0.5", "--quiet"]
    assert main(args) == 0
    assert "subset of 3 classes" in capsys.readouterr().out
    out = tmp_path / "run"
    args = ["search", "--method", "pc", "--dataset", "imagenet-subset", "--data-dir", str(dst), "--image-size", "64"]
    args += ["--batch-size", "4", "--epochs", "1", "--init-channels", "8", "--arch-start-epoch", "0", "--workers", "0"]
    args += ["--out", str(out), "--quiet"]
    assert main(args) == 0
    from bnas.search import resume_config

    cfg = resume_config(out)
    assert (cfg.partial_k, cfg.arch_lr, cfg.arch_grad_clip, cfg.lr_warmup_epochs) == (2, 6e-3, 5.0, 0)
    assert (out / "genotype.json").exists()


def test_imagenet_search_defaults():
    from bnas.search import SearchConfig

    cfg = SearchConfig.resolve("pc", dataset="imagenet-subset")
    assert (cfg.batch_size, cfg.lr, cfg.arch_lr, cfg.arch_start_epoch, cfg.lr_warmup_epochs) == (512, 0.2, 6e-3, 35, 5)
    assert cfg.partial_k == 2 and cfg.order == 1


def test_imagenet_supernet_output_shape():
    from bnas import SpaceConfig, SuperNet

    model = SuperNet(SpaceConfig(channels=8, partial_k=2, edge_norm=True, stem="imagenet", num_classes=1000))
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_trained_imagenet_bcnn_parameter_count():
    from bnas import build_network, count_parameters, get_genotype

    net = build_network(
        get_genotype("BNASv2_PC_image"), channels=44, layers=6, enhance=2, num_classes=1000, stem="imagenet"
    )
    assert count_parameters(net) == 4_112_998  # stated in the README
    net.eval()
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_imagenet_training_one_epoch(imagenet_tree, tmp_path, capsys):
    out = tmp_path / "train"
    args = ["train", "--genotype", "BNASv2_PC_image", "--dataset", "imagenet", "--data-dir", str(imagenet_tree)]
    args += ["--image-size", "64", "--epochs", "1", "--batch-size", "8", "--init-channels", "8", "--layers", "2"]
    args += ["--enhance-cells", "1", "--workers", "0", "--out", str(out), "--quiet"]
    assert main(args) == 0
    import json

    results = json.loads((out / "results.json").read_text())
    assert results["images"] == {"train": 51, "test": 9}
    assert 0.0 <= results["final_epoch"]["test_top1"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["label_smoothing"], cfg["weight_decay"]) == (0.1, 3e-5)  # SPEC §9 ImageNet recipe


def _samples(root, split="val"):
    from bnas.data.formats import read_image_folder

    return read_image_folder(root / split)[0]


def test_tensor_decoding_matches_pil_decoding(imagenet_tree):
    """The --decode gpu pipeline (bytes in the workers, batched decode and tensor transforms on a device), run on
    the CPU here, gives the PIL path's evaluation batches up to resampling differences."""
    from bnas.data.streamed import FolderLoader, imagenet_transform

    samples = _samples(imagenet_tree)
    kw = dict(batch_size=4, device=torch.device("cpu"), shuffle=False, drop_last=False, workers=0)
    pil = FolderLoader(samples, imagenet_transform(32, train=False), **kw)
    dev = FolderLoader(samples, imagenet_transform(32, train=False), decode_device=torch.device("cpu"), **kw)
    n = 0
    for (xp, yp), (xd, yd) in zip(pil, dev, strict=True):
        assert xd.shape == xp.shape == (yp.shape[0], 3, 32, 32) and xd.dtype == torch.float32
        assert torch.equal(yp, yd)
        # same libjpeg-turbo decode; PIL's and torch's antialiased resizes differ by rounding (measured mean 1e-4)
        assert (xd - xp).abs().mean() < 0.005
        n += yp.shape[0]
    assert n == len(samples)
    train = FolderLoader(samples, imagenet_transform(24, train=True), decode_device=torch.device("cpu"), **kw)
    x, _ = next(iter(train))
    assert x.shape == (4, 3, 24, 24) and torch.isfinite(x).all()


def test_decoding_falls_back_for_non_jpeg_and_names_broken_files(imagenet_tree, tmp_path):
    from bnas.data.streamed import decode_images

    jpeg = (imagenet_tree / "val" / "n01440764" / "n01440764_0.JPEG").read_bytes()
    png = tmp_path / "disguised.JPEG"  # ImageNet holds a PNG named .JPEG
    PIL.new("RGB", (9, 7), (10, 20, 30)).save(png, format="PNG")
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (jpeg, png.read_bytes())]
    images = decode_images(data, ["a.JPEG", str(png)], torch.device("cpu"))
    assert images[1].shape == (3, 7, 9) and images[1][:, 0, 0].tolist() == [10, 20, 30]
    assert images[0].dtype == torch.uint8 and images[0].shape[0] == 3
    with pytest.raises(DataError, match="cannot decode image broken.JPEG"):
        decode_images([data[0][:50]], ["broken.JPEG"], torch.device("cpu"))


def test_decode_gpu_without_a_gpu_falls_back_to_pil(imagenet_tree, tmp_path):
    from bnas.data.streamed import gpu_decoding

    with pytest.warns(UserWarning, match="decoding with PIL"):
        assert gpu_decoding("gpu", torch.device("cpu")) is None
    assert gpu_decoding("pil", torch.device("cpu")) is None
    out = tmp_path / "train"
    args = ["train", "--genotype", "BNASv2_PC_image", "--dataset", "imagenet", "--data-dir", str(imagenet_tree)]
    args += ["--image-size", "32", "--epochs", "1", "--batch-size", "16", "--init-channels", "8", "--layers", "2"]
    args += ["--enhance-cells", "1", "--workers", "0", "--out", str(out), "--quiet", "--decode", "gpu"]
    with pytest.warns(UserWarning, match="--decode gpu needs a CUDA device"):
        assert main(args) == 0
    assert (out / "results.json").exists()
