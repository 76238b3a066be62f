"""How well a latency table predicts whole networks (issue 26 item 2): measure the table of a trained network on
this machine, then the forward latency of the bundled genotypes and N random ones, and print the prediction
error of each (markdown) and the summary (median and largest absolute error).

Run it alone on an idle machine (other processes make both the table and the networks slower, unevenly):

    OMP_NUM_THREADS=1 python benchmarks/latency_check.py --threads 1 --out benchmarks/results/latency_cpu.json
    python benchmarks/latency_check.py --device cuda --batch 32          # a GPU's table
    OMP_NUM_THREADS=1 python benchmarks/latency_check.py --threads 1 --channels 16 --layers 2 --size 28 \
        --in-channels 1                                                   # the hardware study's network

The acceptance figure of issue 26 is a largest error of at most 15% on the CPU at batch 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bnas.costs import NetworkShape
from bnas.genotype import ZOO, sample_genotype
from bnas.latency import measure, measure_network


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--random", type=int, default=20, help="random genotypes besides the bundled ones")
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--enhance", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3, help="image channels (1: Fashion-MNIST's network)")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--table", type=Path, help="write the measured table here too")
    p.add_argument("--out", type=Path, help="write the per-genotype results as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = NetworkShape(channels=args.channels, layers=args.layers, enhance=args.enhance, size=args.size,
                         in_channels=args.in_channels)  # fmt: skip
    device = torch.device(args.device)
    t0 = time.perf_counter()
    table = measure(shape, device, args.batch, repeats=args.repeats)
    print(f"table: {len(table.ops)} places x ops, fixed {table.fixed_ms:.2f} ms, {time.perf_counter() - t0:.0f} s")
    if args.table:
        table.save(args.table)
    genotypes = {name: e.genotype for name, e in ZOO.items() if e.genotype.space == "bcnn"}
    genotypes.update({f"random-{s}": sample_genotype("bcnn", s) for s in range(args.random)})
    rows = []
    print("| genotype | measured ms | predicted ms | error |\n|---|---:|---:|---:|")
    for name, g in genotypes.items():
        real = measure_network(shape.build(g), shape, device, args.batch, repeats=args.repeats)
        pred = table.predict(g)
        err = (pred - real) / real
        rows.append({"genotype": name, "measured_ms": real, "predicted_ms": pred, "error": err})
        print(f"| {name} | {real:.2f} | {pred:.2f} | {100 * err:+.1f}% |")
    errors = [abs(r["error"]) for r in rows]
    print(f"\nabsolute error: median {100 * statistics.median(errors):.1f}%, largest {100 * max(errors):.1f}% "
          f"({device}, batch {args.batch}, {torch.get_num_threads()} threads)")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"table": table.to_json(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
