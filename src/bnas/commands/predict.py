"""`bnas predict RUN IMAGE...`: the top-5 classes of new images, preprocessed as the run's training images."""

from __future__ import annotations

import argparse

from ..jsonio import dumps


def cmd_predict(args: argparse.Namespace) -> int:
    from ..errors import check_device, check_int
    from ..evaluation import predict

    check_device(args.device)
    check_int("top", args.top, 1)
    results = predict(args.run, args.images, device=args.device, top=args.top)
    if args.json:
        print(dumps(results))
        return 0
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['p']:.3f}" for t in r["top"]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="the top-5 classes of new images by a trained model",
        description="Preprocess each image as the run's training images were (converted to the run's gray or RGB, "
        "the shorter side resized to its size, centre crop, its mean and std) and print the most likely classes: "
        "class names for --dataset folder runs, class numbers otherwise.",
    )
    p.add_argument("run", help="a training run directory, its checkpoint.pt or its best.pt")
    p.add_argument("images", nargs="+", help="image files (.png, .jpg, .jpeg, .bmp, .webp)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image (default: 5)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_predict)
