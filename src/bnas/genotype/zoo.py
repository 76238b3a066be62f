"""The bundled genotypes (SPEC §6): the published BNAS-v2 cells and the DARTS-space cells of DARTS and
PC-DARTS, by name; `get_genotype` also reads a genotype file."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ..errors import GenotypeError
from .io import is_text
from .types import CellGenotype, Genotype, from_darts_text


def _g(spec: str) -> tuple[tuple[str, int], ...]:
    short = {
        "sep3": "sep_conv_3x3",
        "sep5": "sep_conv_5x5",
        "dil3": "dil_conv_3x3",
        "dil5": "dil_conv_5x5",
        "avg": "avg_pool_3x3",
        "max": "max_pool_3x3",
        "skip": "skip_connect",
    }
    return tuple((short[op], int(src)) for op, src in (t.split("/") for t in spec.split()))


@dataclass(frozen=True)
class ZooEntry:
    genotype: Genotype
    source: str
    reported: str = ""


# Published genotypes (SPEC §6). Reported figures are those of the papers where they state them.
ZOO: dict[str, ZooEntry] = {
    "BNASv2_CLR_v1": ZooEntry(
        Genotype(
            CellGenotype(_g("sep3/1 sep3/0 sep3/1 avg/2 sep5/1 sep3/3 sep3/1 dil3/2")),
            CellGenotype(_g("avg/0 dil3/1 avg/0 avg/2 avg/2 avg/3 avg/2 max/1")),
        ),
        "BNAS-v2 (Ding et al. 2022), CLR search on CIFAR-10",
    ),
    "BNASv2_CLR_v2": ZooEntry(
        Genotype(
            CellGenotype(_g("sep3/1 max/0 max/1 sep3/0 sep3/0 sep3/1 sep3/1 dil3/4")),
            CellGenotype(_g("avg/0 dil5/1 avg/2 avg/0 avg/2 avg/3 max/1 avg/3")),
        ),
        "BNAS-v2 (Ding et al. 2022), CLR search on CIFAR-10",
    ),
    "BNASv2_PC_cifar_v1": ZooEntry(
        Genotype(
            CellGenotype(_g("sep3/1 sep3/0 dil5/2 sep3/1 sep3/1 sep3/2 sep5/1 sep5/2")),
            CellGenotype(_g("dil3/0 skip/1 dil3/1 skip/2 max/1 dil5/0 skip/1 max/0")),
        ),
        "BNAS-v2 (Ding et al. 2022), PC search on CIFAR-10",
    ),
    "BNASv2_PC_cifar_v2": ZooEntry(
        Genotype(
            CellGenotype(_g("sep3/1 sep3/0 sep5/1 sep5/2 sep3/1 sep3/2 sep5/1 dil3/4")),
            CellGenotype(_g("skip/0 skip/1 dil3/1 skip/0 max/0 skip/1 max/0 max/1")),
        ),
        "BNAS-v2 (Ding et al. 2022), PC search on CIFAR-10",
    ),
    "BNASv2_PC_image": ZooEntry(
        Genotype(
            CellGenotype(_g("sep5/1 sep3/0 skip/2 sep3/1 sep5/1 sep3/3 sep3/4 sep3/3")),
            CellGenotype(_g("skip/1 dil5/0 max/1 skip/2 skip/1 max/2 sep3/1 dil3/3")),
        ),
        "BNAS-v2 (Ding et al. 2022), PC search on ImageNet",
    ),
    "DARTS_V1": ZooEntry(
        Genotype(
            CellGenotype(_g("sep3/1 sep3/0 skip/0 sep3/1 skip/0 sep3/1 sep3/0 skip/2")),
            CellGenotype(_g("max/0 max/1 skip/2 max/0 max/0 skip/2 skip/2 avg/0")),
            "darts",
        ),
        "DARTS (Liu et al. 2019), first order, CIFAR-10",
        "CIFAR-10 test error 3.00% +- 0.14, 3.3M params (paper)",
    ),
    "DARTS_V2": ZooEntry(
        Genotype(
            CellGenotype(_g("sep3/0 sep3/1 sep3/0 sep3/1 sep3/1 skip/0 skip/0 dil3/2")),
            CellGenotype(_g("max/0 max/1 skip/2 max/1 max/0 skip/2 skip/2 max/1")),
            "darts",
        ),
        "DARTS (Liu et al. 2019), second order, CIFAR-10",
        "CIFAR-10 test error 2.76% +- 0.09, 3.3M params (paper)",
    ),
    "PC_DARTS": ZooEntry(
        Genotype(
            CellGenotype(_g("sep3/1 skip/0 sep3/0 dil3/1 sep5/0 sep3/1 avg/0 dil3/1")),
            CellGenotype(_g("sep5/1 max/0 sep5/1 sep5/2 sep3/0 sep3/3 sep3/1 sep3/2")),
            "darts",
        ),
        "PC-DARTS (Xu et al. 2020), CIFAR-10",
        "CIFAR-10 test error 2.57% +- 0.07, 3.6M params (paper)",
    ),
}


def list_genotypes() -> list[str]:
    return list(ZOO)


def get_genotype(name_or_path: str | Path) -> Genotype:
    """A bundled genotype by name, or one read from a JSON file (a run directory's genotype.json) or a text file
    in DARTS' notation (conv/enh cells or space='bcnn': a bcnn genotype; normal/reduce cells say space='darts'
    or space='bcnn')."""
    key = str(name_or_path)
    if key in ZOO:
        return ZOO[key].genotype
    path = Path(key)
    if path.is_dir() and (path / "genotype.json").exists():
        path = path / "genotype.json"
    if path.is_file():
        if path.suffix != ".json" and is_text(path.read_text(errors="replace")):
            try:
                return from_darts_text(path.read_text())
            except GenotypeError as e:
                raise GenotypeError(f"genotype file {path}: {e}") from None
        return Genotype.load(path)
    close = difflib.get_close_matches(key, list(ZOO), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise GenotypeError(
        f"unknown genotype {key!r}: {hint}give a bundled name ({', '.join(ZOO)}) or a genotype.json file"
    )
