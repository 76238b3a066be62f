"""Plots of a run: cells as graphs, curves, alpha evolution per edge, collapse diagnostics.

Everything here reads a run directory (runs.py) and never touches a model: plots can be made while the
run is going, on another machine, or long after. Plots use matplotlib's object API (no pyplot, no global
backend switch, so importing this module in a notebook changes nothing); cells are drawn by graphviz's
`dot` when it is installed and by matplotlib otherwise. matplotlib is an optional dependency
(`pip install 'bnas[report]'`). report.py puts these plots on an HTML page.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BnasError
from .genotype import CellGenotype, Genotype
from .ops import PARAMETER_FREE, PRIMITIVES
from .runs import RunDir

CELL_TITLES = {"conv": "convolution-block cell", "enh": "enhancement cell", "normal": "normal cell"}
CELL_TITLES["reduce"] = "reduction cell"
SHORT = {
    "none": "none",
    "max_pool_3x3": "max pool",
    "avg_pool_3x3": "avg pool",
    "skip_connect": "skip",
    "sep_conv_3x3": "sep 3x3",
    "sep_conv_5x5": "sep 5x5",
    "dil_conv_3x3": "dil 3x3",
    "dil_conv_5x5": "dil 5x5",
}
# parameter-free ops in warm colours and dashed, parametric ones in cool colours and solid
OP_STYLE = {
    "none": ("#9e9e9e", ":"),
    "max_pool_3x3": ("#d62728", "--"),
    "avg_pool_3x3": ("#ff7f0e", "--"),
    "skip_connect": ("#8c564b", "--"),
    "sep_conv_3x3": ("#1f77b4", "-"),
    "sep_conv_5x5": ("#17becf", "-"),
    "dil_conv_3x3": ("#2ca02c", "-"),
    "dil_conv_5x5": ("#9467bd", "-"),
}
COLLAPSE_OPS = PARAMETER_FREE - {"none"}  # derivation never keeps `none`: collapse means skip and pools


def _figure(w: float, h: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise BnasError("plots need matplotlib: pip install 'bnas[report]' (or pip install matplotlib)") from None
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _integer_epochs(fig) -> None:
    """Whole epochs on every x axis, even for a run of one or two epochs (MaxNLocator's integer=True alone falls
    back to fractions when fewer than two integers are in view)."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _input_label(src: int) -> str:
    return ("c_{k-2}", "c_{k-1}")[src] if src < 2 else f"node {src}"


# --- cells as graphs ---------------------------------------------------------------------------------------


