"""Progress for long runs: a bar per epoch on a terminal, plain lines in logs, a one-screen summary."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, TextIO


class _Bar:
    def __init__(self, total: int, desc: str, stream: TextIO, bar: bool):
        self.total, self.desc, self.stream = total, desc, stream
        self.n = 0
        self._tqdm = None
        if bar:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, desc=desc, file=stream, leave=False, dynamic_ncols=True)

    def update(self, **stats: float) -> None:
        self.n += 1
        if self._tqdm is not None:
            self._tqdm.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)
            self._tqdm.update(1)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


class Reporter:
    """Prints progress to stderr and results to stdout; quiet when asked or when stdout is not a terminal."""

    def __init__(self, quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet
        self.bar = not quiet and self.err.isatty()
        self.t0 = time.perf_counter()

    def print(self, *args: Any) -> None:
        print(*args, file=self.out, flush=True)

    @contextmanager
    def epoch(self, epoch: int, epochs: int, steps: int):
        bar = _Bar(steps, f"epoch {epoch + 1}/{epochs}", self.err, self.bar)
        try:
            yield bar
        finally:
            bar.close()

    def epoch_done(self, rec: dict[str, Any], genotype) -> None:
        if self.quiet:
            return
        parts = [f"epoch {rec['epoch'] + 1:>3}", f"train loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f}"]
        if rec.get("arch_loss") is not None:
            parts.append(f"arch loss {rec['arch_loss']:.3f}")
        if rec.get("valid_acc") is not None:
            parts.append(f"valid acc {rec['valid_acc']:.3f}")
        if "lr" in rec:
            parts.append(f"lr {rec['lr']:.4g}")
        if "arch_lr" in rec:
            parts.append(f"arch lr {rec['arch_lr']:.3g}")
        parts.append(f"{rec.get('images_per_s', 0):.0f} img/s")
        if "parameter_free" in rec:
            parts.append("param-free " + "/".join(str(v) for v in rec["parameter_free"].values()))
        self.print(" | ".join(parts))
        if genotype is not None:
            self.print("  genotype: " + _compact(genotype))

    def summary(self, summary: dict[str, Any], genotype) -> None:
        final = summary.get("final", {})
        lines = [
            "",
            f"== {summary['command']} finished: {summary.get('method', '')} on {summary.get('dataset', '')}, "
            f"{summary.get('epochs')} epochs, {summary.get('search_s', 0.0) / 60:.1f} min ==",
            f"supernet: {summary.get('weights', 0):,} weights, {summary.get('arch', 0):,} architecture parameters",
        ]
        if final:
            lines.append(
                "final epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, int | float))
            )
        if genotype is not None:
            lines.append(genotype.describe())
        lines.append(f"run directory: {summary.get('run_dir')} (genotype.json, metrics.jsonl, checkpoint.pt)")
        self.print("\n".join(lines))


def _compact(genotype) -> str:
    short = {
        "sep_conv_": "sep",
        "dil_conv_": "dil",
        "max_pool_3x3": "max",
        "avg_pool_3x3": "avg",
        "skip_connect": "skip",
    }

    def s(op: str) -> str:
        for k, v in short.items():
            if op.startswith(k):
                return v + op[len(k) :].split("x")[0] if k.endswith("_") else v
        return op

    return " ; ".join(
        f"{name}: " + " ".join(f"{s(op)}/{src}" for op, src in genotype.cell(name).edges) for name in genotype.names
    )
