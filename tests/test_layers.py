"""Imports flow one way (DESIGN: config -> data -> space -> strategy -> run -> artefacts): no cycles, and the
plain modules that are the SPEC in code import nothing from the fast backend or from anything above them.
Imports inside functions count too: a lazy import hides a cycle, it does not remove it. Only imports under
`if TYPE_CHECKING:` are left out (annotations: never executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import bnas

SRC = Path(bnas.__file__).parent

# the plain network math: may import only each other (downwards) and the leaf helpers
PLAIN = {"bnas.ops", "bnas.cells", "bnas.topology", "bnas.space", "bnas.genotype"}
LEAVES = {"bnas.errors", "bnas.jsonio"}
# what each plain module may import (besides torch and the standard library)
ALLOWED = {
    "bnas.ops": set(),
    "bnas.genotype": {"bnas.ops"},
    "bnas.cells": {"bnas.ops"},
    "bnas.topology": {"bnas.cells", "bnas.ops"},
    "bnas.space": {"bnas.cells", "bnas.ops", "bnas.topology", "bnas.genotype"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """bnas module -> the bnas modules it imports anywhere in its body (relative imports resolved)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = {  # `if TYPE_CHECKING:` imports are annotations, never run
            id(n) for t in ast.walk(tree) if isinstance(t, ast.If) and ast.unparse(t.test) == "TYPE_CHECKING"
            for b in t.body for n in ast.walk(b)
        }  # fmt: skip
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                # `from . import x` imports the submodule x; `from .m import f` imports m
                deps.update(subs if subs else [target] if target in mods else [])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
        if "iter_modules" in path.read_text():  # cli imports every command module by name (importlib)
            for pkg in [d for d in deps if mods.get(d, Path()).name == "__init__.py"]:
                deps.update(m for m in mods if m.startswith(pkg + "."))
        deps.discard(name)
        deps.discard("bnas")  # the package's own __init__ only re-exports lazily
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == "open":
                found.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_the_graph_sees_imports():
    g = import_graph()
    assert {"bnas.ops", "bnas.cells"} <= g["bnas.topology"]  # the parser resolves relative imports
    assert "bnas.space" in g["bnas.search"]


def test_no_import_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the finder finds one
    assert _cycles(import_graph()) == []


def test_the_cli_counts_its_command_modules():
    assert {"bnas.commands.search", "bnas.commands.train"} <= import_graph()["bnas.cli"]


def test_the_runtime_knows_no_network_and_no_method():
    g = import_graph()
    assert g["bnas.runtime"] <= LEAVES | {"bnas.dist", "bnas.optim"}, g["bnas.runtime"]


def test_plain_modules_import_only_downwards():
    g = import_graph()
    for name, allowed in ALLOWED.items():
        extra = g[name] - allowed - LEAVES
        assert not extra, f"{name} imports {sorted(extra)}"
    assert set(ALLOWED) == PLAIN


def test_nothing_below_the_fast_backend_imports_it():
    g = import_graph()
    fast = {n for n in g if n == "bnas.fast" or n.startswith("bnas.fast.")}
    for name in PLAIN | LEAVES | {n for n in g if n.startswith("bnas.data")}:
        assert not g[name] & fast, f"{name} imports the fast backend"
    for name in fast:  # the backend builds on the plain modules, never on what runs it
        assert not g[name] & {"bnas.search", "bnas.train", "bnas.bench", "bnas.cli"}, name


def test_no_module_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > 600} == {}


def _names_dataset(node: ast.AST) -> bool:
    """`dataset`, `cfg.dataset`, `self.dataset`, `x["dataset"]` ..."""
    if isinstance(node, ast.Name):
        return node.id == "dataset"
    if isinstance(node, ast.Attribute):
        return node.attr == "dataset"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "dataset"
    if isinstance(node, ast.Call) and node.args:  # cfg.get("dataset")
        return isinstance(node.args[0], ast.Constant) and node.args[0].value == "dataset"
    return False


def _is_names(node: ast.AST) -> bool:
    """A string constant, or a tuple, list or set of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return False


def dataset_branches(source: str) -> list[str]:
    """The comparisons of a data set against a name in `source`: what asks a name instead of its registry entry."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if any(_names_dataset(s) for s in sides) and any(_is_names(s) for s in sides):
            found.append(ast.unparse(node))
    return found


def test_no_data_set_name_branches_outside_data():
    """Nothing outside data/ asks a data set's name (`cfg.dataset == "folder"`): it asks the registry entry or the
    opened source (data/registry.py), so a new data set is one entry. Choices lists and docstrings are fine."""
    assert dataset_branches('if cfg.dataset == "folder" or dataset in ("imagenet", "x"): pass') == [
        "cfg.dataset == 'folder'",
        "dataset in ('imagenet', 'x')",
    ]  # the finder finds them
    assert dataset_branches('if cfg.get("dataset") != "synthetic" and x["dataset"] == "svhn": pass') != []
    assert dataset_branches('choices = ["folder", "imagenet"]\nif cfg.dataset == other: pass') == []
    found = {
        name: hits
        for name, path in _modules().items()
        if not name.startswith("bnas.data.") and (hits := dataset_branches(path.read_text()))
    }
    assert found == {}
