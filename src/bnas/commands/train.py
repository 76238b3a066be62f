"""`bnas train`, `bnas eval CHECKPOINT` and `bnas export CHECKPOINT`: parse, resolve the config, call bnas.train."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..jsonio import dumps
from ._options import (
    add_config_options,
    command_line_options,
    field_default_text,
    read_config_file,
    resumable_flags,
    resume_dir,
)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from ..data.registry import DATASETS
    from ..recipes import DARTS_SPACE
    from ..train_config import TrainConfig

    p.add_argument("--config", type=Path, help="JSON file of options (between the recipe and the command line)")
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last complete epoch; options that "
        "would change its results are refused, the others (" + ", ".join(resumable_flags(TrainConfig)) + ") are "
        "recorded",
    )  # fmt: skip
    p.add_argument(
        "--extend-epochs", type=int, metavar="N", help="with --resume: train the run N epochs longer than it was "
        "started with, a finished one too (the cosine schedule stretches to the new total; recorded in config.json "
        "'extensions'; not with --budget)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="build the network, print its size and cost, and exit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")

    def default_text(name: str) -> str:
        per = ", ".join(f"{d} {e.train_defaults[name]}" for d, e in DATASETS.items() if name in e.train_defaults)
        if name in DARTS_SPACE:
            per += f"{', ' if per else ''}darts-space genotypes {DARTS_SPACE[name]}"
        if name == "synthetic_size":
            return f"default: {TrainConfig.synthetic_size}, or more when --batch-size needs it"
        return field_default_text(TrainConfig, name, per)

    add_config_options(p, TrainConfig, default_text=default_text)


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
    from ..options import resume_config
    from ..progress import Reporter
    from ..train import TrainConfig, Trainer

    cli = command_line_options(args)
    file_opts = read_config_file(args.config) if args.config else {}
    if args.resume:
        run = resume_dir(args.resume, "train")
        cfg = resume_config(run, TrainConfig, {**file_opts, **cli}, extend_epochs=args.extend_epochs or 0)
    elif args.extend_epochs is not None:
        raise ConfigError("extend_epochs continues a run: give resume too", options=("extend_epochs", "resume"))
    else:
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
    from ._hints import RUN_EXITS

    t = sub.add_parser(
        "train",
        help="train a genotype from scratch and test it (SPEC §9 recipes)",
        description="Train a found (or bundled) genotype from scratch with the published recipe of the data set, "
        "then report the final epoch's test accuracy in results.json. A --config JSON file overrides the "
        "recipe, the command line overrides both.",
        epilog=RUN_EXITS,
    )
    _add_train_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a trained model")
    e.add_argument("checkpoint", help="a training run directory, its checkpoint.pt or its best.pt")
    e.add_argument(
        "--split", choices=["test", "val", "train"], default="test", help="split to evaluate on (default: test)"
    )
    e.add_argument("--data-dir", help="directory of the data set (default: the run's)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    e.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    e.add_argument("--subset", type=int, help="only the first N images of the split (default: every image)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a file that predicts without bnas (torch.export, TorchScript, ONNX)")
    x.add_argument("checkpoint", help="a training run directory, its checkpoint.pt or its best.pt")
    x.add_argument(
        "--format",
        choices=["export", "torchscript", "onnx"],
        default="export",
        help="export: a torch.export ExportedProgram (.pt2, dynamic batch; torch.export.load), torchscript (.ts; "
        "deprecated by torch), onnx (.onnx; needs the onnx package) (default: export)",
    )
    x.add_argument("--out", type=Path, help="file to write (default: model.pt2, model.ts or model.onnx in the run)")
    x.set_defaults(func=cmd_export)
