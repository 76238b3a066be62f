"""`bnas` command line: a thin layer that parses, resolves configuration and calls the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from .errors import BnasError


class Parser(argparse.ArgumentParser):
    """Usage mistakes (an unknown data set, a missing value) are one sentence on stderr, like every other error;
    a mistyped option or command gets a "did you mean". No abbreviations: `--arch` would silently mean `--arch-lr`
    today and become ambiguous (an error in scripts that worked) the day another `--arch-...` option is added."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{_suggestion(self, message)}; see {self.prog} --help\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None or not extras:
            return parsed, extras
        # an option the subcommand does not know: its parser, not the top one, says what it is and suggests
        sub = _chosen(self, parsed)
        if sub is not None and any(e.startswith("-") for e in extras):
            sub.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _chosen(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser | None:
    """The innermost subcommand parser that `parsed` went through."""
    chosen = None
    while parser is not None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(parsed, subs[0].dest, None) if subs else None
        parser = subs[0].choices.get(name) if name else None
        chosen = parser or chosen
    return chosen


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """'(did you mean --epochs?)' for an unknown option or command close to a known one."""
    import difflib
    import re

    known: list[str] = []
    m = re.search(r"unrecognized arguments: (\S+)", message)
    if m:
        word = m.group(1).split("=")[0]
        known = [o for a in parser._actions for o in a.option_strings]
    else:
        m = re.search(r"invalid choice: '([^']*)'", message)
        if not m:
            return ""
        word = m.group(1)
        known = [c for a in parser._actions if a.choices for c in map(str, a.choices)]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def flag_message(error: BnasError) -> str:
    """A library error in the command line's words: the arguments it names (`error.options`: `batch_size`,
    `resume=True`, `on_nan='skip'`) become flags (`--batch-size`, `--resume`, `--on-nan skip`). Every `name=value`
    is an argument; of a bare name only the first occurrence is ("device 'tpu' is not a device")."""
    import re

    msg = str(error)
    for name in getattr(error, "options", ()):
        flag = "--" + name.replace("_", "-")

        def with_value(m: re.Match, flag: str = flag) -> str:
            value = m.group(1).strip("'\"")
            if value in ("True", "False"):
                return flag if value == "True" else "--no-" + flag[2:]
            return f"{flag} {value}"

        msg = re.sub(rf"(?<![\w./-]){re.escape(name)}=('[^']*'|\"[^\"]*\"|[\w.+-]+)", with_value, msg)
        msg = re.sub(rf"(?<![\w./-]){re.escape(name)}(?![\w/=-])", flag, msg, count=1)  # the name, not prose
    return msg


# the order of `bnas --help`: the main job first
_ORDER = ("search", "train", "study", "predict", "genotype", "sample_imagenet", "report", "bench")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = Parser(prog="bnas", description="BNAS-v2: broad neural architecture search")
    p.add_argument("--version", action="version", version=f"bnas {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    import importlib
    import pkgutil

    from . import commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    for mod in sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    return p


# glibc's allocator as it comes costs a CPU training process time and memory (docs/benchmarks.md, "The allocator"):
# its per-thread cache of small freed chunks (tcache) fragments the heap (peak resident memory of a search step
# 50-100 MB lower without it, same speed), and every block of 32 MiB or more (one 64-channel 32x32 map at batch
# 128) is a fresh mmap whose pages fault in at first touch and go back to the kernel when freed: a ReLU of such
# a map took 14 ms instead of 1.8 ms. So the heap serves every block (mmap_max=0), keeps what it grew to
# (trim_threshold), on transparent huge pages where the kernel offers them (hugetlb=1: fewer page faults), and no
# tcache. Tunables are read only at start, so `bnas search|train|study|bench` on the CPU restarts itself once;
# every other case runs as started (docs/architecture.md, "The glibc restart").
_TCACHE_OFF = "glibc.malloc.tcache_count=0"
MALLOC_TUNABLES = (
    _TCACHE_OFF,
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.trim_threshold=4294967296",
    "glibc.malloc.hugetlb=1",
)
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
    """Re-execute this command with glibc's allocator tuned (MALLOC_TUNABLES) where `_wants_tcache_off` says it pays."""
    import os

    argv = getattr(sys, "orig_argv", None)
    if not argv or not _wants_tcache_off(sys.argv[1:], dict(os.environ)):
        return
    tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES", ""), *MALLOC_TUNABLES) if t)
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
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
        msg = flag_message(e)
        if len(msg) > 1 and msg[0].isupper() and msg[1].islower():  # "Image folder ..." but not "CIFAR-10 ..."
            msg = msg[0].lower() + msg[1:]
        code = getattr(e, "exit_code", 2)  # preempt.Preempted: 75, the run is saved and resumes
        print(f"bnas: {'error: ' if code == 2 else ''}{msg or 'failed'}", file=sys.stderr)
        return code
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
