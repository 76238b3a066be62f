"""`bnas sample-imagenet`: the class-balanced search subset of SPEC §10 (published: imagenet_data_sample.py)."""

from __future__ import annotations

import argparse
import sys


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of options that have one (not "(default: None)" after a required option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample-imagenet",
        help="draw the class-balanced ImageNet subset for search (symlinks or file lists)",
        formatter_class=DefaultsFormatter,
        description="Per class, draw --fraction of the training images without replacement; --val-share of "
        "the draw trains the architecture, the rest the weights. Re-running with the same arguments completes "
        "a partial run.",
    )
    p.add_argument("--src", required=True, help="ImageNet root (with train/CLASS/*.JPEG) or a train directory")
    p.add_argument("--dst", required=True, help="directory for the subset")
    p.add_argument("--fraction", type=float, default=0.125, help="share of each class drawn")
    p.add_argument("--val-share", type=float, default=0.2, help="share of each draw for the architecture split")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draw")
    p.add_argument("--mode", choices=["link", "list"], default="link", help="symlinks or train.txt/val.txt lists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.imagenet import sample_imagenet
    from ..errors import check_not_file

    check_not_file("dst", args.dst, "a directory for the subset")
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="classes", unit="class", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    summary = sample_imagenet(args.src, args.dst, args.fraction, args.val_share, args.seed, args.mode, progress)
    if bar is not None:
        bar.close()
    print(
        f"subset of {summary['classes']} classes in {summary['dst']}: {summary['train_images']} images to train "
        f"the weights, {summary['val_images']} to train the architecture ({args.mode} mode, seed {args.seed})"
    )
    return 0
