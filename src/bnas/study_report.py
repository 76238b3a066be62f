"""The outputs of `bnas study` (study.py): the table of candidates, the summary per method with a bootstrap
confidence interval of the difference to the random cells, the plots and the HTML page.

Everything here reads the study's run directories (results.json, summary.json, config.json, metrics.jsonl)
and never a model. The test accuracy is the final epoch's (`results.json` final_epoch.test_top1); nothing
here selects anything.
"""

from __future__ import annotations

import csv
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BnasError
from .genotype import Genotype
from .jsonio import dumps
from .runs import RunDir, atomic_write_text

if TYPE_CHECKING:
    from .study import PlannedRun, StudySpec

RANDOM = "random-cells"
COLUMNS = ("candidate", "group", "kind", "seed", "space", "parameters", "macs", "latency_ms", "budget", "param_free",
           "settled", "search_s", "train_s", "epochs", "test_acc", "run_dir")  # fmt: skip
KIND_COLORS = {"searched": "#1f77b4", "random": "#7f7f7f", "published": "#ff7f0e"}


@dataclass
class StudyResults:
    rows: list[dict[str, Any]]  # one per trained candidate, in the plan's order
    summary: list[dict[str, Any]]  # one per group (method, random-cells, published genotype)
    collapse: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # method -> seed -> epochs
    failed: list[dict[str, Any]] = field(default_factory=list)  # runs that failed after their retries: run, error

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "summary": self.summary, "collapse": self.collapse, "failed": self.failed}

    def markdown(self) -> str:
        budgets = any(r.get("budget") for r in self.rows)  # a study with budgets: each candidate's, and its cost
        latency = any(r.get("latency_ms") is not None for r in self.rows)
        head = ["candidate", "group", "seed", "parameters", "MACs", *(["predicted latency"] if latency else []),
                *(["budget"] if budgets else []), "param-free ops/cell", "settled", "search time", "training time",
                "test acc %"]  # fmt: skip
        lines = [_md_row(head), _md_row(["---"] * len(head))]
        for r in self.rows:
            lines.append(_md_row([
                r["candidate"], r["group"], str(r["seed"]), f"{r['parameters']:,}", f"{r['macs']:,}",
                *([_ms(r.get("latency_ms"))] if latency else []), *([r.get("budget", "")] if budgets else []),
                r["param_free"], _yes_no(r["settled"]), _duration(r["search_s"]), _duration(r["train_s"]),
                _pct(r["test_acc"]),
            ]))  # fmt: skip
        head = ["method", "kind", *(["budget"] if budgets else []), "n", "mean %", "std", "min %", "max %",
                "mean - random cells (95% CI)"]  # fmt: skip
        lines += ["", _md_row(head), _md_row(["---"] * len(head))]
        for s in self.summary:
            diff = ""
            if s["diff"] is not None:
                diff = f"{100 * s['diff']:+.2f} "
                if s["ci_low"] is None:
                    diff += "(one result each: no interval)"
                else:
                    diff += f"[{100 * s['ci_low']:+.2f}, {100 * s['ci_high']:+.2f}]"
                if s.get("baseline", RANDOM) != RANDOM:
                    diff += f" vs {s['baseline']}"
            lines.append(_md_row([
                s["group"], s["kind"], *([s.get("budget", "")] if budgets else []), str(s["n"]), _pct(s["mean"]),
                _pct(s["std"]), _pct(s["min"]), _pct(s["max"]), diff,
            ]))  # fmt: skip
        unsettled = [r["candidate"] for r in self.rows if r.get("settled") is False]
        if unsettled:  # decision.py's rule: such a cell is close to a random cell of the space
            lines += ["", f"architecture not settled (close to a random cell of the space): {', '.join(unsettled)}; "
                      "compare them with the random cells above; more steps (--budget, --epochs) or "
                      "--arch-lr auto --arch-lr-sum 3 move the alphas further"]  # fmt: skip
        elif any(r.get("settled") for r in self.rows):
            lines += ["", "every search's architecture settled"]
        if self.failed:  # not in the tables above: they have no result
            lines += ["", _md_row(["failed run", "attempts", "error"]), _md_row(["---"] * 3)]
            lines += [_md_row([f["run"], str(f["attempts"]), f["error"].replace("|", "/")]) for f in self.failed]
        return "\n".join(lines)


