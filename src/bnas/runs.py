"""Run directories: resolved config, metrics as JSON lines, atomic checkpoints, resume, summary.

Layout of a run directory:
  config.json        the fully resolved configuration (enough to rerun), with versions and hardware
  metrics.jsonl      one JSON object per line ("kind": "epoch" or "step")
  alphas.jsonl       searches: the softmaxed op weights of every edge per epoch (epoch 0 = initial)
  checkpoint.pt      the last complete epoch, written to a temp file, fsync'ed, then renamed
  genotype.json      the current genotype (searches), genotypes/epoch_NNN.json per epoch (epochs are numbered
                     from 1 in every file, record and message; alphas.jsonl's epoch 0 is the starting point)
  tb/                TensorBoard scalars of the epoch records, when tensorboard is installed
  summary.json       written when the run ends
  run.lock           while a process writes the run: its pid, host, command and start (`RunLock`)

An epoch's records are written before its checkpoint; a resumed run drops the records of epochs after
its checkpoint (`truncate_metrics`) and recomputes them, so a kill at any moment loses no complete epoch
and never leaves a record twice.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .errors import BnasError, CheckpointError
from .jsonio import atomic_write_bytes, dumps

CHECKPOINT_FORMAT = 1
JSONL_FILES = ("metrics.jsonl", "alphas.jsonl")  # per-epoch logs that a resume truncates together


def environment() -> dict[str, Any]:
    """Hardware and library versions, recorded with every number (airbench's habit)."""
    import numpy

    from . import __version__

    env = {
        "bnas": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


class RunDir:
    """A run's directory on disk; every write that matters is atomic."""

    def __init__(self, path: str | Path, tensorboard: bool = True):
        self.path = Path(path)
        self.tensorboard = tensorboard  # False: never write TensorBoard events, even when installed
        self._tb: Any = None  # the SummaryWriter, opened at the first epoch record (False: unavailable)
        self._tb_purge: int | None = None  # first epoch a resumed run rewrites (older events are kept)

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False, lock: RunLock | None = None) -> RunDir:
        """A new run in `path` (`overwrite`: the files of an earlier run there go). With `lock` (not yet
        acquired), it is taken before anything is checked or removed: a live writer is refused by name."""
        p = Path(path)
        if (p / "checkpoint.pt").exists() and not overwrite and lock is None:
            raise _holds_a_run(p)
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise BnasError(
                f"cannot write to the output directory {p} ({e.strerror}); choose another out", options=("out",)
            ) from None
        if lock is not None:
            lock.acquire()
            if (p / "checkpoint.pt").exists() and not overwrite:
                lock.release()
                raise _holds_a_run(p)
        run = cls(p)
        if overwrite:
            for name in (*JSONL_FILES, "summary.json", "checkpoint.pt", "genotype.json"):
                (p / name).unlink(missing_ok=True)
            for old in (p / "genotypes").glob("epoch_*.json"):
                old.unlink()
            for name in ("tb", "report"):
                shutil.rmtree(p / name, ignore_errors=True)
        return run

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, dumps(obj, indent=1) + "\n")

    def read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            if self.path.exists() and not self.path.is_dir():
                raise BnasError(f"{self.path} is a file, not a run directory; give a bnas run's directory") from None
            raise BnasError(f"{self.path} is not a bnas run directory (no {name})") from None
        except NotADirectoryError:
            raise BnasError(f"{self.path} is a file, not a run directory; give the directory of a bnas run") from None
        except OSError as e:
            raise BnasError(f"cannot read {self.path / name} ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BnasError(f"{self.path / name} is malformed; the run cannot be resumed") from None

    def update_config(self, options: dict[str, Any]) -> None:
        """A resumed run records the options it continues with (a longer --epochs, --on-nan skip)."""
        self.write_json("config.json", {**self.read_json("config.json"), **options})

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to metrics.jsonl; epoch records also go to TensorBoard when it is installed."""
        record = {"time": round(time.time(), 3), **record}
        self.append("metrics.jsonl", record)
        if record.get("kind") == "epoch" and "epoch" in record:
            self.scalars(record, int(record["epoch"]))

    def append(self, name: str, record: dict[str, Any]) -> None:
        """One JSON line; a kill can only cut the last line, which readers skip."""
        with open(self.path / name, "a") as f:
            f.write(dumps(record) + "\n")

    def records(self, name: str) -> list[dict[str, Any]]:
        path = self.path / name
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; everything before it is intact
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def metrics(self, kind: str | None = "epoch") -> list[dict[str, Any]]:
        return [r for r in self.records("metrics.jsonl") if kind is None or r.get("kind") == kind]

    def truncate_metrics(self, after_epoch: int, steps_kept: int = 0) -> None:
        """Prepare a resume: drop records of epochs after the checkpoint (they are recomputed, not logged
        twice), remove temp files a kill left behind, and have TensorBoard purge those epochs too. A checkpoint
        taken mid-epoch (preemption) keeps the step records of the next epoch up to its step, `steps_kept`."""

        def kept(rec: dict[str, Any]) -> bool:
            epoch = rec.get("epoch", -1)
            if epoch == after_epoch + 1 and rec.get("kind") == "step":
                return rec.get("step", math.inf) <= steps_kept
            return epoch <= after_epoch

        for name in JSONL_FILES:
            path = self.path / name
            if not path.exists():
                continue
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and kept(rec):
                    keep.append(line)
            atomic_write_text(path, "".join(k + "\n" for k in keep))
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self._tb_purge = after_epoch + 1

    def scalars(self, record: dict[str, Any], step: int) -> None:
        """Numbers of a record (nested dicts flattened to a/b) as TensorBoard scalars at `step`."""
        writer = self._writer()
        if writer is None:
            return
        for tag, value in flatten_scalars(record).items():
            writer.add_scalar(tag, value, step)
        writer.flush()  # epochs are minutes apart: a watcher should see each one at once

    def _writer(self) -> Any:
        if self._tb is None:
            self._tb = (self.tensorboard and tensorboard_writer(self.path / "tb", self._tb_purge)) or False
        return self._tb or None

    def close(self) -> None:
        if self._tb:
            self._tb.close()
        self._tb = None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        state = {"format": CHECKPOINT_FORMAT, **state}
        atomic_write_bytes(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self, kind: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path, kind, config)


def _holds_a_run(p: Path) -> BnasError:
    return BnasError(
        f"{p} already holds a run: resume it with resume=True, choose another out, or pass overwrite=True",
        options=("resume", "out", "overwrite"),
    )


# ------------------------------------------------------------------------------------------------- the lock

LOCK_FILE = "run.lock"
_HELD: dict[str, RunLock] = {}  # the locks this process holds, by file: taking one again is not a conflict


class RunLocked(BnasError):
    """Another live process writes this run directory."""


def _proc_state(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process from /proc (Linux), None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _command_line() -> str:
    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    if words[0] in ("cli.py", "__main__.py", "-m"):
        words[0] = "bnas"
    text = " ".join(words)
    return text if len(text) <= 300 else text[:297] + "..."


class RunLock:
    """One writer per run directory: `run.lock`, created exclusively (O_CREAT|O_EXCL, atomic on local and
    network file systems alike), holds the writer's pid, host, command and start; a thread touches it every
    `HEARTBEAT_S` seconds, and it is removed when the run ends (at exit at the latest).

    A lock is stale, and taken over, when its process is gone: on this host, no such pid (or a zombie, or a
    later process that reuses the pid: its start time differs; or the lock was copied along with its run
    directory from elsewhere); on another host, no heartbeat for `STALE_S` seconds (the lock's modification
    time, as the shared file system reports it). Taking over renames the stale file aside and checks it is
    the one judged stale, so two processes that both find it stale never both win."""

    HEARTBEAT_S = 30.0
    STALE_S = 180.0

    def __init__(self, path: str | Path, command: str | None = None, name: str = LOCK_FILE):
        self.file = Path(path) / name
        self.command = command or _command_line()
        self.token: str | None = None  # ours while we hold it; None when not held (or held by an outer holder)
        self._beat = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading a lock
    def holder(self) -> tuple[dict | None, float] | None:
        """(the lock's content, or None while it is being written; its age in seconds), or None: no lock."""
        try:
            age = time.time() - self.file.stat().st_mtime
            text = self.file.read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError:
            return None, 0.0  # unreadable: held by an unknown process until its age says otherwise
        try:
            info = json.loads(text) if text else None
        except ValueError:
            info = None
        return (info if isinstance(info, dict) else None), age

    def alive(self, info: dict | None, age: float) -> bool:
        """Whether the process that wrote `info` (the lock `age` seconds after its last heartbeat) still runs."""
        if not info or info.get("host") != socket.gethostname():
            return age < self.STALE_S
        pid = info.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return age < self.STALE_S
        if pid == os.getpid() or info.get("dir", str(self.file.parent.resolve())) != str(self.file.parent.resolve()):
            return False  # a copy of a run directory with its lock (this process knows the locks it holds)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        state = _proc_state(pid)
        if state is None:
            return True
        return state[0] not in ("Z", "X") and (info.get("pid_start") in (None, state[1]))

    def describe(self, info: dict | None) -> str:
        if not info:
            return "another process (its lock file is being written or unreadable)"
        started = info.get("started")
        when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
        return f"process {info.get('pid')} on {info.get('host')} ({info.get('command')}){when}"

    # --- taking and giving back
    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; a live holder is refused in one sentence naming it."""
        key = str(self.file.resolve())
        if key in _HELD:  # this process already writes the run (a study worker that runs it)
            return self
        for _attempt in range(50):
            if self._create():
                _HELD[key] = self
                self._start_heartbeat()
                atexit.register(self.release)
                return self
            found = self.holder()
            if found is None:
                continue  # gone meanwhile: try again
            info, age = found
            if info is None and age < 2.0:
                time.sleep(0.05)  # created a moment ago, its content not written yet
                continue
            if self.alive(info, age):
                raise RunLocked(
                    f"{self.file.parent} is being written by {self.describe(info)}; wait for it to end or stop "
                    f"it (a killed process's lock is taken over by the next run), or choose another out",
                    options=("out",),
                )
            self._take_over(info)
        raise RunLocked(f"cannot take the lock {self.file}: other processes keep taking it; try again")

    def _create(self) -> bool:
        token = secrets.token_hex(8)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": round(time.time(), 3),
            "pid_start": (_proc_state(os.getpid()) or (None, None))[1],
            "dir": str(self.file.parent.resolve()),
            "token": token,
        }
        try:
            fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
        self.token = token
        return True

    def _take_over(self, stale: dict | None) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile (that one is put back)."""
        aside = self.file.with_name(f"{self.file.name}.{os.getpid()}.{secrets.token_hex(4)}.stale")
        try:
            os.rename(self.file, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text() or "null")
        except (OSError, ValueError):
            moved = {}
        if (moved or {}).get("token") != (stale or {}).get("token"):
            with contextlib.suppress(OSError):  # a fresh lock was moved: back where it was (unless another came)
                os.link(aside, self.file)
        aside.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._beat.clear()

        def beat() -> None:
            while not self._beat.wait(self.HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(self.file)

        self._thread = threading.Thread(target=beat, name="bnas-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lock back (removing the file if it is still ours); safe to call twice."""
        if self.token is None:
            return
        self._beat.set()
        atexit.unregister(self.release)
        _HELD.pop(str(self.file.resolve()), None)
        found = self.holder()
        if found is not None and (found[0] or {}).get("token") == self.token:
            self.file.unlink(missing_ok=True)
        self.token = None


def tensorboard_writer(logdir: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard SummaryWriter, or None when tensorboard is not installed (an optional dependency)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        return None
    return SummaryWriter(str(logdir), purge_step=purge_step)


_NOT_SCALARS = {"kind", "epoch", "time", "step"}


def flatten_scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{'loss': 1.0, 'parameter_free': {'conv': 3}} -> {'loss': 1.0, 'parameter_free/conv': 3.0}."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not prefix and key in _NOT_SCALARS:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_scalars(value, tag + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


def load_checkpoint(path: str | Path, kind: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load and validate a checkpoint: its kind, format version and (optionally) configuration."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the run has not finished an epoch yet; start it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a bnas checkpoint; start the run again") from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint {path} is a {found or 'foreign'} checkpoint, not a {kind} checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state.get('format')}, this bnas reads format {CHECKPOINT_FORMAT}"
        )
    if config is not None:
        saved = state.get("config", {})
        diff = [k for k in config if k in saved and saved[k] != config[k] and k in _STRUCTURAL]
        if diff:
            raise CheckpointError(
                f"checkpoint {path} was made with a different configuration ({', '.join(diff)} differ); "
                "resume with the run's own config.json or start a new run"
            )
    return state


# keys whose change makes a checkpoint meaningless for a configuration
_STRUCTURAL = {"space", "dataset", "init_channels", "blocks", "enhance_cells", "layers", "partial_k", "edge_norm"}
