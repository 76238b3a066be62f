"""Strict JSON for every file and --json output bnas writes: a non-finite float is written as null.

Python's json module writes NaN and Infinity by default, which JSON itself (RFC 8259) and most readers
outside Python (jq, JavaScript, many JSON-lines tools) reject; a diverged loss must not make a run's
metrics.jsonl unreadable. This module sits below every stage (it imports nothing of bnas), so the data
layer and the genotypes use it as well as the run directory.
"""

from __future__ import annotations

import json
import math
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


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of everything bnas writes (run files, genotypes, --json output): a non-finite float is
    null, never NaN or Infinity, which other JSON readers reject."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)
