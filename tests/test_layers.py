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
GENOTYPE = {"bnas.genotype", "bnas.genotype.types", "bnas.genotype.io", "bnas.genotype.zoo"}
PLAIN = {"bnas.ops", "bnas.cells", "bnas.topology", "bnas.space"} | GENOTYPE
LEAVES = {"bnas.errors", "bnas.jsonio"}
# what each plain module may import (besides torch and the standard library)
ALLOWED = {
    "bnas.ops": set(),
    "bnas.genotype.io": set(),
    "bnas.genotype.types": {"bnas.ops", "bnas.genotype.io"},
    "bnas.genotype.zoo": {"bnas.genotype.types", "bnas.genotype.io"},
    "bnas.genotype": {"bnas.genotype.types", "bnas.genotype.io", "bnas.genotype.zoo"},
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


# The fast backend reads the plain modules by name (`edge.op("sep_conv_3x3").first.dw`, `module.conv`), never
# by position (`o[1][1]`, `ops[0][i][0][1]`, `_, dw, pw, bn = op`): a reordered Sequential or a new candidate
# operation must fail loudly, not compute something else. The static rule, pragmatic: in bnas/fast an integer
# subscript or a tuple unpacking may read a tensor's or layer's geometry (`.shape`, `.padding`, ...), `ctx.*`
# (what an autograd function saved), a call's result, or a list or tuple the backend built itself (a bare local
# name: `bns[0]`, `dws[0]`), and a cell's `edges`/`out_edges` (an edge's index is its identity: its alpha row). It may
# not index `self` (a module subclass), an attribute holding submodules (`x.ops[3]`), the result of another
# index (`o[1][1]`), or a name the backend uses for one plain module (`op`, `o`, `module`, ...).
# `test_the_fast_backend_touches_no_plain_module_by_position` checks the same at run time.
_GEOMETRY = {"shape", "padding", "stride", "kernel_size", "dilation", "needs_input_grad", "edges", "out_edges"}
_GEOMETRY |= {"outer", "saved_tensors"}
_ONE_MODULE = {"op", "o", "module", "m", "edge", "e", "first", "second", "mixed", "self", "cell"}


def _positional_reads(tree: ast.AST) -> list[str]:
    def bad_value(v: ast.expr) -> bool:
        if isinstance(v, ast.Subscript):  # x[i][j]: an index into what an index returned
            return _int_index(v.slice)
        if isinstance(v, ast.Attribute):  # ctx.*: what an autograd function saved for itself
            return v.attr not in _GEOMETRY and not (isinstance(v.value, ast.Name) and v.value.id == "ctx")
        return isinstance(v, ast.Name) and v.id in _ONE_MODULE

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _int_index(node.slice) and bad_value(node.value):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.For) else []
        value = node.value if isinstance(node, ast.Assign) else node.iter if isinstance(node, ast.For) else None
        if any(isinstance(t, ast.Tuple) for t in targets) and value is not None and bad_value(value):
            found.append(f"line {node.lineno}: {ast.unparse(node).splitlines()[0]}")
    return found


def _int_index(s: ast.expr) -> bool:
    if isinstance(s, ast.UnaryOp) and isinstance(s.op, ast.USub):
        s = s.operand
    return isinstance(s, ast.Constant) and isinstance(s.value, int) and not isinstance(s.value, bool)


def test_the_rule_finds_positional_reads():
    old = "def f(ops, op, o):\n    a = ops[0][3][0][1]\n    _, dw, pw, bn = op\n    b = o[2].bn\n    c = self[1]\n"
    assert {f.split(":")[0] for f in _positional_reads(ast.parse(old))} == {f"line {i}" for i in (2, 3, 4, 5)}
    new = "def f(edges, x, bns):\n    a = edges[0].op('sep_conv_3x3').first.dw\n    n, c, h, w = x.shape\n"
    new += "    b = bns[0]\n"
    assert _positional_reads(ast.parse(new)) == []


def test_the_fast_backend_reads_plain_modules_by_name():
    fast = {n: p for n, p in _modules().items() if n == "bnas.fast" or n.startswith("bnas.fast.")}
    found = {n: _positional_reads(ast.parse(p.read_text())) for n, p in fast.items()}
    assert {n: f for n, f in found.items() if f} == {}


def test_the_fast_backend_touches_no_plain_module_by_position(monkeypatch):
    """At run time: a fast supernet's training forward and backward (full and partial-channel edges) and a fast
    trained network's never index or iterate a Sequential of the plain modules, nor a mixed edge's `ops`, from
    inside bnas/fast (the plain modules' own named properties do, in ops.py)."""
    import sys

    import torch
    from torch import nn

    from bnas import SpaceConfig, SuperNet, build_network, fast, get_genotype
    from bnas.cells import MixedEdge

    fast_dir = str(SRC / "fast")
    caught: list[str] = []
    mixed_ops: set[int] = set()

    def spy(cls, name: str, only=None):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(fast_dir) and (only is None or id(self) in only):
                caught.append(f"{type(self).__name__}.{name} from {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    for name in ("__getitem__", "__iter__"):
        spy(nn.Sequential, name)
        spy(nn.ModuleList, name, only=mixed_ops)
    alive = []  # the networks stay alive: a freed edge list's id() could be reused by another list
    # every way through the fast cells: edges batched, one by one, and under autocast (the unfused edges)
    for k, backend, bf16 in ((1, fast.BACKEND, False), (4, fast.BACKEND, False), (1, fast.FastBackend(False), False),
                             (4, fast.FastBackend(False), False), (1, fast.BACKEND, True)):  # fmt: skip
        net = SuperNet(SpaceConfig(channels=8, partial_k=k, edge_norm=k > 1), backend)
        alive.append(net)
        mixed_ops |= {id(m.ops) for m in net.modules() if isinstance(m, MixedEdge)}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), fast.backward_once():
            out = net(torch.randn(2, 3, 16, 16))
        out.float().sum().backward()
    trained = build_network(get_genotype("BNASv2_CLR_v1"), channels=8, layers=4, enhance=1, blocks=2,
                            backend=fast.TRAINED)  # fmt: skip
    trained(torch.randn(2, 3, 16, 16)).sum().backward()
    assert mixed_ops and caught == []


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