def _ms(v: Any) -> str:
    return f"{v:.3g} ms" if isinstance(v, int | float) else ""


def budget_text(cost_budget: dict[str, Any] | None) -> str:
    """A recorded budget (`costs.Budget.to_json`) as text: '300K params', '2 ms latency'; '' for none."""
    from .costs import format_cost

    parts = []
    for key, value in (cost_budget or {}).items():
        if value is not None:
            parts.append(format_cost("latency", value * 1e6) if key == "latency_ms" else format_cost(key, value))
    return " and ".join(parts)


def _yes_no(v: Any) -> str:
    return {True: "yes", False: "no"}.get(v, "") if isinstance(v, bool) else ""


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, int | float) and math.isfinite(v) else ""


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# --- reading the runs -----------------------------------------------------------------------------------


def collect(
    spec: StudySpec, out: Path, runs: list[PlannedRun], failed: list[dict[str, Any]] | None = None
) -> StudyResults:
    """The rows, the summary and the parameter-free ops per search epoch, from the finished run directories;
    the `failed` runs (run, attempts, error) have no row."""
    rows = []
    gone = {f["run"] for f in failed or []}
    for run in runs:
        if run.command != "train" or f"{run.command}/{run.name}" in gone:
            continue
        d = RunDir(run.path)
        res, cfg = d.read_json("results.json"), d.read_json("config.json")
        g = Genotype.from_json(cfg["genotype_json"])
        free = g.parameter_free()
        search_s = settled = None
        costed: dict[str, Any] = {}  # a budget's record: a search's summary, a random cell's genotype file
        if run.search:  # the search's time, and whether its architecture settled (decision.py)
            summary = RunDir(out / "search" / run.search).read_json("summary.json")
            search_s, settled = summary.get("search_s"), summary.get("decision", {}).get("settled")
            costed = summary
        elif run.kind == "random":
            costed = _read_json(Path(run.genotype))
        rows.append({
            "candidate": run.name, "group": run.group, "kind": run.kind, "seed": run.seed, "space": g.space,
            "parameters": res["parameters"], "macs": res["macs_per_image"],
            "latency_ms": costed.get("cost", {}).get("latency_ms"), "budget": budget_text(costed.get("cost_budget")),
            "param_free": "/".join(str(free[c]) for c in g.names), "param_free_cells": free, "settled": settled,
            "search_s": search_s, "train_s": res["train_s"], "epochs": res["epochs"],
            "test_acc": res["final_epoch"]["test_top1"], "run_dir": str(run.path),
        })  # fmt: skip
    collapse: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        if run.command == "search":
            epochs = RunDir(run.path).metrics("epoch")
            collapse.setdefault(run.group, {})[str(run.seed)] = [
                {
                    "epoch": r["epoch"],
                    "parameter_free": r.get("parameter_free", {}),
                    "decision": r.get("decision"),
                    "arch_grad_consistency": r.get("arch_grad_consistency"),
                }
                for r in epochs
            ]
    return StudyResults(rows, summarise(rows, spec.bootstrap_samples, spec.bootstrap_seed), collapse, failed or [])