def genotype_dot(genotype: Genotype, title: str | None = None) -> str:
    """The two cells as one graphviz digraph (a cluster per cell); parameter-free ops in red."""
    lines = ["digraph genotype {", '  rankdir=LR; fontname="Helvetica"; node [fontname="Helvetica"];']
    lines.append('  edge [fontname="Helvetica", fontsize=11];')
    if title:
        lines.append(f'  label="{title}"; labelloc=t; fontsize=18;')
    for name in reversed(genotype.names):  # with rankdir=LR dot stacks the clusters bottom-up
        cell = genotype.cell(name)
        p = f"{name}_"
        lines.append(f"  subgraph cluster_{name} {{")
        lines.append(
            f'    label="{CELL_TITLES.get(name, name)} ({cell.parameter_free()}/{len(cell.edges)} param-free)";'
        )
        lines.append('    style=rounded; color="#888888"; fontsize=14;')
        for src in (0, 1):
            lines.append(f'    {p}{src} [label="{_input_label(src)}", shape=box, style=filled, fillcolor="#cfe2f3"];')
        for node in range(cell.steps):
            lines.append(f'    {p}{node + 2} [label="{node + 2}", shape=circle, style=filled, fillcolor="#fff2cc"];')
        lines.append(f'    {p}out [label="concat", shape=box, style=filled, fillcolor="#d9ead3"];')
        for i, (op, src) in enumerate(cell.edges):
            color = "#c0392b" if op in PARAMETER_FREE else "#222222"
            lines.append(
                f'    {p}{src} -> {p}{i // 2 + 2} [label="{SHORT[op]}", color="{color}", fontcolor="{color}"];'
            )
        for j in cell.concat:
            lines.append(f'    {p}{j} -> {p}out [style=dashed, color="#999999"];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_genotype(genotype: Genotype, path: str | Path, engine: str = "auto", title: str | None = None) -> Path:
    """Draw both cells into `path` (.svg, .png or .pdf) with graphviz's dot if present, else matplotlib."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png", "pdf"):
        raise BnasError(f"cannot draw into {path.name}: give an output file ending in .svg, .png or .pdf")
    if engine not in ("auto", "dot", "matplotlib"):
        raise BnasError(f"unknown drawing engine {engine!r}; choose auto, dot or matplotlib")
    dot = shutil.which("dot") if engine in ("auto", "dot") else None
    if engine == "dot" and dot is None:
        raise BnasError("graphviz's dot program was not found; install graphviz or use --engine matplotlib")
    path.parent.mkdir(parents=True, exist_ok=True)
    if dot is not None:
        proc = subprocess.run(
            [dot, f"-T{fmt}", "-Gdpi=110", "-o", str(path)], input=genotype_dot(genotype, title), text=True,
            capture_output=True, timeout=60,
        )  # fmt: skip
        if proc.returncode == 0:
            return path
        if engine == "dot":
            raise BnasError(f"dot failed to draw the genotype: {proc.stderr.strip().splitlines()[-1:]}")
    fig = genotype_figure(genotype, title)
    fig.savefig(path, format=fmt)
    return path


def genotype_figure(genotype: Genotype, title: str | None = None):
    """Both cells drawn with matplotlib as arc diagrams: the states on a line in order (inputs, nodes), each
    kept op an arc from its input to its node, labelled at its apex; one panel per cell."""
    fig = _figure(12, 8)
    axes = fig.subplots(2, 1)
    for ax, name in zip(axes, genotype.names, strict=True):
        _draw_cell(ax, genotype.cell(name), CELL_TITLES.get(name, name))
    if title:
        fig.suptitle(title, fontsize=15)
    return fig


def _draw_cell(ax, cell: CellGenotype, title: str) -> None:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    states = 2 + cell.steps
    half = 0.34  # half the width of a node's box (the inputs' boxes are 1.3 x wider)
    box_h = 0.2  # half the height of a box
    ports = _edge_ports(cell, half)
    for i, (op, src) in enumerate(cell.edges):
        dst = i // 2 + 2
        above = i % 2 == 0  # a node's first edge above the line, its second below: labels never collide
        lift = 0.3 * (dst - src) + 0.15  # apex height: labels of nested arcs stay apart, short arcs clear the boxes
        side = 1 if above else -1
        start, end = (ports[(i, "out")], side * box_h), (ports[(i, "in")], side * box_h)
        # arc3 puts the apex at rad/2 x the chord off the chord: the apex at `lift`, whatever the ports
        rad = -side * 2 * (lift - box_h) / (end[0] - start[0])
        free = op in PARAMETER_FREE
        color = "#c0392b" if free else "#1f3b73"
        ax.add_patch(
            FancyArrowPatch(
                start, end, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=15,
                color=color, lw=1.7, ls="--" if free else "-", shrinkA=1, shrinkB=1, zorder=2,
            )
        )  # fmt: skip
        ax.text(
            (start[0] + end[0]) / 2, side * lift, SHORT[op], ha="center", va="center", fontsize=11, color=color,
            zorder=5,
            bbox=dict(boxstyle="round,pad=0.18", fc="white", ec=color, lw=0.8),
        )  # fmt: skip
    for j in range(states):
        inp = j < 2
        color = "#cfe2f3" if inp else ("#d9ead3" if j in cell.concat else "#fff2cc")
        w = 2 * half if not inp else 2.6 * half
        ax.add_patch(
            FancyBboxPatch(
                (j - w / 2, -0.2), w, 0.4, boxstyle="round,pad=0.02,rounding_size=0.12", fc=color, ec="#555555",
                lw=1.2, zorder=3,
            )
        )  # fmt: skip
        ax.text(j, 0, _input_label(j) if inp else str(j), ha="center", va="center", fontsize=12, zorder=4)
    concat = ", ".join(str(j) for j in cell.concat)
    ax.text(states - 0.35, 0, f"  -> output = concat({concat})", ha="left", va="center", fontsize=11, color="#333333")
    reach = 0.3 * (states - 1) + 0.45
    ax.set_xlim(-0.75, states + 2.3)
    ax.set_ylim(-reach, reach)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(
        f"{title}: {cell.parameter_free()} of {len(cell.edges)} ops parameter-free "
        "(red dashed: parameter-free; blue: convolution; green: nodes in the output)",
        fontsize=12,
    )


def _edge_ports(cell: CellGenotype, half: float) -> dict[tuple[int, str], float]:
    """Where each edge leaves its input's box and enters its node's box (x positions), spread along the box's
    top (edges drawn above) or bottom: edges from one state never start at one point and pile up. Outgoing
    edges use the right half of a node's box (all of an input's), incoming ones the left half; the longer an
    arc, the further out its ends, so that arcs from one state nest without crossing."""
    ends: dict[tuple[int, bool, str], list[tuple[float, int]]] = {}
    for i, (_, src) in enumerate(cell.edges):
        dst, above = i // 2 + 2, i % 2 == 0
        ends.setdefault((src, above, "out"), []).append((-dst, i))  # the longest leftmost
        ends.setdefault((dst, above, "in"), []).append((-src, i))  # the longest rightmost
    out: dict[tuple[int, str], float] = {}
    margin = 0.06
    for (state, _, kind), edges in ends.items():
        w = half * (1.3 if state < 2 else 1.0)
        lo, hi = (-w + margin, w - margin) if state < 2 else ((-w + margin, 0.0) if kind == "in" else (0.0, w - margin))
        for k, (_, i) in enumerate(sorted(edges)):
            out[(i, kind)] = state + lo + (k + 0.5) * (hi - lo) / len(edges)
    return out


# --- run data ----------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """What the report needs from a run directory (works on unfinished runs too)."""

    path: Path
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    alphas: list[dict[str, Any]]
    summary: dict[str, Any] | None
    genotype: Genotype | None

    @property
    def command(self) -> str:
        return str(self.config.get("command", "search"))

    @property
    def name(self) -> str:
        return self.path.resolve().name


def load_run(path: str | Path) -> RunData:
    run = RunDir(path)
    if not run.path.is_dir():
        raise BnasError(f"{run.path} is not a directory; give a run directory made by bnas search or bnas train")
    config = run.read_json("config.json")
    summary = run.read_json("summary.json") if (run.path / "summary.json").exists() else None
    records = run.metrics(None)
    genotype = None
    gfile = run.path / "genotype.json"
    try:
        if gfile.exists():
            genotype = Genotype.load(gfile)
        elif config.get("genotype_json"):
            genotype = Genotype.from_json(config["genotype_json"])
    except BnasError:
        genotype = None
    return RunData(
        path=run.path,
        config=config,
        epochs=[r for r in records if r.get("kind") == "epoch"],
        steps=[r for r in records if r.get("kind") == "step"],
        alphas=sorted(run.records("alphas.jsonl"), key=lambda r: r.get("epoch", 0)),
        summary=summary,
        genotype=genotype,
    )


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(x, y) of a key over epoch records; x = the record's epoch (from 1: epochs completed); missing values skipped."""
    xs, ys = [], []
    for r in records:
        v = r
        for part in key.split("/"):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["epoch"])
            ys.append(float(v))
    return xs, ys


