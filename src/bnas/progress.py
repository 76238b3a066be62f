"""Progress for long runs: a bar per epoch on a terminal, plain lines in logs, a one-screen summary."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, TextIO


class _Bar:
    """One epoch's progress: a tqdm bar on a terminal; in logs, a plain line at most every `line_every` s."""

    def __init__(self, total: int, desc: str, stream: TextIO, bar: bool, line_every: float | None = None):
        self.total, self.desc, self.stream = total, desc, stream
        self.n = 0
        self.stats: dict[str, float] = {}
        self.line_every = line_every
        self._last = time.perf_counter()
        self._tqdm = None
        if bar:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, desc=desc, file=stream, leave=False, dynamic_ncols=True, unit="step")

    def update(self, **stats: float) -> None:
        """One step done; `stats` update the figures shown (the loops give loss and accuracy at log points
        only, where they read them from the device, and the rate every step)."""
        self.n += 1
        self.stats.update(stats)
        stats = self.stats
        if self._tqdm is not None:
            self._tqdm.set_postfix({_LABELS.get(k, k): _fmt(k, v) for k, v in stats.items()}, refresh=False)
            self._tqdm.update(1)
        elif self.line_every is not None and self.n < self.total:
            now = time.perf_counter()
            if now - self._last >= self.line_every:
                self._last = now
                shown = " ".join(f"{_LABELS.get(k, k)} {_fmt(k, v)}" for k, v in stats.items())
                print(f"  {self.desc} step {self.n}/{self.total}: {shown}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


_LABELS = {"rate": "img/s"}


def _fmt(key: str, value: float) -> str:
    return f"{value:.0f}" if key == "rate" else f"{value:.3g}"


class Reporter:
    """Prints progress to stderr and results to stdout, in one of three modes:

    - terminal (stdout and stderr are terminals): a bar per epoch with loss, accuracy and images/s, then
      one line per epoch;
    - logs (stdout is not a terminal, e.g. redirected to a file or under a scheduler): no bar, which would
      fill the log with carriage returns; one line per epoch and a progress line every `line_every` s;
    - quiet (`--quiet`): only the summary at the end.
    """

    def __init__(
        self, quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None, line_every: float = 60.0
    ):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet
        self.bar = not quiet and _isatty(self.out) and _isatty(self.err)
        self.line_every = None if quiet or self.bar else line_every
        self.t0 = time.perf_counter()

    def print(self, *args: Any) -> None:
        print(*args, file=self.out, flush=True)

    @contextmanager
    def epoch(self, epoch: int, epochs: int | str, steps: int):
        bar = _Bar(steps, f"epoch {epoch + 1}/{epochs}", self.err, self.bar, self.line_every)
        try:
            yield bar
        finally:
            bar.close()

    def epoch_done(self, rec: dict[str, Any], genotype) -> None:
        if self.quiet:
            return
        parts = [f"epoch {rec['epoch']:>3}", f"train loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f}"]
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
        if rec.get("hessian_eig") is not None:
            parts.append(f"hessian eig {rec['hessian_eig']:.3g}")
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
        if "cost" in summary:  # a search under a budget (docs/hardware-aware.md)
            lines.append(_cost_line(summary))
        if genotype is not None:
            lines.append(genotype.describe())
        if "budget" in summary:
            b = summary["budget"]
            lines.append(f"budget {b['budget_s']:.0f} s: {b['epochs']:.2f} epochs ({b['total_steps']} steps) planned "
                         f"from {b['step_s'] * 1000:.0f} ms/step, {b['wall_s']:.0f} s used")  # fmt: skip
        if "arch_lr_auto" in summary:
            a = summary["arch_lr_auto"]
            whose = "the paper search's" if a["sum"] == a.get("paper_sum", a["sum"]) else "--arch-lr-sum"
            lines.append(f"--arch-lr auto: {a['arch_lr']:.3g} (summed architecture lr {a['sum']:.3g}, {whose})")
        decision = summary.get("decision")
        if decision:
            margins = ", ".join(f"{k} {v['op_margin']:.3f}" for k, v in decision["cells"].items())
            lines.append(
                f"architecture {'settled' if decision['settled'] else 'NOT settled'}: mean op margin {margins}; "
                f"genotype stable over {decision['stable']:.0%} of the last fifth"
            )
            if not decision["settled"]:
                lines.append(decision["advice"])
        run_dir = summary.get("run_dir")
        lines.append(f"run directory: {run_dir} (genotype.json, metrics.jsonl, checkpoint.pt)")
        self.print("\n".join(lines))  # the next commands are the command line's (commands/_hints.py)


def _cost_line(summary: dict[str, Any]) -> str:
    """The genotype's trained network against the search's budget."""

    def count(n: float) -> str:
        for suffix, unit in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= unit:
                return f"{n / unit:.3g}{suffix}"
        return f"{n:.0f}"

    cost, net = summary["cost"], summary.get("cost_network", {})
    limits = [f"{v:.3g} ms latency" if k == "latency_ms" else f"{count(v)} {k}"
              for k, v in summary.get("cost_budget", {}).items() if v is not None]  # fmt: skip
    latency = f", {cost['latency_ms']:.3g} ms predicted latency" if "latency_ms" in cost else ""
    return (
        f"trained network (C={net.get('channels')}, {net.get('layers')} cells): {count(cost['params'])} parameters, "
        f"{count(cost['macs'])} MACs{latency}; budget {' and '.join(limits)}"
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


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


def print_results(results: dict[str, Any], print_fn=print) -> None:
    fe = results["final_epoch"]
    lines = [
        "",
        f"== train finished: {results['genotype']} on {results['dataset']}, {results['epochs']:g} epochs, "
        f"{results['train_s'] / 60:.1f} min ==",
        f"network: {results['parameters']:,} parameters, {results['macs_per_image']:,} multiply-accumulates per image",
        f"final epoch: test top-1 {fe['test_top1']:.4f}, top-5 {fe['test_top5']:.4f} "
        f"({results['images']['test']} test images)",
    ]
    if "budget" in results:
        b = results["budget"]
        lines.append(
            f"budget {b['budget_s']:.0f} s: {b['total_steps']} steps planned from {b['step_s'] * 1000:.0f} ms/step, "
            f"{b['wall_s']:.0f} s used (training and the final evaluation)"
        )
    if "selected_on_val" in results:
        s = results["selected_on_val"]
        lines.append(
            f"selected on the validation split: epoch {s['epoch']} (val top-1 {s['val_top1']:.4f}), "
            f"test top-1 {s['test_top1']:.4f}"
        )
    lines.append(f"run directory: {results['run_dir']} (results.json, metrics.jsonl, checkpoint.pt)")
    print_fn("\n".join(lines))
