"""`bnas bench` runs with tiny settings and reports its JSON fields (no timing assertions: the CPU is shared)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bnas.cli import main
from bnas.fast import cells as fastcells

TINY = ["--batch-size", "4", "--init-channels", "8", "--steps", "2", "--warmup", "1", "--threads", "1", "--json"]


def _run(capsys, *args: str) -> dict:
    assert main(["bench", *args, *TINY]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON object
    return json.loads(out[0])


def _check_common(rec: dict, images_per_step: int) -> None:
    step = rec["step_s"]
    assert 0 < step["min"] <= step["median"] <= step["max"]
    assert rec["images_per_s"] == pytest.approx(images_per_step / step["median"])
    assert rec["images_per_step"] == images_per_step
    assert rec["peak_memory_mb"] >= rec["start_memory_mb"] > 0
    assert rec["cpu_s"]["median"] > 0 and rec["threads"] == 1 and rec["device"] == "cpu"
    assert rec["device_name"] and rec["torch"]


@pytest.mark.parametrize(
    ("args", "fast", "cl"),
    [
        (["--method", "clr", "--order", "1"], True, True),
        (["--method", "pc", "--order", "2", "--no-fast", "--channels-last", "off"], False, False),
        (["--method", "pc", "--order", "1", "--no-batch-edges"], True, True),
        (["--method", "bnas-d", "--space", "darts", "--order", "1", "--weight-grads", "all"], True, True),
    ],
)
def test_bench_search_json(capsys, args, fast, cl):
    rec = _run(capsys, "search", *args)
    _check_common(rec, 2 * 4)  # a training and a validation batch per step
    assert rec["kind"] == "search" and rec["init_channels"] == 8
    assert rec["switches"]["fast"] is fast and rec["switches"]["channels_last"] is cl
    assert rec["method"] == args[1] and rec["order"] == int(args[args.index("--order") + 1])
    assert rec["arch_params"] == (252 if args[1] == "pc" else 224)
    assert rec["switches"]["batch_edges"] is ("--no-batch-edges" not in args)
    assert fastcells.BATCH_EDGES  # a process-wide switch, restored after the run


@pytest.mark.parametrize("space", ["bcnn", "darts"])
def test_bench_search_every_method_and_order(capsys, space):
    """The acceptance list: every method x order x space runs and reports (one step each, batch 2)."""
    for method in ("bnas-d", "clr", "pc"):
        for order in ("1", "2"):
            argv = ["bench", "search", "--method", method, "--order", order, "--space", space, "--batch-size", "2"]
            argv += ["--init-channels", "4", "--steps", "1", "--warmup", "0", "--threads", "1", "--json"]
            assert main(argv) == 0
            rec = json.loads(capsys.readouterr().out)
            assert (rec["method"], rec["order"], rec["space"]) == (method, int(order), space)
            assert rec["images_per_s"] > 0 and rec["peak_memory_mb"] > 0


def test_bench_published_variant_uses_torch_optim(capsys):
    rec = _run(capsys, "search", "--method", "pc", "--no-fast", "--channels-last", "off", "--arch-grads", "all",
               "--weight-grads", "all", "--torch-optim")  # fmt: skip
    assert rec["switches"]["torch_optim"] is True and rec["switches"]["fast"] is False


def test_bench_train_json(capsys):
    rec = _run(capsys, "train", "--genotype", "BNASv2_PC_cifar_v1")
    _check_common(rec, 4)
    assert rec["kind"] == "train" and rec["genotype"] == "BNASv2_PC_cifar_v1" and rec["weights"] > 0


def test_bench_bad_input_is_one_line(capsys):
    assert main(["bench", "search", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps" in err[0]
    assert main(["bench", "train", "--genotype", "NOPE", "--steps", "1"]) == 2
    assert "unknown genotype" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's tunables")
@pytest.mark.parametrize("tuning", ["1", "0"])
def test_bnas_command_restarts_itself_with_glibc_tuned(tuning):
    """The `bnas` command re-executes itself once with glibc's allocator tuned (no tcache: less heap
    fragmentation; no mmap: no page faults for large blocks); with BNAS_MALLOC_TUNING=0 it runs as started.
    The bench record says which."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"BNAS_MALLOC_TUNING": tuning}
    exe = Path(sys.executable).with_name("bnas")
    done = subprocess.run([str(exe), "bench", "search", *TINY], env=env, capture_output=True, text=True, check=True)
    rec = json.loads(done.stdout)
    assert rec["switches"]["glibc_tcache"] == ("off" if tuning == "1" else "on")
    assert rec["switches"]["glibc_heap_only"] is (tuning == "1")
