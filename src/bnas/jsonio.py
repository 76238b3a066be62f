"""Strict JSON for every file and --json output bnas writes: a non-finite float is written as null.

Python's json module writes NaN and Infinity by default, which JSON itself (RFC 8259) and most readers
outside Python (jq, JavaScript, many JSON-lines tools) reject; a diverged loss must not make a run's
metrics.jsonl unreadable. This module sits below every stage (it imports nothing of bnas), so the data
layer and the genotypes use it as well as the run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-Infinity) replaced by None, in nested dicts, lists and tuples;
    other numbers (numpy or 0-d tensor scalars) become floats, anything else that JSON lacks a string."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {k if isinstance(k, str | int | bool) or k is None else str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    try:
        return finite(float(obj))
    except (TypeError, ValueError, RuntimeError):
        return str(obj)


def read_file(path: str | Path, what: str, error: type[Exception]) -> Any:
    """The JSON in `path`, or `error` with one sentence naming the file as `what` ("study file", ...)."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON ({e})") from None


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of everything bnas writes (run files, genotypes, --json output): a non-finite float is
    null, never NaN or Infinity, which other JSON readers reject."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def atomic_write_bytes(path: str | Path, write, mode: int | None = None) -> None:
    """Write via a temp file in the same directory, fsync, then rename: the old file survives any failure.
    The file gets the permissions `open()` would give it (0666 less the umask), so collaborators read a run
    as they read any other file; mkstemp's fixed 0600 would hide it. `mode`: fixed permissions instead."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if mode is not None:
                os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusive temp file next to `path`, created with mode 0666 so that the kernel applies the umask
    (reading the umask itself would need os.umask(), which sets it and races with other threads)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name next to {path}")
