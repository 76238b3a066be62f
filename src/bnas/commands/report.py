"""`bnas report RUN_DIR` (an HTML page with plots) and `bnas compare RUN_DIR...` (a table of runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from ..errors import check_output
    from ..report import write_report

    if args.output is not None:
        check_output("--output", args.output, directory=True)
    report = write_report(args.run_dir, args.output, embed=args.embed)
    print(f"wrote {report.html} ({len(report.images)} plots: {', '.join(p.name for p in report.images.values())})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..report import compare_table

    print(compare_table(args.run_dirs))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report",
        help="write an HTML report of a run (curves, alpha evolution, collapse diagnostics, cells)",
        description="Write RUN_DIR/report/index.html and its PNGs. Works on unfinished runs. Needs matplotlib "
        "(pip install 'bnas[report]'); cells are drawn by graphviz's dot when it is installed.",
    )
    r.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory of bnas search or bnas train")
    r.add_argument("-o", "--output", type=Path, help="directory for index.html and the PNGs (default: RUN_DIR/report)")
    r.add_argument("--embed", action="store_true", help="inline the PNGs so that index.html alone holds everything")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser(
        "compare",
        help="print a table of runs side by side",
        description="Method, data set, epochs, the final genotype's parameter-free ops (per cell), final-epoch "
        "accuracies and time of each run (also of runs still going).",
    )
    c.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories")
    c.set_defaults(func=cmd_compare)
