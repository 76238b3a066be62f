"""`bnas` command line: a thin layer that parses, resolves configuration and calls the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from .errors import BnasError


class Parser(argparse.ArgumentParser):
    """Usage mistakes (an unknown data set, a missing value) are one sentence on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


# the order of `bnas --help`: the main job first
_ORDER = ("search", "train", "study", "predict", "genotype", "sample_imagenet", "report", "bench")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = Parser(prog="bnas", description="BNAS-v2: broad neural architecture search")
    p.add_argument("--version", action="version", version=f"bnas {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    import importlib
    import pkgutil

    from . import commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    for mod in sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    return p


# glibc's per-thread cache of small freed chunks (tcache) fragments the heap of a CPU training process: peak
# resident memory of a CPU search step measured 50-100 MB lower without it, at the same speed (docs/benchmarks.md).
# It can only be switched off before the process starts, so `bnas search|train|study|bench` on the CPU restarts itself
# once; every other case runs as started (docs/architecture.md, "The glibc restart").
_TCACHE_OFF = "glibc.malloc.tcache_count=0"
_RESTARTED = ("search", "train", "study", "bench")  # the commands whose steps allocate in a loop


def _argv_option(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _wants_tcache_off(argv: list[str], environ: dict[str, str]) -> bool:
    """Whether this process should restart with the tcache off: a CPU run of search, train, study or bench, started
    as the `bnas` command, not under torchrun (its workers are started by it, with its environment), a
    debugger or a profiler (a restart would detach them), and not switched off with BNAS_MALLOC_TUNING=0."""
    import platform

    if environ.get("BNAS_MALLOC_TUNING", "1") == "0" or "tcache_count" in environ.get("GLIBC_TUNABLES", ""):
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in _RESTARTED or "--help" in argv or "-h" in argv:
        return False
    if any(k in environ for k in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "WORLD_SIZE")):
        return False
    if sys.gettrace() is not None or sys.getprofile() is not None or "pydevd" in sys.modules:
        return False
    monitoring = getattr(sys, "monitoring", None)  # Python >= 3.12: debuggers register a tool id here
    if monitoring is not None and any(monitoring.get_tool(i) for i in (monitoring.DEBUGGER_ID, monitoring.PROFILER_ID)):
        return False
    device = _argv_option(argv, "--device") or "auto"
    if device.startswith(("cuda", "mps")):
        return False
    return not (device == "auto" and Path("/proc/driver/nvidia").exists())  # auto picks the GPU there


def _restart_without_tcache() -> None:
    """Re-execute this command with glibc's tcache off where `_wants_tcache_off` says it pays."""
    import os

    argv = getattr(sys, "orig_argv", None)
    if not argv or not _wants_tcache_off(sys.argv[1:], dict(os.environ)):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{_TCACHE_OFF}" if tunables else _TCACHE_OFF)
    try:
        os.execve(sys.executable, argv, env)
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
