"""Genotypes (SPEC §6): the types and their derivation (types.py), file io (io.py: JSON and DARTS' text
notation), and the bundled published genotypes (zoo.py). Import from here: `from bnas.genotype import Genotype`.
"""

from __future__ import annotations

from .io import CELL_NAMES
from .types import (
    CellGenotype,
    Genotype,
    derive,
    derive_cell,
    edge_op_scores,
    from_darts_text,
    sample_cell,
    sample_genotype,
)
from .zoo import ZOO, ZooEntry, get_genotype, list_genotypes

__all__ = [
    "CELL_NAMES",
    "ZOO",
    "CellGenotype",
    "Genotype",
    "ZooEntry",
    "derive",
    "derive_cell",
    "edge_op_scores",
    "from_darts_text",
    "get_genotype",
    "list_genotypes",
    "sample_cell",
    "sample_genotype",
]
