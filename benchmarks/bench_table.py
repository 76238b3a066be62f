"""Run the `bnas bench` configurations of docs/benchmarks.md and print its tables (markdown).

Every configuration runs in a fresh process (peak RSS is per process), and the configurations are
interleaved round by round so that a busy machine slows all of them alike; a cell of the table is the
median over rounds. Raw records go to a JSON-lines file.

    python benchmarks/bench_table.py --rounds 3 --out benchmarks/results/cpu.jsonl
    python benchmarks/bench_table.py --only published,fast --methods clr --orders 1   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> extra `bnas bench search` flags. "published" redoes the published code's work: one module call per
# edge and operation, channels-first, a full backward (all weight gradients too) in the architecture step, and
# torch.optim (whose first use imports torch._dynamo, ~150 MB resident); like the published scripts it runs
# with glibc's allocator as it comes (the `bnas` command otherwise restarts itself with the tcache off).
VARIANTS = {
    "published": "--no-fast --channels-last off --arch-grads all --weight-grads all --torch-optim",
    "plain": "--no-fast --channels-last off",
    "plain+cl": "--no-fast",
    "fast-cl": "--channels-last off",
    "fast-batch": "--no-batch-edges",
    "fast-malloc": "",
    "fast": "",
    "fast+bf16": "--amp bf16",
}
# variants that run with glibc's tcache on (BNAS_MALLOC_TUNING=0)
TCACHE_ON = {"published", "fast-malloc"}
METHODS = {"clr": "--method clr", "pc": "--method pc", "bnas-d": "--method bnas-d"}


def command(method: str, order: int, variant: str, args) -> list[str]:
    bnas = str(Path(sys.executable).with_name("bnas"))
    flags = f"{METHODS[method]} --space {args.space} --order {order} --batch-size {args.batch_size} "
    flags += f"--steps {args.steps} --warmup {args.warmup} --device {args.device} {VARIANTS[variant]}"
    if args.threads:
        flags += f" --threads {args.threads}"
    return [bnas, "bench", "search", *flags.split(), "--json"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="clr,pc", help="comma-separated (clr, pc, bnas-d)")
    p.add_argument("--orders", default="1,2")
    p.add_argument("--only", default=",".join(VARIANTS), help=f"variants: {', '.join(VARIANTS)}")
    p.add_argument("--space", default="bcnn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench.jsonl"))
    args = p.parse_args(argv)
    configs = [
        (m, int(o), v) for m in args.methods.split(",") for o in args.orders.split(",") for v in args.only.split(",")
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records: dict[tuple, list[dict]] = {c: [] for c in configs}
    with args.out.open("a") as log:
        for r in range(args.rounds):
            for c in configs:
                cmd = command(*c, args)
                t0 = time.time()
                env = dict(os.environ, BNAS_MALLOC_TUNING="0" if c[2] in TCACHE_ON else "1")
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    print(f"FAILED {shlex.join(cmd)}\n{done.stderr}", file=sys.stderr)
                    continue
                rec = json.loads(done.stdout)
                prefix = ["BNAS_MALLOC_TUNING=0"] if c[2] in TCACHE_ON else []
                rec.update(round=r, variant=c[2], command=shlex.join([*prefix, "bnas", *cmd[1:]]), started=t0)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                records[c].append(rec)
                print(
                    f"round {r} {c[0]} order {c[1]} {c[2]:<10} {rec['images_per_s']:7.2f} img/s "
                    f"{rec['peak_memory_mb']:6.0f} MB",
                    file=sys.stderr,
                )
    print(table(records))
    return 0


def table(records: dict[tuple, list[dict]]) -> str:
    rows = ["| method | order | variant | images/s | step s (median) | CPU s/step | peak RSS MB | vs published |"]
    rows.append("|---|---|---|---|---|---|---|---|")
    base: dict[tuple, tuple[float, float]] = {}
    for (m, o, v), recs in records.items():
        if not recs:
            continue
        ips = statistics.median(r["images_per_s"] for r in recs)
        mem = statistics.median(r["peak_memory_mb"] for r in recs)
        if v == "published":
            base[(m, o)] = (ips, mem)
        step = statistics.median(r["step_s"]["median"] for r in recs)
        cpu = statistics.median(r["cpu_s"]["median"] for r in recs)
        ref = base.get((m, o))
        rel = f"{ips / ref[0]:.2f}x speed, {mem / ref[1]:.2f}x memory" if ref else ""
        rows.append(f"| {m} | {o} | {v} | {ips:.1f} | {step:.2f} | {cpu:.2f} | {mem:.0f} | {rel} |")
    first = next(r for recs in records.values() for r in recs)
    rows.append("")
    rows.append(
        f"{first['device_name']}, {first['threads']} threads, torch {first['torch']}, batch {first['batch_size']}, "
        f"{len(next(iter(records.values())))} rounds"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
