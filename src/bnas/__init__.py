"""bnas: BNAS-v2 (Broad Neural Architecture Search, CLR and PC variants) in modern PyTorch."""

from .errors import BnasError
from .genotype import CellGenotype, Genotype, derive, get_genotype, list_genotypes
from .space import SpaceConfig, SuperNet, build_network, count_parameters

__version__ = "0.1.0"

__all__ = [
    "BnasError",
    "CellGenotype",
    "Genotype",
    "SpaceConfig",
    "SuperNet",
    "build_network",
    "count_parameters",
    "derive",
    "get_genotype",
    "list_genotypes",
]
