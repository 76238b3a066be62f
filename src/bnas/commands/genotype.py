"""`bnas genotype show|list|plot|sample`: the bundled genotypes and found ones, as text, JSON or a drawing."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..jsonio import dumps


def cmd_genotype(args: argparse.Namespace) -> int:
    from ..genotype import get_genotype

    if args.genotype_cmd == "list":
        print(zoo_table())
        return 0
    if args.genotype_cmd == "sample":
        from ..errors import check_int, check_output
        from ..genotype import sample_genotype

        check_int("seed", args.seed, 0)
        if args.max_params is None and args.max_macs is None and args.max_latency is None:
            g = sample_genotype(args.space, args.seed)
            print(f"random {g.space} cells, seed {args.seed}")
        else:
            g, line = _sample_within(args)
            print(line)
        print(g.describe())
        if args.output is not None:
            check_output("--output", args.output, directory=False)
            g.save(args.output)
            print(f"wrote {args.output} (train it with bnas train --genotype {args.output})")
        return 0
    g = get_genotype(args.name)
    if args.genotype_cmd == "show":
        print(f"{args.name} ({g.space} space)")
        print(g.describe())
        if args.json:
            print(dumps(g.to_json(), indent=1))
    if args.genotype_cmd == "plot":
        from ..errors import check_output
        from ..plots import draw_genotype

        output = args.output or Path(f"{Path(str(args.name)).stem or 'genotype'}.svg")
        check_output("--output", output, directory=False)
        out = draw_genotype(g, output, engine=args.engine, title=Path(str(args.name)).name)
        print(f"wrote {out.resolve()}" + ("" if args.output else " (-o FILE.svg|png|pdf chooses the file)"))
    return 0


def _sample_within(args: argparse.Namespace):
    """Random cells that fit --max-params/--max-macs/--max-latency on the trained network of --dataset (and its
    shape flags; --max-latency: as --latency-table predicts it)."""
    from ..constrained import sample_within
    from ..costs import Budget, format_count, trained_shape
    from ..errors import ConfigError
    from ..latency import cost_model

    budget = Budget.parse(args.max_params, args.max_macs, args.max_latency)
    if args.max_latency is not None and args.latency_table is None:
        raise ConfigError("max_latency needs the latency table of the target device: give latency_table "
                          "(bnas latency-table writes one)", options=("max_latency", "latency_table"))  # fmt: skip
    shape = trained_shape(args.space, args.dataset, channels=args.init_channels, layers=args.layers,
                          enhance=args.enhance_cells, size=args.image_size)  # fmt: skip
    model = cost_model(shape, args.latency_table)
    g = sample_within(model, budget, args.seed)
    cost = model.cost(g)
    latency = "" if cost.latency is None else f", {cost.latency / 1e6:.3g} ms predicted latency"
    return g, (
        f"random {g.space} cells that fit {budget.describe()}, seed {args.seed}: {format_count(cost.params)} "
        f"parameters, {format_count(cost.macs)} MACs{latency} on {args.dataset} (C={shape.channels}, "
        f"{shape.layers} cells)"
    )


def zoo_table() -> str:
    """The bundled genotypes as a table: the network's parameters on CIFAR-10 at the paper's evaluation size
    (bcnn: C=48, N=6, E=2; darts: C=36, 20 cells), parameter-free ops per cell, where the cells come from and
    what their paper reports where we bundle it."""
    from ..genotype import ZOO
    from ..space import build_network, count_parameters

    rows = [("name", "space", "parameters", "param-free", "found by", "reported by the paper")]
    for name, entry in ZOO.items():
        g = entry.genotype
        net = build_network(g) if g.space == "bcnn" else build_network(g, channels=36, layers=20)
        free = "/".join(str(v) for v in g.parameter_free().values())
        rows.append(
            (
                name,
                g.space,
                f"{count_parameters(net):,}",
                free,
                entry.source,
                entry.reported.removesuffix(" (paper)") or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + "  " + r[-1]
             for r in rows]  # fmt: skip
    return "\n".join(
        [*lines, "parameters: the trained network on CIFAR-10 (bcnn C=48, N=6, E=2; darts C=36, 20 cells); "
         "param-free: skip and pooling ops in each of the two cells (of 8)"]
    )  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("genotype", help="show or list genotypes")
    gsub = g.add_subparsers(dest="genotype_cmd", required=True, metavar="SUBCOMMAND")
    show = gsub.add_parser("show", help="print a genotype's cells as text")
    show.add_argument("name", help="bundled genotype name or genotype.json / run directory")
    show.add_argument("--json", action="store_true", help="also print the JSON form")
    gsub.add_parser("list", help="list the bundled genotypes")
    plot = gsub.add_parser("plot", help="draw both cells as graphs (graphviz's dot if installed, else matplotlib)")
    plot.add_argument("name", help="bundled genotype name or genotype.json / run directory")
    plot.add_argument("-o", "--output", type=Path, help="file to write: .svg, .png or .pdf (default: NAME.svg here)")
    plot.add_argument(
        "--engine",
        choices=["auto", "dot", "matplotlib"],
        default="auto",
        help="drawing program: auto = dot if installed, else matplotlib (default: auto)",
    )
    sample = gsub.add_parser(
        "sample", help="draw a random cell pair of a search space (the baseline a search has to beat)",
        description="Draw both cells uniformly from what derivation can produce: per node two distinct inputs, "
        "each with an operation other than none. The same --seed gives the same cells.",
    )  # fmt: skip
    sample.add_argument("--space", choices=["bcnn", "darts"], default="bcnn", help="search space (default: bcnn)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sample.add_argument("-o", "--output", type=Path, help="write the genotype as JSON to this file")
    g.set_defaults(func=cmd_genotype)
    _budget_flags(sample)


def _budget_flags(sample: argparse.ArgumentParser) -> None:
    b = sample.add_argument_group(
        "budget options", "draw uniformly among the genotypes whose trained network fits (docs/hardware-aware.md)"
    )
    b.add_argument("--max-params", help="at most this many parameters (K/M suffixes: 2.5M)")
    b.add_argument("--max-macs", help="at most this many multiply-accumulates per image (K/M/G suffixes: 400M)")
    b.add_argument("--max-latency", help="at most this forward latency as --latency-table predicts it (5ms, 800us, "
                   "or seconds: 0.004)")  # fmt: skip
    b.add_argument("--latency-table", help="the latency table (bnas latency-table) of the trained network on the "
                   "target device")  # fmt: skip
    b.add_argument("--dataset", default="cifar10", help="data set of the trained network (default: cifar10)")
    b.add_argument("--init-channels", type=int, help="C of the trained network (default: its training recipe's)")
    b.add_argument("--layers", type=int, help="cells of the trained network (default: its training recipe's)")
    b.add_argument("--enhance-cells", type=int, help="E of the trained network (default: its training recipe's)")
    b.add_argument("--image-size", type=int, help="input resolution (default: the data set's)")