def summarise(rows: list[dict[str, Any]], samples: int = 10_000, seed: int = 0) -> list[dict[str, Any]]:
    """Mean, standard deviation (n - 1), min and max of the test accuracy per group, and the difference of its
    mean to the random cells' with a percentile bootstrap 95% interval (each group resampled on its own). The
    random cells compared with are those of the group's own budget where the study has them (study_budget.py),
    else the unconstrained random cells."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for k, (name, members) in enumerate(groups.items()):
        accs = [r["test_acc"] for r in members]
        n, mean = len(accs), sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) if n > 1 else None
        budget = members[0].get("budget", "")
        entry = {"group": name, "kind": members[0]["kind"], "n": n, "mean": mean, "std": std, "min": min(accs),
                 "max": max(accs), "diff": None, "ci_low": None, "ci_high": None, "budget": budget,
                 "baseline": None}  # fmt: skip
        same = [g for g, m in groups.items() if m[0]["kind"] == "random" and m[0].get("budget", "") == budget]
        base = same[0] if same and budget else RANDOM if RANDOM in groups else None
        baseline = [r["test_acc"] for r in groups.get(base, [])] if base is not None else []
        if baseline and members[0]["kind"] != "random":
            entry["baseline"] = base
            # one number on each side: no spread to resample (the interval would be a point)
            lo, hi = bootstrap_diff(accs, baseline, samples, [seed, k]) if n + len(baseline) > 2 else (None, None)
            entry.update(diff=mean - sum(baseline) / len(baseline), ci_low=lo, ci_high=hi)
        out.append(entry)
    return out


def bootstrap_diff(a: list[float], b: list[float], samples: int, seed) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of mean(a) - mean(b), seeded (the same numbers give the same interval)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    da = xa[rng.integers(0, len(xa), (samples, len(xa)))].mean(1)
    db = xb[rng.integers(0, len(xb), (samples, len(xb)))].mean(1)
    lo, hi = np.quantile(da - db, [0.025, 0.975])
    return float(lo), float(hi)


# --- writing ---------------------------------------------------------------------------------------------


def write_outputs(spec: StudySpec, out: Path, results: StudyResults) -> list[Path]:
    """results.csv, results.md, results.json, summary.csv, the plots and report.html; returns what it wrote."""
    written = [out / "results.csv", out / "summary.csv", out / "results.md", out / "results.json"]
    atomic_write_text(written[0], _csv([{k: r[k] for k in COLUMNS} for r in results.rows], COLUMNS))
    atomic_write_text(written[1], _csv(results.summary, tuple(results.summary[0]) if results.summary else ()))
    atomic_write_text(written[2], _MD_HEAD + results.markdown() + "\n")
    atomic_write_text(written[3], dumps(results.to_json(), 1) + "\n")
    images: dict[str, tuple[str, Path]] = {}
    note = ""
    try:
        images = write_plots(out / "plots", results)
        written += [p for _, p in images.values()]
    except BnasError as e:  # matplotlib missing: the page says so, the tables are written anyway
        note = str(e)
    written.append(write_html(spec, out, results, images, note))
    return written


_MD_HEAD = """# Does the search beat random?

Test accuracy is the final training epoch's, on the test split (never a best epoch). Every candidate was
trained with the same options; param-free ops/cell counts the parameter-free operations (skip, pools) of the
two cells (conv/enh or normal/reduce). The last column is the difference of the group's mean to the random
cells' mean with a bootstrap 95% confidence interval.

