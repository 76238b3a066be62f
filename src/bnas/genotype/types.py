"""Genotype types and their derivation (SPEC §6): the two cells of a found architecture, derived from the
alphas (and betas), or drawn at random as the baseline a search has to beat.

A BCNN genotype names a convolution-block cell (`conv`) and an enhancement cell (`enh`); a DARTS-space
genotype names a `normal` and a `reduce` cell. Files (JSON, DARTS' text notation) are read and written
through io.py.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GenotypeError
from ..ops import PARAMETER_FREE, PRIMITIVES
from .io import CELL_NAMES, darts_text, parse_darts_text, read_json, write_json


@dataclass(frozen=True)
class CellGenotype:
    """Two (op, input index) pairs per node; inputs 0 and 1 are the cell inputs, 2.. earlier nodes."""

    edges: tuple[tuple[str, int], ...]
    concat: tuple[int, ...] = (2, 3, 4, 5)

    def __post_init__(self) -> None:
        if not self.edges or len(self.edges) % 2:
            raise GenotypeError(f"a cell needs two edges per node, got {len(self.edges)} edges")
        for i, edge in enumerate(self.edges):
            if len(edge) != 2:
                raise GenotypeError(f"edge {i} must be [op, input], got {edge!r}")
            op, src = edge
            if op not in PRIMITIVES or op == "none":
                close = difflib.get_close_matches(str(op), PRIMITIVES[1:], n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise GenotypeError(f"unknown operation {op!r} in edge {i}{hint}; known: {', '.join(PRIMITIVES[1:])}")
            if not isinstance(src, int) or isinstance(src, bool) or not 0 <= src < 2 + i // 2:
                raise GenotypeError(f"edge {i} (node {i // 2}) reads input {src!r}, but only 0..{1 + i // 2} exist")
        for j in self.concat:
            if not isinstance(j, int) or not 2 <= j < 2 + self.steps:
                raise GenotypeError(f"concat index {j!r} is out of range 2..{1 + self.steps}")

    @property
    def steps(self) -> int:
        return len(self.edges) // 2

    def node_edges(self) -> list[tuple[int, int]]:
        """(node, source) per edge, the layout a Cell is built from."""
        return [(i // 2, src) for i, (_, src) in enumerate(self.edges)]

    def parameter_free(self) -> int:
        return sum(op in PARAMETER_FREE for op, _ in self.edges)

    def to_json(self) -> dict:
        return {"edges": [[op, src] for op, src in self.edges], "concat": list(self.concat)}

    @classmethod
    def from_json(cls, obj: object) -> CellGenotype:
        if not isinstance(obj, dict) or "edges" not in obj:
            raise GenotypeError("a cell must be an object with 'edges' (and optionally 'concat')")
        try:
            if not all(isinstance(e, list | tuple) for e in obj["edges"]):
                raise TypeError
            edges = tuple(tuple(e) for e in obj["edges"])  # a wrong length is the cell's error (names the edge)
            concat = tuple(obj.get("concat", range(2, 2 + len(edges) // 2)))
        except (TypeError, IndexError, KeyError):
            raise GenotypeError("a cell's 'edges' must be a list of [op, input] pairs") from None
        return cls(edges, concat)


@dataclass(frozen=True)
class Genotype:
    """A found architecture: one cell per cell type of its search space."""

    first: CellGenotype
    second: CellGenotype
    space: str = "bcnn"

    def __post_init__(self) -> None:
        if self.space not in CELL_NAMES:
            raise GenotypeError(f"unknown search space {self.space!r}; known: {', '.join(CELL_NAMES)}")

    @property
    def names(self) -> tuple[str, str]:
        return CELL_NAMES[self.space]

    def cell(self, name: str) -> CellGenotype:
        a, b = self.names
        if name == a:
            return self.first
        if name == b:
            return self.second
        raise KeyError(name)

    conv = property(lambda self: self.cell("conv"))
    enh = property(lambda self: self.cell("enh"))
    normal = property(lambda self: self.cell("normal"))
    reduce = property(lambda self: self.cell("reduce"))

    def parameter_free(self) -> dict[str, int]:
        return {name: self.cell(name).parameter_free() for name in self.names}

    def to_json(self) -> dict:
        a, b = self.names
        return {"space": self.space, a: self.first.to_json(), b: self.second.to_json()}

    @classmethod
    def from_json(cls, obj: object) -> Genotype:
        if not isinstance(obj, dict):
            raise GenotypeError("a genotype must be a JSON object")
        space = obj.get("space", "bcnn" if "conv" in obj else "darts")
        if space not in CELL_NAMES:
            raise GenotypeError(f"unknown search space {space!r}; known: {', '.join(CELL_NAMES)}")
        a, b = CELL_NAMES[space]
        missing = [n for n in (a, b) if n not in obj]
        if missing:
            raise GenotypeError(f"a {space} genotype needs the cells {a!r} and {b!r}; missing {missing}")
        return cls(CellGenotype.from_json(obj[a]), CellGenotype.from_json(obj[b]), space)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """A genotype JSON file; every error names the file."""
        obj = read_json(path)
        try:
            return cls.from_json(obj)
        except GenotypeError as e:
            raise GenotypeError(f"genotype file {path}: {e}") from None

    def describe(self) -> str:
        """The cells as readable text, one node per line."""
        lines = []
        for name in self.names:
            cell = self.cell(name)
            title = {"conv": "convolution-block cell", "enh": "enhancement cell"}.get(name, f"{name} cell")
            lines.append(f"{title} (parameter-free ops: {cell.parameter_free()}/{len(cell.edges)}):")
            for node in range(cell.steps):
                ins = [cell.edges[2 * node + k] for k in range(2)]
                terms = " + ".join(f"{op}({_input_name(src)})" for op, src in ins)
                lines.append(f"  node {node + 2} = {terms}")
            lines.append(f"  output = concat({', '.join(_input_name(j) for j in cell.concat)})")
        return "\n".join(lines)

    def to_darts_text(self) -> str:
        """DARTS' text notation with this space's cell names (conv=/enh= for a BCNN genotype, so that
        `from_darts_text` reads it back as one)."""
        return darts_text(self.to_json())


def _input_name(src: int) -> str:
    return ("c_{k-2}", "c_{k-1}")[src] if src < 2 else f"node {src}"


def from_darts_text(text: str, space: str | None = None) -> Genotype:
    """Parse DARTS' `Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`, safely. The
    space: `space` if given, else the text's `space=` keyword, else its cell names (normal/reduce: darts;
    conv/enh: bcnn). The published BNAS code's BCNN texts use normal/reduce: pass space="bcnn" for them."""
    return Genotype.from_json(parse_darts_text(text, space))