# --- figures -----------------------------------------------------------------------------------------------


def curves_figure(run: RunData):
    """Losses, accuracies and learning rates over epochs (train, architecture and validation splits)."""
    fig = _figure(13, 4.2)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    if run.steps:
        per_epoch: dict[int, int] = {}
        for r in run.steps:
            per_epoch[r["epoch"]] = max(per_epoch.get(r["epoch"], 0), r["step"])
        xs = [r["epoch"] - 1 + r["step"] / per_epoch[r["epoch"]] for r in run.steps if "train_loss" in r]
        ys = [r["train_loss"] for r in run.steps if "train_loss" in r]
        ax_loss.plot(xs, ys, color="#1f77b4", alpha=0.25, lw=0.8, label="train (steps)")
    styles = {"train": ("#1f77b4", "o"), "arch": ("#ff7f0e", "s"), "valid": ("#2ca02c", "^")}
    names = {"train": "train (weights)", "arch": "architecture split", "valid": "validation (eval mode)"}
    for split, (color, marker) in styles.items():
        for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
            xs, ys = _series(run.epochs, f"{split}_{what}")
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, ms=4, lw=1.6, label=names[split])
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="top-1 accuracy", xlabel="epoch", ylabel="accuracy")
    xs, ys = _series(run.epochs, "lr")
    if xs:
        ax_lr.plot(xs, ys, color="#1f77b4", marker="o", ms=4, label="weight lr")
    ax_lr.set(title="learning rates", xlabel="epoch", ylabel="weight lr")
    ax_lr.set_ylim(bottom=0)
    xs, ys = _series(run.epochs, "arch_lr")
    if xs:
        twin = ax_lr.twinx()
        twin.plot(xs, ys, color="#ff7f0e", marker="s", ms=4, ls="--", label="architecture lr")
        twin.set_ylabel("architecture lr", color="#ff7f0e")
        twin.set_ylim(bottom=0)
        twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        h1, l1 = ax_lr.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax_lr.legend(h1 + h2, l1 + l2, fontsize=9, loc="center left")
    elif xs or ax_lr.lines:
        ax_lr.legend(fontsize=9)
    for ax in (ax_loss, ax_acc):
        if ax.lines:
            ax.legend(fontsize=9)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name}: training curves", fontsize=13)
    _integer_epochs(fig)
    return fig


