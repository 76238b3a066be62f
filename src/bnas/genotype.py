"""Genotypes: the two cells of a found architecture, their derivation, JSON io and the published ones.

A BCNN genotype names a convolution-block cell (`conv`) and an enhancement cell (`enh`); a DARTS-space
genotype names a `normal` and a `reduce` cell. The published BNAS code stores BCNN genotypes in DARTS'
4-field notation with normal = conv and reduce = enh (SPEC §6); `from_darts_text` reads that notation
without evaluating it.
"""

from __future__ import annotations

import ast
import difflib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import GenotypeError
from .jsonio import dumps
from .ops import PARAMETER_FREE, PRIMITIVES

CELL_NAMES = {"bcnn": ("conv", "enh"), "darts": ("normal", "reduce")}


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
            edges = tuple((e[0], e[1]) for e in obj["edges"])
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
        Path(path).write_text(dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        try:
            obj = json.loads(Path(path).read_text())
        except OSError as e:
            raise GenotypeError(f"cannot read genotype file {path}: {e.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GenotypeError(f"genotype file {path} is not valid JSON ({e})") from None
        if isinstance(obj, dict) and "genotype" in obj:
            obj = obj["genotype"]
        return cls.from_json(obj)

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
        def cell(c: CellGenotype) -> str:
            return "[" + ", ".join(f"('{op}', {src})" for op, src in c.edges) + "]"

        return (
            f"Genotype(normal={cell(self.first)}, normal_concat={list(self.first.concat)}, "
            f"reduce={cell(self.second)}, reduce_concat={list(self.second.concat)})"
        )


def _input_name(src: int) -> str:
    return ("c_{k-2}", "c_{k-1}")[src] if src < 2 else f"node {src}"


def from_darts_text(text: str, space: str = "bcnn") -> Genotype:
    """Parse DARTS' `Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`, safely."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise GenotypeError("not a DARTS genotype expression: Genotype(normal=..., reduce=...)") from None
    if not isinstance(tree, ast.Call):
        raise GenotypeError("not a DARTS genotype expression: Genotype(normal=..., reduce=...)")
    fields = {kw.arg: kw.value for kw in tree.keywords}
    for name, node in zip(("normal", "normal_concat", "reduce", "reduce_concat"), tree.args, strict=False):
        fields[name] = node

    def concat(node: ast.expr | None, steps: int) -> tuple[int, ...]:
        if node is None:
            return tuple(range(2, 2 + steps))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "range":
            return tuple(range(*[ast.literal_eval(a) for a in node.args]))
        return tuple(ast.literal_eval(node))

    try:
        normal = tuple(tuple(e) for e in ast.literal_eval(fields["normal"]))
        reduce = tuple(tuple(e) for e in ast.literal_eval(fields["reduce"]))
        cells = [
            CellGenotype(normal, concat(fields.get("normal_concat"), len(normal) // 2)),
            CellGenotype(reduce, concat(fields.get("reduce_concat"), len(reduce) // 2)),
        ]
    except (KeyError, ValueError, TypeError):
        raise GenotypeError("a DARTS genotype needs literal normal=[...] and reduce=[...] lists") from None
    return Genotype(cells[0], cells[1], space)


def derive_cell(alphas: torch.Tensor, betas: torch.Tensor | None = None, steps: int = 4) -> CellGenotype:
    """Per node keep the 2 incoming edges with the largest non-`none` weight, each with its best op.

    `alphas` are raw (rows are softmaxed here); with `betas` (PC edge normalisation) each edge's op
    weights are scaled by the softmax of the betas over the node's incoming edges (SPEC §6).
    """
    weights = torch.softmax(alphas.detach().float(), dim=-1)
    none = PRIMITIVES.index("none")
    edges: list[tuple[str, int]] = []
    start = 0
    for node in range(steps):
        n = node + 2
        w = weights[start : start + n].clone()
        if betas is not None:
            w = w * torch.softmax(betas.detach().float()[start : start + n], dim=-1)[:, None]
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
    """A bundled genotype by name, or one read from a JSON (or DARTS-notation) file."""
    key = str(name_or_path)
    if key in ZOO:
        return ZOO[key].genotype
    path = Path(key)
    if path.is_dir() and (path / "genotype.json").exists():
        path = path / "genotype.json"
    if path.is_file():
        if path.suffix != ".json" and path.read_text(errors="replace").lstrip().startswith("Genotype("):
            return from_darts_text(path.read_text())
        return Genotype.load(path)
    close = difflib.get_close_matches(key, list(ZOO), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise GenotypeError(
        f"unknown genotype {key!r}: {hint}give a bundled name ({', '.join(ZOO)}) or a genotype.json file"
    )
