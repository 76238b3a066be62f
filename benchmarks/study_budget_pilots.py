"""The tables of docs/study-budget.md: one row per pilot search directory (benchmarks/study_budget_pilots.sh),
or, with --study, the decision figures and parameter-free operations per method of a `bnas study` directory.

usage: python benchmarks/study_budget_pilots.py runs/pilots [--epochs]  (--epochs: every epoch's figures too)
       python benchmarks/study_budget_pilots.py runs/study-budget --study
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _epochs(d: Path) -> list[dict]:
    return [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "epoch"]


def _fmt(values: dict | None, digits: int = 3) -> str:
    return " / ".join(f"{v:.{digits}f}" if v is not None else "-" for v in (values or {}).values()) or "-"


def main(root: str, per_epoch: bool = False) -> None:
    print(
        "| pilot | options | arch-lr sum | op margin conv / enh | stable | settled | gradient consistency "
        "(mean of epochs) | entropy conv / enh | param-free conv / enh | search time |"
    )
    print("|---|---|---:|---|---:|---|---|---|---|---:|")
    for d in sorted(p for p in Path(root).iterdir() if (p / "summary.json").exists()):
        cfg, summary, recs = (
            json.loads((d / "config.json").read_text()),
            json.loads((d / "summary.json").read_text()),
            _epochs(d),
        )
        auto = cfg.get("arch_lr_auto")
        lrs = [r.get("arch_lr") or 0.0 for r in recs]
        per_epoch_steps = math.ceil(cfg["subset"] * cfg["train_portion"] / cfg["batch_size"])
        total = auto["sum"] if auto else sum(lrs) * per_epoch_steps
        opts = f"{cfg['method']}, batch {cfg['batch_size']}, {cfg['subset']} images, {cfg['epochs']} epochs"
        opts += f", arch from epoch {cfg['arch_start_epoch'] + 1}, lr " + (
            f"auto ({auto['arch_lr']:.2g})" if auto else f"{cfg['arch_lr']:g}"
        )
        opts += f", CLR power {cfg['clr_power']:g}"
        gcs = [r["arch_grad_consistency"] for r in recs if r.get("arch_grad_consistency")]
        gc = {k: sum(g[k] for g in gcs) / len(gcs) for k in gcs[0]} if gcs else None
        dec = summary["decision"]
        last = recs[-1]
        print(
            f"| {d.name} | {opts} | {total:.2f} | {_fmt({k: v['op_margin'] for k, v in dec['cells'].items()})} | "
            f"{dec['stable']:.2f} | {'yes' if dec['settled'] else 'no'} | {_fmt(gc, 2)} | "
            f"{_fmt(last['alpha_entropy'], 4)} | {'/'.join(str(v) for v in last['parameter_free'].values())} | "
            f"{summary['search_s'] / 60:.1f} min |"
        )
        if per_epoch:
            for r in recs:
                print(
                    f"|  | epoch {r['epoch']} | arch lr {r.get('arch_lr') or 0:.2g} | "
                    f"{_fmt(r['decision']['op_margin'])} | "
                    f"{r['decision']['stable']:.2f} |  | {_fmt(r.get('arch_grad_consistency'), 2)} | "
                    f"{_fmt(r['alpha_entropy'], 4)} | {'/'.join(str(v) for v in r['parameter_free'].values())} |  |"
                )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def study(root: str) -> None:
    """Per method (the study's searches, grouped by name without the seed): the final decision figures averaged
    over seeds, how many settled, and the mean parameter-free operations of the derived cells per epoch."""
    groups: dict[str, list[Path]] = {}
    for d in sorted((Path(root) / "search").iterdir()):
        if (d / "summary.json").exists():
            groups.setdefault(d.name.rsplit("-s", 1)[0], []).append(d)
    print(
        "| method | searches | settled | mean op margin conv / enh | mean edge margin conv / enh | stable | "
        "gradient consistency (last epoch) | param-free ops per cell, final (conv / enh) |"
    )
    print("|---|---:|---:|---|---|---:|---|---|")
    per_epoch: dict[str, dict[int, list[int]]] = {}
    for name, dirs in groups.items():
        decs = [json.loads((d / "summary.json").read_text())["decision"] for d in dirs]
        recs = [_epochs(d) for d in dirs]
        kinds = list(decs[0]["cells"])
        op = {k: _mean([x["cells"][k]["op_margin"] for x in decs]) for k in kinds}
        edge = {k: _mean([x["cells"][k]["edge_margin"] for x in decs]) for k in kinds}
        gcs = [r[-1].get("arch_grad_consistency") for r in recs if r[-1].get("arch_grad_consistency")]
        gc = {k: _mean([g[k] for g in gcs]) for k in gcs[0]} if gcs else None
        free = {k: _mean([r[-1]["parameter_free"][k] for r in recs]) for k in kinds}
        print(
            f"| {name} | {len(dirs)} | {sum(x['settled'] for x in decs)} | {_fmt(op)} | {_fmt(edge)} | "
            f"{_mean([x['stable'] for x in decs]):.2f} | {_fmt(gc, 2)} | {_fmt(free, 1)} |"
        )
        for r in recs:
            for e in r:
                per_epoch.setdefault(name, {}).setdefault(e["epoch"], []).append(sum(e["parameter_free"].values()))
    epochs = sorted({e for v in per_epoch.values() for e in v})
    print()
    print("| epoch | " + " | ".join(f"{n}: param-free ops (both cells, mean over seeds)" for n in per_epoch) + " |")
    print("|---:|" + "---:|" * len(per_epoch))
    for e in epochs:
        print(f"| {e} | " + " | ".join(f"{_mean(per_epoch[n].get(e, [])):.1f}" for n in per_epoch) + " |")


if __name__ == "__main__":
    if "--study" in sys.argv[2:]:
        study(sys.argv[1])
    else:
        main(sys.argv[1], "--epochs" in sys.argv[2:])
