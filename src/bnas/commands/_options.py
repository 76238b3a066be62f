"""What `bnas search` and `bnas train` share: options made from a config dataclass, --config files, --resume.

An option's parser is chosen from the field's real type (`typing.get_type_hints`), not from the text of
its annotation: `int | None` parses as int, `tuple[float, float]` as two floats, `bool` as --x/--no-x.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..jsonio import read_file

# what a run's config.json records besides its options: a run's config.json can be given to --config as it is
RECORDS = (
    "command", "counts", "runtime", "budget_plan", "environment", "genotype_json", "parameters", "macs", "data",
    "extensions", "arch_lr_auto",
)  # fmt: skip


def _unwrap_optional(hint: Any) -> Any:
    """`X | None` -> X (an option left out is None anyway: every option defaults to None on the command line)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def number_or_word(text: str) -> float | str:
    """A `float | str` option's value: a number where it reads as one, else the word (the library checks it)."""
    try:
        return float(text)
    except ValueError:
        return text


def option_kwargs(hint: Any) -> dict[str, Any]:
    """argparse keywords for a field of this type, or {} for a type the command line cannot give."""
    hint = _unwrap_optional(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and set(typing.get_args(hint)) == {float, str}:
        return {"type": number_or_word}  # --arch-lr 3e-4 or --arch-lr auto
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": hint}
    if typing.get_origin(hint) is typing.Literal:  # a choice: its values, parsed as their type
        values = typing.get_args(hint)
        return {"type": type(values[0]), "choices": list(values)}
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args and len(set(args)) == 1 and args[0] in (int, float, str) and Ellipsis not in args:
            return {"type": args[0], "nargs": len(args)}
    return {}


def add_config_options(
    p: argparse.ArgumentParser,
    cls: type,
    helps: dict[str, str] | None = None,
    default_text: Callable[[str], str] | None = None,
    choices: dict[str, list] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """One --option per field of the config dataclass `cls`, defaulting to None (unset: the preset decides).

    Help text and choices come from the field (its metadata, its Literal type: options.py), `helps` and `choices`
    add to them; the options of a config made of option groups are shown in those groups."""
    from ..options import choices_of, groups

    hints = typing.get_type_hints(cls)
    titled = groups(cls) if any(hasattr(c, "TITLE") for c in cls.__mro__) else [("", dataclasses.fields(cls))]
    for title, fields in titled:
        where = p.add_argument_group(f"{title} options") if title else p
        for f in fields:
            if f.name in skip:  # the command adds its own flag
                continue
            kw = option_kwargs(hints[f.name])
            if not kw:  # a field no flag can set (SearchConfig.extra): config files only
                continue
            text = (helps or {}).get(f.name) or f.metadata.get("help") or f.name
            default = default_text(f.name) if default_text else ""
            kw.update(default=None, dest=f.name, help=f"{text} ({default})" if default else text)
            if kw.get("nargs"):
                kw["metavar"] = tuple(f"{f.name.split('_')[-1][0].upper()}{i + 1}" for i in range(kw["nargs"]))
            options = (choices or {}).get(f.name) or choices_of(cls, f.name)
            if options:
                kw["choices"] = options
                if kw.get("type") is str or "type" not in kw:
                    kw["type"] = type(options[0])
            where.add_argument("--" + f.name.replace("_", "-"), **kw)


def resumable_flags(cls: type) -> list[str]:
    """The flags of the options a resumed run may be given anew (field metadata `resume`)."""
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(cls) if f.metadata.get("resume")]


def value_text(value: Any) -> str:
    """A value as the command line writes it: on/off, items separated by spaces."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return " ".join(map(str, value))
    return str(value)


def field_default_text(cls: type, name: str, preset: str = "") -> str:
    """One default per option: the field's own words (metadata `default_text`), else its value; `preset` adds
    the values a method preset or a data set's recipe gives it."""
    f = cls.__dataclass_fields__[name]
    if "default_text" in f.metadata:
        text = f.metadata["default_text"]
    else:
        value = f.default
        if value is None:
            raise ValueError(f"{cls.__name__}.{name} defaults to None and says nothing of it (default_text)")
        text = f"default: {value_text(value)}"
    return f"{text}; {preset}" if preset else text


def read_config_file(path: Path) -> dict[str, Any]:
    """The options of a --config JSON file (a run's config.json works too), as one sentence when it is bad."""
    if not path.exists():
        raise ConfigError(f"--config {path} does not exist; give a JSON file of options")
    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory; give a JSON file of options (e.g. a run's config.json)")
    obj = read_file(path, "config file", ConfigError)
    if not isinstance(obj, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of options")
    return {k.replace("-", "_"): v for k, v in obj.items() if k not in RECORDS}


def resume_dir(path: Path, command: str) -> Path:
    """--resume RUN_DIR: an existing directory holding a run of this command, or one sentence saying what to do."""
    from ..runs import RunDir

    if not path.exists():
        raise ConfigError(f"--resume {path} does not exist; give the directory of a bnas {command} run")
    if not path.is_dir():
        raise ConfigError(
            f"--resume {path} is a file, not a run directory; give the directory that holds the run's config.json "
            "and checkpoint.pt"
        )
    saved = RunDir(path).read_json("config.json")
    kind = saved.get("command") if isinstance(saved, dict) else None
    if kind in ("search", "train") and kind != command:
        raise ConfigError(f"{path} is a bnas {kind} run; continue it with bnas {kind} --resume {path}")
    return path


def command_line_options(args: argparse.Namespace, *own: str) -> dict[str, Any]:
    """The config options given on the command line (unset ones are None), without the command's own flags."""
    cli = {k: v for k, v in vars(args).items() if v is not None}
    for k in ("command", "func", "config", "resume", "dry_run", "overwrite", "debug", "extend_epochs", *own):
        cli.pop(k, None)
    return cli
