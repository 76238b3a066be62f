"""`bnas study --config STUDY.json --out DIR`: searches, random cells and published cells trained alike."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_FORM = (
    '{"dataset": "synthetic", "methods": ["clr", "random", {"name": "bnas-d-p2", "method": "bnas-d", '
    '"clr_power": 2}], "seeds": [0, 1], "random_cells": 2, "published": ["BNASv2_CLR_v1"], '
    '"search": {"epochs": 1, "init_channels": 4}, "train": {"epochs": 1, "init_channels": 4}}'
)


def cmd_study(args: argparse.Namespace) -> int:
    from ..errors import check_output
    from ..study import StudySpec, run_study

    spec = StudySpec.load(args.config)
    check_output("--out", args.out, directory=True)
    try:
        run_study(spec, args.out, dry_run=args.dry_run)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished runs are kept; continue with bnas study --config {args.config} --out {args.out}",
            file=sys.stderr,
        )
        return 130
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "study",
        help="does the search beat random? search with each method and seed, train every candidate alike, compare",
        description="Run every search of a study file (each method x seed), train each searched cell, the sampled "
        "random cells and the published genotypes with the same options, and write results.csv, results.md, "
        "summary.csv, plots and report.html into --out. Rerunning the same command resumes: finished runs are "
        f"kept, a half-finished one continues from its checkpoint. The file's form: {_FORM} (method options and "
        "search/train options are the fields of SearchConfig and TrainConfig, as in bnas search/train --config).",
    )
    s.add_argument("--config", type=Path, required=True, metavar="STUDY.json", help="the study file")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="the study directory (resumed if it exists)")
    s.add_argument("--dry-run", action="store_true", help="check the study file and print the planned runs")
    s.set_defaults(func=cmd_study)