"""


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def write_plots(folder: Path, results: StudyResults) -> dict[str, tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    figures = [
        ("accuracy", "Test accuracy per method (one point per seed or cell)", accuracy_figure(results)),
        ("accuracy_vs_parameters", "Test accuracy vs parameters", parameters_figure(results)),
    ]
    if any(r.get("budget") for r in results.rows):  # a study with budgets: accuracy against each cost
        figures.append(("accuracy_vs_macs", "Test accuracy vs MACs", parameters_figure(results, "macs", "MACs")))
        if any(r.get("latency_ms") is not None for r in results.rows):
            figures.append(("accuracy_vs_latency", "Test accuracy vs predicted latency",
                            parameters_figure(results, "latency_ms", "predicted latency (ms)")))  # fmt: skip
    if results.collapse:
        figures.append(("parameter_free", "Parameter-free operations per search epoch", collapse_figure(results)))
        figures.append(("op_margin", "Mean op margin per search epoch (decision figure)", margin_figure(results)))
        if any(r.get("arch_grad_consistency") for seeds in results.collapse.values() for recs in seeds.values()
               for r in recs):  # fmt: skip
            figures.append(("grad_consistency", "Architecture gradient consistency per search epoch",
                            consistency_figure(results)))  # fmt: skip
    out = {}
    for name, title, fig in figures:
        out[name] = (title, folder / f"{name}.png")
        fig.savefig(out[name][1], dpi=100)
    return out


def _groups(results: StudyResults) -> list[tuple[str, str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results.rows:
        groups.setdefault(r["group"], []).append(r)
    return [(g, rows[0]["kind"], rows) for g, rows in groups.items()]


def accuracy_figure(results: StudyResults):
    from .plots import _figure

    groups = _groups(results)
    fig = _figure(max(5.0, 1.3 * len(groups) + 2), 4.5)
    ax = fig.subplots()
    for x, (_, kind, rows) in enumerate(groups):
        accs = [100 * r["test_acc"] for r in rows]
        spread = [x + (0.3 * (i / (len(accs) - 1) - 0.5) if len(accs) > 1 else 0.0) for i in range(len(accs))]
        ax.scatter(spread, accs, color=KIND_COLORS[kind], s=36, zorder=3, label=kind)
        mean = sum(accs) / len(accs)
        ax.hlines(mean, x - 0.25, x + 0.25, color="#222222", lw=2, zorder=4)
    ax.set_xticks(range(len(groups)), [g for g, _, _ in groups], rotation=20, ha="right")
    ax.set(ylabel="final-epoch test accuracy %", title="test accuracy per method (bar: mean)")
    _dedupe_legend(ax)
    ax.grid(alpha=0.3, axis="y")
    return fig


def parameters_figure(results: StudyResults, key: str = "parameters", label: str = "parameters"):
    """Test accuracy against a cost of the candidates (`key`: parameters, macs, latency_ms), a marker per group."""
    from .plots import _figure

    fig = _figure(7, 4.5)
    ax = fig.subplots()
    markers = "os^Dv<>pP*X"
    for i, (name, kind, rows) in enumerate(_groups(results)):
        rows = [r for r in rows if r.get(key) is not None]
        if rows:
            ax.scatter([r[key] for r in rows], [100 * r["test_acc"] for r in rows], color=KIND_COLORS[kind],
                       marker=markers[i % len(markers)], s=40, label=name)  # fmt: skip
    ax.set(xlabel=label, ylabel="final-epoch test accuracy %", title=f"test accuracy vs {label}")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def collapse_figure(results: StudyResults):
    """Parameter-free operations of the derived cells per search epoch: one panel per cell type, a thin line per
    seed and a thick one for the mean over seeds, per method."""
    return epoch_figure(results, lambda r, cell: r["parameter_free"].get(cell), "parameter-free ops (of 8)",
                        "parameter-free operations in the derived cells per search epoch", (-0.3, 8.3))  # fmt: skip


def margin_figure(results: StudyResults):
    """The mean op margin of the derived cells per search epoch (decision.py; the dashed line: settled)."""
    from .decision import OP_MARGIN

    fig = epoch_figure(results, lambda r, cell: ((r.get("decision") or {}).get("op_margin") or {}).get(cell),
                       "mean op margin", "how decided the operations are per search epoch")  # fmt: skip
    for ax in fig.axes:
        ax.axhline(OP_MARGIN, color="#444444", ls="--", lw=1)
    return fig


def consistency_figure(results: StudyResults):
    """|mean architecture gradient| / its spread over each epoch's batches (decision.GradConsistency)."""
    return epoch_figure(results, lambda r, cell: (r.get("arch_grad_consistency") or {}).get(f"alpha_{cell}"),
                        "|mean gradient| / spread", "architecture gradient consistency per search epoch")  # fmt: skip


