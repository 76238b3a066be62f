"""`bnas` command line: a thin layer that parses, resolves configuration and calls the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from .errors import BnasError, ConfigError
from .jsonio import dumps

_HELP = {
    "space": "search space: the broad network (bcnn) or the DARTS stack (darts)",
    "dataset": "data set to search on",
    "data_dir": "directory holding the data set files",
    "download": "download a missing data set with torchvision where the network allows it",
    "subset": "use only the first N training images (quick runs)",
    "image_size": "input resolution of image-folder data sets (imagenet-subset)",
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
    "compile": "torch.compile the network with this backend (inductor; eager to debug); off = plain PyTorch",
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
    from .data.registry import DATASETS
    from .search import METHODS, SearchConfig

    p.add_argument("--method", choices=list(METHODS), default=None, help="method preset (default: clr)")
    p.add_argument("--config", type=Path, help="JSON file of options (between the preset and the command line)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last complete epoch")
    p.add_argument("--dry-run", action="store_true", help="build everything, print the counts and exit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    base = SearchConfig()
    for f in dataclasses.fields(SearchConfig):
        if f.name in ("method", "extra"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in METHODS["clr"]:
            per = ", ".join(f"{m} {v[f.name]}" for m, v in METHODS.items())
            default_text = f"method default: {per}"
        elif f.name == "synthetic_size":
            default_text = f"default: {base.synthetic_size}, or more when --batch-size needs it"
        else:
            default_text = f"default: {'all' if getattr(base, f.name) is None else getattr(base, f.name)}"
        helptext = f"{_HELP.get(f.name, f.name)} ({default_text})"
        kw: dict[str, Any] = {"default": None, "help": helptext, "dest": f.name}
        if f.type in ("bool", bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name == "arch_betas":
            kw.update(type=float, nargs=2, metavar=("B1", "B2"))
        elif f.name == "dataset":
            kw["choices"] = [*DATASETS, "imagenet-subset"]
        else:
            t = {"int": int, "float": float, "str": str, "int | None": int}.get(str(f.type), str)
            kw["type"] = t
            if f.name in _CHOICES:
                kw["choices"] = _CHOICES[f.name]
        p.add_argument(flag, **kw)


# what a run's config.json records besides its options: a run's config.json can be given to --config as it is
_RECORDS = ("command", "counts", "environment", "genotype_json", "parameters", "macs")


def read_config_file(path: Path) -> dict[str, Any]:
    """The options of a --config JSON file (a run's config.json works too), as one sentence when it is bad."""
    if not path.exists():
        raise ConfigError(f"--config {path} does not exist; give a JSON file of options")
    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory; give a JSON file of options (e.g. a run's config.json)")
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of options")
    return {k.replace("-", "_"): v for k, v in obj.items() if k not in _RECORDS}


def resume_dir(path: Path, command: str) -> Path:
    """--resume RUN_DIR: an existing directory holding a run of this command, or one sentence saying what to do."""
    from .runs import RunDir

    if not path.exists():
        raise ConfigError(f"--resume {path} does not exist; give the directory of a bnas {command} run")
    if not path.is_dir():
        raise ConfigError(
            f"--resume {path} is a file, not a run directory; give the directory that holds the run's config.json "
            "and checkpoint.pt"
        )
    saved = RunDir(path).read_json("config.json")
    kind = saved.get("command") if isinstance(saved, dict) else None
    if kind in ("search", "train") and kind != command:
        raise ConfigError(f"{path} is a bnas {kind} run; continue it with bnas {kind} --resume {path}")
    return path


def cmd_search(args: argparse.Namespace) -> int:
    from .dist import init_from_env
    from .progress import Reporter
    from .search import SearchConfig, Searcher, resume_config

    rank, _ = init_from_env()  # under torchrun: join the process group; rank 0 alone prints and writes

    cli = {k: v for k, v in vars(args).items() if v is not None}
    for k in ("command", "func", "config", "resume", "dry_run", "overwrite", "debug", "genotype_cmd"):
        cli.pop(k, None)
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
    searcher = Searcher(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    counts = searcher.counts()
    reporter = Reporter(quiet=cfg.quiet)
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
        print(
            f"\ninterrupted: finished epochs are saved; continue with bnas search --resume {cfg.out}", file=sys.stderr
        )
        return 130
    return 0


def cmd_genotype(args: argparse.Namespace) -> int:
    from .genotype import ZOO, get_genotype

    if args.genotype_cmd == "list":
        for name, entry in ZOO.items():
            free = entry.genotype.parameter_free()
            print(f"{name:<20} {entry.genotype.space:<6} {entry.source}")
            print(f"{'':<20} parameter-free ops {free}" + (f"; reported: {entry.reported}" if entry.reported else ""))
        return 0
    g = get_genotype(args.name)
    if args.genotype_cmd == "show":
        print(f"{args.name} ({g.space} space)")
        print(g.describe())
        if args.json:
            print(dumps(g.to_json(), indent=1))
    if args.genotype_cmd == "plot":
        from .errors import check_output
        from .plots import draw_genotype

        check_output("--output", args.output, directory=False)
        out = draw_genotype(g, args.output, engine=args.engine, title=Path(str(args.name)).name)
        print(f"wrote {out}")
    return 0


class Parser(argparse.ArgumentParser):
    """Usage mistakes (an unknown data set, a missing value) are one sentence on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = Parser(prog="bnas", description="BNAS-v2: broad neural architecture search")
    p.add_argument("--version", action="version", version=f"bnas {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "search",
        help="architecture search (BNAS-D, BNAS-v2-CLR, BNAS-v2-PC)",
        description="Search cells of the broad (or DARTS) network. Options default to the --method preset "
        "(SPEC §7 table); a --config JSON file overrides the preset, the command line overrides both.",
    )
    _add_search_args(s)
    s.set_defaults(func=cmd_search)

    g = sub.add_parser("genotype", help="show or list genotypes")
    gsub = g.add_subparsers(dest="genotype_cmd", required=True)
    show = gsub.add_parser("show", help="print a genotype's cells as text")
    show.add_argument("name", help="bundled genotype name or genotype.json / run directory")
    show.add_argument("--json", action="store_true", help="also print the JSON form")
    gsub.add_parser("list", help="list the bundled genotypes")
    plot = gsub.add_parser("plot", help="draw both cells as graphs (graphviz's dot if installed, else matplotlib)")
    plot.add_argument("name", help="bundled genotype name or genotype.json / run directory")
    plot.add_argument("-o", "--output", type=Path, default=Path("cell.svg"), help="file to write: .svg, .png or .pdf")
    plot.add_argument("--engine", choices=["auto", "dot", "matplotlib"], default="auto", help="drawing program")
    g.set_defaults(func=cmd_genotype)

    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    return p


# glibc's per-thread cache of small freed chunks (tcache) fragments the heap of a training process: peak
# resident memory of a CPU search step measured 50-100 MB lower without it, at the same speed (docs/benchmarks.md).
# It can only be switched off before the process starts, so the `bnas` command restarts itself once.
_TCACHE_OFF = "glibc.malloc.tcache_count=0"


def _restart_without_tcache() -> None:
    """Re-execute this command with glibc's tcache off (Linux/glibc; BNAS_MALLOC_TUNING=0 keeps it as is)."""
    import os
    import platform

    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if os.environ.get("BNAS_MALLOC_TUNING", "1") == "0" or "tcache_count" in tunables:
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not getattr(sys, "orig_argv", None):
        return
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{_TCACHE_OFF}" if tunables else _TCACHE_OFF)
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:  # cannot re-execute: run as started
        return


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `bnas` command itself (not a call from Python)
        _restart_without_tcache()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BnasError as e:
        if args.debug:
            raise
        msg = str(e)
        if len(msg) > 1 and msg[0].isupper() and msg[1].islower():  # "Image folder ..." but not "CIFAR-10 ..."
            msg = msg[0].lower() + msg[1:]
        print(f"bnas: error: {msg or 'failed'}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (full disk, permissions, a file where a directory must be)
        if args.debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"bnas: error: {e.strerror or e}{where}; check the paths given (bnas --debug shows where)", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
