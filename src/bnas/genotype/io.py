"""Genotype files: JSON read and written with errors that name the file, and DARTS' text notation
(`Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])`) parsed without evaluating it.

This module speaks the genotype's JSON form (`{"space": ..., cell name: {"edges": ..., "concat": ...}}`), not
the types: `Genotype.from_json` / `to_json` (types.py) convert, so the types can read and write files through
here.

Which space a text genotype belongs to: DARTS' notation names its cells `normal` and `reduce`, and both DARTS and
the published BNAS code write in it (BNAS: normal = the convolution cell, reduce = the enhancement cell), so such a
text must say its space (`space='bcnn'` or `space='darts'` inside it, or the `space` argument): read either way
without a word, one of the two groups of users would train the wrong network. A text that names its cells `conv`
and `enh` (as `Genotype.to_darts_text` writes BCNN genotypes) is a BCNN genotype.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ..errors import GenotypeError
from ..jsonio import dumps, read_file

# the cell names of each space, in the order of DARTS' notation (first cell, second cell)
CELL_NAMES = {"bcnn": ("conv", "enh"), "darts": ("normal", "reduce")}
_NOT_TEXT = "not a DARTS genotype expression: Genotype(normal=..., reduce=...)"


def read_json(path: str | Path) -> object:
    """A genotype file's JSON (a run's `{"genotype": ...}` record is unwrapped); errors name the file."""
    obj = read_file(path, "genotype file", GenotypeError)
    if isinstance(obj, dict) and "genotype" in obj:
        obj = obj["genotype"]
    return obj


def write_json(path: str | Path, obj: dict) -> None:
    Path(path).write_text(dumps(obj, indent=1) + "\n")


def is_text(text: str) -> bool:
    """Whether a file's text is a genotype in DARTS' notation (rather than JSON)."""
    return text.lstrip().startswith("Genotype(")


def darts_text(obj: dict) -> str:
    """The JSON form as DARTS' notation, with the cell names of its space (normal/reduce or conv/enh)."""
    a, b = CELL_NAMES[obj["space"]]

    def cell(c: dict) -> str:
        return "[" + ", ".join(f"('{op}', {src})" for op, src in c["edges"]) + "]"

    return (
        f"Genotype({a}={cell(obj[a])}, {a}_concat={list(obj[a]['concat'])}, "
        f"{b}={cell(obj[b])}, {b}_concat={list(obj[b]['concat'])})"
    )


def parse_darts_text(text: str, space: str | None = None) -> dict:
    """DARTS' notation -> the JSON form, safely (literals and `range(...)` only). The space: `space` if given,
    else a `space=` keyword in the text, else conv/enh cell names (bcnn); normal/reduce alone are ambiguous."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise GenotypeError(_NOT_TEXT) from None
    if not isinstance(tree, ast.Call):
        raise GenotypeError(_NOT_TEXT)
    fields = {kw.arg: kw.value for kw in tree.keywords}
    bcnn_names = bool({"conv", "enh"} & set(fields))
    names = CELL_NAMES["bcnn" if bcnn_names else "darts"]
    for name, node in zip((names[0], f"{names[0]}_concat", names[1], f"{names[1]}_concat"), tree.args, strict=False):
        fields[name] = node
    try:
        said = ast.literal_eval(fields["space"]) if "space" in fields else None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise GenotypeError("a genotype text's space= must be 'bcnn' or 'darts'") from None
    chosen = space or said or ("bcnn" if bcnn_names else None)
    if chosen is None:
        raise GenotypeError(
            "a genotype in DARTS' notation (normal=, reduce=) does not say its space: add space='bcnn' inside "
            "Genotype(...) for a cell of the published BNAS code (normal = convolution cell, reduce = enhancement "
            "cell) or space='darts' for a DARTS cell"
        )
    if bcnn_names and chosen != "bcnn":
        raise GenotypeError(f"a genotype text with conv=/enh= cells is a bcnn genotype, not {chosen!r}")

    def concat(node: ast.expr | None, steps: int) -> list[int]:
        if node is None:
            return list(range(2, 2 + steps))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "range":
            return list(range(*[ast.literal_eval(a) for a in node.args]))
        return list(ast.literal_eval(node))

    try:
        cells = {}
        for name in names:
            edges = [list(e) for e in ast.literal_eval(fields[name])]
            cells[name] = {"edges": edges, "concat": concat(fields.get(f"{name}_concat"), len(edges) // 2)}
    except (KeyError, ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        a, b = names
        raise GenotypeError(f"a DARTS genotype needs literal {a}=[...] and {b}=[...] lists") from None
    if chosen not in CELL_NAMES:
        return {"space": chosen}  # from_json names the known spaces
    return {"space": chosen, **dict(zip(CELL_NAMES[chosen], cells.values(), strict=True))}
