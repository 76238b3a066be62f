"""Options written once (issue 25 item 2, issue 28 items 2, 6, 9): the option groups, the resume policy of the
command line, the Python API and studies, help texts that say one default each, and library errors in the
library's words."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from bnas.cli import build_parser, flag_message, main
from bnas.errors import BnasError, ConfigError

TINY_SEARCH = ["--dataset", "synthetic", "--synthetic-size", "32", "--batch-size", "8", "--init-channels", "4"]
TINY_TRAIN = [*TINY_SEARCH, "--layers", "2", "--enhance-cells", "1"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnas: error: "), err
    return err


# ---- help texts: every command and subcommand


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out, todo = [], [("bnas", build_parser())]
    while todo:
        name, p = todo.pop()
        out.append((name, p))
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", sp) for sub, sp in action.choices.items()]
    return out


def _options_of(help_text: str) -> list[str]:
    """Each option of a help text as one line: its flags, metavar and help."""
    blocks = re.split(r"\n(?=  -)", help_text.split("\n\n", 1)[1])
    return [" ".join(b.split()) for b in blocks if b.strip().startswith("-")]


@pytest.mark.parametrize("name", [n for n, _ in _parsers()])
def test_every_help_says_one_default_per_option_and_every_option_is_explained(name):
    parser = dict(_parsers())[name]
    blocks = _options_of(parser.format_help())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
            continue
        flag = (action.option_strings or [action.dest])[-1]
        assert action.help and action.help.strip() not in (action.dest, flag), f"{name} {flag} has no help"
        shown = action.default not in (None, False, argparse.SUPPRESS) and not action.required
        if shown:  # a default the parser fills in is said, as "(default: X)"
            block = next(b for b in blocks if flag in b.replace(",", "").split()[:4])
            assert "default:" in block, f"{name} {flag}: its default {action.default!r} is not shown"
    for option in blocks:
        assert option.count("default:") <= 1, option  # one default, said one way
        assert not re.search(r"\(default [^:]|default: (all|None)\b", option), option
        if re.search(r"(--\S+) [A-Z_]+ ", option):  # takes a number: "all" is not a number's default
            assert "(default: all)" not in option, option


def test_search_has_threads_and_the_budget_says_a_bare_number_is_seconds():
    search = dict(_parsers())["bnas search"].format_help()
    assert "--threads" in search
    train = " ".join(dict(_parsers())["bnas train"].format_help().split())
    assert "a bare number is seconds" in train
    assert "--crop-padding CROP_PADDING random crop after zero padding by this many pixels (default: the data" in train


def test_search_and_train_options_come_in_groups():
    search = dict(_parsers())["bnas search"].format_help()
    for title in ("data", "network", "optimisation", "architecture", "runtime", "output"):
        assert f"\n{title} options:\n" in search, title
    train = dict(_parsers())["bnas train"].format_help()
    assert "architecture options" not in train and "\nruntime options:\n" in train


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serch"], "(did you mean search?)"),
        (["search", "--epohcs", "3"], "(did you mean --epochs?)"),
        (["search", "--epoch", "3"], "(did you mean --epochs?)"),  # no abbreviations: a prefix is a mistake
        (["train", "--genotype", "BNASv2_CLR_v1", "--init-chan", "8"], "(did you mean --init-channels?)"),
        (["genotype", "lst"], "(did you mean list?)"),
        (["genotype"], "required: SUBCOMMAND"),  # not the internal name genotype_cmd
        (["bench"], "required: SUBCOMMAND"),
    ],
)
def test_usage_mistakes_suggest_and_never_show_internal_names(argv, needle, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert needle in err and "_cmd" not in err, err


# ---- library errors name the library's arguments; the command line says flags


def test_library_errors_name_arguments_and_the_cli_names_flags(tmp_path, capsys):
    from bnas.search import SearchConfig

    with pytest.raises(ConfigError) as e:
        SearchConfig.resolve("clr", dataset="synthetic", batch_size=0)
    assert str(e.value).startswith("batch_size must be at least 1") and "--" not in str(e.value)
    assert e.value.options == ("batch_size",)
    assert "--batch-size must be at least 1, got 0" in _error(capsys, ["search", *TINY_SEARCH, "--batch-size", "0"])
    from bnas.train_config import TrainConfig

    with pytest.raises(ConfigError, match=r"^budget must be a duration") as e:
        TrainConfig.resolve(dataset="synthetic", budget="5x")
    assert e.value.options == ("budget",)
    with pytest.raises(ConfigError, match="use bf16 or off for amp with order 2"):
        SearchConfig.resolve("clr", dataset="synthetic", batch_size=8, order=2, amp="fp16")
    err = _error(capsys, ["search", *TINY_SEARCH, "--order", "2", "--amp", "fp16"])
    assert "use bf16 or off for --amp with --order 2" in err


def test_flag_message_translates_only_the_named_arguments():
    e = ConfigError(
        "kept in runs/lr/out: continue with resume=True and on_nan='skip', or a lower lr; quiet=False, out",
        options=("resume", "on_nan", "lr", "quiet", "out"),
    )
    assert flag_message(e) == (
        "kept in runs/lr/out: continue with --resume and --on-nan skip, or a lower --lr; --no-quiet, --out"
    )
    assert flag_message(BnasError("the lr is high")) == "the lr is high"  # nothing named: nothing translated


def test_an_existing_run_names_resume_true_in_python_and_resume_on_the_command_line(tmp_path, capsys):
    from bnas.runs import RunDir

    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(BnasError) as e:
        RunDir.create(out)
    assert "resume=True" in str(e.value) and "overwrite=True" in str(e.value) and "--" not in str(e.value)
    assert "with --resume, choose another --out, or pass --overwrite" in flag_message(e.value)


# ---- the resume policy


def _tiny_search(tmp_path) -> str:
    out = str(tmp_path / "s")
    assert main(["search", *TINY_SEARCH, "--epochs", "2", "--eval-every", "0", "--quiet", "--out", out]) == 0
    return out


def test_resume_refuses_what_would_change_the_results(tmp_path, capsys):
    from bnas.search import resume_config

    out = _tiny_search(tmp_path)
    capsys.readouterr()
    err = _error(capsys, ["search", "--resume", out, "--epochs", "6"])
    assert "--epochs cannot change when a run is resumed" in err and "2" in err
    err = _error(capsys, ["search", "--resume", out, "--init-channels", "8", "--lr", "0.5"])
    assert "--init-channels, --lr cannot change" in err
    with pytest.raises(ConfigError, match=r"^epochs cannot change when a run is resumed") as e:
        resume_config(out, epochs=6)
    assert e.value.options == ("epochs",) and "--" not in str(e.value)
    # the same value, as the original command line gives it again, is no change
    assert resume_config(out, epochs=2, init_channels=4, dataset="synthetic").epochs == 2
    assert json.loads((tmp_path / "s" / "config.json").read_text())["epochs"] == 2  # nothing was written


def test_resume_takes_and_records_what_does_not_change_the_results(tmp_path, capsys):
    out = _tiny_search(tmp_path)
    ckpt = tmp_path / "s" / "checkpoint.pt"
    # a finished 2-epoch search resumes at once; the options it was told are recorded
    assert main(["search", "--resume", out, "--log-every", "3", "--threads", "1", "--on-nan", "skip"]) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (config["log_every"], config["threads"], config["on_nan"], config["epochs"]) == (3, 1, "skip", 2)
    assert ckpt.exists()


def test_python_api_and_cli_share_the_policy(tmp_path):
    import bnas.search

    out = _tiny_search(tmp_path)
    with pytest.raises(ConfigError, match="init_channels cannot change"):
        bnas.search.search(resume=True, out=out, init_channels=8)
    with pytest.raises(ConfigError, match="extend_epochs applies to trainings"):
        from bnas.options import resume_config
        from bnas.search import SearchConfig

        resume_config(out, SearchConfig, {}, extend_epochs=2)


def test_a_training_is_extended_explicitly_and_the_extension_recorded(tmp_path, capsys):
    import bnas.train

    out = str(tmp_path / "t")
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--quiet", "--out", out]) == 0
    assert "extensions" not in json.loads((tmp_path / "t" / "config.json").read_text())  # as before
    err = _error(capsys, ["train", "--resume", out, "--epochs", "2"])
    assert "--epochs cannot change" in err and "--extend-epochs N" in err
    with pytest.raises(ConfigError, match="extend_epochs=N") as e:
        bnas.train.train(resume=True, out=out, epochs=2)
    assert "--" not in str(e.value)
    assert "give --resume too" in _error(capsys, ["train", *TINY_TRAIN, "--extend-epochs", "1", "--out", out])
    assert main(["train", "--resume", out, "--extend-epochs", "1", "--quiet"]) == 0
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["epochs"] == 2 and config["extensions"] == [{"epochs_before": 1, "epochs": 2}]
    assert json.loads((tmp_path / "t" / "results.json").read_text())["epochs"] == 2
    # a second extension adds to the record; a plain resume of the extended run keeps it
    res = bnas.train.train(resume=True, out=out, extend_epochs=1, quiet=True)
    assert res["epochs"] == 3
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert [x["epochs"] for x in config["extensions"]] == [2, 3]


def test_api_prints_no_command_line_hints(tmp_path, capsys):
    import bnas.search

    bnas.search.search(method="clr", dataset="synthetic", synthetic_size=32, batch_size=8, init_channels=4,
                       epochs=1, eval_every=0, quiet=True, out=str(tmp_path / "s"))  # fmt: skip
    out = capsys.readouterr().out
    assert "search finished" in out and "bnas train" not in out and "bnas report" not in out
