"""`bnas latency-table`: measure each operation's forward time at each place of a trained network on this
device, and the fixed part, as a JSON table whose sum predicts a genotype's latency (latency.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_latency_table(args: argparse.Namespace) -> int:
    import torch

    from ..costs import trained_shape
    from ..errors import check_device, check_int, check_output
    from ..latency import measure

    check_device(args.device)
    for name in ("batch", "repeats"):
        check_int(name, getattr(args, name), 1)
    check_int("threads", args.threads, 0)
    check_output("--out", args.out, directory=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    shape = trained_shape(
        args.space, args.dataset, size=args.image_size, channels=args.init_channels, layers=args.layers,
        enhance=args.enhance_cells, blocks=args.blocks,
    )  # fmt: skip
    table = measure(shape, device, args.batch, repeats=args.repeats)
    table.save(args.out)
    print(
        f"wrote {args.out}: {len(table.ops)} operation timings of the {shape.space} network (C={shape.channels}, "
        f"{shape.layers} cells, {shape.size}x{shape.size} input) on {device}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads; fixed part {table.fixed_ms:.2f} ms"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latency-table",
        help="measure the operations' latency on this device (a table that predicts a genotype's latency)",
        description="Time every candidate operation at every place of the trained network (its channels, stride "
        "and resolution; warm-up, then the median of repeats) and the network's fixed part, and write them as "
        "JSON with the device, batch, threads, hardware and library versions. The sum over a genotype's "
        "operations predicts its forward latency (benchmarks/latency_check.py measures how well).",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--batch", type=int, default=1, help="images per forward (default: 1)")
    p.add_argument("--out", type=Path, default=Path("latency.json"), help="table to write (default: latency.json)")
    p.add_argument("--space", choices=["bcnn", "darts"], default="bcnn", help="search space (default: bcnn)")
    p.add_argument("--dataset", default="cifar10", help="data set whose trained network is timed (default: cifar10)")
    p.add_argument("--init-channels", type=int, help="C of the trained network (default: its training recipe's)")
    p.add_argument("--layers", type=int, help="cells of the trained network (default: its training recipe's)")
    p.add_argument("--enhance-cells", type=int, help="E of the trained network (default: its training recipe's)")
    p.add_argument("--blocks", type=int, default=2, help="L, convolution blocks (default: 2)")
    p.add_argument("--image-size", type=int, help="input resolution (default: the data set's)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0 = torch's default)")
    p.add_argument("--repeats", type=int, default=15, help="timings per operation; the median is kept (default: 15)")
    p.set_defaults(func=cmd_latency_table)