def alphas_figure(run: RunData, cell: str):
    """The softmaxed op weights of every edge of one cell type over epochs: one panel per edge, laid out
    as the cell (row = node, column = input); the edges the final genotype keeps have a thick frame."""
    recs = [r for r in run.alphas if cell in r.get("alphas", {})]
    if not recs:
        raise BnasError(f"{run.path} has no alpha records for the {cell} cell (alphas.jsonl)")
    ops = recs[0].get("ops", list(PRIMITIVES))
    steps = _steps_from_rows(len(recs[0]["alphas"][cell]))
    xs = [r["epoch"] for r in recs]
    values = [v for r in recs for row in r["alphas"][cell] for v in row]
    lo, hi = min(values), max(values)
    pad = max(1e-3, 0.08 * (hi - lo))  # zoom to the data: early in a search all weights sit near 1/8
    kept = {}
    if run.genotype is not None and cell in run.genotype.names:
        for i, (op, src) in enumerate(run.genotype.cell(cell).edges):
            kept[(i // 2, src)] = op
    fig = _figure(3.0 * (steps + 1), 2.3 * steps + 0.9)
    grid = fig.subplots(steps, steps + 1, sharex=True, sharey=True, squeeze=False)
    row = 0
    for node in range(steps):
        for src in range(steps + 1):
            ax = grid[node][src]
            if src >= node + 2:
                ax.axis("off")
                continue
            for k, op in enumerate(ops):
                color, ls = OP_STYLE.get(op, ("black", "-"))
                ys = [r["alphas"][cell][row][k] for r in recs]
                ax.plot(xs, ys, color=color, ls=ls, lw=1.6, marker="." if len(xs) < 12 else None, label=SHORT[op])
            title = f"node {node + 2} <- {_input_label(src)}"
            betas = recs[-1].get("betas", {}).get(cell)
            if betas:
                title += f"  (edge w {betas[row]:.2f})"
            if (node, src) in kept:
                title += f"\nkept: {SHORT[kept[(node, src)]]}"
                for spine in ax.spines.values():
                    spine.set_linewidth(2.5)
                    spine.set_color("#333333")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
            ax.set_ylim(lo - pad, hi + pad)
            if src == 0 or (node == 0 and src == 1):
                ax.set_ylabel("softmax weight", fontsize=9)
            if node == steps - 1:
                ax.set_xlabel("epoch (0 = initial)", fontsize=9)
            row += 1
    handles, labels = grid[0][0].get_legend_handles_labels()
    if steps >= 2:  # the empty upper-right triangle holds the legend
        grid[0][steps].legend(handles, labels, loc="center", ncol=2, fontsize=11, title="operation")
        grid[0][2].text(
            0.5, 0.5, "thick frame: edge kept\nby the final genotype\n\ndashed: parameter-free", ha="center",
            va="center", fontsize=11, transform=grid[0][2].transAxes,
        )  # fmt: skip
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(ops), fontsize=11, frameon=False)
    fig.suptitle(f"{run.name}: op weights of the {CELL_TITLES.get(cell, cell)} over the search", fontsize=13)
    _integer_epochs(fig)
    return fig


def _steps_from_rows(rows: int) -> int:
    steps = 0
    while steps * (steps + 3) // 2 < rows:  # 2 + 3 + ... + (steps + 1) edges
        steps += 1
    return steps


def collapse_figure(run: RunData):
    """Collapse diagnostics per epoch: parameter-free ops in each derived cell, the softmax weight the
    alphas give to skip and pools, the entropy of the alphas, and the Hessian's dominant eigenvalue."""
    cells = list(run.epochs[-1].get("parameter_free", {})) if run.epochs else []
    cells = cells or sorted({c for r in run.alphas for c in r.get("alphas", {})})
    has_hessian = bool(_series(run.epochs, "hessian_eig")[0])
    fig = _figure(13, 7.4)
    axes = fig.subplots(2, 2).flatten()
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    ax = axes[0]
    for c, color in zip(cells, colors, strict=False):
        xs, ys = _series(run.epochs, f"parameter_free/{c}")
        if xs:
            ax.plot(xs, ys, color=color, marker="o", ms=4, drawstyle="steps-post", label=CELL_TITLES.get(c, c))
    edges = len(run.genotype.first.edges) if run.genotype else 8
    ax.set(title="parameter-free ops in the derived cell", xlabel="epoch", ylabel=f"ops (of {edges})")
    ax.set_ylim(-0.3, edges + 0.3)
    ax = axes[1]
    for c, color in zip(cells, colors, strict=False):
        xs, ys = [], []
        for r in run.alphas:
            rows = r.get("alphas", {}).get(c)
            ops = r.get("ops", list(PRIMITIVES))
            if rows:
                free = [k for k, op in enumerate(ops) if op in COLLAPSE_OPS]
                xs.append(r["epoch"])
                ys.append(sum(sum(row[k] for k in free) for row in rows) / len(rows))
        if xs:
            ax.plot(xs, ys, color=color, marker="o", ms=4, label=CELL_TITLES.get(c, c))
    ax.axhline(len(COLLAPSE_OPS) / len(PRIMITIVES), color="#888888", ls=":", label="uniform alphas")
    ax.set(title="softmax weight on skip + pools (mean over edges)", xlabel="epoch (0 = initial)", ylabel="weight")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax = axes[2]
    top = math.log(len(PRIMITIVES))
    for c, color in zip(cells, colors, strict=False):
        xs, ys = _series(run.epochs, f"alpha_entropy/{c}")
        if xs:  # the drop below uniform on a log scale: from 1e-7 at the start to ~1 when decided
            ax.plot(xs, [max(top - y, 1e-9) for y in ys], color=color, marker="o", ms=4, label=CELL_TITLES.get(c, c))
    ax.set_yscale("log")
    ax.set(
        title=f"entropy drop of the op weights: ln {len(PRIMITIVES)} - mean entropy per edge",
        xlabel="epoch",
        ylabel="nats below uniform (log scale)",
    )
    ax = axes[3]
    if has_hessian:
        xs, ys = _series(run.epochs, "hessian_eig")
        ax.plot(xs, ys, color="#000000", marker="o", ms=5, label="dominant eigenvalue")
        ax.set(title="Hessian of the validation loss w.r.t. the alphas", xlabel="epoch", ylabel="eigenvalue")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "Hessian eigenvalue not recorded\n(run the search with --hessian-every N)",
                ha="center", va="center", fontsize=12, color="#666666", transform=ax.transAxes)  # fmt: skip
    for ax in axes:
        if ax.lines:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9)
    fig.suptitle(f"{run.name}: collapse diagnostics", fontsize=13)
    _integer_epochs(fig)
    return fig


