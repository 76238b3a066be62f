"""The pilots' table for docs/study-budget.md: one row per pilot search directory (benchmarks/study_budget_pilots.sh).

usage: python benchmarks/study_budget_pilots.py runs/pilots [--epochs]  (--epochs: every epoch's figures too)
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


if __name__ == "__main__":
    main(sys.argv[1], "--epochs" in sys.argv[2:])
