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

An epoch's records are written before its checkpoint; a resumed run drops the records of epochs after
its checkpoint (`truncate_metrics`) and recomputes them, so a kill at any moment loses no complete epoch
and never leaves a record twice.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
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
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        p = Path(path)
        if (p / "checkpoint.pt").exists() and not overwrite:
            raise BnasError(
                f"{p} already holds a run: resume it with resume=True, choose another out, or pass overwrite=True",
                options=("resume", "out", "overwrite"),
            )
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise BnasError(
                f"cannot write to the output directory {p} ({e.strerror}); choose another out", options=("out",)
            ) from None
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

    def truncate_metrics(self, after_epoch: int) -> None:
        """Prepare a resume: drop records of epochs after the checkpoint (they are recomputed, not logged
        twice), remove temp files a kill left behind, and have TensorBoard purge those epochs too."""
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
                if isinstance(rec, dict) and rec.get("epoch", -1) <= after_epoch:
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