def decision_figure(run: RunData):
    """How decided the architecture is per epoch (decision.py): the mean op margin (chosen op over the
    runner-up) and edge margin (weakest kept edge over the strongest dropped one) per cell type, and the share
    of the last fifth of the search so far whose genotype is the epoch's, each with the `settled` rule's line."""
    from .decision import OP_MARGIN, STABLE_SHARE

    cells = list(run.epochs[-1].get("decision", {}).get("op_margin", {})) if run.epochs else []
    fig = _figure(13, 4.2)
    ax_m, ax_s = fig.subplots(1, 2)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for c, color in zip(cells, colors, strict=False):
        for what, ls, label in (("op_margin", "-", "op margin"), ("edge_margin", "--", "edge margin")):
            xs, ys = _series(run.epochs, f"decision/{what}/{c}")
            if xs:
                ax_m.plot(xs, ys, color=color, ls=ls, marker="o", ms=4, label=f"{CELL_TITLES.get(c, c)}: {label}")
    ax_m.axhline(OP_MARGIN, color="#888888", ls=":", label=f"settled: op margin {OP_MARGIN}")
    ax_m.set(title="margins of the derived cell (softmax weight)", xlabel="epoch", ylabel="margin")
    xs, ys = _series(run.epochs, "decision/stable")
    if xs:
        ax_s.plot(xs, ys, color="#000000", marker="o", ms=4, label="genotype as now")
    ax_s.axhline(STABLE_SHARE, color="#888888", ls=":", label=f"settled: {STABLE_SHARE:.0%}")
    ax_s.set(title="share of the last fifth with this genotype", xlabel="epoch", ylabel="share")
    ax_s.set_ylim(-0.05, 1.05)
    for ax in (ax_m, ax_s):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    verdict = (run.summary or {}).get("decision", {}).get("settled")
    state = "" if verdict is None else (": settled" if verdict else ": not settled")
    fig.suptitle(f"{run.name}: how decided the architecture is{state}", fontsize=13)
    _integer_epochs(fig)
    return fig
