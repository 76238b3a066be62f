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

_EXITS = (
    "Exit codes: 0 every run finished; 1 some runs failed after their --retries (each with its sentence in "
    "results.md and report.html); 75 stopped by SIGTERM or SIGUSR1 with the running runs saved mid-epoch (run "
    "the same command again to resume); 130 Ctrl-C; 2 a usage or configuration error. --executor slurm: 0 once "
    "the workers are submitted (the study's outcome is in its results and in sacct)."
)


def cmd_study(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, check_output
    from ..study import StudySpec, open_study, report_study, run_study, work_on

    if args.retries < 0:
        raise ConfigError(f"--retries must be 0 or more, got {args.retries}")
    _executor_flags(args)
    if args.worker is not None:
        _only(args, "--worker", ("config", "out", "report", "dry_run", "workers", "dir", "executor"))
        return _interruptible(lambda: work_on(args.worker, retries=args.retries), f"bnas study --worker {args.worker}")
    if args.report:
        _only(args, "--report", ("config", "out", "dry_run", "workers", "executor"))
        target = args.dir or args.out
        if target is None:
            raise ConfigError("--report needs the study directory: bnas study DIR --report")
        return report_study(target)
    if args.dir is not None:
        raise ConfigError(
            f"a study directory alone ({args.dir}) goes with --report; run a study with --config F --out DIR"
        )
    if args.config is None or args.out is None:
        raise ConfigError("bnas study needs --config STUDY.json and --out DIR (or --worker DIR, or DIR --report)")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    spec = StudySpec.load(args.config)
    check_output("--out", args.out, directory=True)
    again = f"bnas study --config {args.config} --out {args.out}"
    if args.executor is not None:
        return _submit(args, spec, again)
    if args.workers is not None and not args.dry_run:
        from ..study_work import run_workers

        open_study(spec, args.out)
        if args.workers == 0:
            print(f"planned the study in {args.out}; start workers with bnas study --worker {args.out}")
            return 0
        return _interruptible(lambda: run_workers(args.out, args.workers, args.retries), again)

    def sequential() -> int:
        results = run_study(spec, args.out, dry_run=args.dry_run, retries=args.retries)
        return 1 if results is not None and results.failed else 0

    return _interruptible(sequential, again)


def _executor_flags(args: argparse.Namespace) -> None:
    from ..errors import ConfigError

    if args.executor is None:
        given = [f for f in ("partition", "gpus_per_run", "time", "slurm_options") if getattr(args, f) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-").replace("options", "option")
            raise ConfigError(f"{flag} goes with --executor slurm (or local): bnas study --config F --out DIR "
                              f"--executor slurm --time 4h ...")  # fmt: skip


def _submit(args: argparse.Namespace, spec, again: str) -> int:
    """--executor slurm|local: plan the study, then submit its workers through submitit (study_slurm.py)."""
    from ..study_slurm import SubmitOptions, submit_study

    opts = SubmitOptions(
        executor=args.executor, time=args.time or "", workers=args.workers, partition=args.partition,
        gpus_per_run=1 if args.gpus_per_run is None else args.gpus_per_run,
        slurm_options=tuple(args.slurm_options or ()), retries=args.retries,
    )  # fmt: skip
    submission = submit_study(spec, args.out, opts, dry_run=args.dry_run)
    if submission is None or args.executor == "slurm":
        return 0
    return _interruptible(submission.wait, again)  # the local executor's workers are this command's children


def _interruptible(call, again: str) -> int:
    from ..preempt import Preempted

    try:
        return call()
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept; continue with {again}", file=sys.stderr)
        return 130
    except Preempted as e:  # the run in progress saved itself mid-epoch: the same command resumes the study
        print(f"bnas: {str(e).split(', which is saved')[0]}, saved; continue with {again}", file=sys.stderr)
        return e.exit_code


def _only(args: argparse.Namespace, flag: str, others: tuple[str, ...]) -> None:
    from ..errors import ConfigError

    given = [o for o in others if getattr(args, o, None) not in (None, False)]
    if given:
        other = "DIR" if given[0] == "dir" else "--" + given[0].replace("_", "-")
        raise ConfigError(f"{flag} takes no {other}: the study directory holds the study's config")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "study",
        help="does the search beat random? search with each method and seed, train every candidate alike, compare",
        description="Run every search of a study file (each method x seed), train each searched cell, the sampled "
        "random cells and the published genotypes with the same options, and write results.csv, results.md, "
        "summary.csv, plots and report.html into --out. Rerunning the same command resumes: finished runs are "
        f"kept, a half-finished one continues from its checkpoint. The file's form: {_FORM} (method options and "
        "search/train options are the fields of SearchConfig and TrainConfig, as in bnas search/train --config). "
        "Several workers share a study directory: --workers N runs N at once on this machine (a GPU each where "
        "there are GPUs, the CPU cores divided among them), and bnas study --worker DIR is one worker that any "
        "scheduler can start (each claims runs through their directory's lock; a killed worker's run is taken "
        "over and resumed); the worker that ends last writes the results, as bnas study DIR --report does.",
        epilog=_EXITS,
    )
    s.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="a study directory, with --report")
    s.add_argument("--config", type=Path, metavar="STUDY.json", help="the study file")
    s.add_argument("--out", type=Path, metavar="DIR", help="the study directory (resumed if it exists)")
    s.add_argument("--dry-run", action="store_true", help="check the study file and print the planned runs")
    s.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes on this machine (0: only plan the study for --worker processes)",
    )
    s.add_argument(
        "--worker",
        type=Path,
        metavar="DIR",
        help="be one worker of the study in DIR (planned by a bnas study --config F --out DIR)",
    )
    s.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="R",
        help="retry a failed run up to R times, from its checkpoint, before recording it as failed",
    )
    s.add_argument(
        "--report",
        action="store_true",
        help="write the results of a study whose runs have all ended (bnas study DIR --report)",
    )
    c = s.add_argument_group(
        "submitting workers (submitit: pip install 'bnas[slurm]'; docs/cluster.md)",
        "--executor slurm plans the study, then submits --workers N workers (default: one per run not ended) as "
        "one Slurm job array, each doing what bnas study --worker DIR does, and prints the job ids and how to "
        "follow them; a worker that reaches --time saves its run and is requeued. --dry-run prints the sbatch "
        "parameters. --executor local runs the same workers as subprocesses here and waits for them.",
    )
    c.add_argument("--executor", choices=("slurm", "local"), help="submit the study's workers through submitit")
    c.add_argument("--partition", metavar="P", help="the Slurm partition (default: the cluster's)")
    c.add_argument(
        "--gpus-per-run", type=int, metavar="G", help="GPUs of each worker's job: 1 (default) or 0 (a CPU partition)"
    )
    c.add_argument("--time", metavar="T", help="each worker's time limit: 4h, 90m, 1h30m, 2d or D-HH:MM:SS")
    c.add_argument(
        "--slurm-option",
        "--slurm-options",
        dest="slurm_options",
        action="append",
        metavar="KEY=VALUE",
        help="a further sbatch option, repeatable: mem=32G, account=lab, qos=high, cpus-per-task=8 (KEY alone: a "
        "flag such as exclusive)",
    )
    s.set_defaults(func=cmd_study)
