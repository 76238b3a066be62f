"""`bnas bench search|train`: time search or training steps and report images/s and peak memory."""

from __future__ import annotations

import argparse

from ..jsonio import dumps


def _common(p: argparse.ArgumentParser, batch: int) -> None:
    p.add_argument("--batch-size", type=int, default=batch, help=f"batch size (default: {batch})")
    p.add_argument("--init-channels", type=int, default=0, help="C (default: the configuration's own)")
    p.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0 = torch's default)")
    p.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        default="auto",
        help="memory format (auto = on) (default: auto)",
    )
    p.add_argument(
        "--amp", choices=["off", "bf16", "fp16", "auto"], default="off", help="mixed precision (default: off)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument(
        "--torch-optim",
        action="store_true",
        help="use torch.optim's SGD/Adam as the published code does (they import torch._dynamo: ~150 MB more)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary line")


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, run
    from ..errors import check_device, check_int, check_seed

    check_device(args.device)
    for name in ("threads", "init_channels", "warmup"):
        check_int(name, getattr(args, name), 0)
    check_int("steps", args.steps, 1)
    check_seed(args.seed)
    opts = {k: v for k, v in vars(args).items() if k not in ("command", "func", "bench_cmd", "json", "debug")}
    result = run(BenchConfig(kind=args.bench_cmd, **opts))
    if args.json:
        print(dumps(result))
        return 0
    what = (
        f"{result['method']} {result['space']} order {result['order']}"
        if result["kind"] == "search"
        else result["genotype"]
    )
    step = result["step_s"]
    print(
        f"{result['kind']} {what}, batch {result['batch_size']}, {result['device_name']} ({result['threads']} "
        f"threads): {result['images_per_s']:.1f} images/s, step {step['median']:.3f} s (min {step['min']:.3f}, "
        f"max {step['max']:.3f}), peak memory {result['peak_memory_mb']:.0f} MB"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="measure images/s and peak memory of search or training steps",
        description="Time steps on random CIFAR-shaped data after a warm-up and print images/s (images per step "
        "over the median step time; a search step takes a training and a validation batch), step times and peak "
        "memory (CPU: the process's peak resident set, so run one configuration per process; GPU: peak "
        "allocated). The switches default to the fast, exact ones.",
    )
    bsub = b.add_subparsers(dest="bench_cmd", required=True, metavar="SUBCOMMAND")
    s = bsub.add_parser("search", help="architecture step + weight step of a search (SPEC §7 configuration)")
    s.add_argument("--method", choices=["bnas-d", "clr", "pc"], default="clr", help="method preset (default: clr)")
    s.add_argument("--space", choices=["bcnn", "darts"], default="bcnn", help="search space (default: bcnn)")
    s.add_argument("--order", type=int, choices=[1, 2], default=1, help="architecture gradient order (default: 1)")
    s.add_argument(
        "--fast", action=argparse.BooleanOptionalAction, default=True, help="per-source-state cells (default: on)"
    )
    s.add_argument(
        "--batch-edges",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fast cells: one convolution call for the same operation of all edges leaving a state, instead of "
        "one per edge (default: on)",
    )
    s.add_argument(
        "--arch-grads",
        choices=["alpha", "all"],
        default="alpha",
        help="first-order architecture step: gradients of the alphas only, or a full backward as the published "
        "code (default: alpha)",
    )
    s.add_argument(
        "--weight-grads",
        choices=["weights", "all"],
        default="weights",
        help="weight step: gradients of the weights only, or of everything (default: weights)",
    )
    _common(s, 32)
    s.set_defaults(func=cmd_bench)
    t = bsub.add_parser("train", help="SGD steps of a genotype's trained network (SPEC §8 shape)")
    t.add_argument("--genotype", default="BNASv2_CLR_v1", help="bundled genotype name (default: BNASv2_CLR_v1)")
    t.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one ReLU per tensor for every operation that starts with one, as bnas train (default: on)",
    )
    _common(t, 128)
    t.set_defaults(func=cmd_bench)
