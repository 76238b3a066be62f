"""End-to-end: the `bnas` command line on synthetic data."""

import json
import re

import pytest
import torch

from bnas import build_network, get_genotype
from bnas.cli import main


@pytest.mark.parametrize(("method", "weights", "arch"), [("clr", 1_224_762, 224), ("pc", 289_242, 252)])
def test_dry_run_prints_exact_counts(method, weights, arch, capsys):
    assert main(["search", "--method", method, "--dataset", "synthetic", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{weights} weights, {arch} architecture parameters" in out


@pytest.mark.parametrize("space", ["bcnn", "darts"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("method", ["bnas-d", "clr", "pc"])
def test_search_end_to_end(method, order, space, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["search", "--method", method, "--order", str(order), "--space", space, "--dataset", "synthetic"]
    args += ["--synthetic-size", "32", "--batch-size", "8", "--epochs", "2", "--init-channels", "8"]
    args += ["--layers", "3", "--arch-start-epoch", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    g = get_genotype(str(out / "genotype.json"))
    assert g.space == space
    net = build_network(g, channels=8, layers=6 if space == "bcnn" else 3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[0]["arch_loss"] is None and epochs[1]["arch_loss"] > 0  # warm-up, then arch steps
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["order"] == order
    assert (out / "summary.json").exists() and (out / "checkpoint.pt").exists()


def test_genotype_show_and_list(capsys):
    assert main(["genotype", "show", "BNASv2_CLR_v1"]) == 0
    out = capsys.readouterr().out
    assert "convolution-block cell" in out and "enhancement cell" in out and "sep_conv_3x3" in out
    assert main(["genotype", "list"]) == 0
    assert "BNASv2_PC_image" in capsys.readouterr().out


def test_unknown_genotype_suggests_close_names(capsys):
    assert main(["genotype", "show", "BNASv2_CLR_V1"]) == 2
    err = capsys.readouterr().err
    assert "BNASv2_CLR_v1" in err and len(err.strip().splitlines()) == 1


def test_genotype_json_roundtrip(tmp_path):
    g = get_genotype("BNASv2_PC_cifar_v2")
    g.save(tmp_path / "g.json")
    assert get_genotype(str(tmp_path / "g.json")) == g


def test_darts_text_import(tmp_path):
    from bnas.genotype import from_darts_text

    g = get_genotype("DARTS_V2")
    text = g.to_darts_text().replace("[2, 3, 4, 5]", "range(2, 6)")
    assert from_darts_text(text, space="darts") == g
    (tmp_path / "g.txt").write_text(get_genotype("BNASv2_CLR_v2").to_darts_text())
    assert get_genotype(str(tmp_path / "g.txt")) == get_genotype("BNASv2_CLR_v2")


@pytest.mark.parametrize("command", ["search", "train"])
def test_help_shows_one_default_per_option(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out.split("options:", 1)[1]
    options = [" ".join(block.split()) for block in re.split(r"\n(?=  -)", text) if block.strip()]
    assert len(options) > 30
    for option in options:
        assert option.count("default:") <= 1 and "(default: None)" not in option, option
    if command == "search":
        per_method = "(method default: bnas-d 256, clr 256, pc 512, random 256)"
        assert any(o.startswith("--batch-size") and per_method in o for o in options)


def test_search_hint_trains_on_the_search_data_and_train_hints_run(tmp_path, capsys, monkeypatch):
    """The printed next steps run as printed (a tiny budget appended): the search's data set, not CIFAR-10."""
    import shlex

    monkeypatch.chdir(tmp_path)
    tiny = ["--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8", "--init-channels", "4"]
    assert main(["search", *tiny, "--epochs", "1", "--eval-every", "0", "--quiet", "--out", "runs/s"]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(li for li in lines if li.startswith("train what was found:"))
    assert line == (
        "train what was found: bnas train --genotype runs/s/genotype.json --dataset synthetic "
        "--recipe fast --budget 10m --batch-size 8 --out runs/s-train"
    )
    assert "plots and report: bnas report runs/s" in lines
    argv = shlex.split(line.split(": ", 1)[1])[1:]
    assert main([*argv, "--budget", "1s", "--init-channels", "4", "--test-subset", "64", "--quiet"]) == 0
    results = json.loads((tmp_path / "runs/s-train/results.json").read_text())
    assert results["dataset"] == "synthetic" and results["genotype"] == "runs/s/genotype.json"
    hints = [li.split(": ", 1) for li in capsys.readouterr().out.splitlines() if ": bnas " in li]
    assert [h[1].split()[1] for h in hints] == ["eval", "export", "predict", "report"]
    from PIL import Image

    Image.new("RGB", (32, 32), (90, 30, 200)).save(tmp_path / "new.png")
    for _, command in hints:
        command = command.split("  (")[0].replace("IMAGE...", "new.png")
        assert main(shlex.split(command)[1:]) == 0, command
    assert (tmp_path / "runs/s-train/model.pt2").exists() and (tmp_path / "runs/s-train/report").is_dir()


def test_folder_search_hint_carries_the_folder_options(tmp_path):
    from bnas.commands._hints import train_command
    from bnas.search import SearchConfig

    cfg = SearchConfig(dataset="folder", data_dir=str(tmp_path / "my photos"), image_size=64, test_split=0.25,
                       skip_bad=True, batch_size=64, out="runs/f")  # fmt: skip
    command = train_command(cfg, torch.device("cpu"))
    assert command == (
        f"bnas train --genotype runs/f/genotype.json --dataset folder --data-dir '{tmp_path}/my photos' "
        "--image-size 64 --test-split 0.25 --skip-bad --recipe fast --budget 10m --out runs/f-train"
    )
    cfg = SearchConfig(dataset="fashion-mnist", data_dir="/d", batch_size=256, out="r")
    assert train_command(cfg, torch.device("cuda")).endswith(
        "--dataset fashion-mnist --data-dir /d --budget 1h --out r-train"
    )
    cfg.batch_size = 32  # what fitted the search fits the training too
    assert train_command(cfg, torch.device("cuda")).endswith("--budget 1h --batch-size 32 --out r-train")


def test_imagenet_dry_run_needs_no_data(tmp_path, capsys):
    argv = ["train", "--dataset", "imagenet", "--data-dir", str(tmp_path / "none"), "--init-channels", "4"]
    assert main([*argv, "--image-size", "64", "--dry-run"]) == 0
    net = build_network(
        get_genotype("BNASv2_CLR_v1"), channels=4, layers=6, enhance=2, num_classes=1000, stem="imagenet"
    )
    params = sum(p.numel() for p in net.parameters())
    out = capsys.readouterr().out
    assert f"BNASv2_CLR_v1 (bcnn) on imagenet: {params} parameters" in out and "(3x64x64 input" in out


def _subparser(name: str):
    import argparse

    from bnas.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize(("command", "config"), [("search", "SearchConfig"), ("train", "TrainConfig")])
def test_every_config_field_parses_as_its_real_type(command, config):
    """Each option is made from its field's type (typing.get_type_hints, not the annotation's text): a value
    given on the command line arrives as that type, `X | None` as X, a tuple as its items, a bool as a switch."""
    import dataclasses
    import types
    import typing

    import bnas.search
    import bnas.train

    cls = getattr(bnas.search if command == "search" else bnas.train, config)
    parser = _subparser(command)
    actions = {a.dest: a for a in parser._actions}
    hints = typing.get_type_hints(cls)
    samples = {int: "3", float: "0.25", str: "x"}
    seen = 0
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) in (dict, list):  # config files / run records only
            assert f.name not in actions
            continue
        action, flag = actions[f.name], "--" + f.name.replace("_", "-")
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is typing.Literal:  # a choice: its values' type, and only its values
            assert action.choices == list(typing.get_args(hint)), f.name
            hint = type(typing.get_args(hint)[0])
        if hint is bool:
            assert getattr(parser.parse_args([flag]), f.name) is True
            assert getattr(parser.parse_args(["--no-" + flag[2:]]), f.name) is False
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            value = getattr(parser.parse_args([flag, *[samples[item]] * action.nargs]), f.name)
            assert action.nargs == len(typing.get_args(hint)) and all(type(v) is item for v in value)
        else:
            text = str(action.choices[0]) if action.choices else samples[hint]
            value = getattr(parser.parse_args([flag, text]), f.name)
            assert type(value) is hint, (f.name, value)
        assert getattr(parser.parse_args([]), f.name) is None  # unset: the preset or recipe decides
        seen += 1
    assert seen >= 30


def test_an_optional_float_field_parses_as_float():
    """The case the old string match got wrong: a `float | None` field became a str option."""
    import argparse
    from dataclasses import dataclass

    from bnas.commands._options import add_config_options

    @dataclass
    class Cfg:
        rate: float | None = None
        steps: int | None = None
        pair: tuple[int, int] = (1, 2)

    p = argparse.ArgumentParser()
    add_config_options(p, Cfg, {}, lambda name: "default: x")
    args = p.parse_args(["--rate", "0.5", "--steps", "4", "--pair", "3", "4"])
    assert (args.rate, args.steps, args.pair) == (0.5, 4, [3, 4])


@pytest.mark.parametrize(
    ("argv", "env", "restart"),
    [
        (["search", "--dataset", "synthetic"], {}, True),
        (["train", "--device", "cpu"], {}, True),
        (["bench", "search"], {}, True),
        (["search", "--device", "cuda"], {}, False),
        (["train", "--device=cuda:1"], {}, False),
        (["genotype", "list"], {}, False),
        (["report", "RUN"], {}, False),
        (["search", "--help"], {}, False),
        (["train"], {"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, False),  # torchrun: its workers run as started
        (["train"], {"BNAS_MALLOC_TUNING": "0"}, False),
        (["train"], {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}, False),  # restarted already
    ],
)
def test_glibc_restart_only_for_cpu_runs_of_search_train_bench(argv, env, restart, monkeypatch):
    import platform
    import sys

    from bnas import cli

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        restart = False
    monkeypatch.setattr(cli.Path, "exists", lambda self: False)  # as on a machine without an NVIDIA driver
    monkeypatch.setattr(sys, "gettrace", lambda: None)  # pytest-cov or a debugger would count as attached
    monkeypatch.setattr(sys, "getprofile", lambda: None)
    assert cli._wants_tcache_off(argv, env) is restart


def test_glibc_restart_not_under_a_debugger(monkeypatch):
    import sys

    from bnas import cli

    monkeypatch.setattr(cli.Path, "exists", lambda self: False)
    monkeypatch.setattr(sys, "gettrace", lambda: lambda *a: None)
    assert cli._wants_tcache_off(["search"], {}) is False
