"""`bnas search`: parse, resolve the method preset, a --config file and the command line, call bnas.search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._options import (
    add_config_options,
    command_line_options,
    field_default_text,
    read_config_file,
    resumable_flags,
    resume_dir,
    value_text,
)


def _add_search_args(p: argparse.ArgumentParser) -> None:
    from ..search_config import METHODS, SearchConfig

    p.add_argument("--config", type=Path, help="JSON file of options (between the preset and the command line)")
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last complete epoch; options that "
        "would change its results are refused, the others (" + ", ".join(resumable_flags(SearchConfig)) + ") are "
        "recorded",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="build everything, print the counts and exit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")

    def default_text(name: str) -> str:
        if name in METHODS["clr"]:
            return "method default: " + ", ".join(f"{m} {value_text(v[name])}" for m, v in METHODS.items())
        if name == "synthetic_size":
            return f"default: {SearchConfig.synthetic_size}, or more when --batch-size needs it"
        if name == "image_size":
            return field_default_text(SearchConfig, name, "folder 0")
        return field_default_text(SearchConfig, name)

    add_config_options(p, SearchConfig, default_text=default_text)


def cmd_search(args: argparse.Namespace) -> int:
    from ..dist import init_from_env
    from ..options import resume_config
    from ..progress import Reporter
    from ..search import SearchConfig, Searcher

    rank, _ = init_from_env()  # under torchrun: join the process group; rank 0 alone prints and writes

    cli = command_line_options(args)
    file_opts = read_config_file(args.config) if args.config else {}
    if args.resume:
        cfg = resume_config(resume_dir(args.resume, "search"), SearchConfig, {**file_opts, **cli})
    else:
        method = cli.pop("method", None) or file_opts.pop("method", None) or "clr"
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
