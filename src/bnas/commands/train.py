"""`bnas train`, `bnas eval CHECKPOINT` and `bnas export CHECKPOINT`: parse, resolve the config, call bnas.train."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..jsonio import dumps
from ._options import add_config_options, command_line_options, read_config_file, resume_dir

_HELP = {
    "image_size": "input resolution of image-folder data sets (imagenet; folder: 0 = the median image side rounded "
    "to 32, 64 or 96 for small images; the CIFAR stem up to 64 px, the ImageNet stem above)",
    "workers": "image decoding workers (imagenet)",
    "decode": "JPEG decoding of imagenet: pil (in the workers) or gpu (nvJPEG; falls back to pil without a GPU)",
    "genotype": "bundled genotype name (bnas genotype list) or a genotype.json / search run directory",
    "dataset": "data set to train and test on (folder: your own images, --data-dir DIR/CLASS/*.png|jpg|...)",
    "data_dir": "directory holding the data set files",
    "subset": "use only the first N training images (quick runs)",
    "test_subset": "evaluate on the first N test images only (quick runs; results.json records N)",
    "test_split": "folder without test/: share of each class held out as the test split (seeded, stratified; "
    "recorded in the run)",
    "cache_dir": "folder: directory of the decoded-image cache",
    "skip_bad": "folder: leave unreadable or truncated images out (counted in the run) instead of stopping",
    "val_split": "share of the training set held out for model selection (0 = none; the test split never selects)",
    "synthetic_size": "number of training images of --dataset synthetic",
    "epochs": "training epochs",
    "budget": "train for this long instead of --epochs (90s, 20m, 1h, 1h30m): the schedule (epochs, learning "
    "rate, drop-path) is sized from the measured step time to end, final evaluation included, within it",
    "batch_size": "training batch size",
    "init_channels": "C, initial channels",
    "layers": "N, convolution-block cells (bcnn) or cells (darts)",
    "blocks": "L, convolution blocks (bcnn)",
    "enhance_cells": "E, enhancement cells (bcnn)",
    "auxiliary": "DARTS' auxiliary head (darts-space genotypes)",
    "auxiliary_weight": "weight of the auxiliary head's loss",
    "cutout": "cutout square side in pixels (0 = off)",
    "crop_padding": "random crop after zero padding by this many pixels (unset: the data set's own augmentation)",
    "eval_flip": "test logits averaged over each image and its mirror image (test-time augmentation)",
    "normalize": "input normalisation: auto (the data set's own, SPEC §9), data (per-channel mean and std of the "
    "training split, stored in the run), off (pixels / 255)",
    "recipe": "paper: the published recipe of the data set (SPEC §9); fast: the CPU recipe for short budgets "
    "(docs/recipes.md; bnas train --recipe fast --budget 10m)",
    "fast": "one ReLU per tensor for every operation that starts with one (same network; default on, off with "
    "--compile)",
    "drop_path": "drop-path probability reached at the last epoch (linear in the epoch)",
    "lr": "learning rate (SGD, cosine schedule)",
    "lr_min": "final learning rate of the cosine schedule",
    "lr_warmup_epochs": "linear warm-up epochs",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "grad_clip": "gradient norm clip (0 = off)",
    "label_smoothing": "label smoothing of the cross-entropy",
    "seed": "random seed",
    "device": "auto, cpu, cuda or cuda:N",
    "threads": "CPU threads of torch (0 = its default; 1 is fastest on a machine shared with other jobs)",
    "download": "download a missing data set with torchvision where the network allows it",
    "amp": "mixed precision: auto (bf16 on GPU, off on CPU), off, bf16, fp16",
    "channels_last": "channels-last memory format: auto (= on; 1.3-2x faster on CPU too), on, off",
    "eval_batch_size": "batch size of evaluation",
    "compile": "torch.compile each cell with this backend (inductor; eager to debug); off = plain PyTorch",
    "on_nan": "on a NaN or infinite loss or gradient: stop (keep the last complete epoch) or skip and count the step",
    "deterministic": "deterministic GPU kernels (slower; CPU runs are reproducible anyway)",
    "log_every": "steps between step records in metrics.jsonl",
    "out": "run directory to write",
    "quiet": "no progress bar or per-epoch lines",
}
_CACHE_DEFAULT = "default: DIR/.bnas-cache, or ~/.cache/bnas/folders where DIR is not writable"
_CHOICES = {
    "amp": ["auto", "off", "bf16", "fp16"],
    "channels_last": ["auto", "on", "off"],
    "on_nan": ["stop", "skip"],
    "decode": ["pil", "gpu"],
    "recipe": ["paper", "fast"],
    "normalize": ["auto", "data", "off"],
}
# options that may change when a run is resumed (the rest would make the checkpoint meaningless)
_RESUMABLE = (
    "decode",
    "workers",
    "epochs",
    "quiet",
    "log_every",
    "device",
    "threads",
    "data_dir",
    "cache_dir",
    "eval_batch_size",
    "on_nan",
    "deterministic",
    "fast",
)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from ..data.registry import DATASETS, DEFAULT_DIR, names
    from ..recipes import DARTS_SPACE
    from ..train import TrainConfig

    p.add_argument("--config", type=Path, help="JSON file of options (between the recipe and the command line)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last complete epoch")
    p.add_argument("--dry-run", action="store_true", help="build the network, print its size and cost, and exit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    base = TrainConfig()

    def default_text(name: str) -> str:
        per = ", ".join(f"{d} {e.train_defaults[name]}" for d, e in DATASETS.items() if name in e.train_defaults)
        if name in DARTS_SPACE:
            per += f"{', ' if per else ''}darts-space genotypes {DARTS_SPACE[name]}"
        default = getattr(base, name)
        if name == "budget":
            return "default: none, --epochs decides"
        if name == "cache_dir":
            return _CACHE_DEFAULT
        if name == "data_dir":
            return f"default: {DEFAULT_DIR}, then the system's copies (Debian's Fashion-MNIST)"
        if name == "synthetic_size":
            default = f"{default}, or more when --batch-size needs it"
        return f"default: {'all' if default is None else default}" + (f"; {per}" if per else "")

    add_config_options(p, TrainConfig, _HELP, default_text, {**_CHOICES, "dataset": names("train")})


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import io

    from ..dist import init_from_env

    rank, _ = init_from_env()  # under torchrun: join the process group (gloo on CPU, nccl on GPU)
    if rank != 0:  # only rank 0 prints; every rank trains its shard
        with contextlib.redirect_stdout(io.StringIO()):
            args.quiet = True
            return _cmd_train(args)
    return _cmd_train(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..progress import Reporter
    from ..train import TrainConfig, Trainer, resume_config

    cli = command_line_options(args)
    if args.resume:
        cfg = resume_config(resume_dir(args.resume, "train"))
        for k in _RESUMABLE:
            if k in cli:
                setattr(cfg, k, cli[k])
        cfg.validate()
    else:
        file_opts = read_config_file(args.config) if args.config else {}
        cfg = TrainConfig.resolve(**{**file_opts, **cli})
    trainer = Trainer(cfg, resume=bool(args.resume), overwrite=args.overwrite, load_data=not args.dry_run)
    g = trainer.genotype
    from ..data.userfolder import describe

    if describe(trainer.spec.info) and not cfg.quiet:  # your own folder: what was found in it
        print(describe(trainer.spec.info))
    print(
        f"{cfg.genotype} ({g.space}) on {cfg.dataset}: {trainer.parameters} parameters, "
        f"{trainer.macs} multiply-accumulates per image "
        f"({trainer.spec.in_channels}x{trainer.size}x{trainer.size} input, C={cfg.init_channels}, "
        f"{cfg.layers} cells" + (f", E={cfg.enhance_cells}" if g.space == "bcnn" else "") + ")"
    )
    if args.dry_run:
        return 0
    if not cfg.quiet:
        sizes = ", ".join(f"{v} {k}" for k, v in trainer.sizes.items())
        print(
            f"device {trainer.device}, amp {trainer.amp_mode}, {len(trainer.loaders['train'])} steps/epoch of "
            f"batch {cfg.batch_size}, images: {sizes}, run directory {cfg.out}"
        )
    trainer.open_run()
    if args.resume:
        print(f"resuming {cfg.out} at epoch {trainer.start_epoch + 1}/{cfg.epochs}")
    try:
        trainer.run_training(Reporter(quiet=cfg.quiet))
    except KeyboardInterrupt:
        from ..runcore import interrupted_message

        print("\n" + interrupted_message("train", cfg.out), file=sys.stderr)
        return 130
    from ._hints import train_next_steps

    print(train_next_steps(cfg.out))  # rank != 0 prints into the void (cmd_train)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..errors import check_device, check_int, check_not_file
    from ..evaluation import evaluate_checkpoint

    check_device(args.device)
    check_int("batch_size", args.batch_size, 1)
    check_int("subset", args.subset, 1, optional=True)
    if args.data_dir is not None:
        check_not_file("data_dir", args.data_dir, "the directory that holds the data set")
    res = evaluate_checkpoint(
        args.checkpoint, split=args.split, data_dir=args.data_dir, device=args.device,
        batch_size=args.batch_size, subset=args.subset,
    )  # fmt: skip
    if args.json:
        print(dumps(res))
    else:
        print(
            f"{res['checkpoint']} (epoch {res['epoch']}) on the {res['split']} split, {res['images']} images: "
            f"top-1 {res['top1']:.4f}, top-5 {res['top5']:.4f}, loss {res['loss']:.4f}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, args.format)
    how = {
        "export": "torch.export.load(PATH).module()",
        "torchscript": "torch.jit.load(PATH)",
        "onnx": "onnxruntime.InferenceSession(PATH)",
    }[args.format]
    print(f"wrote {path} ({args.format}); it predicts without bnas: {how} (preprocessing in its bnas.json)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a genotype from scratch and test it (SPEC §9 recipes)",
        description="Train a found (or bundled) genotype from scratch with the published recipe of the data set, "
        "then report the final epoch's test accuracy in results.json. A --config JSON file overrides the "
        "recipe, the command line overrides both.",
    )
    _add_train_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a trained model")
    e.add_argument("checkpoint", help="a training run directory, its checkpoint.pt or its best.pt")
    e.add_argument("--split", choices=["test", "val", "train"], default="test", help="split to evaluate on")
    e.add_argument("--data-dir", help="directory of the data set (default: the run's)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    e.add_argument("--subset", type=int, help="only the first N images of the split")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a file that predicts without bnas (torch.export, TorchScript, ONNX)")
    x.add_argument("checkpoint", help="a training run directory, its checkpoint.pt or its best.pt")
    x.add_argument(
        "--format",
        choices=["export", "torchscript", "onnx"],
        default="export",
        help="export: a torch.export ExportedProgram (.pt2, dynamic batch; torch.export.load), torchscript (.ts; "
        "deprecated by torch), onnx (.onnx; needs the onnx package)",
    )
    x.add_argument("--out", type=Path, help="file to write (default: model.pt2, model.ts or model.onnx in the run)")
    x.set_defaults(func=cmd_export)
