"""The run report (an HTML page with the plots of plots.py) and the comparison table of several runs."""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BnasError
from .jsonio import dumps
from .plots import (
    CELL_TITLES,
    RunData,
    alphas_figure,
    collapse_figure,
    curves_figure,
    decision_figure,
    draw_genotype,
    load_run,
)  # fmt: skip

# --- the HTML report ---------------------------------------------------------------------------------------


@dataclass
class Report:
    html: Path
    images: dict[str, Path] = field(default_factory=dict)


_CSS = """body{font-family:Helvetica,Arial,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto}.note{color:#666;font-size:.9em}"""


def write_report(run_dir: str | Path, out: str | Path | None = None, embed: bool = False) -> Report:
    """Write `index.html` and its PNGs into `out` (default RUN_DIR/report). The page needs nothing else;
    with `embed` the PNGs are inlined so that the HTML file alone can be mailed."""
    run = load_run(run_dir)
    if not run.epochs:
        raise BnasError(f"{run.path} has no finished epoch yet; nothing to report")
    out = Path(out) if out is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "index.html")
    figures: list[tuple[str, str, Any]] = [("curves", "Training curves", curves_figure(run))]
    if run.alphas:
        figures.append(("collapse", "Collapse diagnostics", collapse_figure(run)))
    if any("decision" in r for r in run.epochs):
        figures.append(("decision", "How decided the architecture is", decision_figure(run)))
        for cell in run.alphas[-1].get("alphas", {}):
            title = f"Alpha evolution: {CELL_TITLES.get(cell, cell)}"
            figures.append((f"alphas_{cell}", title, alphas_figure(run, cell)))
    for name, _, fig in figures:
        report.images[name] = out / f"{name}.png"
        fig.savefig(report.images[name], dpi=100)
    if run.genotype is not None:
        report.images["cells"] = out / "cells.png"
        draw_genotype(run.genotype, report.images["cells"], title=f"{run.name}: final genotype")
        figures.append(("cells", "Final cells", None))

    def img(name: str) -> str:
        path = report.images[name]
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if embed else path.name
        return f'<img src="{src}" alt="{name}">'

    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>bnas report: {e(run.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>bnas {e(run.command)} run <code>{e(run.name)}</code></h1>",
        f"<p class='note'>{e(str(run.path.resolve()))} &middot; report written {time.strftime('%Y-%m-%d %H:%M')}"
        + ("" if run.summary else " &middot; <b>the run has not finished</b>")
        + "</p>",
        "<h2>Run</h2>",
        _kv_table(_overview(run)),
    ]
    if run.genotype is not None:
        parts += ["<h2>Final genotype</h2>", f"<pre>{e(run.genotype.describe())}</pre>"]
    for name, title, _ in figures:
        parts += [f"<h2>{e(title)}</h2>", img(name)]
    parts += ["<h2>Epochs</h2>", _epoch_table(run.epochs)]
    parts += ["<h2>Configuration</h2>", f"<pre>{e(dumps(run.config, indent=1))}</pre>"]
    parts.append("</body></html>")
    report.html.write_text("\n".join(parts) + "\n")
    return report


def _overview(run: RunData) -> dict[str, Any]:
    cfg, last = run.config, run.epochs[-1]
    row = compare_row(run)
    out = {
        "command": run.command,
        "method": cfg.get("method", cfg.get("genotype", "")),
        "space / data set": f"{cfg.get('space', '')} / {cfg.get('dataset', '')}",
        "epochs": row["epochs"],
        "order": cfg.get("order", ""),
        "seed": cfg.get("seed", ""),
        "time": row["time"],
        "final epoch": ", ".join(
            f"{k} {last[k]:.4f}"
            for k in ("train_loss", "train_acc", "arch_loss", "valid_loss", "valid_acc", "hessian_eig")
            if isinstance(last.get(k), int | float)
        ),
        "parameter-free ops (final)": ", ".join(
            f"{c} {n}/{len(run.genotype.cell(c).edges)}" for c, n in run.genotype.parameter_free().items()
        )
        if run.genotype
        else "",
    }
    decision = (run.summary or {}).get("decision")
    if decision:
        out["architecture"] = "settled" if decision["settled"] else decision.get("advice", "not settled")
    env = cfg.get("environment", {})
    if env:
        out["environment"] = ", ".join(f"{k} {v}" for k, v in env.items() if k in ("torch", "gpu", "processor", "host"))
    cost = (run.summary or {}).get("cost")
    if cost:  # a search under a budget: the trained network's predicted cost (docs/hardware-aware.md)
        limits = {k: v for k, v in run.summary.get("cost_budget", {}).items() if v is not None}

        def amount(k: str, v: float) -> str:
            return f"{v:.3g} ms" if k == "latency_ms" else f"{v:,}"

        out["trained network cost (budget)"] = ", ".join(
            f"{'predicted latency' if k == 'latency_ms' else k} {amount(k, cost[k])}"
            + (f" (at most {amount(k, limits[k])})" if k in limits else "")
            for k in ("params", "macs", "latency_ms") if k in cost
        )  # fmt: skip
    return out


def _kv_table(rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><th class='l'>{html.escape(k)}</th><td class='l'>{html.escape(str(v))}</td></tr>" for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _epoch_table(epochs: list[dict[str, Any]]) -> str:
    keys = ["train_loss", "train_acc", "arch_loss", "valid_loss", "valid_acc", "lr", "arch_lr", "hessian_eig"]
    keys = [k for k in keys if any(isinstance(r.get(k), int | float) for r in epochs)]
    free = list(epochs[-1].get("parameter_free", {}))
    head = "".join(f"<th>{k}</th>" for k in ["epoch", *keys, *(f"param-free {c}" for c in free), "seconds"])
    rows = []
    for r in epochs:
        cells = [str(r["epoch"])]
        cells += [f"{r[k]:.4g}" if isinstance(r.get(k), int | float) else "" for k in keys]
        cells += [str(r.get("parameter_free", {}).get(c, "")) for c in free]
        cells.append(f"{r.get('epoch_s', 0):.1f}")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


# --- compare -----------------------------------------------------------------------------------------------


def compare_row(run: RunData) -> dict[str, str]:
    """One run's line in `bnas compare`: final-epoch figures only (never a best epoch)."""
    cfg, last = run.config, (run.epochs[-1] if run.epochs else {})
    total = cfg.get("epochs", "?")
    done = last.get("epoch", 0)
    free = ""
    if run.genotype is not None:
        free = "/".join(str(v) for v in run.genotype.parameter_free().values())
    seconds = (run.summary or {}).get("search_s") or (run.summary or {}).get("train_s")
    seconds = seconds if seconds is not None else sum(r.get("epoch_s", 0.0) for r in run.epochs)
    final = (run.summary or {}).get("final_epoch", {})
    decision = (run.summary or {}).get("decision")

    def pct(v: Any) -> str:
        return f"{100 * v:.2f}" if isinstance(v, int | float) else ""

    return {
        "run": run.name,
        "command": run.command,
        "method": str(cfg.get("method") or cfg.get("genotype") or ""),
        "dataset": str(cfg.get("dataset", "")),
        "epochs": f"{done}/{total}" + ("" if run.summary else " (running or stopped)"),
        "param_free": free,
        "settled": "" if not decision else ("yes" if decision["settled"] else "no"),
        "train_acc": pct(last.get("train_acc")),
        "valid_acc": pct(last.get("valid_acc")),
        "test_acc": pct(final.get("test_top1")),
        "hessian": f"{last['hessian_eig']:.3g}" if isinstance(last.get("hessian_eig"), int | float) else "",
        "time": _duration(seconds),
    }


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


COMPARE_COLUMNS = {
    "run": "run",
    "method": "method / genotype",
    "dataset": "data set",
    "epochs": "epochs",
    "param_free": "param-free ops/cell",
    "settled": "settled",
    "train_acc": "train acc %",
    "valid_acc": "valid acc %",
    "test_acc": "test acc %",
    "hessian": "hessian eig",
    "time": "time",
}


def compare_table(run_dirs: list[str | Path]) -> str:
    """A plain-text table of runs side by side; columns no run fills are left out."""
    rows = [compare_row(load_run(p)) for p in run_dirs]
    cols = [c for c in COMPARE_COLUMNS if c in ("run", "method", "epochs") or any(r[c] for r in rows)]
    table = [[COMPARE_COLUMNS[c] for c in cols]] + [[r[c] for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