def edge_op_scores(alphas: torch.Tensor, betas: torch.Tensor | None = None, steps: int = 4) -> torch.Tensor:
    """What derivation scores each (edge, op) by: softmax(alphas) per row, times (PC) the softmax of the betas over
    the node's incoming edges. Rows are the alphas'; the `none` column is left as is (derivation skips it)."""
    weights = torch.softmax(alphas.detach().float(), dim=-1)
    if betas is None:
        return weights
    b = betas.detach().float()
    starts = [node * (node + 3) // 2 for node in range(steps)]
    edge = torch.cat([torch.softmax(b[s : s + node + 2], dim=-1) for node, s in enumerate(starts)])
    return weights * edge[:, None]


def derive_cell(alphas: torch.Tensor, betas: torch.Tensor | None = None, steps: int = 4) -> CellGenotype:
    """Per node keep the 2 incoming edges with the largest non-`none` weight, each with its best op.

    `alphas` are raw (rows are softmaxed here); with `betas` (PC edge normalisation) each edge's op
    weights are scaled by the softmax of the betas over the node's incoming edges (SPEC §6).
    """
    weights = edge_op_scores(alphas, betas, steps)
    none = PRIMITIVES.index("none")
    edges: list[tuple[str, int]] = []
    start = 0
    for node in range(steps):
        n = node + 2
        w = weights[start : start + n].clone()
        w[:, none] = -1.0
        best_op_w, best_op = w.max(dim=1)
        # stable order: ties keep the lower input index, as Python's sorted does in DARTS
        for j in sorted(range(n), key=lambda j: -best_op_w[j].item())[:2]:
            edges.append((PRIMITIVES[int(best_op[j])], j))
        start += n
    return CellGenotype(tuple(edges), tuple(range(2, 2 + steps)))


def derive(
    alphas: Sequence[torch.Tensor], betas: Sequence[torch.Tensor] | None = None, space: str = "bcnn"
) -> Genotype:
    """A Genotype from the two cell types' alphas (and betas)."""
    b = betas if betas is not None else (None, None)
    return Genotype(derive_cell(alphas[0], b[0]), derive_cell(alphas[1], b[1]), space)


def sample_cell(rng: random.Random, steps: int = 4) -> CellGenotype:
    """A cell drawn uniformly from what derivation can produce: per node two distinct inputs (in either order,
    as derivation orders them by weight), each with one of the operations other than `none`."""
    ops = [op for op in PRIMITIVES if op != "none"]
    edges: list[tuple[str, int]] = []
    for node in range(steps):
        for src in rng.sample(range(node + 2), 2):
            edges.append((rng.choice(ops), src))
    return CellGenotype(tuple(edges), tuple(range(2, 2 + steps)))


def sample_genotype(space: str = "bcnn", seed: int = 0) -> Genotype:
    """A random baseline of the search space (both cells), reproducible by seed and independent of torch's
    random state: the cells a search has to beat (Li & Talwalkar 2019; Yang et al. 2020)."""
    if space not in CELL_NAMES:
        raise GenotypeError(f"unknown search space {space!r}; known: {', '.join(CELL_NAMES)}")
    rng = random.Random(f"bnas-genotype-{space}-{seed}")
    return Genotype(sample_cell(rng), sample_cell(rng), space)
