"""`bnas search`: parse, resolve the method preset, a --config file and the command line, call bnas.search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._options import add_config_options, command_line_options, read_config_file, resume_dir

_HELP = {
    "space": "search space: the broad network (bcnn) or the DARTS stack (darts)",
    "dataset": "data set to search on (folder: your own images, --data-dir DIR/CLASS/*.png|jpg|...)",
    "data_dir": "directory holding the data set files",
    "download": "download a missing data set with torchvision where the network allows it",
    "subset": "use only the first N training images (quick runs)",
    "image_size": "input resolution of image-folder data sets (imagenet-subset; folder: 0 = the median image side "
    "rounded to 32, 64 or 96 for small images; the CIFAR stem up to 64 px, the ImageNet stem above)",
    "test_split": "folder without test/: share of each class held out as the test split, never searched on "
    "(seeded, stratified; recorded in the run)",
    "cache_dir": "folder: directory of the decoded-image cache",
    "skip_bad": "folder: leave unreadable or truncated images out (counted in the run) instead of stopping",
    "workers": "image decoding workers (imagenet-subset)",
    "decode": "JPEG decoding of imagenet-subset: pil (in the workers) or gpu (nvJPEG; falls back to pil without a GPU)",
    "synthetic_size": "number of training images of --dataset synthetic",
    "epochs": "search epochs",
    "batch_size": "batch size of both the weight and the architecture step",
    "init_channels": "C, initial channels",
    "blocks": "L, convolution blocks (bcnn)",
    "enhance_cells": "E, enhancement cells (bcnn)",
    "layers": "cells of the DARTS stack (darts)",
    "partial_k": "K of partial-channel edges (1 = full edges)",
    "edge_norm": "edge normalisation with betas (PC)",
    "order": "1 = first order, 2 = DARTS' unrolled second order",
    "hvp": "second-order Hessian-vector product: fd (finite differences) or exact (double backprop)",
    "fd_eps": "finite-difference step of the second order: eps = fd_eps / ||v||",
    "lr": "weight learning rate (SGD, cosine schedule)",
    "lr_min": "final weight learning rate of the cosine schedule",
    "lr_warmup_epochs": "linear warm-up epochs of the weight learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay of the network weights",
    "grad_clip": "gradient norm clip of the weights",
    "arch_lr": "architecture learning rate (Adam)",
    "arch_weight_decay": "architecture weight decay",
    "arch_betas": "Adam betas of the architecture optimiser",
    "arch_grad_clip": "architecture gradient norm clip (0 = off)",
    "clr_power": "CLR: arch lr = base x ((epoch+1)/epochs)^power (0 = constant)",
    "arch_start_epoch": "warm-up: first epoch with architecture updates",
    "train_portion": "share of the training set for the weights (the rest trains the architecture)",
    "seed": "random seed",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision: auto (bf16 on GPU, off on CPU), off, bf16, fp16",
    "channels_last": "channels-last memory format: auto (= on), on, off",
    "compile": "torch.compile each cell with this backend (inductor; eager to debug); off = plain PyTorch",
    "fast": "per-source-state search cells: the same gradients as the per-edge cells, less time and memory",
    "eval_every": "evaluate the supernet on the architecture split every N epochs (0 = never)",
    "log_every": "steps between step records in metrics.jsonl",
    "hessian_every": "every N epochs log the dominant eigenvalue of the validation-loss Hessian w.r.t. the alphas "
    "(RobustDARTS' collapse indicator; 0 = off)",
    "hessian_iters": "at most this many power-iteration steps of --hessian-every",
    "out": "run directory to write",
    "deterministic": "deterministic GPU kernels (slower); CPU runs with the same seed are bit-identical anyway",
    "on_nan": "on a NaN/infinite loss: stop (keep the last complete epoch) or skip the step and count it",
    "quiet": "print only the final summary (when stdout is not a terminal the bar gives way to plain lines anyway)",
}
_CACHE_DEFAULT = "default: DIR/.bnas-cache, or ~/.cache/bnas/folders where DIR is not writable"
_CHOICES = {
    "space": ["bcnn", "darts"],
    "order": [1, 2],
    "hvp": ["fd", "exact"],
    "on_nan": ["stop", "skip"],
    "decode": ["pil", "gpu"],
    "amp": ["auto", "off", "bf16", "fp16"],
    "channels_last": ["auto", "on", "off"],
}


def _add_search_args(p: argparse.ArgumentParser) -> None:
    from ..data.registry import DEFAULT_DIR, names
    from ..search import METHODS, SearchConfig

    p.add_argument("--method", choices=list(METHODS), default=None, help="method preset (default: clr)")
    p.add_argument("--config", type=Path, help="JSON file of options (between the preset and the command line)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last complete epoch")
    p.add_argument("--dry-run", action="store_true", help="build everything, print the counts and exit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    base = SearchConfig()

    def default_text(name: str) -> str:
        if name in METHODS["clr"]:
            return "method default: " + ", ".join(f"{m} {v[name]}" for m, v in METHODS.items())
        if name == "fast":
            return "default: auto = on on the CPU, off on a GPU until benchmarks/gpu_check.py shows it pays there"
        if name == "synthetic_size":
            return f"default: {base.synthetic_size}, or more when --batch-size needs it"
        if name == "cache_dir":
            return _CACHE_DEFAULT
        if name == "data_dir":
            return f"default: {DEFAULT_DIR}, then the system's copies (Debian's Fashion-MNIST)"
        return f"default: {'all' if getattr(base, name) is None else getattr(base, name)}"

    add_config_options(p, SearchConfig, _HELP, default_text, {**_CHOICES, "dataset": names("search")}, skip=("method",))


def cmd_search(args: argparse.Namespace) -> int:
    from ..dist import init_from_env
    from ..progress import Reporter
    from ..search import SearchConfig, Searcher, resume_config

    rank, _ = init_from_env()  # under torchrun: join the process group; rank 0 alone prints and writes

    cli = command_line_options(args)
    method = cli.pop("method", None)
    if args.resume:
        cfg = resume_config(resume_dir(args.resume, "search"))
        # only run-length and logging options may change on resume
        for k in (
            "epochs",
            "quiet",
            "log_every",
            "eval_every",
            "device",
            "on_nan",
            "deterministic",
            "decode",
            "workers",
            "cache_dir",
        ):
            if k in cli:
                setattr(cfg, k, cli[k])
        cfg.validate()
    else:
        file_opts = read_config_file(args.config) if args.config else {}
        method = method or file_opts.pop("method", None) or "clr"
        file_opts.pop("method", None)
        cfg = SearchConfig.resolve(method, **{**file_opts, **cli})
    if rank != 0:
        cfg.quiet = True
    searcher = Searcher(cfg, resume=bool(args.resume), overwrite=args.overwrite, load_data=not args.dry_run)
    counts = searcher.counts()
    reporter = Reporter(quiet=cfg.quiet)
    from ..data.userfolder import describe

    if describe(searcher.data_info) and not cfg.quiet:  # your own folder: what was found in it
        print(describe(searcher.data_info))
    if rank == 0:
        print(
            f"supernet ({cfg.method}, {cfg.space}, {cfg.dataset}): {counts['weights']} weights, "
            f"{counts['arch']} architecture parameters"
        )
    if args.dry_run:
        return 0
    if not cfg.quiet:
        print(
            f"device {searcher.device}, amp {searcher.amp_mode}, {len(searcher.train_loader)} steps/epoch of "
            f"batch {cfg.batch_size}, order {cfg.order}, run directory {cfg.out}"
        )
    searcher.open_run()
    if args.resume and rank == 0:
        print(f"resuming {cfg.out} at epoch {searcher.start_epoch + 1}/{cfg.epochs}")
    try:
        searcher.run_search(reporter)
    except KeyboardInterrupt:
        from ..runcore import interrupted_message

        print("\n" + interrupted_message("search", cfg.out), file=sys.stderr)
        return 130
    if rank == 0:
        from ._hints import search_next_steps

        print(search_next_steps(cfg, searcher.device))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ._hints import RUN_EXITS

    s = sub.add_parser(
        "search",
        help="architecture search (BNAS-D, BNAS-v2-CLR, BNAS-v2-PC)",
        description="Search cells of the broad (or DARTS) network. Options default to the --method preset "
        "(SPEC §7 table); a --config JSON file overrides the preset, the command line overrides both.",
        epilog=RUN_EXITS,
    )
    _add_search_args(s)
    s.set_defaults(func=cmd_search)
