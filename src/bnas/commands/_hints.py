"""The next steps the command line prints after a search or a training: commands that run as printed.

They live here, not in the library: `bnas.search(...)` called from Python prints no shell commands. A hint
carries what the next command must know to read the same data (data set, data directory, the options of
`--dataset folder`), so that copying it after a synthetic or folder search does not fall back to CIFAR-10.
"""

from __future__ import annotations

import shlex
from typing import Any

CPU_BUDGET = "10m"  # `--recipe fast` on a CPU: 92% on Fashion-MNIST in 10 minutes on 2 cores (docs/recipes.md)
GPU_BUDGET = "1h"  # the data set's own recipe, its schedule sized to an hour


def train_command(search_cfg: Any, device: Any) -> str:
    """`bnas train` of a finished search's genotype on the search's data, to a budget that suits `device`
    (the fast recipe for 10 minutes on a CPU, the data set's recipe for an hour on a GPU), into a sibling run
    directory `OUT-train`; the search's batch size where it was smaller than the recipe's (a small image tree
    that a recipe's batch would not fit)."""
    from ..data.registry import get_entry
    from ..recipes import FAST
    from ..train_config import TrainConfig

    out = str(search_cfg.out).rstrip("/") or "."
    train_dataset, data_args, _ = get_entry(search_cfg.dataset).train_args(search_cfg)
    argv = ["bnas", "train", "--genotype", f"{out}/genotype.json", *data_args]
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    argv += ["--recipe", "fast", "--budget", CPU_BUDGET] if on_cpu else ["--budget", GPU_BUDGET]
    recipe = FAST if on_cpu else get_entry(train_dataset).train_defaults
    if search_cfg.batch_size < recipe.get("batch_size", TrainConfig.batch_size):  # a small tree the search had to fit
        argv += ["--batch-size", str(search_cfg.batch_size)]
    argv += _budget_network(search_cfg)
    argv += ["--out", f"{out}-train"]
    return _join(argv)


def _budget_network(cfg: Any) -> list[str]:
    """A search under a cost budget: the size of the network its budget is on (docs/hardware-aware.md), so that
    the trained network is the one whose cost was predicted."""
    if all(getattr(cfg, k, None) is None for k in ("max_params", "max_macs", "max_latency")):
        return []
    from ..costs import trained_shape

    # the input size does not change the network's width and depth: any size, for data sets without one
    shape = trained_shape(cfg.space, cfg.dataset, size=32, channels=cfg.cost_channels, layers=cfg.cost_layers,
                          enhance=cfg.cost_enhance, blocks=cfg.blocks)  # fmt: skip
    enhance = ["--enhance-cells", str(shape.enhance)] if shape.space == "bcnn" else []
    return ["--init-channels", str(shape.channels), "--layers", str(shape.layers), *enhance]


def search_next_steps(search_cfg: Any, device: Any) -> str:
    """The lines printed at the end of `bnas search`."""
    out = str(search_cfg.out)
    from ..data.registry import get_entry

    lines = [f"train what was found: {train_command(search_cfg, device)}"]
    note = get_entry(search_cfg.dataset).train_args(search_cfg)[2]
    if note:
        lines[0] += f"  ({note})"
    lines.append(f"plots and report: {_join(['bnas', 'report', out])}")
    return "\n".join(lines)


def train_next_steps(run_dir: Any) -> str:
    """The lines printed at the end of `bnas train`: evaluate, export, predict, report (IMAGE is a placeholder)."""
    run = shlex.quote(str(run_dir))
    return "\n".join(
        [
            f"evaluate again: bnas eval {run}",
            f"export a model that predicts without bnas: bnas export {run}  (--format onnx for onnxruntime)",
            f"classify new images: bnas predict {run} IMAGE...",
            f"plots and report: bnas report {run}",
        ]
    )


def _join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# the --help epilog of bnas search and bnas train (preempt.py: EXIT_PREEMPTED)
RUN_EXITS = (
    "Exit codes: 0 the run finished; 2 a usage, configuration or data error (one sentence on stderr); 75 stopped "
    "by SIGTERM or SIGUSR1 at a step boundary, with a checkpoint of that step (continue it mid-epoch with "
    "--resume OUT); 130 Ctrl-C (finished epochs are kept). One process writes a run directory at a time: "
    "another one's --out, --resume or --overwrite of it is refused while it runs."
)
