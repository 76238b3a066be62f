"""bnas: BNAS-v2 (Broad Neural Architecture Search, CLR and PC variants) in modern PyTorch.

The public names are imported on first use, so that `bnas` (the command) can set up its process before
PyTorch is loaded (see `bnas.cli.main`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import BnasError

__version__ = "0.1.0"

_LAZY = {
    "CellGenotype": ".genotype",
    "Genotype": ".genotype",
    "derive": ".genotype",
    "get_genotype": ".genotype",
    "list_genotypes": ".genotype",
    "SpaceConfig": ".space",
    "SuperNet": ".space",
    "build_network": ".space",
    "count_parameters": ".space",
}

__all__ = ["BnasError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bnas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