def epoch_figure(results: StudyResults, value, ylabel: str, title: str, ylim: tuple[float, float] | None = None):
    """A per-search-epoch figure: one panel per cell type, a thin line per seed and a thick one for the mean over
    seeds, per method; `value(record, cell)` is the plotted number (None: not plotted)."""
    from .plots import CELL_TITLES, _figure, _integer_epochs

    cells: list[str] = []
    for seeds in results.collapse.values():
        for recs in seeds.values():
            for r in recs:
                cells += [c for c in r["parameter_free"] if c not in cells]
    cells = cells or ["conv"]
    fig = _figure(6 * len(cells), 4.2)
    axes = fig.subplots(1, len(cells), squeeze=False)[0]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for ax, cell in zip(axes, cells, strict=True):
        for k, (method, seeds) in enumerate(results.collapse.items()):
            color = colors[k % len(colors)]
            by_epoch: dict[int, list[float]] = {}
            for recs in seeds.values():
                points = [(r["epoch"], value(r, cell)) for r in recs]
                points = [(x, y) for x, y in points if y is not None]
                ax.plot([x for x, _ in points], [y for _, y in points], color=color, alpha=0.35, lw=1,
                        drawstyle="steps-post")  # fmt: skip
                for x, y in points:
                    by_epoch.setdefault(x, []).append(y)
            xs = sorted(by_epoch)
            ax.plot(xs, [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs], color=color, lw=2.5, marker="o", ms=4,
                    label=f"{method} (mean of {len(seeds)} seed{'s' if len(seeds) != 1 else ''})")  # fmt: skip
        ax.set(title=f"{CELL_TITLES.get(cell, cell)}", xlabel="search epoch", ylabel=ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(title, fontsize=13)
    _integer_epochs(fig)
    return fig


def _dedupe_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels, strict=True):
        seen.setdefault(lab, h)
    if seen:
        ax.legend(list(seen.values()), list(seen), fontsize=9)


def write_html(spec: StudySpec, out: Path, results: StudyResults, images: dict[str, tuple[str, Path]],
               note: str = "") -> Path:  # fmt: skip
    from .report import _CSS

    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>bnas study</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>bnas study: does the search beat random? <code>{e(out.resolve().name)}</code></h1>",
        f"<p class='note'>{e(str(out.resolve()))} &middot; data set {e(spec.dataset)} &middot; seeds "
        f"{e(', '.join(map(str, spec.seeds)))} &middot; written {time.strftime('%Y-%m-%d %H:%M')}</p>",
        "<p>Every candidate is trained with the same options (<code>train</code> below); the searched cells with "
        "their search's seed, each random cell once, the published cells once per seed. The accuracy is the final "
        "epoch's on the test split; the searches select on their architecture split, never on the test set.</p>",
        "<h2>Per method</h2>", _html_table(results.summary, _SUMMARY_COLS),
        "<h2>Candidates</h2>", _html_table(results.rows, _ROW_COLS),
    ]  # fmt: skip
    if results.failed:
        parts += ["<h2>Failed runs</h2>", _html_table(results.failed, _FAILED_COLS)]
    if note:
        parts.append(f"<p class='note'>{e(note)}</p>")
    for title, path in images.values():
        parts += [f"<h2>{e(title)}</h2>", f"<img src='{e(path.relative_to(out).as_posix())}' alt='{e(path.stem)}'>"]
    parts += ["<h2>Study config</h2>", f"<pre>{e(dumps(spec.to_json(), indent=1))}</pre>", "</body></html>"]
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


_ROW_COLS = {
    "candidate": ("candidate", str), "group": ("group", str), "seed": ("seed", str),
    "parameters": ("parameters", lambda v: f"{v:,}"), "macs": ("MACs", lambda v: f"{v:,}"),
    "latency_ms": ("predicted latency", _ms), "budget": ("budget", str),
    "param_free": ("param-free ops/cell", str), "settled": ("settled", lambda v: _yes_no(v)),
    "search_s": ("search time", _duration),
    "train_s": ("training time", _duration), "test_acc": ("test acc %", _pct),
}  # fmt: skip
_FAILED_COLS = {"run": ("run", str), "attempts": ("attempts", str), "error": ("error", str)}
_SUMMARY_COLS = {
    "group": ("method", str), "kind": ("kind", str), "budget": ("budget", str), "baseline": ("vs", str),
    "n": ("n", str), "mean": ("mean %", _pct),
    "std": ("std", _pct), "min": ("min %", _pct), "max": ("max %", _pct), "diff": ("mean - random cells %", _pct),
    "ci_low": ("95% CI low", _pct), "ci_high": ("95% CI high", _pct),
}  # fmt: skip


def _html_table(rows: list[dict[str, Any]], cols: dict[str, tuple[str, Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(title)}</th>" for title, _ in cols.values())
    body = "".join(
        "<tr>"
        + "".join(f"<td>{e(fmt(r[k]) if r.get(k) is not None else '')}</td>" for k, (_, fmt) in cols.items())
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
