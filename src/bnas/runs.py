"""Run directories: resolved config, metrics as JSON lines, atomic checkpoints, resume, summary.

Layout of a run directory:
  config.json        the fully resolved configuration (enough to rerun), with versions and hardware
  metrics.jsonl      one JSON object per line ("kind": "epoch" or "step")
  checkpoint.pt      the last complete epoch, written to a temp file, fsync'ed, then renamed
  genotype.json      the current genotype (searches), genotypes/epoch_NNN.json per epoch
  summary.json       written when the run ends
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .errors import BnasError, CheckpointError

CHECKPOINT_FORMAT = 1


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


def atomic_write_bytes(path: Path, write) -> None:
    """Write via a temp file in the same directory, fsync, then rename: the old file survives any failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


class RunDir:
    """A run's directory on disk; every write that matters is atomic."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        p = Path(path)
        if (p / "checkpoint.pt").exists() and not overwrite:
            raise BnasError(
                f"{p} already holds a run: resume it with --resume {p}, choose another --out, or pass --overwrite"
            )
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise BnasError(f"cannot write to the output directory {p} ({e.strerror}); choose another --out") from None
        run = cls(p)
        if overwrite:
            for name in ("metrics.jsonl", "summary.json", "checkpoint.pt", "genotype.json"):
                (p / name).unlink(missing_ok=True)
        return run

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=1, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            raise BnasError(f"{self.path} is not a bnas run directory (no {name})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BnasError(f"{self.path / name} is malformed; the run cannot be resumed") from None

    def log(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def metrics(self, kind: str | None = "epoch") -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; everything before it is intact
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
        return out

    def truncate_metrics(self, after_epoch: int) -> None:
        """Drop records of epochs after the checkpoint so a resumed run does not log them twice."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("epoch", -1) <= after_epoch:
                keep.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in keep))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        state = {"format": CHECKPOINT_FORMAT, **state}
        atomic_write_bytes(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self, kind: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path, kind, config)


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
